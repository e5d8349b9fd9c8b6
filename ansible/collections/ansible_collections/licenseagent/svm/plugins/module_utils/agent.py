# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules know of the license agent: key claims, slots, and results.

Pure functions of plain values, shared by the modules (on the SVM) and the report filters
(on the controller), and unit-tested without an agent.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import time

SLOTS = ("server", "workstation", "processors", "cores")
CODE_PATTERN = re.compile(r"^[A-Z0-9]{5}(-[A-Z0-9]{5}){3}$")

# Contract section 9: one result per SVM.
RESULTS = ("added", "unchanged", "refused", "skipped", "unreachable", "failed")


class KeyFormatError(ValueError):
    """The text is not a compact JWS whose payload is a JSON object."""


def key_claims(key):
    """The payload claims of a compact JWS, without checking its signature.

    The agent checks the signature; the modules only need the serial and the slot to
    decide what to ask (and to report per SVM).
    """
    parts = key.strip().split(".")
    if len(parts) != 3:
        raise KeyFormatError("a key is three base64url parts joined by '.', this has %d" % len(parts))
    payload = parts[1]
    try:
        data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise KeyFormatError("the key's payload is not base64url-encoded JSON") from None
    if not isinstance(claims, dict):
        raise KeyFormatError("the key's payload is not a JSON object")
    return claims


def key_slot(claims):
    """The slot a key goes to (rules.md, Words): the OS type for vm-count, else the scheme."""
    scheme = claims.get("scheme")
    slot = claims.get("os_type") if scheme == "vm-count" else scheme
    return slot if slot in SLOTS else None


def key_serial(claims):
    serial = claims.get("jti")
    return serial if isinstance(serial, str) else None


def slot_status(status, slot):
    """The slot's entry of a GetStatus reply, or None when the slot is not in use."""
    for entry in status.get("slots", []):
        if entry.get("slot") == slot:
            return entry
    return None


def active_key(status, slot):
    entry = slot_status(status, slot)
    return entry.get("active") if entry else None


def held_key(status, slot, role):
    """The key the SVM holds in `slot` as `role` (active or reserve), or None."""
    entry = slot_status(status, slot)
    return entry.get(role) if entry else None


def describe_key(key):
    if not key:
        return "none"
    text = "%s (%s %s, %s units, %s to %s" % (
        key.get("serial"),
        key.get("licenseType"),
        key.get("edition"),
        key.get("units"),
        key.get("notBefore"),
        key.get("expiresAt"),
    )
    if key.get("codeHint"):
        text += ", activation code ...%s" % key["codeHint"]
    return text + ")"


def describe_slot(status, slot):
    """The slot as a few lines of text, for Ansible's diff mode."""
    entry = slot_status(status, slot)
    if entry is None:
        return "slot %s: not in use\n" % slot
    lines = [
        "slot %s: %s" % (slot, entry.get("status")),
        "active: %s" % describe_key(entry.get("active")),
        "reserve: %s" % describe_key(entry.get("reserve")),
        "takeover at expiry: %s" % entry.get("takeover"),
    ]
    return "\n".join(lines) + "\n"


def normalize_code(code):
    """An activation code upper-cased and stripped; raises ValueError when its shape is wrong.

    The message never contains the code.
    """
    text = (code or "").strip().upper()
    if not CODE_PATTERN.match(text):
        raise ValueError(
            "the activation code is not 4 groups of 5 letters or digits joined by '-' "
            "(XXXXX-XXXXX-XXXXX-XXXXX); check it and run the task again"
        )
    return text


def code_hint(code):
    """The last 5 characters of a code: all that is ever shown of it (contract section 4)."""
    return code[-5:]


def rule_fields(parameters):
    """rule, code and message of a RuleViolation's parameters, for results and reports."""
    return {
        "rule": parameters.get("rule"),
        "code": parameters.get("code"),
        "message": parameters.get("message"),
    }


def report_entry(host, outcome):
    """One SVM's line of the activation task's report (contract section 9).

    `outcome` is what the task registered for the host: the license_key module's result,
    or Ansible's own record of an unreachable host or of a failure the module did not
    describe (its `msg`).
    """
    outcome = outcome or {}
    if outcome.get("unreachable"):
        return {"host": host, "result": "unreachable", "message": _one_line(outcome.get("msg") or "unreachable")}
    result = outcome.get("result")
    entry = {"host": host}
    if result in ("added", "would-add", "unchanged", "refused", "skipped"):
        entry["result"] = result
        if outcome.get("slot"):
            entry["slot"] = outcome["slot"]
        if result in ("refused", "skipped"):
            entry.update({k: outcome.get(k) for k in ("rule", "code", "message")})
        usage = outcome.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("units"), int):
            entry["used"] = usage["units"]
            if usage.get("stale"):
                entry["usageStale"] = True
        return entry
    entry["result"] = "failed"
    if outcome.get("slot"):
        entry["slot"] = outcome["slot"]
    if not outcome:
        entry["message"] = "no result: the task did not run on this host (an earlier failure?)"
    else:
        entry["message"] = _one_line(outcome.get("message") or outcome.get("msg") or "failed without a message")
    return entry


