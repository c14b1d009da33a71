# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one-probe no-op run on real hosts (issue 7): site.yml on a converged host runs one probe and
no converge task; every kind of drift is reported by the probe and shown by --check --diff; and the
probe's "converged" matches a forced full converge with changed=0, both ways.

One lab of two hosts for the whole module: alpha (bypass uid) and bravo (bypass net_cls), with the
Envoy binary of this checkout (install method file, as molecule/fleet). All drift kinds are made at
once (five per host, the removed proxy user after the check run), so the expensive runs happen
once each."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import hostmesh_lab as lab_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402  pylint: disable=wrong-import-position,import-error

pytestmark = pytest.mark.lab

LAB = "hmprobe"
SUBNET = "10.81.0.0/24"
HOSTS = ("alpha", "bravo")
ENVOY = harness.REPO_ROOT / ".cache" / "envoy" / "envoy"
PROBE_TASK = "Probe the host in one round trip"
CONVERGE_INCLUDE = "Converge the host (only where the probe found drift, or hostmesh_force_converge)"
ROLE_TASK_PREFIXES = ("hostmesh.sidecar.transparent_proxy : ", "hostmesh.sidecar.envoy_sidecar : ")

# (host, shell command making the drift, drift message the probe must report)
DRIFTS = [
    ("alpha", "iptables -w -t nat -D HOSTMESH_OUTPUT -d 127.0.0.0/8 -j RETURN", "rules: 1 to add, 0 to delete"),
    ("alpha", "echo '# edited' >> /usr/local/libexec/hostmesh/hostmesh-redirect.py",
     "file /usr/local/libexec/hostmesh/hostmesh-redirect.py: content differs"),
    ("alpha", "chmod 0700 /usr/local/libexec/hostmesh/rollback-guard.sh",
     "file /usr/local/libexec/hostmesh/rollback-guard.sh: mode 0700 (want 0755)"),
    ("alpha", "systemctl disable --quiet hostmesh-redirect.service",
     "unit hostmesh-redirect.service: disabled (want enabled)"),
    ("alpha", "cp -p /usr/local/bin/envoy /usr/local/bin/envoy.new && mv -f /usr/local/bin/envoy.new /usr/local/bin/envoy",
     "binary /usr/local/bin/envoy: not the installed one (inode changed)"),
    ("bravo", "sed -i 's/max_active_downstream_connections: 100000$/max_active_downstream_connections: 4096/'"
              " /etc/hostmesh/envoy/envoy.yaml",
     "file /etc/hostmesh/envoy/envoy.yaml: content differs"),
    ("bravo", "chown nobody /etc/systemd/system/hostmesh-envoy.service",
     "file /etc/systemd/system/hostmesh-envoy.service: owner nobody (want root)"),
    # Stopping the sidecar also stops the redirect (transparent_proxy_remove_on_proxy_stop), and
    # leaves the cgroup empty and the proxy user without processes: both can go then.
    ("bravo", "systemctl stop hostmesh-envoy.service", "unit hostmesh-envoy.service: inactive (want active)"),
    ("bravo", "rmdir /run/hostmesh/cgroup/net_cls/hostmesh-proxy",
     "cgroup /run/hostmesh/cgroup/net_cls/hostmesh-proxy: missing"),
]
# Made after the --check --diff run: check mode cannot preview it (the converge's file tasks fail to
# look up the deleted group of /etc/hostmesh/envoy in check mode, a limitation of check mode, not of
# the probe); the real run that repairs it shows the probe's item.
USER_DRIFT = ("bravo", "userdel hostmesh-proxy", "user hostmesh-proxy: missing")


def run_site(inventory: Path, *args, playbook: str = "playbooks/site.yml", timeout: int = 600):
    """ansible-playbook against the lab through the integration harness (its results callback, this
    checkout as hostmesh.sidecar); the harness's own localhost is limited away."""
    return harness.run_playbook(playbook, timeout=timeout, env={"ANSIBLE_PIPELINING": "1"},
                                extra_args=["-i", inventory, "--limit", ",".join(HOSTS), *args])


def converge_tasks_run(result, host: str) -> list:
    """Names of the role tasks that ran (not skipped) on host (the probe entry points hold none)."""
    ran = []
    for play in result.plays:
        for record in play.get("tasks", []):
            name = record["task"]["name"]
            outcome = record["hosts"].get(host)
            if outcome is None or outcome.get("hostmesh_status") == "skipped":
                continue
            if name.startswith(ROLE_TASK_PREFIXES):
                ran.append(name)
    return ran


def probe(result, host: str) -> dict:
    return result.task(PROBE_TASK, host)


