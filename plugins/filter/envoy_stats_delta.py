# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The envoy_stats_delta filter (its own file, so ansible-doc shows its own documentation)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: envoy_stats_delta
short_description: How much Envoy's counters grew between two /stats readings
version_added: 0.2.0
description:
  - Compares two readings of Envoy's admin C(/stats) endpoint (text or parsed by
    P(hostmesh.sidecar.envoy_stats#filter)). A stat missing from a reading counts as 0.
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The later reading.
    type: raw
    required: true
  before:
    description: The earlier reading.
    type: raw
    required: true
  name:
    description: Return only the growth of this stat, as an integer.
    type: str
"""

EXAMPLES = r"""
- name: The request was counted once by the inbound listener
  ansible.builtin.assert:
    that:
      - after.content | hostmesh.sidecar.envoy_stats_delta(before.content, 'tcp.inbound_8080.downstream_cx_total') == 1
"""

RETURN = r"""
_value:
  description: Stat name to growth, or with O(name) the growth of that stat.
  type: raw
"""

from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_stats import envoy_stats_delta


class FilterModule:
    def filters(self):
        return {"envoy_stats_delta": envoy_stats_delta}
