#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: license_activation
short_description: Activate an SVM's licence with an activation code
version_added: "0.1.0"
description:
  - Manual activation (rule C5). The license agent exchanges the activation code for a key at
    the activation server configured in C(agent.toml) (C([activation] url)), adds the key as
    the slot's active or reserve key, and keeps the code to renew the key at its expiry.
    It also clears a pending MANUAL_ACTIVATION_REQUIRED alert.
  - Goes through the agent's Varlink control interface (C(io.licenseagent.Agent.Activate)).
    The code travels on the agent's Unix socket only, never on a command line, and is never
    returned, logged or written by this module (its parameter is C(no_log)). Results show
    only its last 5 characters.
  - Idempotent. When a key the SVM holds in that role already came from a code ending in the
    same 5 characters, the result is C(unchanged) and the server is not asked (O(force)
    asks anyway).
  - Runs on the SVM with Python's standard library only.
author:
  - license-agent authors (@license-agent)
extends_documentation_fragment:
  - licenseagent.svm.agent
options:
  code:
    description:
      - The activation code, 4 groups of 5 letters or digits joined by C(-) (lower case is
        accepted). Secret; read it from a vault or a protected file on the controller.
    type: str
    required: true
  role:
    description:
      - Add the key obtained as the slot's C(active) key or as its C(reserve).
    type: str
    choices: [active, reserve]
    default: active
  force:
    description:
      - Ask the activation server even when a key from the same code is already held.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for the agent's reply (the agent waits for the activation server
        within its own C(attempt-timeout)).
    type: float
    default: 120
attributes:
  check_mode:
    support: partial
    description: Checks the code's format and that the agent answers. The activation server
      is not asked, so a refusal by the server shows only in a real run.
    details: In check mode the result is C(would-activate) when the code is well formed and
      the agent answers; whether the server gives a key for it, and which, is known only in a
      real run.
  diff_mode:
    support: none
    description: The key is known only once the server gave it.
notes:
  - Needs root or membership of the agent's admin group (C(license-admin)).
seealso:
  - module: licenseagent.svm.license_key
  - module: licenseagent.svm.license_status_info
"""

EXAMPLES = r"""
- name: Activate with the code kept in a protected file on the controller
  licenseagent.svm.license_activation:
    code: "{{ lookup('ansible.builtin.file', '/root/secrets/svm-code.txt') }}"
    role: active
  no_log: true
"""

RETURN = r"""
result:
  description: C(activated), C(would-activate) (check mode), C(unchanged), C(refused) or C(failed).
  returned: always
  type: str
  sample: activated
code_hint:
  description: The last 5 characters of the code; never the code.
  returned: when the code has a valid format
  type: str
  sample: "67890"
slot:
  description: The slot of the key obtained.
  returned: when activated or unchanged
  type: str
serial:
  description: The serial of the key obtained.
  returned: when activated or unchanged
  type: str
key_info:
  description: The key as the agent holds it.
  returned: when activated or unchanged
  type: dict
error:
  description: The activation server's or the rule's error code (e.g. C(code_blocked), C(R5 expires_before_active)).
  returned: when refused or failed
  type: str
transient:
  description: True when the failure was the network or the server, worth trying again later.
  returned: when the activation server did not give a key
  type: bool
message:
  description: What happened and what to do.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.licenseagent.svm.plugins.module_utils import agent as la
from ansible_collections.licenseagent.svm.plugins.module_utils.varlink import (
    Client,
    agent_options,
    ConnectionFailed,
    VarlinkError,
)


def held_from_code(status, role, hint):
    for entry in status.get("slots", []):
        key = entry.get(role)
        if key and key.get("source") == "activation-code" and key.get("codeHint") == hint:
            return entry.get("slot"), key
    return None, None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            code=dict(type="str", required=True, no_log=True),
            role=dict(type="str", choices=["active", "reserve"], default="active"),
            force=dict(type="bool", default=False),
            **agent_options(timeout=120.0)
        ),
        supports_check_mode=True,
    )
    role = module.params["role"]
    result = dict(changed=False, role=role)
    try:
        code = la.normalize_code(module.params["code"])
    except ValueError as error:
        module.fail_json(msg=str(error), result="failed", message=str(error), **result)
    result["code_hint"] = la.code_hint(code)

    try:
        with Client(module.params["socket"], module.params["timeout"]) as client:
            status = client.agent("GetStatus")
            slot, key = held_from_code(status, role, result["code_hint"])
            if key and not module.params["force"]:
                result.update(
                    result="unchanged", slot=slot, serial=key.get("serial"), key_info=key,
                    message="The %s %s key %s already came from this activation code." % (slot, role, key.get("serial")),
                )
                module.exit_json(**result)
            if module.check_mode:
                result.update(
                    changed=True, result="would-activate",
                    message="Would ask the activation server for a key for the code ending in %s." % result["code_hint"],
                )
                module.exit_json(**result)
            try:
                reply = client.agent("Activate", {"code": code, "role": role})
            except VarlinkError as error:
                parameters = error.parameters
                if error.short_name == "RuleViolation":
                    result.update(la.rule_fields(parameters), result="refused")
                    result["error"] = "%s %s" % (parameters.get("rule"), parameters.get("code"))
                elif error.short_name == "ActivationFailed":
                    result.update(
                        result="refused" if not parameters.get("transient") else "failed",
                        error=parameters.get("error"), transient=bool(parameters.get("transient")),
                        message=parameters.get("message"),
                    )
                else:
                    result.update(result="failed", message=str(error))
                module.fail_json(msg=result.get("message") or str(error), **result)
    except ConnectionFailed as error:
        module.fail_json(msg=str(error), result="failed", message=str(error), **result)

    key = reply.get("key") or {}
    result.update(
        changed=True, result="activated", slot=reply.get("slot"), serial=key.get("serial"), key_info=key,
        message=reply.get("message") or "",
    )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
