#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: license_key
short_description: Add a licence key to an SVM as its active or reserve key, or remove a reserve
version_added: "0.1.0"
description:
  - The activation task of one SVM. Adds a licence key to the SVM's license agent as the
    active key of its slot or as the slot's reserve key, through the agent's Varlink control
    interface (C(io.licenseagent.Agent)), exactly as C(agentctl add-key) does.
  - The agent checks the key against the licensing rules (A1-A5 for an active key, R1-R9
    for a reserve). A refusal fails the task with the rule, its code and the agent's message.
  - Idempotent. When the SVM already holds that key in that role the result is C(unchanged)
    and nothing is reported changed.
  - In check mode the agent's C(CheckKey) runs the same checks and changes nothing.
  - In diff mode the slot before and after is shown.
  - With O(state=absent) the slot's reserve key is removed (C(RemoveReserve)).
  - Runs on the SVM with Python's standard library only.
author:
  - license-agent authors (@license-agent)
extends_documentation_fragment:
  - licenseagent.svm.agent
options:
  key:
    description:
      - The licence key, a compact JWS (the contents of a key file; surrounding white space
        is ignored).
      - Required with O(state=present). With O(state=absent) the reserve is removed only if
        it is this key.
      - Never shown in Ansible's output or logs (C(no_log)), since whoever holds a key can
        install it. Results name the key by its serial.
    type: str
  role:
    description:
      - C(active) adds the key as its slot's active key, C(reserve) as the key that takes over
        when the active key expires.
    type: str
    choices: [active, reserve]
    default: reserve
  state:
    description:
      - C(present) adds the key; C(absent) removes the reserve key of O(slot) (or of the
        slot of O(key)).
    type: str
    choices: [present, absent]
    default: present
  slot:
    description:
      - The slot whose reserve O(state=absent) removes, when no O(key) is given.
    type: str
    choices: [server, workstation, processors, cores]
  replace_scheme:
    description:
      - Confirms that an active key of another licensing scheme may remove every key of the
        old scheme (rule A2). Without it such a key is refused with C(scheme_conflict).
    type: bool
    default: false
  only_where_active:
    description:
      - For O(role=reserve), report C(skipped) instead of failing when the key's slot has no
        active key on this SVM. This is the fleet activation task's behaviour (a reserve is
        added only where the active key already is); the task then neither fails nor changes.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Runs the agent's C(CheckKey) instead of C(AddKey); nothing changes.
  diff_mode:
    support: full
    description: Shows the slot's keys before and after.
notes:
  - Adding keys needs root or membership of the agent's admin group (C(license-admin)); use
    C(become) otherwise.
seealso:
  - module: licenseagent.svm.license_status_info
  - module: licenseagent.svm.license_activation
  - name: agentctl(1)
    description: The operator's command on the SVM.
    link: https://github.com/license-agent/license-agent
"""

EXAMPLES = r"""
- name: Add the reserve key where the active key already is
  licenseagent.svm.license_key:
    key: "{{ lookup('ansible.builtin.file', 'keys/KS-2.jws') }}"
    role: reserve
    only_where_active: true

- name: Install a new active key, switching the SVM from vm-count to cores licensing
  licenseagent.svm.license_key:
    key: "{{ lookup('ansible.builtin.file', 'keys/cores-2027.jws') }}"
    role: active
    replace_scheme: true

- name: Remove the server slot's reserve key
  licenseagent.svm.license_key:
    slot: server
    state: absent
"""

RETURN = r"""
result:
  description:
    - What happened on this SVM, in the words of the activation task's report.
    - C(added), C(would-add) (check mode), C(unchanged) (already held in that role),
      C(refused) (a rule refused it; see RV(rule), RV(code), RV(message)), C(skipped)
      (O(only_where_active) and no active key in the slot), C(removed), C(absent)
      (nothing to remove), C(failed).
  returned: always
  type: str
  sample: added
