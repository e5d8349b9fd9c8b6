from __future__ import annotations

import base64
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from ansible_collections.licenseagent.svm.plugins.module_utils import agent as la  # noqa: E402
from fake_agent import key  # noqa: E402


def jws(claims):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return "%s.%s.%s" % (part({"alg": "EdDSA"}), part(claims), "c2ln")


class KeyTests(unittest.TestCase):
    def test_the_slot_is_the_os_type_for_vm_count_and_the_scheme_otherwise(self):
        self.assertEqual(la.key_slot({"scheme": "vm-count", "os_type": "workstation"}), "workstation")
        self.assertEqual(la.key_slot({"scheme": "cores"}), "cores")
        self.assertEqual(la.key_slot({"scheme": "processors", "os_type": "server"}), "processors")
        self.assertIsNone(la.key_slot({"scheme": "vm-count"}))
        self.assertIsNone(la.key_slot({"scheme": "sockets"}))

    def test_claims_come_from_the_payload_with_surrounding_white_space(self):
        text = "\n " + jws({"jti": "KS-2", "scheme": "vm-count", "os_type": "server"}) + "\n"
        claims = la.key_claims(text)
        self.assertEqual((la.key_serial(claims), la.key_slot(claims)), ("KS-2", "server"))

    def test_text_that_is_not_a_jws_says_why(self):
        for text, reason in (("abc", "three"), ("a.!!!.c", "base64url"), ("a.%s.c" % base64.urlsafe_b64encode(b"[1]").decode(), "object")):
            with self.assertRaises(la.KeyFormatError) as raised:
                la.key_claims(text)
            self.assertIn(reason, str(raised.exception))


class CodeTests(unittest.TestCase):
    def test_codes_are_upper_cased_and_their_shape_checked_without_echoing_them(self):
        self.assertEqual(la.normalize_code(" abcde-12345-fghij-67890\n"), "ABCDE-12345-FGHIJ-67890")
        for bad in ("ABCDE-12345-FGHIJ", "ABCDE-12345-FGHIJ-6789!", "", None, "ABCDE_12345_FGHIJ_67890"):
            with self.assertRaises(ValueError) as raised:
                la.normalize_code(bad)
            if bad:
                self.assertNotIn(bad.strip().upper(), str(raised.exception))
        self.assertEqual(la.code_hint("ABCDE-12345-FGHIJ-67890"), "67890")


class ReportTests(unittest.TestCase):
    """Contract section 9: what each registered outcome becomes in the report."""

    def test_each_outcome_maps_to_its_report_entry(self):
        refused = {"failed": True, "result": "refused", "slot": "server", "rule": "R5",
                   "code": "expires_before_active", "message": "Reserve KS-2 expires before ...", "serial": "KS-2"}
        cases = [
            ({"changed": True, "result": "added", "slot": "server", "serial": "KS-2"},
             {"host": "h", "result": "added", "slot": "server"}),
            ({"changed": True, "result": "would-add", "slot": "server"},
             {"host": "h", "result": "would-add", "slot": "server"}),
            ({"result": "unchanged", "slot": "server"}, {"host": "h", "result": "unchanged", "slot": "server"}),
            (refused, {"host": "h", "result": "refused", "slot": "server", "rule": "R5",
                       "code": "expires_before_active", "message": "Reserve KS-2 expires before ..."}),
            ({"result": "skipped", "slot": "workstation", "rule": "R1", "code": "no_active_key", "message": "m"},
             {"host": "h", "result": "skipped", "slot": "workstation", "rule": "R1", "code": "no_active_key",
              "message": "m"}),
            ({"unreachable": True, "msg": "ssh: connect to host\n10.0.0.9 port 22: No route to host"},
             {"host": "h", "result": "unreachable", "message": "ssh: connect to host 10.0.0.9 port 22: No route to host"}),
            ({"failed": True, "result": "failed", "slot": "server", "message": "cannot reach the license agent"},
             {"host": "h", "result": "failed", "slot": "server", "message": "cannot reach the license agent"}),
            ({"failed": True, "msg": "MODULE FAILURE: /usr/bin/python3: not found"},
             {"host": "h", "result": "failed", "message": "MODULE FAILURE: /usr/bin/python3: not found"}),
        ]
        for outcome, expected in cases:
            self.assertEqual(la.report_entry("h", outcome), expected)
        self.assertEqual(la.report_entry("h", None)["result"], "failed")

    def test_the_report_counts_every_result_and_fails_only_for_refused_failed_unreachable(self):
        outcomes = {
            "a": {"result": "added", "slot": "server"},
            "b": {"result": "unchanged", "slot": "server"},
            "c": {"result": "skipped", "slot": "server", "rule": "R1", "code": "no_active_key", "message": "m"},
        }
        report = la.activation_report(["a", "b", "c"], outcomes, "reserve", "KS-2", "t0", "t1")
        self.assertEqual(list(report), ["task", "role", "serial", "startedAt", "finishedAt", "svms", "summary"])
        self.assertEqual(report["summary"], {"added": 1, "unchanged": 1, "refused": 0, "skipped": 1,
                                             "unreachable": 0, "failed": 0})
        self.assertFalse(la.report_failed(report))
        for bad in ({"unreachable": True, "msg": "x"}, {"failed": True, "msg": "x"},
                    {"result": "refused", "rule": "R3", "code": "edition_mismatch", "message": "m"}):
            report = la.activation_report(["a", "d"], dict(outcomes, d=bad), "reserve", "KS-2", "t0", "t1")
            self.assertTrue(la.report_failed(report), bad)

    def test_check_mode_counts_would_add_as_added_and_says_so(self):
        report = la.activation_report(["a"], {"a": {"result": "would-add", "slot": "server"}}, "active", "K", "t0", "t1",
                                      check_mode=True)
        self.assertEqual(report["summary"]["added"], 1)
        self.assertTrue(report["checkMode"])

    def test_the_table_has_a_line_per_svm_and_the_summary(self):
        report = la.activation_report(
            ["svm-1", "svm-2"],
            {"svm-1": {"result": "added", "slot": "server"},
             "svm-2": {"result": "refused", "slot": "server", "rule": "R5", "code": "expires_before_active",
                       "message": "Reserve KS-2 expires first."}},
            "reserve", "KS-2", "t0", "t1")
        lines = la.activation_table(report).splitlines()
        self.assertRegex(lines[0], r"^SVM\s+RESULT\s+SLOT\s+RULE\s+DETAIL$")
        self.assertRegex(lines[1], r"^svm-1\s+added\s+server\s+-$")
        self.assertRegex(lines[2], r"^svm-2\s+refused\s+server\s+R5 expires_before_active\s+Reserve KS-2 expires first\.$")
        self.assertEqual(lines[-1], "Activation task: reserve key KS-2 on 2 SVMs: 1 added, 0 unchanged, 1 refused, "
                                    "0 skipped, 0 unreachable, 0 failed")


