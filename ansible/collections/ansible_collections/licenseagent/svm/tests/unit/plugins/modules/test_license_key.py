"""license_key against a fake agent on a real Unix socket: which Varlink method each mode
calls, and how the agent's replies become the module's result."""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from ansible_collections.licenseagent.svm.plugins.modules import license_key  # noqa: E402
import fake_agent  # noqa: E402
from fake_agent import AgentTestCase, FakeAgent, key, status  # noqa: E402
from plugins.module_utils.test_agent import jws  # noqa: E402

KS2 = jws({"jti": "KS-2", "scheme": "vm-count", "os_type": "server"})
WS9 = jws({"jti": "WS-9", "scheme": "vm-count", "os_type": "workstation"})
SERVER = {"slot": "server", "status": "active", "takeover": "none", "active": key("KS-1"), "reserve": None}


def added(unchanged=False, role="reserve"):
    return {"parameters": {"slot": "server", "role": role, "key": key("KS-2"), "unchanged": unchanged,
                           "removedSerials": [], "message": "Reserve KS-2 added."}}


def run_module(agent, **args):
    return fake_agent.run_module(license_key, agent, **args)


class LicenseKeyTests(AgentTestCase):
    def serve(self, **replies):
        replies.setdefault("GetStatus", status([SERVER]))
        self.agent = FakeAgent(replies)
        return self.agent

    def test_a_new_reserve_is_added(self):
        result = run_module(self.serve(AddKey=added()), key=KS2, role="reserve")
        self.assertEqual((result["changed"], result["result"], result["slot"], result["serial"]),
                         (True, "added", "server", "KS-2"))
        self.assertEqual(self.methods(), ["GetStatus", "AddKey"])
        self.assertEqual(self.agent.calls[1][1], {"key": KS2, "role": "reserve"})

    def test_a_key_already_held_in_that_role_is_unchanged(self):
        result = run_module(self.serve(AddKey=added(unchanged=True)), key=KS2)
        self.assertEqual((result["changed"], result["result"]), (False, "unchanged"))

    def test_check_mode_asks_check_key_and_never_add_key(self):
        result = run_module(self.serve(CheckKey=added()), key=KS2, _ansible_check_mode=True)
        self.assertEqual((result["changed"], result["result"]), (True, "would-add"))
        self.assertEqual(self.methods(), ["GetStatus", "CheckKey"])

    def test_a_rule_violation_fails_with_the_rule_code_and_message(self):
        violation = {"error": "io.licenseagent.Agent.RuleViolation",
                     "parameters": {"rule": "R5", "code": "expires_before_active", "serial": "KS-2",
                                    "message": "Reserve KS-2 expires before the active key; use a later key."}}
        result = run_module(self.serve(AddKey=violation), key=KS2)
        self.assertTrue(result["failed"])
        self.assertEqual((result["result"], result["rule"], result["code"]), ("refused", "R5", "expires_before_active"))
        self.assertEqual(result["msg"], "R5 expires_before_active: Reserve KS-2 expires before the active key; use a later key.")

    def test_a_reserve_for_a_slot_without_an_active_key_is_skipped_when_asked(self):
        result = run_module(self.serve(), key=WS9, only_where_active=True)
        self.assertEqual((result["changed"], result["result"], result["slot"], result["rule"], result["code"]),
                         (False, "skipped", "workstation", "R1", "no_active_key"))
        self.assertNotIn("failed", result)
        self.assertEqual(self.methods(), ["GetStatus"])

    def test_without_only_where_active_the_agent_decides(self):
        violation = {"error": "io.licenseagent.Agent.RuleViolation",
                     "parameters": {"rule": "R2", "code": "type_mismatch", "message": "m"}}
        result = run_module(self.serve(AddKey=violation), key=WS9)
        self.assertEqual((result["result"], result["rule"]), ("refused", "R2"))

    def test_diff_shows_the_slot_before_and_after(self):
        after = status([dict(SERVER, reserve=key("KS-2"), takeover="reserve")])
        replies = iter([status([SERVER]), after])
        agent = self.serve(AddKey=added(), GetStatus=lambda _: next(replies))
        result = run_module(agent, key=KS2, _ansible_diff=True)
        self.assertIn("reserve: none", result["diff"]["before"])
        self.assertIn("reserve: KS-2 (commercial enterprise, 10 units", result["diff"]["after"])
        self.assertIn("takeover at expiry: reserve", result["diff"]["after"])

    def test_removing_a_reserve_and_removing_it_again(self):
        held = status([dict(SERVER, reserve=key("KS-2"), takeover="reserve")])
        result = run_module(self.serve(GetStatus=held, RemoveReserve={"parameters": {"removed": key("KS-2")}}),
                            slot="server", state="absent")
        self.assertEqual((result["changed"], result["result"], result["serial"]), (True, "removed", "KS-2"))
        self.assertEqual(self.agent.calls[-1], ("RemoveReserve", {"slot": "server"}))
        self.agent.close()
        result = run_module(self.serve(), slot="server", state="absent")
        self.assertEqual((result["changed"], result["result"]), (False, "absent"))
        self.assertEqual(self.methods(), ["GetStatus"])

    def test_an_agent_that_is_not_running_fails_with_a_hint(self):
        agent = self.serve()
        agent.close()
        self.agent = None
        result = run_module(agent, key=KS2)
        self.assertEqual(result["result"], "failed")
        self.assertIn("systemctl status license-agent", result["msg"])


if __name__ == "__main__":
    unittest.main()