slot:
  description: The key's slot.
  returned: when known
  type: str
  sample: server
role:
  description: The role asked for.
  returned: always
  type: str
  sample: reserve
serial:
  description: The key's serial (its C(jti)).
  returned: when the key could be read
  type: str
  sample: KS-2
rule:
  description: The licensing rule that refused the key (or, for C(skipped), R1).
  returned: when refused or skipped
  type: str
  sample: R5
code:
  description: The rule's error code.
  returned: when refused or skipped
  type: str
  sample: expires_before_active
message:
  description: The agent's sentence saying what happened and what to do.
  returned: always
  type: str
key_info:
  description: The key as the agent holds it (serial, issuer, slot, scheme, edition, licence type,
    units, validity, source).
  returned: when added, would be added, unchanged or removed
  type: dict
replaced_serial:
  description: The key that the added key replaced in that role.
  returned: when a key was replaced
  type: str
dropped_reserve_serial:
  description: The reserve key dropped because it would no longer take over (rule A4).
  returned: when a reserve was dropped
  type: str
usage:
  description:
    - The slot's last usage report on this SVM (rule U1) before the task, C(units),
      C(reportedAt), C(ageSeconds), C(stale), C(percent) and C(band) against the active key;
      the fleet activation task sums it into the reserve's coverage (rule U4).
  returned: when the SVM has a usage report for the key's slot
  type: dict
agent_warnings:
  description:
    - The agent's warnings about the key, each with C(slot), C(code) and C(message), for example
      C(reserve_units_short) for a reserve licensing fewer units than the slot uses (rule U3).
  returned: when the agent gave any
  type: list
  elements: dict
removed_serials:
  description: Keys of another scheme removed with O(replace_scheme) (rule A2).
  returned: when a key was added
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.licenseagent.svm.plugins.module_utils import agent as la
from ansible_collections.licenseagent.svm.plugins.module_utils.varlink import (
    Client,
    agent_options,
    ConnectionFailed,
    VarlinkError,
)


def fail(module, values, message, **fields):
    """Fails the task; `fields` (e.g. result="failed") go into the returned values."""
    values.update(fields)
    values["message"] = message
    module.fail_json(msg=message, **values)


def refused(module, result, error):
    result.update(la.rule_fields(error.parameters))
    result["result"] = "refused"
    module.fail_json(
        msg="%s %s: %s" % (result["rule"], result["code"], result["message"]),
        **result
    )


def added_fields(reply):
    fields = {"key_info": reply.get("key")}
    if reply.get("replacedSerial"):
        fields["replaced_serial"] = reply["replacedSerial"]
    if reply.get("droppedReserveSerial"):
        fields["dropped_reserve_serial"] = reply["droppedReserveSerial"]
    fields["removed_serials"] = reply.get("removedSerials") or []
    return fields


def present(module, client, result, status, key, slot):
    role = module.params["role"]
    usage = (la.slot_status(status, slot) or {}).get("usage") if slot else None
    if usage:
        result["usage"] = usage
    if slot and module.params["only_where_active"] and role == "reserve" and not la.active_key(status, slot):
        result.update(
            result="skipped",
            rule="R1",
            code="no_active_key",
            message="The %s slot has no active key on this SVM: the activation task adds a reserve "
            "only where the active key already is." % slot,
        )
        module.exit_json(**result)

    parameters = {"key": key, "role": role}
    if module.params["replace_scheme"]:
        parameters["replaceScheme"] = True
    method = "CheckKey" if module.check_mode else "AddKey"
    try:
        reply = client.agent(method, parameters)
    except VarlinkError as error:
        if error.short_name == "RuleViolation":
            if error.parameters.get("serial"):
                result["serial"] = error.parameters["serial"]
            refused(module, result, error)
        fail(module, result, "the agent refused %s: %s" % (method, error), result="failed")

    result["slot"] = reply.get("slot") or slot
    result.update(added_fields(reply))
    if reply.get("warnings"):
        result["agent_warnings"] = reply["warnings"]
    if reply.get("unchanged"):
        result.update(result="unchanged", changed=False, message=reply.get("message") or "already held")
        module.exit_json(**result)

    result["changed"] = True
    result["result"] = "would-add" if module.check_mode else "added"
    result["message"] = reply.get("message") or ""
    if module._diff:
        after = client.agent("GetStatus") if not module.check_mode else None
        result["diff"] = {
            "before": la.describe_slot(status, result["slot"]),
            "after": la.describe_slot(after, result["slot"])
            if after is not None
            else predicted_slot(status, result["slot"], role, reply),
        }
    module.exit_json(**result)


