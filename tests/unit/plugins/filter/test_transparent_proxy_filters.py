# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the transparent_proxy role's decisions (filters)."""

from ansible_collections.hostmesh.sidecar.plugins.filter.transparent_proxy_guard_needed import FilterModule as GuardFilterModule
from ansible_collections.hostmesh.sidecar.plugins.filter.transparent_proxy_inbound_excludes import (
    FilterModule,
    guard_needed,
    inbound_excludes,
)


def test_ssh_and_ansible_port_are_added_once():
    assert inbound_excludes([22]) == ["22"]
    assert inbound_excludes([22], False, 22) == ["22"]
    assert inbound_excludes([8443, "9000-9010"], False, 2222) == ["8443", "9000-9010", "22", "2222"]
    assert inbound_excludes([], "false", "2222") == ["22", "2222"]


def test_no_ansible_port_means_ssh():
    assert inbound_excludes([], False, None) == ["22"]
    assert inbound_excludes([], False, "") == ["22"]


def test_capture_ssh_keeps_only_the_users_ports():
    assert inbound_excludes([22, 8443], True, 2222) == ["22", "8443"]
    assert inbound_excludes([], "yes", 2222) == []
    assert inbound_excludes(None, True) == []


def test_duplicates_and_types_are_normalised():
    assert inbound_excludes(["22", 22, " 8080 ", 8080]) == ["22", "8080"]


def test_guard_only_when_live_rules_change():
    change = {"changed": True, "restore_input": {"ipv4": "*nat\n...\nCOMMIT\n"}}
    assert guard_needed(change) is True
    assert guard_needed(change, True, False) is True
    assert guard_needed({"changed": False, "restore_input": {}}) is False
    assert guard_needed({"changed": False}) is False
    assert guard_needed(None) is False


def test_guard_off_in_check_mode_or_without_the_connectivity_check():
    change = {"restore_input": {"ipv6": "x"}}
    assert guard_needed(change, False, False) is False
    assert guard_needed(change, "false", False) is False
    assert guard_needed(change, True, True) is False
    assert guard_needed(change, "True", "False") is True


def test_filter_names():
    # One filter per file, so ansible-doc shows each filter's own documentation.
    assert FilterModule().filters() == {"transparent_proxy_inbound_excludes": inbound_excludes}
    assert GuardFilterModule().filters() == {"transparent_proxy_guard_needed": guard_needed}
