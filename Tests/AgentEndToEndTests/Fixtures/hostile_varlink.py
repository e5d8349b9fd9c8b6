"""A program that listens where agentctl looks for the agent and answers as the agent never
would, for the tests of what agentctl does with it. Prints "ready" once listening.

    hostile_varlink.py SOCKET MODE
      error    an error reply whose message holds terminal escape sequences
      garbage  a reply that is not a status
      drip     a reply that never ends, one byte a second
      status   a status whose strings hold terminal escape sequences; to a call made with
               "more" (Monitor), that status, then a reply begun and never finished
"""

import json
import os
import socket
import sys
import threading
import time

path, mode = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(8)
print("ready", flush=True)

ESCAPES = "\x1b]0;TITLE\x07\x1b[2J"


def serve(connection):
    with connection:
        request = b""
        while not request.endswith(b"\0"):
            chunk = connection.recv(65536)
            if not chunk:
                return
            request += chunk
        if mode == "error":
            reply = '{"error":"io.licenseagent.Agent.PermissionDenied","parameters":{"message":"nope %s"}}' % ESCAPES
            connection.sendall(reply.replace("\x1b", "\\u001b").replace("\x07", "\\u0007").encode() + b"\0")
        elif mode == "garbage":
            connection.sendall(b'{"parameters":{"foo":1}}\0')
        elif mode == "status":
            status = {"schemaVersion": 1, "version": "9.9 " + ESCAPES, "startedAt": "2026-01-01T00:00:00Z",
                      "now": "2026-01-01T00:00:00Z", "product": "svm " + ESCAPES, "slots": [], "warnings": [],
                      "alerts": [ESCAPES], "health": 0}
            if b'"more":true' in request:
                connection.sendall(json.dumps({"continues": True, "parameters": {"sequence": 0, "status": status}})
                                   .encode() + b"\0")
                connection.sendall(b'{"continues":true,"parameters":{"sequence":1,')
                time.sleep(60)
            else:
                connection.sendall(json.dumps({"parameters": status}).encode() + b"\0")
        elif mode == "drip":
            connection.sendall(b"{")
            try:
                while True:
                    time.sleep(1)
                    connection.sendall(b" ")
            except OSError:
                return


while True:
    try:
        connection, _address = server.accept()
    except OSError:
        break
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
os.unlink(path)
