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


def status_of(*slots):
    """A license_status_info outcome with these slots."""
    return {"status": {"slots": list(slots)}}


def server(serial, units, used=None, stale=False, reserve=None):
    entry = {"slot": "server", "status": "active", "active": {"serial": serial, "units": units}}
    if used is not None:
        entry["usage"] = {"units": used, "reportedAt": "2027-01-01T08:00:00Z", "stale": stale}
    if reserve:
        entry["reserve"] = {"serial": reserve[0], "units": reserve[1]}
    return entry


class UsageTests(unittest.TestCase):
    """Rule U4: a key's usage is the sum over the SVMs where it is active."""

    def test_U4_the_bands_are_the_agents_at_their_exact_bounds(self):
        for units, used, band in ((10, 8, "normal"), (10, 9, "high"), (10, 10, "high"), (10, 11, "exceeded"),
                                  (10, 12, "critical"), (100, 110, "exceeded"), (100, 111, "critical")):
            self.assertEqual(la.band(used, units), band, (units, used))
        self.assertEqual(la.percent(530, 500), 106.0)
        self.assertEqual(la.percent(1, 3), 33.3)

    def test_U4_a_shared_key_sums_its_svms_and_lists_those_not_counted(self):
        outcomes = {
            "a1": status_of(server("KS-1", 500, 300, reserve=("KS-2", 500))),
            "a2": status_of(server("KS-1", 500, 230)),
            "a3": status_of(server("KS-1", 500)),  # no report: not zero
            "a4": status_of(server("KS-1", 500, 900, stale=True)),  # stale: not counted
            "b1": status_of(server("KS-9", 100, 50)),
            "c1": {"unreachable": True, "msg": "ssh: connect\n refused"},
        }
        report = la.fleet_usage(["a1", "a2", "a3", "a4", "b1", "c1"], outcomes, "2027-01-01T09:00:00Z")
        self.assertEqual(report["task"], "usage")
        self.assertEqual(report["at"], "2027-01-01T09:00:00Z")
        first, second = report["keys"]
        self.assertEqual(
            first,
            {"serial": "KS-1", "slot": "server", "units": 500, "used": 530, "percent": 106.0, "band": "exceeded",
             "svmCount": 4,
             "svms": [{"host": "a1", "used": 300, "reportedAt": "2027-01-01T08:00:00Z"},
                      {"host": "a2", "used": 230, "reportedAt": "2027-01-01T08:00:00Z"}],
             "reserves": [{"serial": "KS-2", "units": 500, "hosts": ["a1"]}]})
        self.assertEqual((second["serial"], second["band"], second["percent"]), ("KS-9", "normal", 50.0))
        self.assertEqual(
            report["unknown"],
            [{"host": "a3", "slot": "server", "serial": "KS-1"},
             {"host": "a4", "slot": "server", "serial": "KS-1", "stale": True, "reportedAt": "2027-01-01T08:00:00Z"}])
        self.assertEqual(report["unreachable"], [{"host": "c1", "message": "ssh: connect refused"}])
        table = la.usage_table(report).split("\n")
        self.assertEqual(table[0].split(), ["SERIAL", "SLOT", "UNITS", "USED", "PERCENT", "BAND", "SVMS", "NOT", "COUNTED"])
        self.assertEqual(
            table[1].split(),
            ["KS-1", "server", "500", "530", "106.0", "%", "exceeded", "2", "of", "4", "reporting", "a3", "(no",
             "report),", "a4", "(stale)"])
        self.assertEqual(table[2].split()[:6], ["KS-9", "server", "100", "50", "50.0", "%"])
        self.assertEqual(table[3], "unreachable: c1: ssh: connect refused")
        self.assertEqual(
            table[-1], "Fleet usage: 2 keys: 1 exceeded, 1 normal; 2 SVM slots without a current report, 1 SVM unreachable")

    def test_U4_worst_band_first_then_the_highest_percentage(self):
        outcomes = {
            "h": status_of(server("HIGH", 100, 95)),
            "c": status_of(server("CRIT", 100, 120)),
            "n": status_of(server("NORM", 100, 10)),
            "e": status_of(server("EXC", 100, 105)),
        }
        report = la.fleet_usage(["h", "c", "n", "e"], outcomes, "t")
        self.assertEqual([k["serial"] for k in report["keys"]], ["CRIT", "EXC", "HIGH", "NORM"])

    def test_U4_a_reserves_coverage_is_its_units_against_the_svms_it_was_added_to(self):
        outcomes = {
            "a1": {"result": "added", "slot": "server", "usage": {"units": 300}},
            "a2": {"result": "unchanged", "slot": "server", "usage": {"units": 230}},
            "a3": {"result": "added", "slot": "server"},
            "a4": {"result": "added", "slot": "server", "usage": {"units": 50, "stale": True}},
            "b1": {"result": "refused", "slot": "server", "rule": "R5", "code": "x", "message": "m",
                   "usage": {"units": 999}},
        }
        report = la.activation_report(
            ["a1", "a2", "a3", "a4", "b1"], outcomes, "reserve", "KS-2", "s", "f", units=500)
        self.assertEqual(report["coverage"], {"units": 500, "used": 530, "unreported": ["a3", "a4"]})
        self.assertEqual(report["svms"][0], {"host": "a1", "result": "added", "slot": "server", "used": 300})
        summary = la.activation_table(report).rsplit("\n", maxsplit=1)[-1]
        self.assertIn(
            "; coverage: 500 units for 530 in use (106.0 %), 30 would be uncovered, "
            "no current usage report from a3, a4", summary)
        # Nobody reported: the coverage is unknown, not "0 in use".
        silent = la.activation_report(["a3"], outcomes, "reserve", "KS-2", "s", "f", units=500)
        self.assertEqual(silent["coverage"], {"units": 500, "used": 0, "unreported": ["a3"]})
        self.assertIn("; coverage unknown: no current usage report from a3",
                      la.activation_table(silent).rsplit("\n", maxsplit=1)[-1])
        # An active key has no coverage; nor has a reserve whose units are unknown.
        self.assertNotIn("coverage", la.activation_report(["a1"], outcomes, "active", "KS-2", "s", "f", units=500))
        self.assertNotIn("coverage", la.activation_report(["a1"], outcomes, "reserve", "KS-2", "s", "f"))

    def test_the_fleet_status_shows_each_slots_usage(self):
        entry = la.fleet_entry("a1", status_of(server("KS-1", 10, 9)))
        self.assertEqual(entry["slots"][0]["usage"]["units"], 9)
        table = la.fleet_table(la.fleet_status(["a1", "a2"], {"a1": status_of(server("KS-1", 10, 9)),
                                                              "a2": status_of(server("KS-1", 10))}, "t"))
        self.assertIn("9/10 (90.0 %, high)", table)
        self.assertIn("unknown", table)
        self.assertEqual(la.usage_cell({"units": 12, "stale": True}, 10), "12/10 (120.0 %, critical) STALE")


