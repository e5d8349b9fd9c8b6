# -*- coding: utf-8 -*-
# Copyright: license-agent authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options every module of the collection has: how to reach the agent."""

from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  socket:
    description:
      - The agent's control socket (contract section 6). Playbooks pass the inventory
        variable C(license_agent_socket) when it is set.
    type: path
    default: /run/license-agent/io.licenseagent.Agent
  timeout:
    description:
      - Seconds to wait for the agent's reply.
    type: float
    default: 30
"""
