#!/usr/bin/env python3
"""The reference Python varlink client against license-agent, by introspection.

  varlink_client.py SOCKET BAD_RESERVE_KEY

Opens io.licenseagent.Agent through its interface description (which the client parses),
calls GetStatus, AddKey with a reserve that a rule refuses, and CheckKey, and checks every
reply and error against the types of the served IDL (the client itself does not). Prints
what it saw as one JSON object; exits 1 on the first mismatch.
"""
import json
import sys

import varlink
from varlink import scanner as S


def check(value, kind, iface, path):
    """Raises ValueError when value does not have the IDL type kind."""
    if isinstance(kind, S._Maybe):
        if value is not None:
            check(value, kind.element_type, iface, path)
        return
    if value is None:
        raise ValueError(f"{path}: null for a non-optional field")
    if isinstance(kind, bool):
        ok = isinstance(value, bool)
    elif isinstance(kind, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(kind, str):
        ok = isinstance(value, str)
    elif isinstance(kind, S._Object):
        ok = True
    elif isinstance(kind, S._Array):
        ok = isinstance(value, list)
        for index, item in enumerate(value if ok else []):
            check(item, kind.element_type, iface, f"{path}[{index}]")
    elif isinstance(kind, S._Dict):
        ok = isinstance(value, dict)
        for key, item in (value.items() if ok else []):
            check(item, kind.element_type, iface, f"{path}[{key}]")
    elif isinstance(kind, S._Enum):
        ok = value in kind.fields
    elif isinstance(kind, S._CustomType):
        return check(value, iface.members[kind.name].type, iface, path)
    elif isinstance(kind, S._Struct):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {value!r}")
        extra = set(value) - set(kind.fields)
        if extra:
            raise ValueError(f"{path}: fields not in the IDL: {sorted(extra)}")
        for name, field in kind.fields.items():
            check(value.get(name), field, iface, f"{path}.{name}")
        return
    else:
        raise ValueError(f"{path}: unknown IDL type {kind!r}")
    if not ok:
        raise ValueError(f"{path}: {value!r} does not match the IDL type {type(kind).__name__}")


def main():
    socket, bad_key = sys.argv[1], sys.argv[2].strip()
    out = {}
    with varlink.Client(address="unix:" + socket) as client:
        with client.open("org.varlink.service") as service:
            info = service.GetInfo()
            out["interfaces"] = info["interfaces"]
            iface = varlink.Interface(service.GetInterfaceDescription("io.licenseagent.Agent")["description"])
        with client.open("io.licenseagent.Agent") as agent:
            status = agent.GetStatus()
            check(status, iface.members["GetStatus"].out_type, iface, "GetStatus")
            out["activeSerial"] = status["slots"][0]["active"]["serial"]
            try:
                agent.AddKey(bad_key, "reserve")
                raise ValueError("AddKey accepted a reserve that R5 refuses")
            except varlink.VarlinkError as error:
                out["error"] = error.error()
                name = error.error().rsplit(".", 1)[1]
                check(error.parameters(), iface.members[name].type, iface, name)
                out["rule"] = error.parameters()["rule"]
                out["code"] = error.parameters()["code"]
        with client.open("io.licenseagent.Agent") as agent:
            # As an active key the same key is acceptable (it would replace the active key).
            checked = agent.CheckKey(bad_key, "active")
            check(checked, iface.members["CheckKey"].out_type, iface, "CheckKey")
            out["checkSlot"] = checked["slot"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
