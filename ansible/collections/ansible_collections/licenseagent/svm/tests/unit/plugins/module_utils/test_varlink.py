from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from ansible_collections.licenseagent.svm.plugins.module_utils import varlink  # noqa: E402
from fake_agent import FakeAgent  # noqa: E402


class FramingTests(unittest.TestCase):
    def test_a_call_is_one_json_object_and_a_nul(self):
        data = varlink.encode_call("io.licenseagent.Agent.AddKey", {"key": "k", "role": "reserve"})
        self.assertTrue(data.endswith(b"\0"))
        self.assertEqual(data.count(b"\0"), 1)
        self.assertEqual(
            data, b'{"method":"io.licenseagent.Agent.AddKey","parameters":{"key":"k","role":"reserve"}}\0'
        )

    def test_a_call_without_parameters_has_none(self):
        self.assertEqual(varlink.encode_call("io.licenseagent.Agent.GetStatus"), b'{"method":"io.licenseagent.Agent.GetStatus"}\0')

    def test_messages_split_across_reads_and_joined_in_one(self):
        reader = varlink.FrameReader()
        self.assertEqual(reader.feed(b'{"parameters":'), [])
        self.assertEqual(reader.feed(b'{}}\0{"paramet'), [b'{"parameters":{}}'])
        self.assertEqual(reader.feed(b'ers":{"a":1}}\0{}\0'), [b'{"parameters":{"a":1}}', b"{}"])
        self.assertEqual(reader.buffer, bytearray())

    def test_a_reply_without_its_nul_beyond_the_limit_is_refused(self):
        reader = varlink.FrameReader(limit=16)
        with self.assertRaises(varlink.ConnectionFailed):
            reader.feed(b"x" * 17)

    def test_an_error_reply_raises_with_its_name_and_parameters(self):
        with self.assertRaises(varlink.VarlinkError) as raised:
            varlink.decode_reply(
                b'{"error":"io.licenseagent.Agent.RuleViolation","parameters":{"rule":"R5","code":"expires_before_active","message":"m"}}'
            )
        self.assertEqual(raised.exception.short_name, "RuleViolation")
        self.assertEqual(raised.exception.parameters["rule"], "R5")
        self.assertIn("m", str(raised.exception))

    def test_a_reply_that_is_not_a_json_object_is_a_protocol_error(self):
        for data in (b"not json", b"[1,2]", b'{"parameters":[1]}', b"\xff"):
            with self.assertRaises(varlink.ConnectionFailed):
                varlink.decode_reply(data)

    def test_a_reply_without_parameters_has_empty_ones(self):
        self.assertEqual(varlink.decode_reply(b"{}"), {})


class ClientTests(unittest.TestCase):
    def test_calls_on_one_connection_are_answered_in_order(self):
        agent = FakeAgent({"GetStatus": {"parameters": {"n": 1}}, "CheckKey": lambda p: {"parameters": {"echo": p}}})
        try:
            with varlink.Client(agent.path, timeout=5) as client:
                self.assertEqual(client.agent("GetStatus"), {"n": 1})
                self.assertEqual(client.agent("CheckKey", {"key": "k"}), {"echo": {"key": "k"}})
        finally:
            agent.close()
        self.assertEqual([c[0] for c in agent.calls], ["GetStatus", "CheckKey"])

    def test_a_missing_socket_says_where_and_what_to_check(self):
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "none")
        with self.assertRaises(varlink.ConnectionFailed) as raised:
            varlink.Client(path, timeout=1).connect()
        os.rmdir(directory)
        self.assertIn(path, str(raised.exception))
        self.assertIn("systemctl status license-agent", str(raised.exception))

    def test_a_server_that_closes_before_replying_is_reported(self):
        with listening_socket() as (server, path):

            def accept_and_close():
                connection, _address = server.accept()
                connection.recv(100)
                connection.close()

            thread = threading.Thread(target=accept_and_close)
            thread.start()
            try:
                with self.assertRaises(varlink.ConnectionFailed) as raised:
                    with varlink.Client(path, timeout=5) as client:
                        client.agent("GetStatus")
                self.assertIn("closed the connection", str(raised.exception))
            finally:
                thread.join()

    def test_a_silent_server_times_out(self):
        with listening_socket() as (_server, path):
            with self.assertRaises(varlink.ConnectionFailed) as raised:
                with varlink.Client(path, timeout=0.2) as client:
                    client.agent("GetStatus")
            self.assertIn("did not reply", str(raised.exception))

    def test_a_server_that_drips_its_reply_is_cut_off_at_the_timeout(self):
        with listening_socket() as (server, path):
            stop = threading.Event()

            def drip():
                connection, _address = server.accept()
                with connection:
                    connection.recv(100)
                    connection.sendall(b"{")
                    while not stop.wait(0.05):
                        try:
                            connection.sendall(b" ")
                        except OSError:
                            return

            thread = threading.Thread(target=drip)
            thread.start()
            try:
                with self.assertRaises(varlink.ConnectionFailed) as raised:
                    with varlink.Client(path, timeout=0.5) as client:
                        client.agent("GetStatus")
                # Ended by the call's deadline (a timeout per recv would wait for ever).
                self.assertIn("did not reply", str(raised.exception))
            finally:
                stop.set()
                thread.join()


@contextlib.contextmanager
def listening_socket():
    """A Unix stream socket listening in a folder of its own, and its path."""
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    try:
        yield server, path
    finally:
        server.close()
        os.unlink(path)
        os.rmdir(directory)


if __name__ == "__main__":
    unittest.main()
