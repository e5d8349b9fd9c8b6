#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: license_blocklist
short_description: Give an issuer's blocklist to an SVM and say which of its keys it blocks
version_added: "0.5.0"
description:
  - Gives a blocklist (rule B1), the signed list of the keys an issuer has blocked, to the
    SVM's license agent through its Varlink control interface
    (C(io.licenseagent.Agent.AddBlocklist)), exactly as C(agentctl add-blocklist) does, and
    returns the keys of this SVM it blocks.
  - The agent checks the list's signature against its trusted issuers and keeps, per issuer,
    the list with the highest sequence number (C(seq)) it has seen. An older list, or another
    list with the same sequence, is refused (C(blocklist_rollback)); so is a list of an
    issuer it does not trust (C(untrusted_issuer)), for another product (C(wrong_product)) or
    that cannot be read (C(invalid_blocklist)). A refusal fails the task with the rule (B1),
    its code and the agent's message.
  - A blocked active key keeps working until the end of its grace (rule B2; C([blocking] grace)
    in C(agent.toml), 8 days by default, from when the agent learns of the block), then counts
    as expired and the reserve takes over if it is valid then. A blocked reserve, or a key
    renewed ahead with an activation code, is removed at once (rule B3).
  - Idempotent. When the agent already keeps this very list the result is C(unchanged) and
    nothing is reported changed; RV(blocks) still lists what it blocks on this SVM.
  - Runs on the SVM with Python's standard library only.
author:
  - license-agent authors (@license-agent)
extends_documentation_fragment:
  - licenseagent.svm.agent
options:
  blocklist:
    description:
      - The blocklist, a compact JWS as C(license-keytool blocklist) prints it (the contents of
        a C(.jws) file; surrounding white space is ignored). In a playbook, read a file on the
        controller with C(lookup('ansible.builtin.file', path)).
      - A blocklist is public (it names serials and reasons, no secret).
    type: str
    required: true
attributes:
  check_mode:
    support: partial
    description: Changes nothing. Reads the list's claims locally, without checking its
      signature, and the SVM's keys (C(GetStatus)), and says which keys the list would block.
    details: The agent has no method that checks a blocklist without keeping it, so in check
      mode the signature, the trust of the issuer and a rollback (an older list) are not
      checked, and the result is C(would-apply) for any list that can be read and is for the
      agent's product. A blocked active key's grace end is known only for a key the agent
      already holds as blocked (it runs from when the agent learns of the block).
  diff_mode:
    support: none
    description: RV(blocks) says what the list blocks.
