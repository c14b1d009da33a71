# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filters that read Envoy's admin C(/stats) text: the one place counters are parsed and compared."""

from __future__ import annotations

DOCUMENTATION = r"""
name: envoy_stats
short_description: Parse the text of Envoy's admin /stats endpoint into counters
version_added: 0.2.0
description:
  - "Turns the plain-text output of Envoy's admin C(/stats) endpoint (one C(NAME: VALUE) line per stat) into a
    dictionary of integer counters and gauges. Histogram lines (whose values are not integers) are left out."
  - The companion filter P(hostmesh.sidecar.envoy_stats_delta#filter) compares two readings.
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The text returned by C(/stats), or an already parsed dictionary (returned as it is).
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Read the inbound listener's connection counter
  ansible.builtin.debug:
    msg: "{{ (stats.content | hostmesh.sidecar.envoy_stats)['tcp.inbound_8080.downstream_cx_total'] }}"
"""

RETURN = r"""
_value:
  description: Stat name to integer value.
  type: dict
"""


def parse_envoy_stats(text) -> dict:
    """``name: value`` lines to {name: int}; histograms and other non-integers are skipped."""
    if isinstance(text, dict):
        return dict(text)
    stats = {}
    for line in str(text or "").splitlines():
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        try:
            stats[name.strip()] = int(value.strip())
        except ValueError:
            continue
    return stats


def envoy_stats_delta(after, before, name=None):
    """How much each stat grew from ``before`` to ``after`` (missing counts as 0).

    With ``name``, the growth of that one stat as an int; without, a dict of every stat's growth.
    """
    after_stats, before_stats = parse_envoy_stats(after), parse_envoy_stats(before)
    if name is not None:
        return after_stats.get(name, 0) - before_stats.get(name, 0)
    names = set(after_stats) | set(before_stats)
    return {n: after_stats.get(n, 0) - before_stats.get(n, 0) for n in sorted(names)}


class FilterModule:
    def filters(self):
        # envoy_stats_delta is registered by envoy_stats_delta.py, which has its own documentation.
        return {"envoy_stats": parse_envoy_stats}