def coverage(svms, units):
    """Rule U4 for a reserve: its `units` against the current usage of the SVMs it was
    added to (or already held it, or would get it in check mode). SVMs that reported no
    usage, or a stale one, are listed, not counted as zero."""
    held = [svm for svm in svms if svm["result"] in ("added", "would-add", "unchanged")]
    known = [svm for svm in held if "used" in svm and not svm.get("usageStale")]
    result = {"units": units, "used": sum(svm["used"] for svm in known)}
    unreported = sorted(svm["host"] for svm in held if svm not in known)
    if unreported:
        result["unreported"] = unreported
    return result


def activation_report(hosts, outcomes, role, serial, started_at, finished_at, check_mode=False, units=None):
    """The whole report of contract section 9 for `hosts`, from the outcomes by host."""
    svms = [report_entry(host, outcomes.get(host)) for host in hosts]
    summary = dict((name, 0) for name in RESULTS)
    for svm in svms:
        key = "added" if svm["result"] == "would-add" else svm["result"]
        summary[key] += 1
    report = {
        "task": "activation",
        "role": role,
        "serial": serial,
        "startedAt": started_at,
        "finishedAt": finished_at,
        "svms": svms,
        "summary": summary,
    }
    if role == "reserve" and isinstance(units, int):
        report["coverage"] = coverage(svms, units)
    if check_mode:
        report["checkMode"] = True
    return report


def report_failed(report):
    """True when the play must exit non-zero: an SVM was refused, failed or unreachable."""
    summary = report["summary"]
    return bool(summary["refused"] or summary["failed"] or summary["unreachable"])


