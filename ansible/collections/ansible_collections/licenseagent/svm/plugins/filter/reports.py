# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the fleet playbooks run on the controller to build their reports."""

from __future__ import annotations

import os

from ansible.errors import AnsibleFilterError
from ansible_collections.licenseagent.svm.plugins.module_utils import agent as la


def _outcomes(hostvars, hosts, variable):
    outcomes = {}
    for host in hosts:
        try:
            value = hostvars[host].get(variable)
        except KeyError:
            value = None
        outcomes[host] = dict(value) if value else None
    return outcomes


def activation_report(
    hostvars, hosts, variable, role, serial, started_at, finished_at, check_mode=False, units=None
):
    """Contract section 9's report of the activation task over `hosts`."""
    return la.activation_report(
        list(hosts),
        _outcomes(hostvars, hosts, variable),
        role,
        serial,
        started_at,
        finished_at,
        check_mode,
        units if isinstance(units, int) else None,
    )


def fleet_status(hostvars, hosts, variable, generated_at):
    return la.fleet_status(list(hosts), _outcomes(hostvars, hosts, variable), generated_at)


def fleet_usage(hostvars, hosts, variable, generated_at):
    return la.fleet_usage(list(hosts), _outcomes(hostvars, hosts, variable), generated_at)


def blocklist_report(hostvars, hosts, variable, blocklist, started_at, finished_at, check_mode=False):
    """The blocklist task's report over `hosts` (playbooks/blocklist.yml)."""
    return la.blocklist_report(
        list(hosts), _outcomes(hostvars, hosts, variable), blocklist, started_at, finished_at, bool(check_mode)
    )


def key_claim(key, claim):
    """A claim of a licence key's payload (serial: jti; slot: the slot it goes to)."""
    try:
        claims = la.key_claims(key)
    except la.KeyFormatError as error:
        raise AnsibleFilterError("not a licence key: %s" % error) from None
    if claim == "slot":
        return la.key_slot(claims)
    if claim == "serial":
        return la.key_serial(claims)
    return claims.get(claim)


def report_path(name, default):
    """Where a playbook's report goes: `name` when absolute, else relative to the folder
    ansible-playbook runs in (not the playbook's, which may be an installed collection)."""
    name = name or default
    if os.path.isabs(name):
        return name
    return os.path.join(os.getcwd(), name)


class FilterModule(object):
    def filters(self):
        return {
            "activation_report": activation_report,
            "activation_table": la.activation_table,
            "blocklist_report": blocklist_report,
            "blocklist_table": la.blocklist_table,
            "report_failed": la.report_failed,
            "fleet_status": fleet_status,
            "fleet_table": la.fleet_table,
            "fleet_usage": fleet_usage,
            "usage_table": la.usage_table,
            "key_claim": key_claim,
            "report_path": report_path,
        }
