# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Bad mesh input through site.yml: a clear message naming the variable, and no host touched.

Two fresh mesh members (local connections, in a throwaway network namespace with /etc overlaid)
run the real site.yml with one mistake each. The mesh model's mistakes stop the play at the
probe, the identity's at the controller-side CA check that comes before the first change on a
host. After each run the hosts are as before: no proxy user or group in /etc, no /etc/hostmesh,
no nat rule, no unit; and the controller has no CA directory unless the case made one itself.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import pytest

import harness

ENVOY = harness.REPO_ROOT / ".cache" / "envoy" / "envoy"
PASSPHRASE = "correct horse battery staple"

CASES = {
    "invalid trust domain": ({"hostmesh_trust_domain": "Mesh_Example!"}, {}, "hostmesh_trust_domain"),
    "duplicate service names": ({"hostmesh_mesh_services": [{"name": "web", "port": 8080, "hosts": ["alpha"]},
                                                            {"name": "web", "port": 8080, "hosts": ["bravo"]}]},
                                {}, "hostmesh_mesh_services[1].name"),
    "duplicate VIPs": ({"hostmesh_mesh_services": [{"name": "web", "port": 8080, "hosts": ["alpha"], "vip": "240.240.1.1"},
                                                   {"name": "api", "port": 8080, "hosts": ["bravo"], "vip": "240.240.1.1"}]},
                       {}, "hostmesh_mesh_services[1].vip"),
    "VIP range overlapping a member": ({"hostmesh_mesh_vip_range": "10.79.0.0/24"}, {}, "hostmesh_mesh_vip_range"),
    "port of the sidecar's own": ({}, {"alpha": {"hostmesh_workload_ports": [{"port": 15006}]}},
                                  "hostmesh_workload_ports[0].port"),
    "policy naming an unknown group": ({}, {"bravo": {"hostmesh_workload_ports": [{"port": 8080, "allow": ["payments"]}]}},
                                       "hostmesh_workload_ports[0].allow[0]"),
    "strict on a server-first port": ({}, {"bravo": {"hostmesh_workload_ports": [
        {"port": 8080}, {"port": 3306, "server_first": True, "mesh_mode": "strict"}]}}, "hostmesh_workload_ports[1].mesh_mode"),
    "service of an unknown group": ({"hostmesh_mesh_services": [{"name": "web", "port": 8080, "group": "webservers"}]},
                                    {}, "hostmesh_mesh_services[0].group"),
    "renewal window longer than the lifetime": ({"hostmesh_mesh_cert_renew_before": "8d"}, {},
                                                "hostmesh_mesh_cert_renew_before"),
    "missing CA passphrase": ({"hostmesh_mesh_ca_passphrase": ""}, {}, "hostmesh_mesh_ca_passphrase"),
    "wrong CA passphrase": ({"hostmesh_mesh_ca_passphrase": "not the passphrase"}, {}, "hostmesh_mesh_ca_passphrase"),
    "unreadable CA file of your own": ({"hostmesh_mesh_ca_cert": "/nonexistent/ca.pem", "hostmesh_mesh_ca_key": "/nonexistent/ca.key"},
                                       {}, "hostmesh_mesh_ca_cert"),
}


def write_inventory(workdir, mesh_vars, host_vars):
    hosts = {
        "alpha": {"hostmesh_mesh_address": "10.79.0.1", "hostmesh_workload_ports": [{"port": 8080}]},
        "bravo": {"hostmesh_mesh_address": "10.79.0.2", "hostmesh_workload_ports": [{"port": 8080}]},
    }
    for name, extra in host_vars.items():
        hosts[name].update(extra)
    group_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "/usr/bin/python3",
        "hostmesh_mesh": True,
        "hostmesh_mesh_group": "mesh",
        "hostmesh_trust_domain": "mesh.test",
        "hostmesh_mesh_ca_dir": str(workdir / "ca"),
        "hostmesh_mesh_ca_passphrase": PASSPHRASE,
        "envoy_sidecar_install_method": "path",
        "envoy_sidecar_binary_path": str(ENVOY),
    }
    group_vars.update(mesh_vars)
    path = workdir / "inventory.json"
    path.write_text(json.dumps({"all": {"children": {"mesh": {"hosts": hosts, "vars": group_vars}}}}))
    return path


def host_state(netns, etc_overlay):
    """What a run could have changed on the two hosts (they share this namespace and /etc)."""
    upper = sorted(str(path.relative_to(etc_overlay.upper)) for path in etc_overlay.upper.rglob("*"))
    rules = netns.run(["iptables-save", "-t", "nat"]).stdout
    return {"etc": upper, "nat": [line for line in rules.splitlines() if not line.startswith("#")]}


@pytest.fixture
def workdir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="hm-mesh-bad-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_site(workdir, netns, etc_overlay, inventory_path, playbook="playbooks/site.yml"):
    # hostmesh_hosts: the harness's own inventory adds localhost, which is not part of this fleet.
    return harness.run_playbook(playbook, netns=netns, etc_overlay=etc_overlay, timeout=300,
                                extra_args=("-i", str(inventory_path), "-e", "hostmesh_hosts=mesh"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_mesh_input_names_the_variable_and_changes_nothing(case, workdir, netns, etc_overlay):
    mesh_vars, host_vars, variable = CASES[case]
    if case == "wrong CA passphrase":
        # A CA made with the right passphrase first, on the controller only (the rollover's step 1).
        made = harness.run_playbook(
            [{"hosts": "mesh", "gather_facts": False, "tasks": [{"ansible.builtin.include_role": {
                "name": "hostmesh.sidecar.mesh_identity", "tasks_from": "controller_ca"}}]}],
            extra_args=("-i", str(write_inventory(workdir, {}, {}))))
        assert made.rc == 0, made.output
    ca_before = sorted(os.listdir(workdir / "ca")) if (workdir / "ca").exists() else None
    before = host_state(netns, etc_overlay)

    result = run_site(workdir, netns, etc_overlay, write_inventory(workdir, mesh_vars, host_vars))

    assert result.rc != 0, result.output
    failed = [line for line in result.stdout.splitlines() if line.startswith(("fatal:", "failed:"))]
    assert any(variable in line for line in failed), result.output
    # A mistake in the model fails both members at the probe; one about the CA (checked once, on
    # the controller) ends the play for both: neither host got to a task of the converge's roles.
    ran = [record["task"]["name"] for play in result.plays for record in play.get("tasks", [])]
    converge_roles = ("hostmesh.sidecar.transparent_proxy :", "hostmesh.sidecar.envoy_sidecar :")
    assert not [name for name in ran if name.startswith(converge_roles)], ran
    assert result.changed_tasks() == [], result.changed_tasks()
    assert host_state(netns, etc_overlay) == before
    ca_after = sorted(os.listdir(workdir / "ca")) if (workdir / "ca").exists() else None
    assert ca_after == ca_before