# Rule N2: GetStatus replies (as agentctl status --json prints them) with consumers. svm-c1's
# protection server still enforces KS-1 a minute after KS-2 took over: the agent found it
# late, logged CONSUMER_NOT_UPDATED and warns of it.
LATE_STATUS = {
    "schemaVersion": 1,
    "version": "0.3.0",
    "health": 0,
    "slots": [
        {
            "slot": "server",
            "status": "active",
            "active": {"serial": "KS-2", "expiresAt": "2027-12-01T00:00:00Z", "units": 500},
            "takeover": "none",
            "lapsesAt": "2027-12-01T00:00:00Z",
            "consumers": [
                {"consumer": "backup-agent", "expected": False, "state": "unconfirmed",
                 "confirmedSerial": "KS-1", "confirmedAt": "2026-12-01T00:00:05Z"},
                {"consumer": "protection-server", "expected": True, "state": "late",
                 "confirmedSerial": "KS-1", "confirmedAt": "2026-12-01T00:00:02Z",
                 "dueAt": "2027-01-01T09:01:00Z"},
            ],
        },
        {
            "slot": "workstation",
            "status": "active",
            "active": {"serial": "WS-7", "expiresAt": "2028-01-01T00:00:00Z", "units": 50},
            "takeover": "none",
            "lapsesAt": "2028-01-01T00:00:00Z",
            "consumers": [
                {"consumer": "protection-server", "expected": True, "state": "late",
                 "dueAt": "2027-01-01T09:01:00Z"},
            ],
        },
    ],
    "alerts": [],
    "warnings": [
        {"slot": "server", "code": "consumer_not_updated",
         "message": "server: the consumer protection-server has not confirmed the active key KS-2 "
                    "(it last confirmed KS-1); check that it runs and follows the agent (agentctl monitor)."},
        {"slot": "workstation", "code": "consumer_not_updated",
         "message": "workstation: the consumer protection-server has not confirmed the active key WS-7 "
                    "(it confirmed no key); check that it runs and follows the agent (agentctl monitor)."},
    ],
}


