"""license_blocklist against a fake agent on a real Unix socket: AddBlocklist's reply (or its
refusal) as the module's result, and check mode, which reads the list here against the
SVM's keys and never calls AddBlocklist."""

from __future__ import annotations

import base64
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from ansible_collections.licenseagent.svm.plugins.modules import license_blocklist  # noqa: E402
import fake_agent  # noqa: E402
from fake_agent import AgentTestCase, FakeAgent, key, status  # noqa: E402


def part(value):
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def blocklist(seq=2, blocked=(), issuer="lab", product="svm-protection", typ="license-blocklist+jwt"):
    claims = {"iss": issuer, "typ": "license-blocklist", "seq": seq, "iat": 1798761600, "product": product,
              "blocked": [{"serial": s, "since": since, "reason": r} for s, since, r in blocked]}
    return "%s.%s.%s" % (part({"alg": "EdDSA", "typ": typ, "kid": issuer}), part(claims), "c2ln")


# 2027-01-01T00:00:00Z, and half a second after.
SINCE = 1798761600
LIST = blocklist(blocked=[("KS-1", SINCE, "refunded"), ("KS-2", SINCE + 0.5, "leaked"), ("WS-9", SINCE, "")])
ACTIVE_BLOCK = {"slot": "server", "role": "active", "pending": False, "serial": "KS-1",
                "since": "2027-01-01T00:00:00Z", "reason": "refunded", "dropped": False,
                "graceEndsAt": "2027-01-09T09:00:00Z"}
RESERVE_BLOCK = {"slot": "server", "role": "reserve", "pending": False, "serial": "KS-2",
                 "since": "2027-01-01T00:00:00.500000Z", "reason": "leaked", "dropped": True}
SERVER = {"slot": "server", "status": "active", "takeover": "reserve", "active": key("KS-1"),
          "reserve": key("KS-2", "2028-01-01T00:00:00Z")}


def added(unchanged=False, blocks=(ACTIVE_BLOCK, RESERVE_BLOCK)):
    return {"parameters": {"issuer": "lab", "sequence": 2, "entries": 3, "unchanged": unchanged,
                           "blocks": list(blocks), "message": "Blocklist 2 of lab kept (3 blocked keys)."}}


def run_module(agent, **args):
    return fake_agent.run_module(license_blocklist, agent, **args)


