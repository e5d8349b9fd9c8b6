#!/usr/bin/env python3
"""Another JOSE implementation for license-agent's interoperability tests.

  jose_interop.py issue LIB ALG TRUST_DIR KID CLAIMS_JSON [TYP]
      Makes an Ed25519 issuer key with LIB ("joserfc" or "cryptography"), writes its public
      JWK to TRUST_DIR/KID.jwk, signs CLAIMS_JSON with ALG (header typ TYP: "JWT" for a key,
      "license-blocklist+jwt" for a blocklist) and prints the compact JWS.
  jose_interop.py verify PUBLIC_JWK_FILE KEY_FILE
      Verifies a key made by license-keytool with joserfc and prints its claims as JSON.
"""
import base64
import json
import sys
import warnings

warnings.simplefilter("ignore")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def issue(lib, alg, trust_dir, kid, claims_json, typ="JWT"):
    claims = json.loads(claims_json)
    if lib == "joserfc":
        from joserfc import jwt
        from joserfc.jwk import OKPKey

        key = OKPKey.generate_key("Ed25519", parameters={"kid": kid})
        public = key.as_dict(private=False)
        token = jwt.encode({"alg": alg, "kid": kid, "typ": typ}, claims, key, algorithms=[alg])
    else:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        private = Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        public = {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url(raw)}
        header = b64url(json.dumps({"kid": kid, "alg": alg, "typ": typ}).encode())
        payload = b64url(json.dumps(claims).encode())
        signing_input = f"{header}.{payload}".encode()
        token = f"{header}.{payload}.{b64url(private.sign(signing_input))}"
    with open(f"{trust_dir}/{kid}.jwk", "w") as f:
        json.dump(public, f)
    print(token)


def verify(public_jwk_file, key_file):
    from joserfc import jwt
    from joserfc.jwk import OKPKey

    with open(public_jwk_file) as f:
        key = OKPKey.import_key(json.load(f))
    with open(key_file) as f:
        text = f.read().strip()
    token = jwt.decode(text, key, algorithms=["EdDSA", "Ed25519"])
    print(json.dumps({"header": token.header, "claims": token.claims}))


if __name__ == "__main__":
    if sys.argv[1] == "issue":
        issue(*sys.argv[2:8])
    else:
        verify(*sys.argv[2:4])