def consumer_status(serial, *consumers, status="active", lapses="2027-06-01T00:00:00Z"):
    """A license_status_info outcome: one server slot whose active key is `serial`, with
    these consumers (none: an agent that knows none, as before N2)."""
    entry = {"slot": "server", "status": status, "takeover": "none", "lapsesAt": lapses}
    if status == "active":
        entry["active"] = {"serial": serial, "expiresAt": lapses, "units": 10}
    else:
        entry["expired"] = {"serial": serial, "expiresAt": lapses}
    if consumers:
        entry["consumers"] = list(consumers)
    return {"status": {"slots": [entry], "alerts": [], "warnings": [], "health": 0 if status == "active" else 2}}


def consumer(state, confirmed=None, due="2027-01-01T09:01:00Z", name="protection-server"):
    entry = {"consumer": name, "expected": state != "unconfirmed", "state": state}
    if confirmed:
        entry["confirmedSerial"] = confirmed
        entry["confirmedAt"] = "2027-01-01T08:00:00Z"
    if state in ("waiting", "late"):
        entry["dueAt"] = due
    return entry


class ConsumerTests(unittest.TestCase):
    """Rule N2 in the fleet status: the SVMs whose consumer lags."""

    def test_N2_a_lagging_consumer_is_one_the_agent_found_late(self):
        self.assertEqual(
            la.lagging_consumers(LATE_STATUS),
            [{"slot": "server", "consumer": "protection-server", "serial": "KS-2", "confirmedSerial": "KS-1",
              "confirmedAt": "2026-12-01T00:00:02Z", "dueAt": "2027-01-01T09:01:00Z"},
             {"slot": "workstation", "consumer": "protection-server", "serial": "WS-7", "confirmedSerial": None,
              "confirmedAt": None, "dueAt": "2027-01-01T09:01:00Z"}])
        # Confirmed, still within its time, or not expected (the agent logs nothing for it):
        # not lagging. Nor is anything on an agent that knows no consumers.
        for state in ("confirmed", "waiting", "unconfirmed"):
            self.assertEqual(la.lagging_consumers(consumer_status("KS-2", consumer(state, "KS-1"))["status"]), [],
                             state)
        self.assertEqual(la.lagging_consumers(consumer_status("KS-2")["status"]), [])
        self.assertEqual(la.lagging_consumers({"slots": [{"slot": "server", "consumers": None}]}), [])

    def test_N2_svms_whose_consumer_lags_come_first_and_are_listed_and_counted(self):
        outcomes = {
            "svm-c1": {"status": LATE_STATUS},
            "svm-ok": consumer_status("KS-2", consumer("confirmed", "KS-2"), lapses="2027-02-01T00:00:00Z"),
            "svm-wait": consumer_status("KS-2", consumer("waiting", "KS-1"), lapses="2027-03-01T00:00:00Z"),
            "svm-old": consumer_status("KS-2", lapses="2027-04-01T00:00:00Z"),
            "svm-exp": consumer_status("KS-0", status="expired", lapses="2026-12-01T00:00:00Z"),
            "svm-down": {"unreachable": True, "msg": "no route"},
        }
        report = la.fleet_status(sorted(outcomes), outcomes, "2027-01-01T09:05:00Z")
        # A consumer lagging needs a person as an expired slot does: first, by lapse.
        self.assertEqual([s["host"] for s in report["svms"]],
                         ["svm-exp", "svm-c1", "svm-down", "svm-ok", "svm-wait", "svm-old"])
        by_host = {s["host"]: s for s in report["svms"]}
        self.assertEqual(by_host["svm-c1"]["state"], "lagging")
        self.assertEqual(by_host["svm-wait"]["state"], "ok")
        self.assertEqual(by_host["svm-c1"]["warnings"][0]["code"], "consumer_not_updated")
        self.assertEqual([c["consumer"] for c in by_host["svm-c1"]["slots"][0]["consumers"]],
                         ["backup-agent", "protection-server"])
        self.assertEqual(by_host["svm-old"]["slots"][0]["consumers"], [])
        self.assertEqual(by_host["svm-down"]["consumersLagging"], [])
        self.assertEqual(report["summary"], {"expired": 1, "lagging": 1, "unreachable": 1, "ok": 3})
        self.assertEqual(list(report), ["task", "generatedAt", "svms", "keysBlocked", "consumersLagging", "summary"])
        self.assertEqual(report["keysBlocked"], [])
        self.assertEqual(
            report["consumersLagging"],
            [{"host": "svm-c1", "slot": "server", "consumer": "protection-server", "serial": "KS-2",
              "confirmedSerial": "KS-1", "confirmedAt": "2026-12-01T00:00:02Z", "dueAt": "2027-01-01T09:01:00Z"},
             {"host": "svm-c1", "slot": "workstation", "consumer": "protection-server", "serial": "WS-7",
              "confirmedSerial": None, "confirmedAt": None, "dueAt": "2027-01-01T09:01:00Z"}])

    def test_N2_a_lapsed_slot_or_an_alert_outranks_a_lagging_consumer_which_is_still_listed(self):
        lapsed = json.loads(json.dumps(LATE_STATUS))
        lapsed["health"] = 2
        lapsed["slots"][1] = {"slot": "workstation", "status": "expired", "takeover": "none",
                              "expired": {"serial": "WS-7", "expiresAt": "2026-12-01T00:00:00Z"}}
        alerted = dict(LATE_STATUS, alerts=["manual_activation_required"])
        # An agent whose health counted a late consumer (2) is still lagging, not expired.
        unhealthy = dict(LATE_STATUS, health=2)
        report = la.fleet_status(["a", "b", "c"], {"a": {"status": lapsed}, "b": {"status": alerted},
                                                   "c": {"status": unhealthy}}, "t")
        self.assertEqual({s["host"]: s["state"] for s in report["svms"]}, {"a": "expired", "b": "alert", "c": "lagging"})
        self.assertEqual([(c["host"], c["slot"]) for c in report["consumersLagging"]],
                         [("a", "server"), ("b", "server"), ("b", "workstation"), ("c", "server"), ("c", "workstation")])
        self.assertIn("; 5 consumers lagging on 3 SVMs", la.fleet_table(report).rsplit("\n", maxsplit=1)[-1])

    def test_N2_the_table_shows_each_slots_consumers_and_a_section_of_those_lagging(self):
        outcomes = {
            "svm-c1": {"status": LATE_STATUS},
            "svm-ok": consumer_status("KS-2", consumer("confirmed", "KS-2")),
            "svm-wait": consumer_status("KS-2", consumer("waiting", "KS-1")),
            "svm-old": consumer_status("KS-2"),
        }
        table = la.fleet_table(la.fleet_status(sorted(outcomes), outcomes, "t")).split("\n")
        self.assertEqual(table[0].split(), ["SVM", "STATE", "SLOT", "ACTIVE", "UNTIL", "TAKEOVER", "USAGE", "LAPSES",
                                            "CONSUMERS"])
        self.assertRegex(table[1], r"^svm-c1\s+lagging\s+server\s+KS-2\s+.*\s+backup-agent unconfirmed "
                                   r"\(confirmed KS-1\), protection-server LATE \(confirmed KS-1\)$")
        self.assertRegex(table[2], r"^\s+workstation\s+WS-7\s+.*\s+protection-server LATE \(confirmed none\)$")
        self.assertRegex(table[3], r"^svm-ok\s+ok\s+.*\s+protection-server ok$")
        self.assertRegex(table[4], r"^svm-old\s+ok\s+.*\s+2027-06-01T00:00:00Z\s+-$")
        self.assertRegex(table[5], r"^svm-wait\s+ok\s+.*\s+protection-server waiting \(until 2027-01-01T09:01:00Z\)$")
        self.assertEqual(table[6], "")
        self.assertEqual(table[7].split(), ["CONSUMERS", "LAGGING", "SLOT", "CONSUMER", "SHOULD", "ENFORCE", "LAST",
                                            "CONFIRMED", "DUE"])
        self.assertEqual(table[8].split(), ["svm-c1", "server", "protection-server", "KS-2", "KS-1", "at",
                                            "2026-12-01T00:00:02Z", "2027-01-01T09:01:00Z"])
        self.assertEqual(table[9].split(), ["svm-c1", "workstation", "protection-server", "WS-7", "none",
                                            "2027-01-01T09:01:00Z"])
        self.assertEqual(table[-1], "Fleet status: 4 SVMs: 1 lagging, 3 ok; 2 consumers lagging on 1 SVM")

    def test_N2_no_section_and_no_sentence_when_no_consumer_lags(self):
        outcomes = {"svm-ok": consumer_status("KS-2", consumer("confirmed", "KS-2")), "svm-old": consumer_status("KS-2")}
        table = la.fleet_table(la.fleet_status(sorted(outcomes), outcomes, "t"))
        self.assertNotIn("LAGGING", table)
        self.assertEqual(table.rsplit("\n", maxsplit=1)[-1], "Fleet status: 2 SVMs: 2 ok")
