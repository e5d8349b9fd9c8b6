"""Blocklists (rules B1-B3) on the controller: reading a list without its signature, the
blocklist task's report and table, and the blocked keys in the fleet status."""

from __future__ import annotations

import base64
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from ansible_collections.licenseagent.svm.plugins.module_utils import agent as la  # noqa: E402
from fake_agent import key  # noqa: E402


def part(value):
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def blocklist(claims, typ="license-blocklist+jwt"):
    return "%s.%s.c2ln" % (part({"alg": "EdDSA", "typ": typ, "kid": "lab"}), part(claims))


CLAIMS = {"iss": "lab", "typ": "license-blocklist", "seq": 7, "iat": 1798761600, "product": "svm-protection",
          "blocked": [{"serial": "KS-1", "since": 1798761600, "reason": "refunded"},
                      {"serial": "KS-2", "since": 1798761600.25, "reason": None}]}
ACTIVE = {"slot": "server", "role": "active", "pending": False, "serial": "KS-1", "since": "2027-01-01T00:00:00Z",
          "reason": "refunded", "dropped": False, "graceEndsAt": "2027-01-09T09:00:00Z"}
RESERVE = {"slot": "server", "role": "reserve", "pending": False, "serial": "KS-2",
           "since": "2027-01-01T00:00:00.250000Z", "reason": "", "dropped": True}


class BlocklistClaimsTests(unittest.TestCase):
    def test_B1_the_claims_are_read_without_the_signature(self):
        claims = la.blocklist_claims("  " + blocklist(dict(CLAIMS, seq=7.0)) + "\n")
        self.assertEqual((claims["iss"], claims["seq"], len(claims["blocked"])), ("lab", 7, 2))
        self.assertIsInstance(claims["seq"], int)

    def test_B1_what_is_not_a_blocklist_says_why(self):
        cases = [
            ("abc", "three base64url parts"),
            ("a.!!!.c", "not base64url-encoded JSON"),
            (blocklist(CLAIMS, typ="JWT"), "not a blocklist"),
            (blocklist(dict(CLAIMS, typ="licence")), "not a blocklist"),
            (blocklist(dict(CLAIMS, iss="")), "no issuer"),
            (blocklist(dict(CLAIMS, seq=-1)), "seq"),
            (blocklist(dict(CLAIMS, seq=True)), "seq"),
            (blocklist(dict(CLAIMS, seq=1.5)), "seq"),
            (blocklist(dict(CLAIMS, blocked={})), "blocked is not an array"),
            (blocklist(dict(CLAIMS, blocked=[{"serial": "KS-1"}])), "blocked[0]"),
            (blocklist(dict(CLAIMS, blocked=[{"serial": "", "since": 1}])), "blocked[0]"),
        ]
        for text, reason in cases:
            with self.assertRaises(la.KeyFormatError, msg=text) as raised:
                la.blocklist_claims(text)
            self.assertIn(reason, str(raised.exception))

    def test_instants_are_written_as_the_agent_writes_them(self):
        self.assertEqual(la.rfc3339(1798761600), "2027-01-01T00:00:00Z")
        self.assertEqual(la.rfc3339(1798761600.25), "2027-01-01T00:00:00.250000Z")
        self.assertLess(la.parse_rfc3339("2027-01-01T00:00:00Z"), la.parse_rfc3339("2027-01-01T00:00:00.5Z"))
        self.assertEqual(la.parse_rfc3339("2027-01-01T01:00:00+01:00"), la.parse_rfc3339("2027-01-01T00:00:00Z"))
        self.assertIsNone(la.parse_rfc3339("tomorrow"))

    def test_B3_what_a_list_would_block_is_this_issuers_listed_keys(self):
        status = {"slots": [
            {"slot": "server", "active": key("KS-1"), "reserve": key("KS-2")},
            {"slot": "workstation", "active": key("KS-3", slot="workstation"), "pending": key("KS-2", issuer="other")},
        ]}
        expected_active = {k: v for k, v in ACTIVE.items() if k != "graceEndsAt"}
        self.assertEqual(la.predicted_blocks(status, la.blocklist_claims(blocklist(CLAIMS))), [expected_active, RESERVE])


def applied(*blocks):
    return {"changed": True, "result": "applied", "blocks": list(blocks)}