def activation_table(report):
    """The report as a table for a person, one SVM a line, then the summary."""
    rows = [("SVM", "RESULT", "SLOT", "RULE", "DETAIL")]
    for svm in report["svms"]:
        rule = " ".join(x for x in (svm.get("rule"), svm.get("code")) if x)
        rows.append((svm["host"], svm["result"], svm.get("slot") or "-", rule or "-", svm.get("message") or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + ("  " + row[4] if row[4] else "")
        for row in rows
    ]
    summary = report["summary"]
    lines.append("")
    lines.append(
        "Activation task: %s key %s on %d SVMs: %s"
        % (
            report["role"],
            report["serial"],
            len(report["svms"]),
            ", ".join("%d %s" % (summary[name], name) for name in RESULTS),
        )
        + coverage_sentence(report)
    )
    return "\n".join(line.rstrip() for line in lines)


def coverage_sentence(report):
    """The activation summary's words on a reserve's coverage (U4), after "; "."""
    covered = report.get("coverage")
    if not covered:
        return ""
    units, used = covered["units"], covered["used"]
    held = [svm for svm in report["svms"] if svm["result"] in ("added", "would-add", "unchanged")]
    if held and len(covered.get("unreported", [])) == len(held):
        return "; coverage unknown: no current usage report from %s" % ", ".join(covered["unreported"])
    text = "; coverage: %d units for %d in use (%s %%)" % (units, used, percent_text(used, units))
    if used > units:
        text += ", %d would be uncovered" % (used - units)
    if covered.get("unreported"):
        text += ", no current usage report from %s" % ", ".join(covered["unreported"])
    return text


def _one_line(text):
    return " ".join(str(text).split())


# The fleet status (playbooks/fleet_status.yml): every SVM's slots, soonest lapse first.

def slot_lapse(entry):
    """When the slot ends with nothing to take over, as far as the SVM knows now.

    The agent says so itself (``lapsesAt``, from 0.2.0): its own rules decide it. An agent
    before 0.2.0 does not, and this works it out the same way from what it shows: an
    expired slot has lapsed already (its expired key's expiry); with no takeover, the
    active key's expiry; with a reserve, the reserve's (after it nothing takes over); with
    an activation code, None: the agent renews it (an alert says when it cannot).
    """
    if "lapsesAt" in entry:
        return entry["lapsesAt"]
    if entry.get("status") in ("expired", "renewing"):
        expired = entry.get("expired") or entry.get("active") or {}
        return expired.get("expiresAt") or ""
    takeover = entry.get("takeover")
    if takeover == "reserve" and entry.get("reserve"):
        return entry["reserve"].get("expiresAt")
    if takeover == "none" and entry.get("active"):
        return entry["active"].get("expiresAt")
    return None


def fleet_entry(host, outcome):
    """One SVM of the fleet status, from what license_status_info registered for it."""
    outcome = outcome or {}
    if outcome.get("unreachable") or outcome.get("failed") or "status" not in outcome:
        return {
            "host": host,
            "state": "unreachable" if outcome.get("unreachable") else "failed",
            "message": _one_line(outcome.get("msg") or "no status"),
            "slots": [],
            "alerts": [],
            "soonestLapse": None,
            "keysBlocked": [],
            "consumersLagging": [],
        }
    status = outcome["status"]
    slots = []
    for entry in status.get("slots", []):
        slots.append(
            {
                "slot": entry.get("slot"),
                "status": entry.get("status"),
                "active": _brief(entry.get("active")),
                "reserve": _brief(entry.get("reserve")),
                "expired": _brief(entry.get("expired")),
                "takeover": entry.get("takeover"),
                "lapsesAt": slot_lapse(entry),
                "usage": entry.get("usage"),
                "consumers": [dict(c) for c in entry.get("consumers") or []],
                "blocked": dict(entry["activeBlocked"]) if entry.get("activeBlocked") else None,
            }
        )
    alerts = list(status.get("alerts", []))
    lagging = lagging_consumers(status)
    blocked = blocked_keys(status)
    lapses = [s["lapsesAt"] for s in slots if s["lapsesAt"] is not None]
    # The agent's health (0.2.0: agentctl's exit status) says whether a person is needed;
    # an older agent's is worked out from its alerts and slots. A consumer lagging (N2) is
    # its own state, unless a slot has lapsed too (whatever the health makes of consumers).
    # A blocked active key (B2) still works until its grace ends: its own state, after a
    # lapse and before a consumer lagging.
    health = status.get("health")
    lapsed = any(s["status"] != "active" for s in slots)
    if alerts:
        state = "alert"
    elif lapsed or (health == 2 and not lagging):
        state = "expired"
    elif blocked:
        state = "blocked"
    elif lagging:
        state = "lagging"
    elif not slots:
        state = "no-key"
    else:
        state = "ok"
    result = {
        "host": host,
        "state": state,
        "slots": slots,
        "alerts": alerts,
        "soonestLapse": min(lapses) if lapses else None,
        "version": status.get("version"),
        "keysBlocked": blocked,
        "consumersLagging": lagging,
    }
    if status.get("nextAction"):
        result["nextAction"] = status["nextAction"]
    if status.get("warnings"):
        result["warnings"] = status["warnings"]
    return result


# What needs a person first: a lapsed slot or a pending alert; then a blocked active key
# (B2: it works until its grace ends, then counts as expired); then a consumer lagging (the
# VMs are protected, or not, by the key the consumer still enforces, not by the one the
# agent made active); then the SVMs that cannot be read.
_STATE_RANK = {"alert": 0, "expired": 0, "blocked": 1, "lagging": 2, "unreachable": 3, "failed": 3, "no-key": 4,
               "ok": 5}


def _fleet_order(svm):
    """An SVM's place in the fleet status: its state's rank, then the soonest instant that
    matters (for a blocked key the end of its grace, else the soonest lapse with nothing to
    take over); SVMs that never lapse (activation codes) last among theirs."""
    instant = svm["soonestLapse"]
    if svm["state"] == "blocked":
        graces = [k["graceEndsAt"] for k in svm["keysBlocked"] if k.get("graceEndsAt")]
        instant = min(graces, key=_instant_key) if graces else instant
    return (_STATE_RANK[svm["state"]], instant is None, _instant_key(instant) if instant else (), svm["host"])


def fleet_status(hosts, outcomes, generated_at):
    """The fleet status report: SVMs with an alert or an expired slot first, then those with
    a blocked active key (soonest grace end first), then those with a consumer lagging, then
    those that cannot be read, then by the soonest lapse with nothing to take over, SVMs
    that never lapse (activation codes) last. `keysBlocked` lists every blocked active key
    across the fleet and `consumersLagging` every consumer lagging, whatever its SVM's state
    (an SVM with an expired slot may have either too)."""
    svms = [fleet_entry(host, outcomes.get(host)) for host in hosts]
    svms.sort(key=_fleet_order)
    summary = {}
    for svm in svms:
        summary[svm["state"]] = summary.get(svm["state"], 0) + 1
    blocked = [dict(host=svm["host"], **key) for svm in svms for key in svm["keysBlocked"]]
    lagging = [dict(host=svm["host"], **consumer) for svm in svms for consumer in svm["consumersLagging"]]
    return {
        "task": "status",
        "generatedAt": generated_at,
        "svms": svms,
        "keysBlocked": blocked,
        "consumersLagging": lagging,
        "summary": summary,
    }


def fleet_table(report):
    """The fleet status for a person: a slot a line, then the keys blocked (B1, B2), then the
    consumers lagging (N2), then the summary."""
    rows = [("SVM", "STATE", "SLOT", "ACTIVE", "UNTIL", "TAKEOVER", "USAGE", "LAPSES", "CONSUMERS")]
    for svm in report["svms"]:
        if not svm["slots"]:
            rows.append((svm["host"], svm["state"], "-", "-", "-", "-", "-", svm.get("message", ""), ""))
            continue
        for index, slot in enumerate(svm["slots"]):
            active = slot.get("active") or slot.get("expired") or {}
            takeover = slot.get("takeover") or "-"
            if takeover == "reserve" and slot.get("reserve"):
                takeover = "reserve %s" % slot["reserve"]["serial"]
            rows.append(
                (
                    svm["host"] if index == 0 else "",
                    svm["state"] if index == 0 else "",
                    slot["slot"] + ("" if slot["status"] == "active" else " (%s)" % slot["status"]),
                    (active.get("serial") or "-") + (" BLOCKED" if slot.get("blocked") else ""),
                    active.get("expiresAt") or "-",
                    takeover,
                    usage_cell(slot.get("usage"), active.get("units")),
                    slot["lapsesAt"] or "never (renewed)",
                    consumers_cell(slot.get("consumers")),
                )
            )
        if svm["alerts"]:
            rows.append(("", "", "alerts: " + ", ".join(svm["alerts"]), "", "", "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    blocked = report.get("keysBlocked") or []
    if blocked:
        lines.append("")
        lines.extend(blocked_lines(blocked))
    lagging = report.get("consumersLagging") or []
    if lagging:
        lines.append("")
        lines.extend(lagging_lines(lagging))
    summary = report["summary"]
    lines.append("")
    lines.append(
        "Fleet status: %d SVMs: %s"
        % (len(report["svms"]), ", ".join("%d %s" % (n, s) for s, n in sorted(summary.items())))
        + blocked_sentence(blocked)
        + lagging_sentence(lagging)
    )
    return "\n".join(lines)


# Consumers (rule N2): the programs that enforce the licence (the protection service) confirm
# the serial they enforce per slot; the agent says in its status which are late.

def lagging_consumers(status):
    """The consumers the agent finds late (rule N2) in a GetStatus reply: expected ones that
    have not confirmed their slot's active key within `confirm-within` (the agent logged
    CONSUMER_NOT_UPDATED). The agent decides it (state `late`); a consumer still within its
    time (`waiting`) is not lagging yet. Each: slot, consumer, serial (the active key it
    should enforce), confirmedSerial (the last it confirmed; None if it never did),
    confirmedAt, dueAt. An agent that knows no consumers (older ones) shows none."""
    lagging = []
    for entry in status.get("slots", []):
        active = (entry.get("active") or {}).get("serial")
        for consumer in entry.get("consumers") or []:
            if consumer.get("state") != "late":
                continue
            lagging.append(
                {
                    "slot": entry.get("slot"),
                    "consumer": consumer.get("consumer"),
                    "serial": active,
                    "confirmedSerial": consumer.get("confirmedSerial"),
                    "confirmedAt": consumer.get("confirmedAt"),
                    "dueAt": consumer.get("dueAt"),
                }
            )
    return lagging


def consumers_cell(consumers):
    """A slot's consumers in the fleet status table: "protection-server ok",
    "protection-server LATE (confirmed KS-1)", "backup waiting (until 2027-...)"."""
    if not consumers:
        return "-"
    cells = []
    for consumer in consumers:
        name, state = consumer.get("consumer") or "?", consumer.get("state")
        if state == "confirmed":
            cells.append("%s ok" % name)
        elif state == "waiting":
            cells.append("%s waiting" % name + (" (until %s)" % consumer["dueAt"] if consumer.get("dueAt") else ""))
        elif state == "late":
            cells.append("%s LATE (confirmed %s)" % (name, consumer.get("confirmedSerial") or "none"))
        else:
            cells.append("%s %s (confirmed %s)" % (name, state or "unknown", consumer.get("confirmedSerial") or "none"))
    return ", ".join(cells)


def lagging_lines(lagging):
    """The fleet status table's section of the consumers lagging: a consumer a line."""
    rows = [("CONSUMERS LAGGING", "SLOT", "CONSUMER", "SHOULD ENFORCE", "LAST CONFIRMED", "DUE")]
    for entry in lagging:
        confirmed = entry.get("confirmedSerial") or "none"
        if entry.get("confirmedSerial") and entry.get("confirmedAt"):
            confirmed += " at %s" % entry["confirmedAt"]
        rows.append(
            (
                entry["host"],
                entry.get("slot") or "-",
                entry.get("consumer") or "-",
                entry.get("serial") or "-",
                confirmed,
                entry.get("dueAt") or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def lagging_sentence(lagging):
    """The fleet status summary's words on the consumers lagging, after "; "."""
    if not lagging:
        return ""
    hosts = len(set(entry["host"] for entry in lagging))
    return "; %d consumer%s lagging on %d SVM%s" % (
        len(lagging),
        "" if len(lagging) == 1 else "s",
        hosts,
        "" if hosts == 1 else "s",
    )


def _brief(key):
    if not key:
        return None
    brief = {k: key[k] for k in ("serial", "expiresAt", "notBefore", "edition", "licenseType", "units") if k in key}
    if key.get("codeHint"):
        brief["codeHint"] = key["codeHint"]
    return brief


def usage_cell(usage, units):
    """A slot's usage in the fleet status table: "9/10 (90.0 %, high)", "unknown", "stale"."""
    if not usage or not isinstance(usage.get("units"), int):
        return "unknown"
    text = "%d" % usage["units"]
    if isinstance(units, int) and units > 0:
        text += "/%d (%s %%, %s)" % (units, percent_text(usage["units"], units), band(usage["units"], units))
    if usage.get("stale"):
        text += " STALE"
    return text


# Licensing units across the fleet (rule U4; playbooks/fleet_usage.yml, contract section 10).

BANDS = ("normal", "high", "exceeded", "critical")


def band(used, units):
    """Rule U2's band of `used` against `units`, at the agent's exact bounds (integers:
    90 % and more is high, over 100 % exceeded, over 110 % critical)."""
    if units <= 0:
        return "critical" if used > 0 else "normal"
    if used * 100 > units * 110:
        return "critical"
    if used * 100 > units * 100:
        return "exceeded"
    if used * 100 >= units * 90:
        return "high"
    return "normal"


def percent(used, units):
    """`used` as a percentage of `units`, to one decimal."""
    if units <= 0:
        return 0.0
    return round(used * 1000.0 / units) / 10.0


def percent_text(used, units):
    return "%.1f" % percent(used, units)


def fleet_usage(hosts, outcomes, generated_at):
    """Contract section 10's report: per key serial active on the fleet, its units against
    the sum of the current usage of the SVMs where it is active, graded as U2 grades it;
    SVMs with no report or a stale one listed under `unknown`, never counted as zero;
    worst band first."""
    keys = {}
    unknown = []
    unreachable = []
    for host in hosts:
        outcome = outcomes.get(host) or {}
        if outcome.get("unreachable") or outcome.get("failed") or "status" not in outcome:
            unreachable.append({"host": host, "message": _one_line(outcome.get("msg") or "no status")})
            continue
        for entry in outcome["status"].get("slots", []):
            active = entry.get("active")
            if not active or not active.get("serial"):
                continue
            key = keys.setdefault(
                (active["serial"], entry.get("slot")),
                {
                    "serial": active["serial"],
                    "slot": entry.get("slot"),
                    "units": active.get("units") or 0,
                    "used": 0,
                    "svms": [],
                    "reserves": {},
                    "hostCount": 0,
                },
            )
            key["hostCount"] += 1
            usage = entry.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("units"), int) and not usage.get("stale"):
                key["used"] += usage["units"]
                key["svms"].append({"host": host, "used": usage["units"], "reportedAt": usage.get("reportedAt")})
            else:
                missing = {"host": host, "slot": entry.get("slot"), "serial": active["serial"]}
                if isinstance(usage, dict) and usage.get("stale"):
                    missing["stale"] = True
                    missing["reportedAt"] = usage.get("reportedAt")
                unknown.append(missing)
            for role in ("reserve", "pending"):
                successor = entry.get(role)
                if successor and successor.get("serial"):
                    reserve = key["reserves"].setdefault(
                        successor["serial"],
                        {"serial": successor["serial"], "units": successor.get("units") or 0, "hosts": []},
                    )
                    reserve["hosts"].append(host)
    result = []
    for key in keys.values():
        key["percent"] = percent(key["used"], key["units"])
        key["band"] = band(key["used"], key["units"])
        key["reserves"] = sorted(key["reserves"].values(), key=lambda r: r["serial"])
        result.append(key)
    result.sort(key=lambda k: (-BANDS.index(k["band"]), -k["percent"], k["serial"], k["slot"] or ""))
    ordered = []
    for key in result:
        count = key.pop("hostCount")
        ordered.append(
            {
                "serial": key["serial"],
                "slot": key["slot"],
                "units": key["units"],
                "used": key["used"],
                "percent": key["percent"],
                "band": key["band"],
                "svmCount": count,
                "svms": key["svms"],
                "reserves": key["reserves"],
            }
        )
    return {"task": "usage", "at": generated_at, "keys": ordered, "unknown": unknown, "unreachable": unreachable}


def usage_table(report):
    """The fleet usage report for a person: a key a line, worst first, then the SVMs that
    did not count (no report, a stale one, unreachable)."""
    rows = [("SERIAL", "SLOT", "UNITS", "USED", "PERCENT", "BAND", "SVMS", "NOT COUNTED")]
    for key in report["keys"]:
        missing = [u for u in report["unknown"] if u["serial"] == key["serial"] and u["slot"] == key["slot"]]
        rows.append(
            (
                key["serial"],
                key["slot"] or "-",
                str(key["units"]),
                str(key["used"]),
                "%.1f %%" % key["percent"],
                key["band"],
                "%d of %d reporting" % (len(key["svms"]), key["svmCount"]),
                ", ".join(u["host"] + (" (stale)" if u.get("stale") else " (no report)") for u in missing) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    for svm in report["unreachable"]:
        lines.append("unreachable: %s: %s" % (svm["host"], svm["message"]))
    bands = {}
    for key in report["keys"]:
        bands[key["band"]] = bands.get(key["band"], 0) + 1
    lines.append("")
    lines.append(
        "Fleet usage: %d key%s: %s; %d SVM slot%s without a current report, %d SVM%s unreachable"
        % (
            len(report["keys"]),
            "" if len(report["keys"]) == 1 else "s",
            ", ".join("%d %s" % (bands[b], b) for b in reversed(BANDS) if b in bands) or "none",
            len(report["unknown"]),
            "" if len(report["unknown"]) == 1 else "s",
            len(report["unreachable"]),
            "" if len(report["unreachable"]) == 1 else "s",
        )
    )
    return "\n".join(lines)


# Blocklists (rules B1-B3; the license_blocklist module, playbooks/blocklist.yml): an issuer's
# signed list of the keys it blocked, given to every SVM; the report of what it blocked where.

BLOCKLIST_HEADER_TYPE = "license-blocklist+jwt"
BLOCKLIST_CLAIM_TYPE = "license-blocklist"
# One result per SVM, in the report's summary order (would-apply counts as applied).
BLOCKLIST_RESULTS = ("applied", "unchanged", "refused", "unreachable", "failed")
BLOCK_FIELDS = ("slot", "role", "pending", "serial", "since", "reason", "dropped")


def _json_part(part, what):
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise KeyFormatError("the blocklist's %s is not base64url-encoded JSON" % what) from None
    if not isinstance(value, dict):
        raise KeyFormatError("the blocklist's %s is not a JSON object" % what)
    return value


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def blocklist_claims(text):
    """The claims of a blocklist (contract section 1, "Blocklists"), without checking its
    signature, with `seq` as an integer: the agent checks the signature and the issuer's
    trust; the modules and reports only name the list (issuer, sequence) and, in check mode,
    say what it would block. Raises KeyFormatError, saying why, for text that is not one."""
    parts = (text or "").strip().split(".")
    if len(parts) != 3:
        raise KeyFormatError("a blocklist is three base64url parts joined by '.', this has %d" % len(parts))
    header = _json_part(parts[0], "header")
    claims = _json_part(parts[1], "payload")
    if header.get("typ") != BLOCKLIST_HEADER_TYPE or claims.get("typ") != BLOCKLIST_CLAIM_TYPE:
        raise KeyFormatError(
            "not a blocklist: its header's typ is %s, not %s (a licence key goes to license_key)"
            % (json.dumps(header.get("typ")), json.dumps(BLOCKLIST_HEADER_TYPE))
        )
    if not isinstance(claims.get("iss"), str) or not claims["iss"]:
        raise KeyFormatError("the blocklist names no issuer (iss)")
    seq = claims.get("seq")
    if not _is_number(seq) or seq != int(seq) or seq < 0:
        raise KeyFormatError("the blocklist's seq is not an integer of 0 or more")
    blocked = claims.get("blocked")
    if not isinstance(blocked, list):
        raise KeyFormatError("the blocklist's blocked is not an array")
    for index, entry in enumerate(blocked):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("serial"), str)
            or not entry["serial"]
            or not _is_number(entry.get("since"))
            or not isinstance(entry.get("reason"), (str, type(None)))
        ):
            raise KeyFormatError("the blocklist's blocked[%d] is not {serial, since, reason}" % index)
    claims = dict(claims, seq=int(seq))
    return claims


def rfc3339(seconds):
    """Seconds since the epoch as the agent writes instants: RFC 3339 UTC, microseconds only
    when there are any."""
    whole, fraction = divmod(int(round(seconds * 1000000)), 1000000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    if fraction:
        text += ".%06d" % fraction
    return text + "Z"


def parse_rfc3339(text):
    """An RFC 3339 instant (the agent's: UTC, `Z`, optional fraction) as a datetime, or None."""
    if not isinstance(text, str):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$", text.strip(), re.I)
    if not match:
        return None
    moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    if match.group(2):
        moment += datetime.timedelta(microseconds=int((match.group(2)[1:] + "000000")[:6]))
    zone = match.group(3).upper()
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        moment -= sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return moment


def normalize_block(block):
    """A BlockedKey of the agent's AddBlocklist reply as the report has it: every field, and
    graceEndsAt only for an active key (where the agent gives it)."""
    entry = dict((name, block.get(name)) for name in BLOCK_FIELDS)
    if block.get("graceEndsAt"):
        entry["graceEndsAt"] = block["graceEndsAt"]
    return entry


def predicted_blocks(status, claims):
    """What the agent would block (rules B1-B3) if it kept the list: each key of a GetStatus
    reply issued by the list's issuer (`iss`) whose serial the list names, as the agent's
    BlockedKey. A reserve or a key renewed ahead (role reserve, pending) would be dropped;
    an active key keeps working until the end of its grace, which runs from when the agent
    learns of the block (graceEndsAt is known only for a key the agent already holds as
    blocked). The signature is not checked: the agent does that."""
    listed = {}
    for entry in claims.get("blocked") or []:
        listed.setdefault(entry["serial"], entry)
    blocks = []
    for entry in status.get("slots", []):
        for field, role, pending in (("active", "active", False), ("reserve", "reserve", False),
                                     ("pending", "reserve", True)):
            key = entry.get(field)
            if not key or key.get("issuer") != claims.get("iss") or key.get("serial") not in listed:
                continue
            item = listed[key["serial"]]
            block = {
                "slot": entry.get("slot"),
                "role": role,
                "pending": pending,
                "serial": key["serial"],
                "since": rfc3339(item["since"]),
                "reason": item.get("reason") or "",
                "dropped": role != "active",
            }
            already = entry.get("activeBlocked") if role == "active" else None
            if already and already.get("graceEndsAt"):
                block["graceEndsAt"] = already["graceEndsAt"]
            blocks.append(block)
    return blocks


def blocklist_entry(host, outcome):
    """One SVM's line of the blocklist report, from what license_blocklist registered (or
    Ansible's record of an unreachable host or of a failure the module did not describe)."""
    outcome = outcome or {}
    if outcome.get("unreachable"):
        return {"host": host, "result": "unreachable", "message": _one_line(outcome.get("msg") or "unreachable")}
    result = outcome.get("result")
    if result in ("applied", "would-apply", "unchanged"):
        return {"host": host, "result": result, "blocks": [normalize_block(b) for b in outcome.get("blocks") or []]}
    if result == "refused":
        entry = {"host": host, "result": "refused"}
        entry.update((k, outcome.get(k)) for k in ("rule", "code", "message"))
        return entry
    if not outcome:
        message = "no result: the task did not run on this host (an earlier failure?)"
    else:
        message = _one_line(outcome.get("message") or outcome.get("msg") or "failed without a message")
    return {"host": host, "result": "failed", "message": message}


def blocklist_report(hosts, outcomes, blocklist, started_at, finished_at, check_mode=False):
    """The blocklist task's report over `hosts`, in the style of contract section 9: the list
    (issuer, sequence, its number of entries), a line per SVM with the keys it blocks there,
    and a count per result."""
    try:
        claims = blocklist_claims(blocklist)
        issuer, sequence, entries = claims["iss"], claims["seq"], len(claims["blocked"])
    except KeyFormatError:
        issuer = sequence = entries = None
    svms = [blocklist_entry(host, outcomes.get(host)) for host in hosts]
    summary = dict((name, 0) for name in BLOCKLIST_RESULTS)
    for svm in svms:
        summary["applied" if svm["result"] == "would-apply" else svm["result"]] += 1
    report = {
        "task": "blocklist",
        "issuer": issuer,
        "sequence": sequence,
        "entries": entries,
        "startedAt": started_at,
        "finishedAt": finished_at,
        "svms": svms,
        "summary": summary,
    }
    if check_mode:
        report["checkMode"] = True
    return report


def _block_key(block):
    role = "pending" if block.get("pending") else block.get("role")
    return "%s %s" % (role, block.get("serial"))


def _block_then(block, result):
    if block.get("role") == "active":
        if block.get("graceEndsAt"):
            return "grace ends %s" % block["graceEndsAt"]
        return "grace from when applied"
    if result == "would-apply":
        return "would be removed"
    return "removed" if block.get("dropped") else "-"


def blocklist_table(report):
    """The blocklist report for a person: a line per key blocked (SVM, slot, the key and its
    role, since when, then: when an active key's grace ends, or that a reserve was removed,
    the issuer's reason), a line for an SVM where it blocks nothing or that refused it, then
    the summary."""
    rows = [("SVM", "RESULT", "SLOT", "KEY", "BLOCKED SINCE", "THEN", "DETAIL")]
    for svm in report["svms"]:
        blocks = svm.get("blocks") or []
        for index, block in enumerate(blocks):
            rows.append(
                (
                    svm["host"] if index == 0 else "",
                    svm["result"] if index == 0 else "",
                    block.get("slot") or "-",
                    _block_key(block),
                    block.get("since") or "-",
                    _block_then(block, svm["result"]),
                    _one_line(block.get("reason") or ""),
                )
            )
        if blocks:
            continue
        if svm["result"] in ("applied", "would-apply", "unchanged"):
            detail = "blocks no key of this SVM"
        elif svm["result"] == "refused":
            detail = "%s %s: %s" % (svm.get("rule"), svm.get("code"), _one_line(svm.get("message") or ""))
        else:
            detail = svm.get("message") or ""
        rows.append((svm["host"], svm["result"], "-", "-", "-", "-", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        ("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]).rstrip()
        for row in rows
    ]
    summary = report["summary"]
    blocks = [(svm["host"], block) for svm in report["svms"] for block in svm.get("blocks") or []]
    active = [block for _host, block in blocks if block.get("role") == "active"]
    text = "Blocklist %s of %s (%s entr%s)%s on %d SVM%s: %s" % (
        report.get("sequence"),
        report.get("issuer"),
        report.get("entries"),
        "y" if report.get("entries") == 1 else "ies",
        " in check mode, nothing changed," if report.get("checkMode") else "",
        len(report["svms"]),
        "" if len(report["svms"]) == 1 else "s",
        ", ".join("%d %s" % (summary[name], name) for name in BLOCKLIST_RESULTS),
    )
    if blocks:
        hosts = len(set(host for host, _block in blocks))
        text += "; %d key%s blocked on %d SVM%s: %d active" % (
            len(blocks), "" if len(blocks) == 1 else "s", hosts, "" if hosts == 1 else "s", len(active))
        graces = sorted((b["graceEndsAt"] for b in active if b.get("graceEndsAt")), key=_instant_key)
        if graces:
            text += " (the first grace ends %s)" % graces[0]
        others = len(blocks) - len(active)
        text += ", %d reserve%s %s" % (others, "" if others == 1 else "s",
                                       "to remove" if report.get("checkMode") else "removed")
    elif any(svm["result"] in ("applied", "would-apply", "unchanged") for svm in report["svms"]):
        text += "; it blocks no key of these SVMs"
    else:
        text += "; no SVM took it"
    lines.append("")
    lines.append(text)
    return "\n".join(lines)


def _instant_key(text):
    moment = parse_rfc3339(text)
    return (moment is None, moment or datetime.datetime.min, text or "")


def blocked_keys(status):
    """The active keys a GetStatus reply shows blocked (rules B1, B2): each with its slot,
    serial, since, reason, learnedAt, graceEndsAt (it counts as expired then), lapsedAt (the
    grace ended and nothing valid took over), and what takes over at the grace's end:
    takeover, takeoverSerial and takeoverFrom (the successor's notBefore; a successor that
    starts after the grace's end leaves the slot expired until then). An agent before 0.5.0
    shows none."""
    found = []
    for entry in status.get("slots", []):
        block = entry.get("activeBlocked")
        active = entry.get("active") or {}
        if not block:
            continue
        successor = entry.get("reserve") or entry.get("pending") or {}
        item = {
            "slot": entry.get("slot"),
            "serial": active.get("serial"),
            "since": block.get("since"),
            "reason": block.get("reason") or "",
            "learnedAt": block.get("learnedAt"),
            "graceEndsAt": block.get("graceEndsAt"),
            "takeover": entry.get("takeover"),
            "takeoverSerial": successor.get("serial"),
            "takeoverFrom": successor.get("notBefore"),
        }
        if block.get("lapsedAt"):
            item["lapsedAt"] = block["lapsedAt"]
        found.append(item)
    return found


def blocked_then(item):
    """What happens at the end of a blocked key's grace, in words, for the table."""
    takeover = item.get("takeover")
    if item.get("lapsedAt"):
        return "LAPSED at %s" % item["lapsedAt"] + (
            ": %s takes over from %s" % (item["takeoverSerial"], item["takeoverFrom"]) if item.get("takeoverSerial") else "")
    if takeover in ("reserve", "pending-renewal") and item.get("takeoverSerial"):
        what = "reserve" if takeover == "reserve" else "renewed"
        starts, ends = parse_rfc3339(item.get("takeoverFrom")), parse_rfc3339(item.get("graceEndsAt"))
        if starts and ends and starts > ends:
            return "%s %s only from %s: LAPSES between" % (what, item["takeoverSerial"], item["takeoverFrom"])
        return "%s %s takes over" % (what, item["takeoverSerial"])
    if takeover == "activation-code":
        return "renewed with the activation code"
    return "nothing takes over: LAPSES"


def blocked_lines(blocked):
    """The fleet status table's section of the keys blocked: a key a line."""
    rows = [("KEYS BLOCKED", "SLOT", "SERIAL", "SINCE", "GRACE ENDS", "THEN", "REASON")]
    for entry in blocked:
        rows.append(
            (
                entry["host"],
                entry.get("slot") or "-",
                entry.get("serial") or "-",
                entry.get("since") or "-",
                entry.get("graceEndsAt") or "-",
                blocked_then(entry),
                _one_line(entry.get("reason") or ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        ("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]).rstrip()
        for row in rows
    ]


def blocked_sentence(blocked):
    """The fleet status summary's words on the keys blocked, after "; "."""
    if not blocked:
        return ""
    hosts = len(set(entry["host"] for entry in blocked))
    return "; %d key%s blocked on %d SVM%s" % (
        len(blocked), "" if len(blocked) == 1 else "s", hosts, "" if hosts == 1 else "s")
