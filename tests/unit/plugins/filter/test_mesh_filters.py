# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the mesh filters (plugins/filter/mesh_*.py): they adapt Ansible values to _mesh."""

from collections.abc import Mapping

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.filter.mesh_model import FilterModule as ModelFilterModule
from ansible_collections.hostmesh.sidecar.plugins.filter.mesh_model import mesh_model
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


class LazyHostVars(Mapping):
    """Like Ansible's hostvars: a host's variables are templated when read, and a broken one fails then."""

    def __init__(self, hosts):
        self.hosts = hosts

    def __getitem__(self, host):
        return LazyVars(self.hosts[host])

    def __iter__(self):
        return iter(self.hosts)

    def __len__(self):
        return len(self.hosts)


class LazyVars(Mapping):
    def __init__(self, variables):
        self.variables = variables

    def __getitem__(self, name):
        value = self.variables[name]
        if isinstance(value, Exception):
            raise value
        return value

    def __contains__(self, name):
        return name in self.variables  # as Ansible's: no templating to answer it

    def __iter__(self):
        return iter(self.variables)

    def __len__(self):
        return len(self.variables)


class TaggedStr(str):
    """Stands for Ansible's str subclasses (unsafe or tagged text)."""


def lazy_inventory():
    hosts = {
        "alpha": {"hostmesh_mesh": True, "ansible_host": TaggedStr("10.0.0.1"),
                  "hostmesh_workload_ports": ({"port": 8080, "allow": [TaggedStr("web")]},),
                  "hostmesh_mesh_services": [{"name": TaggedStr("payments"), "port": 8080, "group": "web"}],
                  "some_broken_variable": AnsibleFilterError("'undefined_thing' is undefined")},
        "beta": {"hostmesh_mesh": "yes", "ansible_host": "10.0.0.2", "hostmesh_workload_ports": [{"port": 8080}],
                 "ansible_ssh_pass": AnsibleFilterError("vault secret not available")},
        "gamma": {"ansible_host": AnsibleFilterError("not a member: never read")},
    }
    groups = {"all": ["alpha", "beta", "gamma"], "web": ["alpha", "beta"]}
    return LazyHostVars(hosts), groups


def test_mesh_model_is_registered():
    assert ModelFilterModule().filters()["mesh_model"] is mesh_model


def test_mesh_model_reads_only_the_variables_it_needs_as_plain_values():
    hostvars, groups = lazy_inventory()
    model = mesh_model(hostvars, groups, TaggedStr("alpha"))
    assert model["self"] == {"name": "alpha", "identity": "spiffe://hostmesh.local/host/alpha", "address": "10.0.0.1"}
    assert model["inbound_ports"][0]["allowed"] == ["spiffe://hostmesh.local/host/alpha", "spiffe://hostmesh.local/host/beta"]
    assert model["hosts_block"].endswith(" payments.mesh payments\n")
    assert type(model["services"][0]["name"]) is str  # pylint: disable=unidiomatic-typecheck


def test_mesh_model_reads_gammas_address_only_when_gamma_is_a_member():
    hostvars, groups = lazy_inventory()
    hostvars.hosts["gamma"]["hostmesh_mesh"] = True
    with pytest.raises(AnsibleFilterError, match="not a member: never read"):
        mesh_model(hostvars, groups, "alpha")


def test_mesh_model_turns_mesh_errors_into_filter_errors():
    hostvars, groups = lazy_inventory()
    hostvars.hosts["alpha"]["hostmesh_mesh_services"][0]["name"] = "pay ments"
    with pytest.raises(AnsibleFilterError, match=r"^hostmesh_mesh_services\[0\]\.name 'pay ments' on alpha: must be a DNS label"):
        mesh_model(hostvars, groups, "alpha")


def test_mesh_model_for_a_host_outside_the_inventory_groups():
    hostvars, groups = lazy_inventory()
    assert mesh_model(hostvars, groups, "gamma")["member"] is False
