# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the mesh filters (plugins/filter/mesh_*.py): they adapt Ansible values to _mesh."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.mesh_spiffe_id import FilterModule as SpiffeFilterModule
from ansible_collections.hostmesh.sidecar.plugins.filter.mesh_spiffe_id import mesh_spiffe_id


def test_spiffe_id_is_registered_and_formats_the_identity():
    assert SpiffeFilterModule().filters()["mesh_spiffe_id"] is mesh_spiffe_id
    assert mesh_spiffe_id("hostmesh.local", "alpha") == "spiffe://hostmesh.local/host/alpha"


@pytest.mark.parametrize("trust_domain,reason", [
    ("", "non-empty"),
    ("spiffe://example.org", "no scheme"),
    ("example.org:8443", "no port"),
    ("example.org/x", "no path"),
    ("Example.org", "lowercase"),
    ("a" * 256, "at most 255"),
    (None, "non-empty"),
])
def test_spiffe_id_refuses_a_bad_trust_domain(trust_domain, reason):
    with pytest.raises(AnsibleFilterError, match=f"^hostmesh_trust_domain .*{reason}"):
        mesh_spiffe_id(trust_domain, "alpha")


@pytest.mark.parametrize("hostname", ["", ".", "..", "al pha", "a/b", "é"])
def test_spiffe_id_refuses_a_hostname_that_is_no_path_segment(hostname):
    with pytest.raises(AnsibleFilterError, match="^inventory_hostname .*cannot name a mesh identity"):
        mesh_spiffe_id("hostmesh.local", hostname)
