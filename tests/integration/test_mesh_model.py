# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mesh filters through a real ansible-playbook run.

In a play, ``hostvars`` is Ansible's lazy HostVars: every variable is templated when it is read, and
inventory values are Ansible's own string types. These tests prove that the filters read what they need
through it, template it, and leave alone variables that would fail to template. Nothing is run on a host
(set_fact and debug only), so the inventory's addresses need not exist.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import pytest
import yaml

import harness

INVENTORY = {
    "all": {
        "vars": {
            "hostmesh_mesh_group": "fleet",
            "hostmesh_trust_domain": "{{ 'prod.example.org' }}",
            "mesh_prefix": "10.77.0",
            "hostmesh_mesh_services": [
                {"name": "payments", "port": 8080, "group": "web"},
                {"name": "pinned", "port": 8080, "hosts": ["alpha"], "vip": "240.240.7.7"},
            ],
        },
        "children": {
            "fleet": {"hosts": {
                "alpha": {"hostmesh_mesh": "{{ true }}", "ansible_host": "{{ mesh_prefix }}.1",
                          "hostmesh_workload_ports": [{"port": 8080, "allow": ["web"]}, {"port": 22, "server_first": True}],
                          # Never read by the model: it must not fail the run.
                          "unrelated_setting": "{{ this_is_undefined }}"},
                "beta": {"hostmesh_mesh": "yes", "hostmesh_mesh_address": "fd00:77::2",
                         "hostmesh_workload_ports": [{"port": 8080, "mesh_mode": "strict"}]},
                # Read only for members: as outsider is none, it must not fail the run.
                "outsider": {"hostmesh_mesh": False, "ansible_host": "10.77.0.9",
                             "hostmesh_workload_ports": "{{ this_is_undefined_too }}"},
            }},
            "web": {"hosts": {"alpha": {}, "beta": {}}},
        },
    },
}

PLAY = [{
    "name": "mesh model",
    "hosts": "fleet",
    "gather_facts": False,
    "tasks": [
        {"name": "model", "ansible.builtin.set_fact": {
            "mesh": "{{ hostvars | hostmesh.sidecar.mesh_model(groups, inventory_hostname) }}"}},
        {"name": "identity", "ansible.builtin.set_fact": {
            "identity": "{{ hostmesh_trust_domain | hostmesh.sidecar.mesh_spiffe_id(inventory_hostname) }}"}},
    ],
}]


@pytest.fixture
def inventory_dir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="hm-mesh-inventory-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(inventory_dir, inventory):
    inventory_file = inventory_dir / "mesh.yml"
    inventory_file.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    return harness.run_playbook(PLAY, extra_args=["-i", inventory_file])


def test_the_model_through_a_real_play(inventory_dir):
    result = run(inventory_dir, INVENTORY)
    assert result.rc == 0, result.output
    alpha = result.task("model", "alpha")["ansible_facts"]["mesh"]
    beta = result.task("model", "beta")["ansible_facts"]["mesh"]
    outsider = result.task("model", "outsider")["ansible_facts"]["mesh"]

    assert alpha["self"] == {"name": "alpha", "identity": "spiffe://prod.example.org/host/alpha", "address": "10.77.0.1"}
    assert alpha["peers"] == [{"name": "beta", "identity": "spiffe://prod.example.org/host/beta",
                               "address": "fd00:77::2", "ports": [8080]}]
    assert [(port["port"], port["server_first"], port["allowed"]) for port in alpha["inbound_ports"]] == [
        (22, True, ["spiffe://prod.example.org/host/alpha", "spiffe://prod.example.org/host/beta"]),
        (8080, False, ["spiffe://prod.example.org/host/alpha", "spiffe://prod.example.org/host/beta"]),
    ]
    assert beta["inbound_ports"][0]["mode"] == "strict"
    assert [peer["ports"] for peer in beta["peers"]] == [[8080]]  # alpha's server-first 22 takes no mTLS

    assert alpha["services"] == beta["services"]
    payments, pinned = alpha["services"]
    assert pinned["vip"] == "240.240.7.7" and pinned["fqdn"] == "pinned.mesh"
    assert [member["name"] for member in payments["members"]] == ["alpha", "beta"]
    assert alpha["hosts_block"] == f"{payments['vip']} payments.mesh payments\n240.240.7.7 pinned.mesh pinned\n"

    assert outsider["member"] is False and outsider["self"] is None and outsider["hosts_block"] == ""
    assert result.task("identity", "beta")["ansible_facts"]["identity"] == "spiffe://prod.example.org/host/beta"


def test_bad_input_fails_every_member_naming_the_variable_and_not_the_outsider(inventory_dir):
    inventory = yaml.safe_load(yaml.safe_dump(INVENTORY))
    inventory["all"]["vars"]["hostmesh_mesh_services"][0]["name"] = "pay ments"
    inventory["all"]["children"]["fleet"]["hosts"]["outsider"]["hostmesh_trust_domain"] = "Not Valid"
    result = run(inventory_dir, inventory)
    assert result.rc != 0
    for host in ("alpha", "beta"):
        failed = result.task("model", host)
        assert failed["hostmesh_status"] == "failed"
        assert "hostmesh_mesh_services[0].name 'pay ments' on " + host + ": must be a DNS label" in failed["msg"], failed
    assert result.task("model", "outsider")["hostmesh_status"] == "ok"
    # The SPIFFE filter does check what it is given, for any host.
    identity = result.task("identity", "outsider")
    assert identity["hostmesh_status"] == "failed"
    assert "hostmesh_trust_domain 'Not Valid': a SPIFFE trust domain holds only lowercase letters" in identity["msg"]
