# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A minimal Varlink client over a Unix socket, with Python's standard library only.

Varlink (https://varlink.org) frames every message, each way, as one JSON object followed
by a NUL byte. This client sends one call at a time and reads its one reply; it is what
the modules use to reach the license-agent on the SVM (contract sections 5 and 9).
"""

from __future__ import annotations

import json
import socket
import time

DEFAULT_SOCKET = "/run/license-agent/io.licenseagent.Agent"
INTERFACE = "io.licenseagent.Agent"

# Replies are small (a status of four slots is a few KiB); anything far larger is not the
# agent talking.
MAX_REPLY_BYTES = 4 * 1024 * 1024


def agent_options(timeout=30.0):
    """The argument spec every module has (doc fragment licenseagent.svm.agent)."""
    return dict(
        socket=dict(type="path", default=DEFAULT_SOCKET),
        timeout=dict(type="float", default=timeout),
    )


class VarlinkError(Exception):
    """The server answered the call with a Varlink error (its name and parameters)."""

    def __init__(self, error, parameters):
        self.error = error
        self.parameters = parameters or {}
        message = self.parameters.get("message") or ""
        super().__init__("%s%s" % (error, (": " + message) if message else ""))

    @property
    def short_name(self):
        """The error's name without its interface, e.g. RuleViolation."""
        return self.error.rsplit(".", 1)[-1]


class ConnectionFailed(Exception):
    """The agent could not be reached on its socket, or broke the protocol."""


def encode_call(method, parameters=None):
    """The bytes of one call: the JSON object and its NUL terminator."""
    call = {"method": method}
    if parameters is not None:
        call["parameters"] = parameters
    return json.dumps(call, separators=(",", ":")).encode("utf-8") + b"\0"


def decode_reply(data):
    """Decodes one reply (without its NUL); returns its parameters or raises VarlinkError."""
    try:
        reply = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ConnectionFailed("the agent sent a reply that is not JSON: %s" % error) from None
    if not isinstance(reply, dict):
        raise ConnectionFailed("the agent sent a reply that is not a JSON object")
    if reply.get("error"):
        raise VarlinkError(reply["error"], reply.get("parameters"))
    parameters = reply.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ConnectionFailed("the agent sent reply parameters that are not an object")
    return parameters


class FrameReader:
    """Splits a byte stream into NUL-terminated messages."""

    def __init__(self, limit=MAX_REPLY_BYTES):
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, chunk):
        """Adds bytes; returns the complete messages they finish (without their NUL)."""
        self.buffer.extend(chunk)
        messages = []
        while True:
            end = self.buffer.find(b"\0")
            if end < 0:
                break
            messages.append(bytes(self.buffer[:end]))
            del self.buffer[: end + 1]
        if len(self.buffer) > self.limit:
            raise ConnectionFailed("the agent's reply exceeds %d bytes" % self.limit)
        return messages


class Client:
    """One connection to a Varlink service on a Unix socket."""

    def __init__(self, path=DEFAULT_SOCKET, timeout=30.0):
        self.path = path
        self.timeout = timeout
        self.sock = None
        self.reader = FrameReader()
        self.pending = []

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as error:
            sock.close()
            raise ConnectionFailed(
                "cannot reach the license agent at %s: %s (is license-agent.service running? "
                "systemctl status license-agent)" % (self.path, error.strerror or error)
            ) from None
        self.sock = sock

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def call(self, method, parameters=None):
        """Calls `method` (a full name) and returns the reply's parameters."""
        if self.sock is None:
            self.connect()
        # One deadline for the whole call, not a timeout per recv: a service that answers a
        # byte at a time cannot hold the module longer than `timeout`.
        deadline = time.monotonic() + self.timeout
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(encode_call(method, parameters))
            while not self.pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionFailed("the agent closed the connection before it replied to %s" % method)
                self.pending.extend(self.reader.feed(chunk))
        except socket.timeout:
            raise ConnectionFailed("the agent did not reply to %s within %s s" % (method, self.timeout)) from None
        except OSError as error:
            raise ConnectionFailed("talking to the agent at %s failed: %s" % (self.path, error)) from None
        return decode_reply(self.pending.pop(0))

    def agent(self, method, parameters=None):
        """Calls a method of io.licenseagent.Agent."""
        return self.call("%s.%s" % (INTERFACE, method), parameters)
