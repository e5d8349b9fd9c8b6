#!/usr/bin/python3
"""A hostile local user of the agent's control socket, for the tests (run it under setpriv
as an unprivileged user). Debian's python3, standard library only.

  hostile_client.py SOCKET hold N        N connections, each asks GetStatus once; prints
                                         "accepted A refused R", holds them until stdin closes
  hostile_client.py SOCKET half N BYTES [WAIT]
                                         N connections, each sends BYTES of a message that
                                         never ends; prints "open K" WAIT seconds later (1),
                                         once the agent has read what it takes, then "closed C" once the
                                         agent's stall deadline has passed (at most 30 s)
  hostile_client.py SOCKET flood KIND SECONDS [BYTES]
                                         one connection, calls back to back for SECONDS,
                                         never reading: KIND "oneway" (oneway GetStatus),
                                         "refused" (oneway RemoveReserve, refused to this
                                         user), "big" (oneway CheckKey with a BYTES-long
                                         key; a new connection when the agent closes
                                         one); prints "sent N calls on C connections"
  hostile_client.py SOCKET admin-flood N SECONDS
                                         as an admin (root, or the admin group) whose client
                                         misbehaves: N connections, each with one ReportUsage
                                         in flight at all times, the units alternating 8, 12;
                                         prints "answered N calls"
  hostile_client.py - forge FIELD=VALUE...
                                         writes one entry with these fields to the journal's
                                         native socket, as any local user may
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


def half(path, count, size, wait=1.0):
    sockets = []
    for _ in range(count):
        s = connect(path)
        s.settimeout(5)
        try:
            s.sendall(b'{"method":"io.licenseagent.Agent.GetStatus","parameters":{"x":"' + b"a" * size)
        except OSError:
            pass
        sockets.append(s)
    time.sleep(wait)
    print("open %d" % sum(is_open(s) for s in sockets), flush=True)
    deadline = time.time() + 30
    while time.time() < deadline and any(is_open(s) for s in sockets):
        time.sleep(0.2)
    print("closed %d" % sum(not is_open(s) for s in sockets), flush=True)
    sys.stdin.read()


def flood(path, kind, seconds, size):
    if kind == "oneway":
        call = b'{"method":"io.licenseagent.Agent.GetStatus","oneway":true}\0'
    elif kind == "refused":
        call = b'{"method":"io.licenseagent.Agent.RemoveReserve","parameters":{"slot":"server"},"oneway":true}\0'
    elif kind == "big":
        call = (b'{"method":"io.licenseagent.Agent.CheckKey","parameters":{"role":"reserve","key":"'
                + b"k" * size + b'"},"oneway":true}\0')
    else:
        sys.exit("unknown flood " + kind)
    s = None
    sent = 0
    connections = 0
    pending = b""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if s is None:
            try:
                s = connect(path)
            except OSError:
                time.sleep(0.01)
                continue
            s.setblocking(False)
            connections += 1
            pending = b""
        if not pending:
            pending = call * (64 if len(call) < 4096 else 1)
        try:
            count = s.send(pending)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        except OSError:
            # The agent closed the connection (an oversized message): again, on a new one.
            s.close()
            s = None
            continue
        sent += count
        pending = pending[count:]
    print("sent %d calls on %d connections" % (sent // len(call), connections), flush=True)
    if s is not None:
        s.close()


def admin_flood(path, count, seconds):
    import selectors

    selector = selectors.DefaultSelector()
    calls = [('{"method":"io.licenseagent.Agent.ReportUsage","parameters":{"slot":"server","units":%d}}'
              % units).encode() + b"\0" for units in (8, 12)]
    answered_calls = 0
    for index in range(count):
        s = connect(path)
        s.sendall(calls[index % 2])
        selector.register(s, selectors.EVENT_READ, [index, b""])
    deadline = time.time() + seconds
    while time.time() < deadline:
        for key, _ in selector.select(timeout=0.5):
            data = key.fileobj.recv(65536)
            if not data:
                sys.exit("the agent closed an admin's connection")
            key.data[1] += data
            while b"\0" in key.data[1]:
                _, key.data[1] = key.data[1].split(b"\0", 1)
                answered_calls += 1
                key.data[0] += 1
                key.fileobj.sendall(calls[key.data[0] % 2])
    print("answered %d calls" % answered_calls, flush=True)


def forge(fields):
    entry = "".join(field + "\n" for field in fields).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(entry, "/run/systemd/journal/socket")
    print("forged", flush=True)


if __name__ == "__main__":
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "hold":
        hold(path, int(sys.argv[3]))
    elif mode == "half":
        half(path, int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else 1.0)
    elif mode == "flood":
        flood(path, sys.argv[3], float(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    elif mode == "admin-flood":
        admin_flood(path, int(sys.argv[3]), float(sys.argv[4]))
    elif mode == "forge":
        forge(sys.argv[3:])
    else:
        sys.exit("usage: hostile_client.py SOCKET hold N | half N BYTES | flood KIND SECONDS [BYTES] | - forge F=V...")
