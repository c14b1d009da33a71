# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""site.yml run the way AWX / AAP runs it: through ansible-runner, from a project playbook that
imports hostmesh.sidecar.site, with the collection installed from its built tarball, split into
job slices that run at the same time on separate "execution nodes" (each its own private data
directory: collections, ANSIBLE_HOME, local temp, inventory of its slice only, nothing shared).

On a 2-host lab fleet: the two one-host slices converge their hosts (results read from each
job's artifacts: status, rc, and per-host ok/changed/failed counted from job_events, which must
agree with the job's own stats), then a whole-fleet job from a third node, with no state of the
first two, reports changed=0 on every host, and a request from one host to the other goes
through both sidecars (the workload sees the inbound sidecar's 127.0.0.6, both Envoys count it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

import hostmesh_lab as lab_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402  pylint: disable=wrong-import-position,import-error

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
LAB = "hmeng"
SUBNET = "10.84.0.0/24"
HOSTS = ["alpha", "bravo"]
ENVOY = ROOT / ".cache" / "envoy" / "envoy"
ENVOY_VERSION = "1.40.0"
# galaxy.yml's dependency, as ./scripts/setup.sh caches it: on an AWX node the execution
# environment brings it (docs/awx.md); Galaxy is out of reach here.
CACHED_CRYPTO = ROOT / ".cache" / "collections" / "ansible_collections" / "community" / "crypto"
WORKLOAD_PORT = 8080
JOB_TIMEOUT = 420
# The project a user points AWX at: small playbooks that import the collection's.
PROJECT_PLAYBOOKS = {
    "workload.yml": "hostmesh.sidecar.demo_workload",
    "site.yml": "hostmesh.sidecar.site",
}


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    """The collection as an EE or AWX gets it: the built tarball, not the checkout."""
    out = tmp_path_factory.mktemp("engines-build")
    proc = subprocess.run([harness.venv_tool("ansible-galaxy"), "collection", "build", "--output-path", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("*.tar.gz")
    return built


@pytest.fixture(scope="module")
def fleet(lab_timings):
    """A 2-host lab (own name and subnet), taken down after the module, pass or fail."""
    if not os.access(ENVOY, os.X_OK):
        pytest.fail(f"{ENVOY} is missing: run ./scripts/setup.sh")
    lab_tool.down(LAB)
    started = time.monotonic()
    try:
        state = lab_tool.up(LAB, HOSTS, subnet=SUBNET)
        lab_timings.append(("engines: up, 2 hosts", time.monotonic() - started))
        yield state
    finally:
        lab_tool.down(LAB)
        assert lab_tool.lab_leftovers(LAB) == []


def make_node(base: Path, name: str, tarball_path: Path, inventory: dict) -> Path:
    """One execution node's private data directory for ansible-runner, laid out as AWX lays it
    out: project/ (playbooks), inventory/ (the slice's hosts and the fleet's group_vars),
    env/envvars and env/settings; plus this node's own collections and Ansible home."""
    node = base / name
    for sub in ("project", "inventory/group_vars", "env", "collections", "ansible-home/tmp"):
        (node / sub).mkdir(parents=True)
    for playbook, imported in PROJECT_PLAYBOOKS.items():
        (node / "project" / playbook).write_text(
            f"---\n- name: Import {imported}\n  ansible.builtin.import_playbook: {imported}\n", encoding="utf-8")
    (node / "inventory" / "hosts.yml").write_text("---\n" + yaml.safe_dump(inventory), encoding="utf-8")
    (node / "inventory" / "group_vars" / "all.yml").write_text("---\n" + yaml.safe_dump({
        "envoy_sidecar_install_method": "file",
        "envoy_sidecar_src": str(ENVOY),
        "envoy_sidecar_version": ENVOY_VERSION,
        "hostmesh_workload_ports": [{"port": WORKLOAD_PORT}],
        "hostmesh_workload_units": ["hostmesh-demo.service"],
        "transparent_proxy_inbound_exclude_ports": [22, 9999],
        "transparent_proxy_outbound_exclude_ports": [9999],
    }), encoding="utf-8")
    if not (CACHED_CRYPTO / "MANIFEST.json").is_file():
        pytest.fail(f"community.crypto is not in {CACHED_CRYPTO}: run ./scripts/setup.sh")
    # Installed first, ansible-galaxy takes it as the dependency is and asks no Galaxy server.
    shutil.copytree(CACHED_CRYPTO, node / "collections" / "ansible_collections" / "community" / "crypto")
    proc = subprocess.run([harness.venv_tool("ansible-galaxy"), "collection", "install", str(tarball_path),
                           "--collections-path", str(node / "collections")],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, ANSIBLE_HOME=str(node / "ansible-home")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    envvars = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_COLLECTIONS_PATH": str(node / "collections"),
        "ANSIBLE_HOME": str(node / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(node / "ansible-home" / "tmp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_NOCOLOR": "1",
    }
    (node / "env" / "envvars").write_text(yaml.safe_dump(envvars), encoding="utf-8")
    (node / "env" / "settings").write_text(yaml.safe_dump({"job_timeout": JOB_TIMEOUT}), encoding="utf-8")
    return node


def slice_inventory(full: dict, hosts: list[str]) -> dict:
    """A job slice's inventory: only its hosts (AWX gives each slice job a part of the inventory)."""
    sliced = json.loads(json.dumps(full))
    sliced["all"]["hosts"] = {host: full["all"]["hosts"][host] for host in hosts}
    return sliced


def node_files(node: Path) -> dict:
    """Every path of a node's private data directory but its artifacts, with size and mtime for
    files (a directory's mtime changes when Ansible's temporary files come and go in it)."""
    return {str(path.relative_to(node)): None if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns)
            for path in node.rglob("*") if path.relative_to(node).parts[0] != "artifacts"}


def run_job(node: Path, playbook: str, ident: str) -> dict:
    """ansible-runner's Python API, then the job's result as read back from its artifacts. The
    job must leave nothing on its node besides its artifacts (no state for a later run to find:
    the next job may run on another node)."""
    import ansible_runner  # pylint: disable=import-outside-toplevel

    files_before = node_files(node)
    started = time.monotonic()
    ansible_runner.run(private_data_dir=str(node), playbook=playbook, ident=ident, quiet=True)
    result = read_artifacts(node / "artifacts" / ident, time.monotonic() - started)
    files_after = node_files(node)
    assert files_after == files_before, sorted(set(files_after.items()) ^ set(files_before.items()))
    return result


def read_artifacts(artifacts: Path, seconds: float) -> dict:
    events = [json.loads(path.read_text(encoding="utf-8"))
              for path in sorted((artifacts / "job_events").glob("*.json"))]
    events.sort(key=lambda event: event["counter"])
    counted = {kind: Counter() for kind in ("ok", "changed", "failures", "skipped", "dark", "ignored")}
    for event in events:
        data = event.get("event_data", {})
        host = data.get("host")
        if event["event"] == "runner_on_ok":
            counted["ok"][host] += 1
            if data["res"].get("changed"):
                counted["changed"][host] += 1
        elif event["event"] == "runner_on_failed":
            counted["ignored" if data.get("ignore_errors") else "failures"][host] += 1
        elif event["event"] == "runner_on_skipped":
            counted["skipped"][host] += 1
        elif event["event"] == "runner_on_unreachable":
            counted["dark"][host] += 1
    (stats,) = [event["event_data"] for event in events if event["event"] == "playbook_on_stats"]
    return {
        "status": (artifacts / "status").read_text(encoding="utf-8").strip(),
        "rc": int((artifacts / "rc").read_text(encoding="utf-8")),
        "stdout": (artifacts / "stdout").read_text(encoding="utf-8", errors="replace"),
        "counted": {kind: dict(counter) for kind, counter in counted.items()},
        "stats": {kind: stats.get(kind) or {} for kind in counted},
        "seconds": seconds,
    }


def assert_job(result: dict, hosts: list[str], changed: str) -> None:
    """Successful job; per-host counts from the events agree with the job's stats; no failure or
    unreachable host; changed > 0 ('some') or == 0 ('none') on every host."""
    tail = result["stdout"][-4000:]
    assert (result["status"], result["rc"]) == ("successful", 0), tail
    for kind in ("ok", "changed", "failures", "dark"):
        assert result["counted"][kind] == result["stats"][kind], (kind, result["counted"], result["stats"])
    assert sorted(result["counted"]["ok"]) == sorted(hosts), result["counted"]
    for host in hosts:
        assert result["counted"]["failures"].get(host, 0) == 0, tail
        assert result["counted"]["dark"].get(host, 0) == 0, tail
        assert result["counted"]["ok"][host] > 0
        host_changed = result["counted"]["changed"].get(host, 0)
        if changed == "some":
            assert host_changed > 0, (host, result["counted"])
        else:
            assert host_changed == 0, (host, result["counted"], tail)


def ssh(address: str, *command: str) -> str:
    proc = subprocess.run(lab_tool.lab_ssh_argv(LAB, address, *command), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"ssh {address} {command}: rc={proc.returncode} {proc.stdout} {proc.stderr}"
    return proc.stdout


def envoy_tcp_stats(address: str) -> str:
    return ssh(address, "curl", "-sf", "--unix-socket", "/run/hostmesh-envoy/admin.sock", "http://localhost/stats?filter=^tcp\\.")


def test_job_slices_then_a_fresh_node_converge_the_same_fleet(fleet, tarball, tmp_path, lab_timings):
    from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_stats import envoy_stats_delta  # noqa: E501 pylint: disable=import-outside-toplevel

    full = yaml.safe_load(Path(fleet["inventory"]).read_text(encoding="utf-8"))
    assert sorted(full["all"]["hosts"]) == HOSTS

    # Job slicing: one slice per host, on separate nodes, at the same time.
    slices = {host: make_node(tmp_path, f"slice-{host}", tarball, slice_inventory(full, [host])) for host in HOSTS}
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run_slice(host: str) -> None:
        try:
            workload = run_job(slices[host], "workload.yml", "workload")
            assert_job(workload, [host], changed="some")
            results[host] = run_job(slices[host], "site.yml", "site")
        # Re-raised in the main thread below.
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            errors.append(exc)

    threads = [threading.Thread(target=run_slice, args=(host,)) for host in HOSTS]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lab_timings.append(("engines: 2 slices (workload + site.yml)", time.monotonic() - started))
    if errors:
        raise errors[0]
    for host in HOSTS:
        assert_job(results[host], [host], changed="some")

    # A third node, which ran nothing before: the whole fleet is converged already.
    node = make_node(tmp_path, "node-3", tarball, full)
    second = run_job(node, "site.yml", "site-again")
    lab_timings.append(("engines: whole-fleet site.yml, no-op", second["seconds"]))
    assert_job(second, HOSTS, changed="none")

    # The sidecars carry a request: alpha calls bravo's workload.
    alpha, bravo = (fleet["hosts"][host]["address"] for host in HOSTS)
    before = {alpha: envoy_tcp_stats(alpha), bravo: envoy_tcp_stats(bravo)}
    answer = json.loads(ssh(alpha, "curl", "-sf", "--max-time", "10", f"http://{bravo}:{WORKLOAD_PORT}/"))
    after = {alpha: envoy_tcp_stats(alpha), bravo: envoy_tcp_stats(bravo)}
    assert answer["host"] == "bravo"
    assert answer["peer"] == "127.0.0.6", answer  # through bravo's inbound sidecar
    assert envoy_stats_delta(after[alpha], before[alpha], "tcp.outbound_passthrough.downstream_cx_total") >= 1
    assert envoy_stats_delta(after[bravo], before[bravo], f"tcp.inbound_{WORKLOAD_PORT}.downstream_cx_total") >= 1
