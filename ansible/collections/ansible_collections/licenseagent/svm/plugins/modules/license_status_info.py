#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: license_status_info
short_description: Read an SVM's licence status as structured data
version_added: "0.1.0"
description:
  - Reads the license agent's status through its Varlink control interface
    (C(io.licenseagent.Agent.GetStatus)), that is every slot in use with its active and reserve key,
    what takes over at expiry, the renewal of an activation code's key, warnings, pending
    alerts and the next instant the agent will act.
  - Any local user may read the status; no privilege is needed.
  - Changes nothing; runs on the SVM with Python's standard library only.
  - Named C(license_status) before 0.2.0 (C(*_info), as read-only modules are); the old name
    still works, as a redirect.
author:
  - license-agent authors (@license-agent)
extends_documentation_fragment:
  - licenseagent.svm.agent
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
seealso:
  - module: licenseagent.svm.license_key
"""

EXAMPLES = r"""
- name: Read the licence status
  licenseagent.svm.license_status_info:
  register: licence

- name: Fail where a slot has lapsed
  ansible.builtin.assert:
    that: licence.slots | selectattr('status', 'ne', 'active') | list | length == 0
"""

RETURN = r"""
status:
  description: The whole reply of C(GetStatus) (schemaVersion 1), as C(agentctl status --json) prints it.
  returned: always
  type: dict
slots:
  description:
    - Every slot in use. Each has C(slot), C(status) (C(active), C(expired), C(renewing)),
      C(active) and C(reserve) keys (serial, issuer, edition, licenseType, units, notBefore,
      expiresAt, source, codeHint), C(takeover) (C(reserve), C(activation-code), C(none)),
      C(secondsLeft) and C(renewal).
    - With an agent that knows consumers (rule N2), a slot with an active key and a consumer
      expected or that confirmed a key of it has C(consumers), each with C(consumer),
      C(expected), C(state) (C(confirmed); C(waiting); C(late), not confirmed within
      C(confirm-within); C(unconfirmed), neither expected nor confirmed), C(confirmedSerial)
      and C(confirmedAt) (the serial it last confirmed, and when) and C(dueAt) (while it is
      awaited).
    - With an agent that knows blocklists (rules B1, B2; 0.5.0), a slot whose active key its
      issuer blocked has C(activeBlocked), with C(since) and C(reason) (the issuer's), C(learnedAt)
      (when the agent learned of it), C(graceEndsAt) (the key counts as expired then) and
      C(lapsedAt) (the grace ended and what takes over is not valid yet); the warning
      C(key_blocked) says so.
  returned: always
  type: list
  elements: dict
agent_warnings:
  description:
    - The agent's warnings for a person (no reserve, a slot expiring with nothing to take
      over, C(consumer_not_updated) for an expected consumer late confirming the active key...),
      each with C(slot), C(code) and C(message). (Not C(warnings), which Ansible keeps for its
      own.)
  returned: always
  type: list
  elements: dict
alerts:
  description: Pending alerts (C(manual_activation_required)).
  returned: always
  type: list
  elements: str
next_action:
  description: The next instant the agent will act, what it will do, on which slot and key.
  returned: when the agent has something planned
  type: dict
version:
  description: The agent's version.
  returned: always
  type: str
  sample: 0.1.0
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.licenseagent.svm.plugins.module_utils.varlink import (
    Client,
    agent_options,
    ConnectionFailed,
    VarlinkError,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **agent_options()
        ),
        supports_check_mode=True,
    )
    try:
        with Client(module.params["socket"], module.params["timeout"]) as client:
            status = client.agent("GetStatus")
    except (ConnectionFailed, VarlinkError) as error:
        module.fail_json(msg=str(error))
    module.exit_json(
        changed=False,
        status=status,
        slots=status.get("slots", []),
        agent_warnings=status.get("warnings", []),
        alerts=status.get("alerts", []),
        next_action=status.get("nextAction"),
        version=status.get("version"),
    )


if __name__ == "__main__":
    main()