notes:
  - Giving a blocklist needs root or membership of the agent's admin group
    (C(license-admin)); use C(become) otherwise.
  - Lists in C(/etc/license-agent/blocklists/*.jws) on the SVM are read by the agent at start
    and on reload; this module needs no file on the SVM.
seealso:
  - module: licenseagent.svm.license_key
  - module: licenseagent.svm.license_status_info
  - name: agentctl(1)
    description: The operator's command on the SVM (C(agentctl add-blocklist FILE)).
    link: https://github.com/license-agent/license-agent
"""

EXAMPLES = r"""
- name: Give the issuer's latest blocklist to the SVM
  licenseagent.svm.license_blocklist:
    blocklist: "{{ lookup('ansible.builtin.file', 'blocklists/vendor-0042.jws') }}"
  register: blocked

- name: Say which active keys it blocks, and when their grace ends
  ansible.builtin.debug:
    msg: "{{ item.slot }} {{ item.serial }}: works until {{ item.graceEndsAt }}"
  loop: "{{ blocked.blocks | selectattr('role', 'eq', 'active') }}"
"""

RETURN = r"""
result:
  description:
    - What happened on this SVM. C(applied) (the agent keeps the list now), C(would-apply)
      (check mode), C(unchanged) (the agent already kept this list), C(refused) (rule B1; see
      RV(rule), RV(code), RV(message)), C(failed).
  returned: always
  type: str
  sample: applied
issuer:
  description: The list's issuer (its C(iss)), as the agent read it (in check mode, or when
    refused, as read here without checking the signature).
  returned: when the list could be read
  type: str
  sample: vendor
sequence:
  description: The list's sequence number (its C(seq)).
  returned: when the list could be read
  type: int
  sample: 42
entries:
  description: How many keys the list blocks, across every SVM.
  returned: when the list could be read
  type: int
  sample: 3
blocks:
  description:
    - The keys of this SVM the agent's kept lists block (in check mode, the keys this list
      would block), each with C(slot); C(role) (C(active) or C(reserve)); C(pending) (true for a
      key renewed ahead with an activation code, role C(reserve)); C(serial); C(since) (when the
      issuer blocked it); C(reason) (the issuer's words); C(dropped) (a reserve or pending key
      removed at once, rule B3); and, for an active key, C(graceEndsAt), when it stops working
      (rule B2).
  returned: when applied, would apply or unchanged
  type: list
  elements: dict
  sample:
    - slot: server
      role: active
      pending: false
      serial: KS-1
      since: "2027-01-01T09:00:00Z"
      reason: refunded
      dropped: false
      graceEndsAt: "2027-01-09T09:00:12Z"
rule:
  description: The licensing rule that refused the list.
  returned: when refused
  type: str
  sample: B1
code:
  description: The rule's error code (C(blocklist_rollback), C(invalid_blocklist),
    C(untrusted_issuer), C(wrong_product)).
  returned: when refused
  type: str
  sample: blocklist_rollback
message:
  description: The agent's sentences saying what happened and what to do.
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


def refuse(module, result, rule, code, message):
    result.update(result="refused", rule=rule, code=code, message=message)
    module.fail_json(msg="%s %s: %s" % (rule, code, message), **result)


def check(module, client, result, claims, error):
    """Check mode: what the list would block, read here against the SVM's keys."""
    if claims is None:
        refuse(module, result, "B1", "invalid_blocklist",
               "Refused: %s (read here in check mode; the agent would refuse it too)." % error)
    status = client.agent("GetStatus")
    product = status.get("product")
    if product and claims.get("product") != product:
        refuse(module, result, "B1", "wrong_product",
               "Blocklist %s of %s is for the product %s, not %s (read here in check mode)."
               % (claims["seq"], claims["iss"], claims.get("product"), product))
    blocks = la.predicted_blocks(status, claims)
    lines = ["Would give blocklist %s of %s (%d blocked key%s) to the agent; its signature is checked "
             "only then." % (claims["seq"], claims["iss"], len(claims["blocked"]),
                             "" if len(claims["blocked"]) == 1 else "s")]
    if not blocks:
        lines.append("It would block no key of this SVM.")
    for block in blocks:
        what = "active key" if block["role"] == "active" else "key renewed ahead" if block["pending"] else "reserve key"
        if block["role"] != "active":
            then = "it would be removed"
        elif block.get("graceEndsAt"):
            then = "it is already blocked; it keeps working until %s" % block["graceEndsAt"]
        else:
            then = "it would keep working until the end of its grace ([blocking] grace from when the agent learns of it)"
        lines.append("It would block the %s %s %s (since %s): %s." % (
            block["slot"], what, block["serial"], block["since"], then))
    result.update(changed=True, result="would-apply", blocks=blocks, message="\n".join(lines))
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            blocklist=dict(type="str", required=True),
            **agent_options()
        ),
        supports_check_mode=True,
    )
    text = (module.params["blocklist"] or "").strip()
    result = dict(changed=False)
    claims = error = None
    try:
        claims = la.blocklist_claims(text)
        result.update(issuer=claims["iss"], sequence=claims["seq"], entries=len(claims["blocked"]))
    except la.KeyFormatError as failure:
        error = failure  # the agent refuses it with B1 invalid_blocklist and says why

    try:
        with Client(module.params["socket"], module.params["timeout"]) as client:
            if module.check_mode:
                check(module, client, result, claims, error)
            try:
                reply = client.agent("AddBlocklist", {"blocklist": text})
            except VarlinkError as failure:
                if failure.short_name == "RuleViolation":
                    fields = la.rule_fields(failure.parameters)
                    refuse(module, result, fields["rule"], fields["code"], fields["message"])
                result.update(result="failed", message="the agent refused AddBlocklist: %s" % failure)
                module.fail_json(msg=result["message"], **result)
    except ConnectionFailed as failure:
        result.update(result="failed", message=str(failure))
        module.fail_json(msg=str(failure), **result)
    except VarlinkError as failure:
        result.update(result="failed", message="the agent answered with an error: %s" % failure)
        module.fail_json(msg=result["message"], **result)

    result.update(
        issuer=reply.get("issuer", result.get("issuer")),
        sequence=reply.get("sequence", result.get("sequence")),
        entries=reply.get("entries", result.get("entries")),
        blocks=[la.normalize_block(block) for block in reply.get("blocks") or []],
        message=reply.get("message") or "",
    )
    if reply.get("unchanged"):
        result.update(result="unchanged", changed=False)
    else:
        result.update(result="applied", changed=True)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
