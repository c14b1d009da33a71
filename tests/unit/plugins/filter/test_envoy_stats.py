# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the Envoy /stats filters."""

from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_stats_delta import FilterModule as DeltaFilterModule
from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_stats import (
    FilterModule,
    envoy_stats_delta,
    parse_envoy_stats,
)

BEFORE = ("tcp.inbound_8080.downstream_cx_total: 3\n"
          "tcp.outbound_passthrough.downstream_cx_total: 10\n"
          "cluster.x.upstream_cx_length_ms: P0(nan,1.0) P25(nan,1.05)\n")
AFTER = ("tcp.inbound_8080.downstream_cx_total: 4\n"
         "tcp.outbound_passthrough.downstream_cx_total: 10\n"
         "tcp.inbound_9090.downstream_cx_total: 2\n")


def test_parse_skips_histograms():
    assert parse_envoy_stats(BEFORE) == {"tcp.inbound_8080.downstream_cx_total": 3,
                                         "tcp.outbound_passthrough.downstream_cx_total": 10}
    assert parse_envoy_stats("") == {} and parse_envoy_stats(None) == {}


def test_delta_of_one_stat_and_of_all():
    assert envoy_stats_delta(AFTER, BEFORE, "tcp.inbound_8080.downstream_cx_total") == 1
    assert envoy_stats_delta(AFTER, BEFORE, "tcp.inbound_9090.downstream_cx_total") == 2
    assert envoy_stats_delta(AFTER, BEFORE, "missing") == 0
    assert envoy_stats_delta(AFTER, parse_envoy_stats(BEFORE)) == {
        "tcp.inbound_8080.downstream_cx_total": 1,
        "tcp.inbound_9090.downstream_cx_total": 2,
        "tcp.outbound_passthrough.downstream_cx_total": 0,
    }


def test_filters_are_registered():
    # One filter per file, so ansible-doc shows each filter's own documentation.
    assert FilterModule().filters() == {"envoy_stats": parse_envoy_stats}
    assert DeltaFilterModule().filters() == {"envoy_stats_delta": envoy_stats_delta}
