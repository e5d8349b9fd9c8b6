#!/usr/bin/python3
"""A hostile local user of the agent's control socket, for the tests (run it under setpriv
as an unprivileged user). Debian's python3, standard library only.

  hostile_client.py SOCKET hold N        N connections, each asks GetStatus once; prints
                                         "accepted A refused R", holds them until stdin closes
  hostile_client.py SOCKET half N BYTES  N connections, each sends BYTES of a message that
                                         never ends; prints "open K" once the agent has
                                         read what it takes, then "closed C" once the
                                         agent's stall deadline has passed (at most 30 s)
"""

import socket
import sys
import time

CALL = b'{"method":"io.licenseagent.Agent.GetStatus"}\0'


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def answered(s):
    """True when the agent answers a call on `s`; False when it closed the connection."""
    s.settimeout(5)
    try:
        s.sendall(CALL)
        data = b""
        while not data.endswith(b"\0"):
            chunk = s.recv(65536)
            if not chunk:
                return False
            data += chunk
        return True
    except OSError:
        return False


def is_open(s):
    """False once the agent has closed `s` (end of stream or reset)."""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def hold(path, count):
    kept = []
    refused = 0
    for _ in range(count):
        s = connect(path)
        if answered(s):
            kept.append(s)
        else:
            refused += 1
            s.close()
    print("accepted %d refused %d" % (len(kept), refused), flush=True)
    sys.stdin.read()


def half(path, count, size):
    sockets = []
    for _ in range(count):
        s = connect(path)
        s.settimeout(5)
        try:
            s.sendall(b'{"method":"io.licenseagent.Agent.GetStatus","parameters":{"x":"' + b"a" * size)
        except OSError:
            pass
        sockets.append(s)
    time.sleep(1)
    print("open %d" % sum(is_open(s) for s in sockets), flush=True)
    deadline = time.time() + 30
    while time.time() < deadline and any(is_open(s) for s in sockets):
        time.sleep(0.2)
    print("closed %d" % sum(not is_open(s) for s in sockets), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "hold":
        hold(path, int(sys.argv[3]))
    elif mode == "half":
        half(path, int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: hostile_client.py SOCKET hold N | half N BYTES")
