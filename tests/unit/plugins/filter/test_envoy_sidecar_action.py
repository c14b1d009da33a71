# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the envoy_sidecar role's decisions (filters)."""

import base64
import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter import envoy_sidecar_binary_version, envoy_sidecar_version_matches
from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_sidecar_action import (
    FilterModule,
    served_config_sha1,
    sidecar_action,
)
from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_sidecar_binary_version import binary_version
from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_sidecar_mark_int import mark_int
from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_sidecar_version_matches import version_matches

SHA_A = "a" * 40
SHA_B = "b" * 40
UNCHANGED = {"changed": False}
CHANGED = {"changed": True}
SKIPPED = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}


def slurped(state):
    return {"content": base64.b64encode(json.dumps(state).encode()).decode(), "encoding": "base64"}


def test_nothing_managed_means_nothing_to_do():
    # systemd not managed, or check mode on a host without the unit: the start task was skipped.
    assert sidecar_action([CHANGED], SKIPPED, SKIPPED, SHA_A) == "none"
    assert sidecar_action([CHANGED], None, SKIPPED, SHA_A) == "none"


def test_a_start_takes_everything_up():
    assert sidecar_action([CHANGED], CHANGED, SKIPPED, SHA_A) == "start"


def test_unit_binary_or_supervisor_change_needs_a_full_restart():
    state = slurped({"serving_config_sha1": SHA_B})
    assert sidecar_action([UNCHANGED, SKIPPED, CHANGED], UNCHANGED, state, SHA_A) == "restart"
    # A loop result with one changed item counts, as with Ansible's `changed` test.
    looped = {"changed": False, "results": [UNCHANGED, CHANGED]}
    assert sidecar_action([looped], UNCHANGED, state, SHA_A) == "restart"


def test_hot_restart_only_when_the_served_config_differs():
    assert sidecar_action([UNCHANGED, SKIPPED], UNCHANGED, slurped({"serving_config_sha1": SHA_B}), SHA_A) == "hot_restart"
    # Drift on disk that the template put back: the served bootstrap is the rendered one.
    assert sidecar_action([UNCHANGED], UNCHANGED, slurped({"serving_config_sha1": SHA_A}), SHA_A + "\n") == "none"
    assert sidecar_action([], UNCHANGED, {"serving_config_sha1": SHA_A}, SHA_A) == "none"


def test_unknown_served_config_is_hot_restarted():
    # No state file (slurp failed), or a supervisor that has no serving epoch recorded yet.
    assert sidecar_action([], UNCHANGED, {"failed": True, "msg": "file not found"}, SHA_A) == "hot_restart"
    assert sidecar_action([], UNCHANGED, slurped({"serving_config_sha1": None}), SHA_A) == "hot_restart"


def test_served_sha1_reads_the_supervisor_state():
    assert served_config_sha1(slurped({"serving_config_sha1": " %s\n" % SHA_A})) == SHA_A
    assert served_config_sha1(None) == ""
    with pytest.raises(AnsibleFilterError, match="not JSON"):
        served_config_sha1({"content": base64.b64encode(b"{broken").decode()})


def test_binary_version_from_envoy_output():
    output = "\nenvoy  version: 5a8a9d6f1c0b3e6d8e2c7a4f5b0e9d1c2a3b4c5d/1.40.0/Clean/RELEASE/BoringSSL\n"
    assert binary_version(output) == "1.40.0"
    assert binary_version("envoy: not a release") == ""
    assert binary_version(None) == ""


@pytest.mark.parametrize("found, pinned, expected", [
    ("1.40.0", "", True),
    ("1.40.0", None, True),
    ("", "", True),
    ("1.40.0", "1.40.0", True),
    ("1.40.3", "1.40", True),
    ("1.40.0", "1", True),
    ("1.40.0", "1.39.0", False),
    ("1.4.0", "1.40", False),
    ("1.400.0", "1.40", False),
    ("1.40.0", "1.4", False),
    ("", "1.40.0", False),
])
def test_only_a_pinned_version_is_checked(found, pinned, expected):
    assert version_matches(found, pinned) is expected


def test_filters_are_registered():
    assert FilterModule().filters() == {"envoy_sidecar_action": sidecar_action}
    assert envoy_sidecar_binary_version.FilterModule().filters() == {"envoy_sidecar_binary_version": binary_version}
    assert envoy_sidecar_version_matches.FilterModule().filters() == {"envoy_sidecar_version_matches": version_matches}


@pytest.mark.parametrize("mark, value", [
    ("0x1", 1), ("0X10", 16), ("16", 16), (16, 16), ("0xffffffff", 0xFFFFFFFF),
    # Not a usable mark: the role's validation refuses 0.
    ("0", 0), ("0x0", 0), ("0x100000000", 0), ("0xZZ", 0), ("1_0", 0), ("010", 0), ("", 0), (None, 0),
    ("0x10/0xff", 0), (True, 0),
])
def test_mark_uses_the_collection_integer_grammar(mark, value):
    assert mark_int(mark) == value