class BlocklistReportTests(unittest.TestCase):
    """The blocklist task's report: contract section 9's style for a list."""

    OUTCOMES = {
        "svm-a1": applied(dict(ACTIVE, graceEndsAt="2027-01-09T09:00:00Z")),
        "svm-a2": applied(dict(RESERVE, graceEndsAt=None)),
        "svm-b1": {"changed": False, "result": "unchanged", "blocks": []},
        "svm-b2": {"failed": True, "result": "refused", "rule": "B1", "code": "blocklist_rollback",
                   "message": "Blocklist 7 of lab is not newer\nthan the one kept (8).", "issuer": "lab"},
        "svm-c1": {"failed": True, "msg": "MODULE FAILURE"},
        "svm-down": {"unreachable": True, "msg": "ssh: connect to host 10.0.0.9 port 22: No route to host"},
    }

    def report(self, **extra):
        return la.blocklist_report(sorted(self.OUTCOMES) + ["svm-never"], self.OUTCOMES, blocklist(CLAIMS), "t0", "t1",
                                   **extra)

    def test_B1_each_svm_with_what_it_blocks_there_and_a_count_per_result(self):
        report = self.report()
        self.assertEqual(list(report), ["task", "issuer", "sequence", "entries", "startedAt", "finishedAt", "svms",
                                        "summary"])
        self.assertEqual((report["task"], report["issuer"], report["sequence"], report["entries"]),
                         ("blocklist", "lab", 7, 2))
        self.assertEqual(report["svms"], [
            {"host": "svm-a1", "result": "applied", "blocks": [ACTIVE]},
            {"host": "svm-a2", "result": "applied", "blocks": [RESERVE]},
            {"host": "svm-b1", "result": "unchanged", "blocks": []},
            {"host": "svm-b2", "result": "refused", "rule": "B1", "code": "blocklist_rollback",
             "message": "Blocklist 7 of lab is not newer\nthan the one kept (8)."},
            {"host": "svm-c1", "result": "failed", "message": "MODULE FAILURE"},
            {"host": "svm-down", "result": "unreachable",
             "message": "ssh: connect to host 10.0.0.9 port 22: No route to host"},
            {"host": "svm-never", "result": "failed",
             "message": "no result: the task did not run on this host (an earlier failure?)"},
        ])
        self.assertEqual(report["summary"], {"applied": 2, "unchanged": 1, "refused": 1, "unreachable": 1, "failed": 2})
        self.assertTrue(la.report_failed(report))
        fine = la.blocklist_report(["svm-a1", "svm-b1"], self.OUTCOMES, blocklist(CLAIMS), "t0", "t1")
        self.assertFalse(la.report_failed(fine))

    def test_B1_check_mode_counts_would_apply_as_applied_and_says_so(self):
        outcomes = {"a": {"changed": True, "result": "would-apply", "blocks": [RESERVE]}}
        report = la.blocklist_report(["a"], outcomes, blocklist(CLAIMS), "t0", "t1", check_mode=True)
        self.assertEqual(report["svms"], [{"host": "a", "result": "would-apply", "blocks": [RESERVE]}])
        self.assertEqual(report["summary"]["applied"], 1)
        self.assertTrue(report["checkMode"])
        self.assertIn("in check mode, nothing changed", la.blocklist_table(report))
        self.assertRegex(la.blocklist_table(report), r"\na\s+would-apply\s+server\s+reserve KS-2\s+\S+\s+would be removed")

    def test_a_list_that_cannot_be_read_here_has_no_issuer_in_the_report(self):
        report = la.blocklist_report(["a"], {}, "garbage", "t0", "t1")
        self.assertEqual((report["issuer"], report["sequence"], report["entries"]), (None, None, None))

    def test_B2_the_table_says_which_keys_it_blocked_where_and_when_each_grace_ends(self):
        lines = la.blocklist_table(self.report()).split("\n")
        self.assertEqual(lines[0].split(), ["SVM", "RESULT", "SLOT", "KEY", "BLOCKED", "SINCE", "THEN", "DETAIL"])
        self.assertRegex(lines[1], r"^svm-a1\s+applied\s+server\s+active KS-1\s+2027-01-01T00:00:00Z\s+"
                                   r"grace ends 2027-01-09T09:00:00Z\s+refunded$")
        self.assertRegex(lines[2], r"^svm-a2\s+applied\s+server\s+reserve KS-2\s+2027-01-01T00:00:00.250000Z\s+removed$")
        self.assertRegex(lines[3], r"^svm-b1\s+unchanged\s+-\s+-\s+-\s+-\s+blocks no key of this SVM$")
        self.assertRegex(lines[4], r"^svm-b2\s+refused\s+-\s+-\s+-\s+-\s+B1 blocklist_rollback: Blocklist 7 of lab "
                                   r"is not newer than the one kept \(8\)\.$")
        self.assertRegex(lines[6], r"^svm-down\s+unreachable\s+-\s+-\s+-\s+-\s+ssh: connect to host")
        self.assertEqual(lines[8], "")
        self.assertEqual(lines[9], "Blocklist 7 of lab (2 entries) on 7 SVMs: 2 applied, 1 unchanged, 1 refused, "
                                   "1 unreachable, 2 failed; 2 keys blocked on 2 SVMs: 1 active (the first grace "
                                   "ends 2027-01-09T09:00:00Z), 1 reserve removed")
        nothing = la.blocklist_report(["svm-b1"], self.OUTCOMES, blocklist(CLAIMS), "t0", "t1")
        self.assertTrue(la.blocklist_table(nothing).endswith("; it blocks no key of these SVMs"))
        refused = la.blocklist_report(["svm-b2"], self.OUTCOMES, blocklist(CLAIMS), "t0", "t1")
        self.assertTrue(la.blocklist_table(refused).endswith("1 refused, 0 unreachable, 0 failed; no SVM took it"))


