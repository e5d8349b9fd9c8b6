#!/usr/bin/env python3
"""A Monitor subscriber that does not read (rule N1's bound), written with a raw socket.

  slow_subscriber.py SOCKET OUT GO_FILE

Connects with a small receive buffer, calls io.licenseagent.Agent.Monitor with "more",
writes "subscribed" to OUT, then reads nothing until GO_FILE exists. Then it reads
everything the agent sent until the connection ends, and appends one JSON line per reply
to OUT ({"sequence": N} or {"error": NAME, "parameters": ...}), then {"end": "eof"}.
"""
import json
import os
import socket
import sys
import time


def main():
    path, out_path, go = sys.argv[1], sys.argv[2], sys.argv[3]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(path)
    sock.sendall(json.dumps({"method": "io.licenseagent.Agent.Monitor", "parameters": {}, "more": True}).encode()
                 + b"\0")
    with open(out_path, "a", encoding="utf-8") as out:
        out.write("subscribed\n")
        out.flush()
        while not os.path.exists(go):
            time.sleep(0.05)
        sock.settimeout(30)
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                message, _, buffer = buffer.partition(b"\0")
                reply = json.loads(message)
                if "error" in reply:
                    out.write(json.dumps({"error": reply["error"], "parameters": reply.get("parameters")}) + "\n")
                else:
                    out.write(json.dumps({"sequence": reply["parameters"]["sequence"]}) + "\n")
        out.write(json.dumps({"end": "eof"}) + "\n")


if __name__ == "__main__":
    main()