def predicted_slot(status, slot, role, reply):
    """The slot after the key is added, for check mode's diff (nothing was changed)."""
    entry = dict(la.slot_status(status, slot) or {"slot": slot, "status": "active", "takeover": "none"})
    entry[role] = reply.get("key")
    if role == "active":
        entry["status"] = "active"
        if reply.get("droppedReserveSerial"):
            entry["reserve"] = None
    if entry.get("reserve"):
        entry["takeover"] = "reserve"
    return la.describe_slot({"slots": [entry]}, slot)


def absent(module, client, result, status, serial, slot):
    slot = slot or module.params["slot"]
    if not slot:
        fail(module, result, "state=absent needs the slot (or the key) whose reserve to remove", result="failed")
    result["slot"] = slot
    reserve = la.held_key(status, slot, "reserve")
    if reserve is None or (serial and reserve.get("serial") != serial):
        result.update(result="absent", message="The %s slot holds no such reserve key: nothing to remove." % slot)
        module.exit_json(**result)
    result.update(changed=True, result="removed", key_info=reserve, serial=reserve.get("serial"))
    if module._diff:
        after = dict(la.slot_status(status, slot))
        after["reserve"] = None
        after["takeover"] = "activation-code" if (after.get("active") or {}).get("codeHint") else "none"
        result["diff"] = {
            "before": la.describe_slot(status, slot),
            "after": la.describe_slot({"slots": [after]}, slot),
        }
    if not module.check_mode:
        try:
            client.agent("RemoveReserve", {"slot": slot})
        except VarlinkError as error:
            fail(module, result, "the agent refused RemoveReserve: %s" % error, result="failed", changed=False)
    result["message"] = "Removed reserve %s from the %s slot." % (reserve.get("serial"), slot)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            key=dict(type="str", no_log=True),
            role=dict(type="str", choices=["active", "reserve"], default="reserve"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            slot=dict(type="str", choices=list(la.SLOTS)),
            replace_scheme=dict(type="bool", default=False),
            only_where_active=dict(type="bool", default=False),
            **agent_options()
        ),
        required_if=[("state", "present", ("key",))],
        supports_check_mode=True,
    )
    key = (module.params["key"] or "").strip()
    result = dict(changed=False, role=module.params["role"])
    slot = serial = None
    if key:
        try:
            claims = la.key_claims(key)
            slot, serial = la.key_slot(claims), la.key_serial(claims)
        except la.KeyFormatError:
            pass  # the agent refuses it with its rule (A1/R8 invalid_key) and says why
    if slot:
        result["slot"] = slot
    if serial:
        result["serial"] = serial
    if module.params["state"] == "absent" and module.params["role"] != "reserve":
        fail(module, result, "state=absent removes a reserve key: set role=reserve", result="failed")

    try:
        with Client(module.params["socket"], module.params["timeout"]) as client:
            status = client.agent("GetStatus")
            if module.params["state"] == "present":
                present(module, client, result, status, key, slot)
            else:
                absent(module, client, result, status, serial, slot)
    except ConnectionFailed as error:
        fail(module, result, str(error), result="failed")
    except VarlinkError as error:
        fail(module, result, "the agent answered with an error: %s" % error, result="failed")


if __name__ == "__main__":
    main()