class FleetStatusTests(unittest.TestCase):
    def slot(self, status="active", takeover="none", active=None, reserve=None, expired=None):
        return {"slot": "server", "status": status, "takeover": takeover, "active": active, "reserve": reserve,
                "expired": expired}

    def outcome(self, *slots, alerts=()):
        return {"status": {"slots": list(slots), "alerts": list(alerts), "warnings": [], "version": "0.1.0"}}

    def test_a_slot_lapses_when_nothing_takes_over(self):
        self.assertEqual(la.slot_lapse(self.slot(active=key("A", "2027-01-01T00:00:00Z"))), "2027-01-01T00:00:00Z")
        self.assertEqual(
            la.slot_lapse(self.slot(takeover="reserve", active=key("A", "2027-01-01T00:00:00Z"),
                                    reserve=key("R", "2028-01-01T00:00:00Z"))),
            "2028-01-01T00:00:00Z")
        self.assertIsNone(la.slot_lapse(self.slot(takeover="activation-code", active=key("A", "2027-01-01T00:00:00Z"))))
        self.assertEqual(la.slot_lapse(self.slot(status="expired", expired={"serial": "A", "expiresAt": "2026-01-01T00:00:00Z"})),
                         "2026-01-01T00:00:00Z")

    def test_alerts_and_expired_slots_first_then_unreadable_then_the_soonest_lapse(self):
        outcomes = {
            "late": self.outcome(self.slot(active=key("A", "2027-09-01T00:00:00Z"))),
            "soon": self.outcome(self.slot(active=key("A", "2027-02-01T00:00:00Z"))),
            "renews": self.outcome(self.slot(takeover="activation-code", active=key("A", "2027-01-01T00:00:00Z"))),
            "reserve": self.outcome(self.slot(takeover="reserve", active=key("A", "2027-01-01T00:00:00Z"),
                                              reserve=key("R", "2027-05-01T00:00:00Z"))),
            "alert": self.outcome(self.slot(status="renewing", active=None,
                                            expired={"serial": "A", "expiresAt": "2026-11-01T00:00:00Z"}),
                                  alerts=["manual_activation_required"]),
            "expired": self.outcome(self.slot(status="expired", expired={"serial": "A", "expiresAt": "2026-10-01T00:00:00Z"})),
            "down": {"unreachable": True, "msg": "no route"},
        }
        report = la.fleet_status(sorted(outcomes), outcomes, "t")
        self.assertEqual([s["host"] for s in report["svms"]],
                         ["expired", "alert", "down", "soon", "reserve", "late", "renews"])
        self.assertEqual(report["svms"][1]["state"], "alert")
        self.assertEqual(report["summary"], {"expired": 1, "alert": 1, "unreachable": 1, "ok": 4})
        table = la.fleet_table(report)
        self.assertIn("reserve R", table)
        self.assertIn("never (renewed)", table)
        self.assertIn("alerts: manual_activation_required", table)


if __name__ == "__main__":
    unittest.main()
