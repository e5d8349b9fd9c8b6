import CSodium

/// Ed25519 (RFC 8032) through Debian's libsodium: the three calls this product needs.
///
/// libsodium's verifier is strict (canonical `S`, no small-order public keys or `R`), which
/// is what a licence check wants: one valid signature per message and key.
public enum Ed25519 {
  public static let publicKeyLength = 32
  public static let seedLength = 32
  public static let signatureLength = 64

  /// `sodium_init` must run once before any other call; it is idempotent and thread-safe.
  private static let ready: Bool = sodium_init() >= 0

  /// True when `signature` is a valid signature of `message` by `publicKey`.
  public static func verify(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
    guard ready, signature.count == signatureLength, publicKey.count == publicKeyLength else {
      return false
    }
    return crypto_sign_verify_detached(signature, message, UInt64(message.count), publicKey) == 0
  }

  /// The public key of a 32-byte private seed (the JWK's `d`).
  public static func publicKey(seed: [UInt8]) -> [UInt8]? {
    keyPair(seed: seed)?.publicKey
  }

  /// Signs `message` with the private seed.
  public static func sign(message: [UInt8], seed: [UInt8]) -> [UInt8]? {
    guard let pair = keyPair(seed: seed) else { return nil }
    var signature = [UInt8](repeating: 0, count: signatureLength)
    var length: UInt64 = 0
    guard
      crypto_sign_detached(&signature, &length, message, UInt64(message.count), pair.secretKey) == 0
    else { return nil }
    return signature
  }

  /// A fresh random seed from the operating system's generator.
  public static func randomSeed() -> [UInt8] {
    precondition(ready, "libsodium failed to initialise")
    var seed = [UInt8](repeating: 0, count: seedLength)
    randombytes_buf(&seed, seedLength)
    return seed
  }

  private static func keyPair(seed: [UInt8]) -> (publicKey: [UInt8], secretKey: [UInt8])? {
    guard ready, seed.count == seedLength else { return nil }
    var publicKey = [UInt8](repeating: 0, count: publicKeyLength)
    var secretKey = [UInt8](repeating: 0, count: 64)
    guard crypto_sign_seed_keypair(&publicKey, &secretKey, seed) == 0 else { return nil }
    return (publicKey, secretKey)
  }
}

/// SHA-256 through libsodium: how the agent remembers a blocklist it kept without keeping
/// its text (a list may be 1 MiB, and the state is written at every change).
public enum SHA256 {
  /// The digest of `text`'s UTF-8 bytes, base64url.
  public static func digest(_ text: String) -> String {
    var out = [UInt8](repeating: 0, count: Int(crypto_hash_sha256_BYTES))
    let bytes = Array(text.utf8)
    _ = sodium_init()
    crypto_hash_sha256(&out, bytes, UInt64(bytes.count))
    return Base64URL.encode(out)
  }
}
