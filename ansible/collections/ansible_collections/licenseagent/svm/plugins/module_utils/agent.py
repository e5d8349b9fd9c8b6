# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules know of the license agent: key claims, slots, and results.

Pure functions of plain values, shared by the modules (on the SVM) and the report filters
(on the controller), and unit-tested without an agent.
"""

from __future__ import annotations

import base64
import json
import re

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
        return entry
    entry["result"] = "failed"
    if outcome.get("slot"):
        entry["slot"] = outcome["slot"]
    if not outcome:
        entry["message"] = "no result: the task did not run on this host (an earlier failure?)"
    else:
        entry["message"] = _one_line(outcome.get("message") or outcome.get("msg") or "failed without a message")
    return entry


def activation_report(hosts, outcomes, role, serial, started_at, finished_at, check_mode=False):
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
    )
    return "\n".join(line.rstrip() for line in lines)


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
            }
        )
    alerts = list(status.get("alerts", []))
    lapses = [s["lapsesAt"] for s in slots if s["lapsesAt"] is not None]
    # The agent's health (0.2.0: agentctl's exit status) says whether a person is needed;
    # an older agent's is worked out from its alerts and slots.
    health = status.get("health")
    if alerts:
        state = "alert"
    elif health == 2 or (health is None and any(s["status"] != "active" for s in slots)):
        state = "expired"
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
    }
    if status.get("nextAction"):
        result["nextAction"] = status["nextAction"]
    if status.get("warnings"):
        result["warnings"] = status["warnings"]
    return result


_STATE_RANK = {"alert": 0, "expired": 0, "unreachable": 1, "failed": 1, "no-key": 2, "ok": 3}


def fleet_status(hosts, outcomes, generated_at):
    """The fleet status report: SVMs with an alert or an expired slot first, then those that
    cannot be read, then by the soonest lapse with nothing to take over (RFC 3339 UTC
    strings sort as instants), SVMs that never lapse (activation codes) last."""
    svms = [fleet_entry(host, outcomes.get(host)) for host in hosts]
    svms.sort(
        key=lambda s: (
            _STATE_RANK[s["state"]],
            s["soonestLapse"] is None,
            s["soonestLapse"] or "",
            s["host"],
        )
    )
    summary = {}
    for svm in svms:
        summary[svm["state"]] = summary.get(svm["state"], 0) + 1
    return {"task": "status", "generatedAt": generated_at, "svms": svms, "summary": summary}


def fleet_table(report):
    rows = [("SVM", "STATE", "SLOT", "ACTIVE", "UNTIL", "TAKEOVER", "LAPSES")]
    for svm in report["svms"]:
        if not svm["slots"]:
            rows.append((svm["host"], svm["state"], "-", "-", "-", "-", svm.get("message", "")))
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
                    active.get("serial") or "-",
                    active.get("expiresAt") or "-",
                    takeover,
                    slot["lapsesAt"] or "never (renewed)",
                )
            )
        if svm["alerts"]:
            rows.append(("", "", "alerts: " + ", ".join(svm["alerts"]), "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    summary = report["summary"]
    lines.append("")
    lines.append(
        "Fleet status: %d SVMs: %s"
        % (len(report["svms"]), ", ".join("%d %s" % (n, s) for s, n in sorted(summary.items())))
    )
    return "\n".join(lines)


def _brief(key):
    if not key:
        return None
    brief = {k: key[k] for k in ("serial", "expiresAt", "notBefore", "edition", "licenseType", "units") if k in key}
    if key.get("codeHint"):
        brief["codeHint"] = key["codeHint"]
    return brief
