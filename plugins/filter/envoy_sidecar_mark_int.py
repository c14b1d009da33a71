# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The envoy_sidecar role's packet mark as the number Envoy sets with SO_MARK, in the collection's one integer grammar."""

from __future__ import annotations

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import parse_int

DOCUMENTATION = r"""
name: envoy_sidecar_mark_int
short_description: The packet mark of the envoy_sidecar role as an integer
version_added: 0.2.0
description:
  - Reads C(envoy_sidecar_mark) with the integer grammar of the whole collection (decimal, or hexadecimal
    such as V(0x1); no C(_), no leading zeros), the same that M(hostmesh.sidecar.traffic_redirect) applies to
    the rules' mark, and returns the value Envoy sets with C(SO_MARK) on its upstream sockets.
  - V(0) when the value is not a usable mark (not an integer, V(0), or more than 32 bits); the role's validation
    refuses it then.
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The mark, for example V(0x1) or V(1).
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: The mark Envoy sets
  ansible.builtin.debug:
    msg: "{{ '0x10' | hostmesh.sidecar.envoy_sidecar_mark_int }}"  # 16
"""

RETURN = r"""
_value:
  description: The mark, 1 to 4294967295, or 0 when it is not a usable mark.
  type: int
"""

MARK_MAX = 0xFFFFFFFF


def mark_int(value) -> int:
    """The mark as an integer, 0 when it is not one (every unmarked socket has mark 0)."""
    try:
        return parse_int(value if isinstance(value, int) else str(value), 1, MARK_MAX)
    except ValueError:
        return 0


class FilterModule:
    def filters(self):
        return {"envoy_sidecar_mark_int": mark_int}
