# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The transparent_proxy_guard_needed filter (its own file, so ansible-doc shows its own documentation)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: transparent_proxy_guard_needed
short_description: Whether a rules change of the transparent_proxy role runs under the rollback guard
version_added: 0.2.0
description:
  - True when the connectivity check is on, the run is not in check mode, and the check-mode preview of
    M(hostmesh.sidecar.traffic_redirect) shows the live rules will change (a non-empty C(restore_input)).
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The registered check-mode result of M(hostmesh.sidecar.traffic_redirect).
    type: dict
    required: true
  connectivity_check:
    description: C(transparent_proxy_connectivity_check).
    type: bool
    default: true
  check_mode:
    description: C(ansible_check_mode).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Arm the rollback guard only when the rules change
  ansible.builtin.command: /usr/local/libexec/hostmesh/rollback-guard.sh arm 60
  when: preview | hostmesh.sidecar.transparent_proxy_guard_needed(true, ansible_check_mode)
"""

RETURN = r"""
_value:
  description: Whether to arm the guard.
  type: bool
"""

from ansible_collections.hostmesh.sidecar.plugins.filter.transparent_proxy_inbound_excludes import guard_needed


class FilterModule:
    def filters(self):
        return {"transparent_proxy_guard_needed": guard_needed}
