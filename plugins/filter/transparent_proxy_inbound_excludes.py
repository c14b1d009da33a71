# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Decisions of the transparent_proxy role, made here so they have unit tests instead of YAML expressions."""

from __future__ import annotations

DOCUMENTATION = r"""
name: transparent_proxy_inbound_excludes
short_description: The inbound ports the transparent_proxy role never captures
version_added: 0.2.0
description:
  - The user's inbound exclusions plus SSH (22) and the port Ansible connects on, unless capturing SSH is asked for.
  - Each port (or C(first-last) range) once, as strings, in the order first seen.
  - The companion filter P(hostmesh.sidecar.transparent_proxy_guard_needed#filter) decides whether a rules change
    runs under the rollback guard.
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The user's inbound exclusions (C(transparent_proxy_inbound_exclude_ports)).
    type: list
    elements: raw
    required: true
  capture_ssh:
    description: Capture SSH and the Ansible port too (C(transparent_proxy_capture_ssh)).
    type: bool
    default: false
  ansible_port:
    description: The port Ansible connects on (C(ansible_port)); 22 when not set.
    type: raw
"""

EXAMPLES = r"""
- name: Ports never captured inbound
  ansible.builtin.debug:
    msg: "{{ [8443] | hostmesh.sidecar.transparent_proxy_inbound_excludes(false, 2222) }}"  # ['8443', '22', '2222']
"""

RETURN = r"""
_value:
  description: Ports and port ranges, each once, as strings.
  type: list
  elements: str
"""

SSH_PORT = 22


def inbound_excludes(excludes, capture_ssh=False, ansible_port=None) -> list:
    """The user's exclusions, then SSH and Ansible's port (kept direct so the controller never locks itself out)."""
    ports = list(excludes or [])
    if not _truthy(capture_ssh):
        ports += [SSH_PORT, SSH_PORT if ansible_port in (None, "") else ansible_port]
    seen = []
    for port in ports:
        text = str(port).strip()
        if text not in seen:
            seen.append(text)
    return seen


def guard_needed(preview, connectivity_check=True, check_mode=False) -> bool:
    """Whether applying the rules needs the rollback guard.

    ``preview`` is the traffic_redirect result of the same options in check mode: its
    ``restore_input`` (per family) is what the real run would feed to iptables-restore. Only a
    run that changes the live rules can lock the controller out; check mode changes nothing.
    """
    if not _truthy(connectivity_check) or _truthy(check_mode):
        return False
    restore_input = (preview or {}).get("restore_input") or {}
    return len(restore_input) > 0


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


class FilterModule:
    def filters(self):
        # transparent_proxy_guard_needed is registered by transparent_proxy_guard_needed.py (its own documentation).
        return {"transparent_proxy_inbound_excludes": inbound_excludes}
