"""A Varlink server on a real Unix socket that answers like the license agent, for the
modules' unit tests: replies are given per method, calls are recorded."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
import threading
import unittest

from ansible.module_utils.testing import patch_module_args


class FakeAgent:
    def __init__(self, replies):
        # replies: method name (without interface) -> reply object, or a callable(parameters).
        self.replies = replies
        self.calls = []
        self.directory = tempfile.mkdtemp(prefix="fake-agent-")
        self.path = os.path.join(self.directory, "io.licenseagent.Agent")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                connection, _address = self.server.accept()
            except OSError:
                return
            with connection:
                buffer = b""
                while True:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    buffer += chunk
                    while b"\0" in buffer:
                        message, buffer = buffer.split(b"\0", 1)
                        call = json.loads(message)
                        method = call["method"].rsplit(".", 1)[-1]
                        self.calls.append((method, call.get("parameters")))
                        reply = self.replies[method]
                        if callable(reply):
                            reply = reply(call.get("parameters"))
                        connection.sendall(json.dumps(reply).encode() + b"\0")

    def close(self):
        self.server.close()
        os.unlink(self.path)
        os.rmdir(self.directory)


def status(slots=()):
    return {"parameters": {"schemaVersion": 1, "version": "0.1.0", "slots": list(slots), "warnings": [],
                           "alerts": []}}


def key(serial, expires="2027-06-01T00:00:00Z", **extra):
    value = {"serial": serial, "issuer": "lab", "kid": "lab", "slot": "server", "scheme": "vm-count",
             "osType": "server", "edition": "enterprise", "licenseType": "commercial", "units": 10,
             "notBefore": "2026-01-01T00:00:00Z", "expiresAt": expires, "source": "key"}
    value.update(extra)
    return value


def run_module(module, agent, **args):
    """Runs a module's main() with `args` against `agent`'s socket; its JSON result."""
    args.setdefault("socket", agent.path)
    output = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(output):
        with unittest.TestCase().assertRaises(SystemExit):
            module.main()
    return json.loads(output.getvalue())


class AgentTestCase(unittest.TestCase):
    """A test case that serves a fake agent (``serve``) and closes it afterwards."""

    def setUp(self):
        self.agent = None

    def tearDown(self):
        if self.agent:
            self.agent.close()

    def methods(self):
        """The Varlink methods the module called, in order."""
        return [call[0] for call in self.agent.calls]