class LicenseBlocklistTests(AgentTestCase):
    def serve(self, **replies):
        replies.setdefault("GetStatus", {"parameters": dict(status([SERVER])["parameters"], product="svm-protection")})
        self.agent = FakeAgent(replies)
        return self.agent

    def test_B1_a_new_list_is_applied_and_says_what_it_blocks_here(self):
        result = run_module(self.serve(AddBlocklist=added()), blocklist="\n" + LIST + "\n")
        self.assertEqual((result["changed"], result["result"], result["issuer"], result["sequence"], result["entries"]),
                         (True, "applied", "lab", 2, 3))
        self.assertEqual(result["blocks"], [ACTIVE_BLOCK, RESERVE_BLOCK])
        self.assertEqual(self.methods(), ["AddBlocklist"])
        self.assertEqual(self.agent.calls[0][1], {"blocklist": LIST})
        self.assertEqual(result["message"], "Blocklist 2 of lab kept (3 blocked keys).")

    def test_B1_the_list_already_kept_is_unchanged(self):
        result = run_module(self.serve(AddBlocklist=added(unchanged=True, blocks=[ACTIVE_BLOCK])), blocklist=LIST)
        self.assertEqual((result["changed"], result["result"], result["blocks"]), (False, "unchanged", [ACTIVE_BLOCK]))

    def test_B1_a_block_without_a_grace_end_has_no_such_field(self):
        # An agent that sends graceEndsAt null for a reserve, or leaves it out: the same.
        reserve = dict(RESERVE_BLOCK, graceEndsAt=None)
        result = run_module(self.serve(AddBlocklist=added(blocks=[reserve])), blocklist=LIST)
        self.assertEqual(result["blocks"], [RESERVE_BLOCK])

    def test_B1_an_older_list_is_refused_with_the_rule_code_and_message(self):
        violation = {"error": "io.licenseagent.Agent.RuleViolation",
                     "parameters": {"rule": "B1", "code": "blocklist_rollback",
                                    "message": "Blocklist 2 of lab is not newer than the one kept (3)."}}
        result = run_module(self.serve(AddBlocklist=violation), blocklist=LIST)
        self.assertTrue(result["failed"])
        self.assertEqual((result["changed"], result["result"], result["rule"], result["code"]),
                         (False, "refused", "B1", "blocklist_rollback"))
        self.assertEqual(result["msg"], "B1 blocklist_rollback: Blocklist 2 of lab is not newer than the one kept (3).")
        self.assertEqual((result["issuer"], result["sequence"]), ("lab", 2))
        self.assertNotIn("blocks", result)

    def test_B1_text_that_is_no_blocklist_goes_to_the_agent_which_says_why(self):
        violation = {"error": "io.licenseagent.Agent.RuleViolation",
                     "parameters": {"rule": "B1", "code": "invalid_blocklist", "message": "Refused: not a blocklist."}}
        result = run_module(self.serve(AddBlocklist=violation), blocklist="not.a.list")
        self.assertEqual((result["result"], result["code"]), ("refused", "invalid_blocklist"))
        self.assertNotIn("issuer", result)

    def test_a_caller_outside_the_admin_group_fails(self):
        denied = {"error": "io.licenseagent.Agent.PermissionDenied", "parameters": {"message": "root only"}}
        result = run_module(self.serve(AddBlocklist=denied), blocklist=LIST)
        self.assertEqual((result["result"], result["changed"]), ("failed", False))
        self.assertIn("PermissionDenied", result["msg"])

    def test_an_agent_that_is_not_running_fails_with_a_hint(self):
        agent = self.serve()
        agent.close()
        self.agent = None
        result = run_module(agent, blocklist=LIST)
        self.assertEqual(result["result"], "failed")
        self.assertIn("systemctl status license-agent", result["msg"])

    def test_check_mode_reads_the_list_against_the_keys_and_never_adds_it(self):
        workstation = {"slot": "workstation", "status": "active", "takeover": "pending-renewal",
                       "active": key("WS-1", slot="workstation"),
                       "pending": key("WS-9", slot="workstation", issuer="lab")}
        other = {"slot": "cores", "status": "active", "takeover": "none", "active": key("KS-1", issuer="other")}
        held = dict(SERVER, activeBlocked={"since": "2027-01-01T00:00:00Z", "reason": "refunded",
                                           "learnedAt": "2027-01-01T09:00:00Z", "graceEndsAt": "2027-01-09T09:00:00Z"})
        reply = {"parameters": dict(status([held, workstation, other])["parameters"], product="svm-protection")}
        result = run_module(self.serve(GetStatus=reply), blocklist=LIST, _ansible_check_mode=True)
        self.assertEqual((result["changed"], result["result"], result["issuer"], result["sequence"]),
                         (True, "would-apply", "lab", 2))
        # The active key already blocked keeps its grace; the reserve and the key renewed ahead
        # would go; a key of another issuer with a listed serial is not this issuer's key.
        self.assertEqual(result["blocks"], [
            ACTIVE_BLOCK, RESERVE_BLOCK,
            {"slot": "workstation", "role": "reserve", "pending": True, "serial": "WS-9",
             "since": "2027-01-01T00:00:00Z", "reason": "", "dropped": True}])
        self.assertEqual(self.methods(), ["GetStatus"])
        self.assertIn("It would block the workstation key renewed ahead WS-9", result["message"])
        # An active key not blocked yet: its grace starts when the agent learns of the block.
        result = run_module(self.serve(), blocklist=LIST, _ansible_check_mode=True)
        self.assertEqual(result["blocks"], [{k: v for k, v in ACTIVE_BLOCK.items() if k != "graceEndsAt"},
                                            RESERVE_BLOCK])
        self.assertIn("it would keep working until the end of its grace", result["message"])

    def test_check_mode_refuses_what_it_can_tell_here(self):
        for text, code in ((blocklist(product="other-product"), "wrong_product"),
                           (blocklist(typ="JWT"), "invalid_blocklist"),
                           ("abc", "invalid_blocklist")):
            result = run_module(self.serve(), blocklist=text, _ansible_check_mode=True)
            self.assertEqual((result["result"], result["rule"], result["code"], result["changed"]),
                             ("refused", "B1", code, False), text)
            self.assertNotIn("AddBlocklist", self.methods())
            self.agent.close()
            self.agent = None


if __name__ == "__main__":
    unittest.main()