def status(*slots, health=0, alerts=()):
    return {"status": {"slots": list(slots), "alerts": list(alerts), "warnings": [], "health": health}}


def blocked_slot(serial, grace, takeover="none", reserve=None, lapsed=None, slot="server"):
    block = {"since": "2027-01-01T00:00:00Z", "reason": "refunded", "learnedAt": "2027-01-01T09:00:00Z",
             "graceEndsAt": grace}
    if lapsed:
        block["lapsedAt"] = lapsed
    return {"slot": slot, "status": "expired" if lapsed else "active", "takeover": takeover,
            "active": key(serial, slot=slot), "reserve": reserve, "lapsesAt": grace, "activeBlocked": block}


def plain_slot(serial, lapses, status_="active"):
    entry = {"slot": "server", "status": status_, "takeover": "none", "lapsesAt": lapses}
    if status_ == "active":
        entry["active"] = key(serial, lapses)
    else:
        entry["expired"] = {"serial": serial, "expiresAt": lapses}
    return entry


class FleetStatusBlockedTests(unittest.TestCase):
    """Rules B1, B2 in the fleet status: the SVMs with a blocked active key."""

    def outcomes(self):
        lagging = plain_slot("KS-L", "2027-02-01T00:00:00Z")
        lagging["consumers"] = [{"consumer": "protection-server", "expected": True, "state": "late",
                                 "dueAt": "2027-01-01T09:01:00Z"}]
        late_reserve = key("KS-R", "2028-01-01T00:00:00Z", notBefore="2027-03-01T00:00:00Z")
        return {
            "svm-blocked-late": status(blocked_slot("KS-1", "2027-01-20T00:00:00Z", takeover="reserve",
                                                    reserve=key("KS-9", "2028-01-01T00:00:00Z"))),
            "svm-blocked-soon": status(blocked_slot("KS-2", "2027-01-09T09:00:00Z", takeover="reserve",
                                                    reserve=late_reserve)),
            "svm-expired": status(plain_slot("KS-0", "2026-12-01T00:00:00Z", "expired"), health=2),
            "svm-lagging": status(lagging),
            "svm-ok": status(plain_slot("KS-3", "2027-01-05T00:00:00Z")),
            "svm-down": {"unreachable": True, "msg": "no route"},
        }

    def test_B2_a_blocked_key_comes_after_a_lapse_and_before_a_consumer_lagging(self):
        outcomes = self.outcomes()
        report = la.fleet_status(sorted(outcomes), outcomes, "t")
        self.assertEqual([s["host"] for s in report["svms"]],
                         ["svm-expired", "svm-blocked-soon", "svm-blocked-late", "svm-lagging", "svm-down", "svm-ok"])
        self.assertEqual([s["state"] for s in report["svms"]],
                         ["expired", "blocked", "blocked", "lagging", "unreachable", "ok"])
        self.assertEqual(report["summary"], {"expired": 1, "blocked": 2, "lagging": 1, "unreachable": 1, "ok": 1})
        self.assertEqual(list(report), ["task", "generatedAt", "svms", "keysBlocked", "consumersLagging", "summary"])
        self.assertEqual(report["keysBlocked"], [
            {"host": "svm-blocked-soon", "slot": "server", "serial": "KS-2", "since": "2027-01-01T00:00:00Z",
             "reason": "refunded", "learnedAt": "2027-01-01T09:00:00Z", "graceEndsAt": "2027-01-09T09:00:00Z",
             "takeover": "reserve", "takeoverSerial": "KS-R", "takeoverFrom": "2027-03-01T00:00:00Z"},
            {"host": "svm-blocked-late", "slot": "server", "serial": "KS-1", "since": "2027-01-01T00:00:00Z",
             "reason": "refunded", "learnedAt": "2027-01-01T09:00:00Z", "graceEndsAt": "2027-01-20T00:00:00Z",
             "takeover": "reserve", "takeoverSerial": "KS-9", "takeoverFrom": "2026-01-01T00:00:00Z"},
        ])
        by_host = {s["host"]: s for s in report["svms"]}
        self.assertEqual(by_host["svm-blocked-soon"]["slots"][0]["blocked"]["graceEndsAt"], "2027-01-09T09:00:00Z")
        self.assertIsNone(by_host["svm-ok"]["slots"][0]["blocked"])
        self.assertEqual(by_host["svm-down"]["keysBlocked"], [])

    def test_B2_a_lapse_outranks_a_block_which_is_still_listed(self):
        lapsed = blocked_slot("KS-1", "2027-01-09T09:00:00Z", lapsed="2027-01-09T09:00:00Z")
        report = la.fleet_status(["a", "b"], {"a": status(lapsed, health=2),
                                              "b": status(blocked_slot("KS-2", "2027-02-01T00:00:00Z"),
                                                          alerts=["manual_activation_required"])}, "t")
        self.assertEqual({s["host"]: s["state"] for s in report["svms"]}, {"a": "expired", "b": "alert"})
        self.assertEqual([(k["host"], k["serial"], k.get("lapsedAt")) for k in report["keysBlocked"]],
                         [("a", "KS-1", "2027-01-09T09:00:00Z"), ("b", "KS-2", None)])
        self.assertIn("LAPSED at 2027-01-09T09:00:00Z", la.fleet_table(report))

    def test_B2_the_table_marks_the_key_and_lists_the_keys_blocked_with_their_grace(self):
        outcomes = self.outcomes()
        outcomes["svm-none"] = status(blocked_slot("WS-1", "2027-01-15T00:00:00Z", slot="workstation"))
        outcomes["svm-code"] = status(blocked_slot("KS-C", "2027-01-16T00:00:00Z", takeover="activation-code"))
        table = la.fleet_table(la.fleet_status(sorted(outcomes), outcomes, "t")).split("\n")
        self.assertRegex(table[2], r"^svm-blocked-soon\s+blocked\s+server\s+KS-2 BLOCKED\s+")
        start = table.index("") + 1
        self.assertEqual(table[start].split(), ["KEYS", "BLOCKED", "SLOT", "SERIAL", "SINCE", "GRACE", "ENDS", "THEN",
                                                "REASON"])
        self.assertRegex(table[start + 1], r"^svm-blocked-soon\s+server\s+KS-2\s+2027-01-01T00:00:00Z\s+"
                                           r"2027-01-09T09:00:00Z\s+reserve KS-R only from 2027-03-01T00:00:00Z: "
                                           r"LAPSES between\s+refunded$")
        self.assertRegex(table[start + 2], r"^svm-none\s+workstation\s+WS-1\s+.*\s+nothing takes over: LAPSES\s+refunded$")
        self.assertRegex(table[start + 3], r"^svm-code\s+server\s+KS-C\s+.*\s+renewed with the activation code\s+")
        self.assertRegex(table[start + 4], r"^svm-blocked-late\s+server\s+KS-1\s+.*\s+reserve KS-9 takes over\s+")
        self.assertEqual(table[start + 5], "")
        self.assertTrue(table[start + 6].startswith("CONSUMERS LAGGING"))
        self.assertTrue(table[-1].endswith("; 4 keys blocked on 4 SVMs; 1 consumer lagging on 1 SVM"), table[-1])

    def test_B2_no_section_and_no_sentence_when_no_key_is_blocked(self):
        table = la.fleet_table(la.fleet_status(["a"], {"a": status(plain_slot("KS-3", "2027-01-05T00:00:00Z"))}, "t"))
        self.assertNotIn("BLOCKED", table)
        self.assertEqual(table.rsplit("\n", maxsplit=1)[-1], "Fleet status: 1 SVMs: 1 ok")


if __name__ == "__main__":
    unittest.main()
