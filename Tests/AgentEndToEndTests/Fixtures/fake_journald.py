#!/usr/bin/python3
"""A stand-in for journald's native socket, for the outbox tests: binds PATH as a datagram
socket and prints every entry it receives as one JSON object a line (field -> value).

  fake_journald.py PATH          receive until killed
  fake_journald.py PATH --dead   bind PATH and close it at once: the socket file stays,
                                 and every send to it is refused (ECONNREFUSED), as when
                                 journald is stopped or restarting
"""

import json
import os
import socket
import struct
import sys


def parse(data):
    """journald's native protocol: FIELD=value lines, or FIELD, LE64 length, data, newline."""
    fields = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode("utf-8", "replace")
            i = end + 1
        else:
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            fields[line.decode()] = data[end + 9:end + 9 + size].decode("utf-8", "replace")
            i = end + 9 + size + 1
    return fields


def main():
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    os.chmod(path, 0o666)
    if "--dead" in sys.argv:
        s.close()
        return
    print("ready", flush=True)
    while True:
        data = s.recv(1 << 20)
        print(json.dumps(parse(data)), flush=True)


if __name__ == "__main__":
    main()