@pytest.fixture(scope="module")
def fleet(lab_timings):
    """The 2-host lab with its inventory directory (lab inventory + the fleet's variables), converged."""
    if not ENVOY.is_file():
        pytest.fail(f"{ENVOY} is missing: run scripts/setup.sh (it fetches the Envoy binary the lab hosts run)")
    lab_tool.down(LAB)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="hm-probe-lab-"))
    try:
        state = lab_tool.up(LAB, list(HOSTS), subnet=SUBNET)
        lab_timings.append(("probe: up, 2 hosts", time.monotonic() - started))
        inventory = workdir / "inventory"
        (inventory / "group_vars").mkdir(parents=True)
        (inventory / "host_vars").mkdir()
        (inventory / "hosts.yml").symlink_to(state["inventory"])
        (inventory / "group_vars" / "all.yml").write_text(
            f"envoy_sidecar_install_method: file\nenvoy_sidecar_src: {ENVOY}\nenvoy_sidecar_version: 1.40.0\n"
            "hostmesh_workload_ports: [{port: 8080}]\n"
            # Their ordering drop-ins are managed files too (no such unit needs to exist).
            "hostmesh_workload_units: [hostmesh-demo.service]\n", encoding="utf-8")
        (inventory / "host_vars" / "alpha.yml").write_text("hostmesh_bypass: uid\n", encoding="utf-8")
        (inventory / "host_vars" / "bravo.yml").write_text("hostmesh_bypass: net_cls\n", encoding="utf-8")
        started = time.monotonic()
        first = run_site(inventory)
        lab_timings.append(("probe: first site.yml", time.monotonic() - started))
        assert first.rc == 0, first.output
        assert all(stats["changed"] > 0 for stats in first.stats.values()), first.stats
        yield {"state": state, "inventory": inventory}
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
        lab_tool.down(LAB)


def ssh(fleet, host: str, command: str) -> str:
    proc = subprocess.run(lab_tool.lab_ssh_argv(LAB, fleet["state"]["hosts"][host]["address"], command),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{host}: {command}: rc={proc.returncode} {proc.stdout} {proc.stderr}"
    return proc.stdout


def test_noop_run_is_one_probe_and_no_converge_task(fleet, lab_timings):
    started = time.monotonic()
    result = run_site(fleet["inventory"])
    lab_timings.append(("probe: no-op site.yml", time.monotonic() - started))
    assert result.rc == 0, result.output
    for host in ("alpha", "bravo"):
        found = probe(result, host)
        assert found["converged"] is True, (host, found["drift"])
        assert found["drift"] == [] and found["changed"] is False
        assert result.stats[host]["changed"] == 0, result.stats
        assert result.task(CONVERGE_INCLUDE, host)["hostmesh_status"] == "skipped"
        assert converge_tasks_run(result, host) == []
    # The fact the envoy_sidecar role's unit reads, as prepare.yml publishes it.
    assert probe(result, "bravo")["ansible_facts"]["transparent_proxy_net_cls_path"] == \
        "/run/hostmesh/cgroup/net_cls/hostmesh-proxy"


def test_every_drift_is_reported_shown_and_repaired(fleet, lab_timings):
    for host, command, _msg in DRIFTS:
        ssh(fleet, host, command)

    started = time.monotonic()
    check = run_site(fleet["inventory"], "--check", "--diff")
    lab_timings.append(("probe: --check --diff of the drift", time.monotonic() - started))
    assert check.rc == 0, check.output
    for host in ("alpha", "bravo"):
        found = probe(check, host)
        messages = [item["msg"] for item in found["drift"]]
        assert found["converged"] is False and found["changed"] is False
        for _host, _command, expected in (d for d in DRIFTS if d[0] == host):
            assert expected in messages, (host, expected, messages)
        # The converge tasks ran in check mode, and show the drift as changes.
        assert check.stats[host]["changed"] > 0, check.stats
    changed = check.changed_tasks()
    assert "hostmesh.sidecar.transparent_proxy : Apply the redirect rules" in changed, changed
    render = check.task("hostmesh.sidecar.envoy_sidecar : Render the Envoy bootstrap", "bravo")
    assert "max_active_downstream_connections: 4096" in json.dumps(render.get("diff"))
    # The check run changed nothing: the drift is still there.
    assert "4096" in ssh(fleet, "bravo", "grep max_active_downstream_connections /etc/hostmesh/envoy/envoy.yaml")

    ssh(fleet, USER_DRIFT[0], USER_DRIFT[1])

    # drift -> the full converge changes something on each host ...
    started = time.monotonic()
    repair = run_site(fleet["inventory"])
    lab_timings.append(("probe: repair run", time.monotonic() - started))
    assert repair.rc == 0, repair.output
    assert USER_DRIFT[2] in [item["msg"] for item in probe(repair, USER_DRIFT[0])["drift"]]
    assert all(repair.stats[host]["changed"] > 0 for host in ("alpha", "bravo")), repair.stats

    # ... and after it the probe says converged, and a forced full converge changes nothing.
    started = time.monotonic()
    forced = run_site(fleet["inventory"], "--extra-vars", "hostmesh_force_converge=true")
    lab_timings.append(("probe: forced full converge", time.monotonic() - started))
    assert forced.rc == 0, forced.output
    for host in ("alpha", "bravo"):
        found = probe(forced, host)
        assert found["converged"] is True, (host, found["drift"])
        assert converge_tasks_run(forced, host), "the forced run ran no converge task"
        assert forced.stats[host]["changed"] == 0, (host, forced.changed_tasks())
    assert "100000" in ssh(fleet, "bravo", "grep max_active_downstream_connections /etc/hostmesh/envoy/envoy.yaml")
