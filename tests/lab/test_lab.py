# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The lab itself, on the real machine: hosts boot, Ansible reaches them over
SSH from the lab network, hosts talk to each other, a reboot keeps the disk
and resets the network, and `down` leaves nothing behind, also after a failed
`up`. Timings are printed at the end of the run (see conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hostmesh_lab as lab_tool
from hmlab import lifecycle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402  pylint: disable=wrong-import-position,import-error

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent
LAB_CLI = HERE / "hostmesh_lab.py"
SUBNET = "10.79.0.0/24"
SUBNET6 = "fd00:79::/64"


def lab_name(tag: str) -> str:
    return f"t{tag}{os.getpid()}"


@pytest.fixture
def fresh_lab():
    """Callable giving a lab name with nothing of it on the machine; whatever
    a test makes under that name is taken down after it, pass or fail."""
    names = []

    def make(tag: str) -> str:
        name = lab_name(tag)
        lab_tool.down(name)
        names.append(name)
        return name

    yield make
    for name in names:
        lab_tool.down(name)


def assert_nothing_left(name: str) -> None:
    assert lab_tool.lab_leftovers(name) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"hmlab-{name}" not in netns
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        assert f"/hostmesh-lab/{name}/" not in handle.read()
    lab_dir = str(lab_tool.lab_dir(name))
    for pid in lab_tool.all_pids():
        cmdline = " ".join(lab_tool.proc_cmdline(pid))
        # ssh ControlMaster processes carry their control path (in the lab dir).
        assert lab_dir not in cmdline, f"process {pid} left: {cmdline}"
    assert not lab_tool.lab_lock(name).exists()


def ssh(name: str, address: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(lab_tool.lab_ssh_argv(name, address, *command), capture_output=True, text=True,
                          timeout=60, check=False)
    if check:
        assert proc.returncode == 0, f"ssh {address} {command}: rc={proc.returncode} {proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def image(lab_timings):
    started = time.monotonic()
    root = lab_tool.build_image()
    stamp = json.loads((root.parent / "stamp.json").read_text(encoding="utf-8"))
    lab_timings.append(("image build (recorded when it was built)", stamp["build_seconds"]))
    lab_timings.append(("image check (cached)", time.monotonic() - started))
    return root


@pytest.fixture(scope="module")
def pair(image, lab_timings):
    """A 2-host lab, with IPv6 addresses too, taken down after the module."""
    name = lab_name("p")
    lab_tool.down(name)
    started = time.monotonic()
    state = lab_tool.up(name, ["alpha", "bravo"], subnet=SUBNET, subnet6=SUBNET6)
    lab_timings.append(("up, 2 hosts", time.monotonic() - started))
    try:
        yield state
    finally:
        lab_tool.down(name)
        assert_nothing_left(name)


def test_up_writes_inventory_and_state(pair):
    name = pair["lab"]
    inventory = json.loads(subprocess.run(
        [harness.venv_tool("ansible-inventory"), "-i", pair["inventory"], "--list"],
        capture_output=True, text=True, check=True).stdout)
    hostvars = inventory["_meta"]["hostvars"]
    assert sorted(hostvars) == ["alpha", "bravo"]
    for host, address in (("alpha", "10.79.0.11"), ("bravo", "10.79.0.12")):
        assert hostvars[host]["ansible_host"] == address
        assert hostvars[host]["lab_address"] == address
        assert hostvars[host]["ansible_user"] == "root"
        assert hostvars[host]["ansible_python_interpreter"] == "/usr/bin/python3"
        assert Path(hostvars[host]["ansible_ssh_private_key_file"]).is_file()
        assert "StrictHostKeyChecking=no" in hostvars[host]["ansible_ssh_common_args"]
        assert "UserKnownHostsFile=/dev/null" in hostvars[host]["ansible_ssh_common_args"]
        leader = hostvars[host]["lab_leader_pid"]
        assert leader == lab_tool.load_state(name)["hosts"][host]["leader_pid"]
        assert os.readlink(f"/proc/{leader}/exe").endswith("/systemd")
    assert pair["hosts"]["alpha"]["address6"] == "fd00:79::b"


def test_ansible_ping_from_the_lab_netns(pair):
    proc = subprocess.run(
        [sys.executable, str(LAB_CLI), "exec", "--lab", pair["lab"], "--",
         harness.venv_tool("ansible"), "all", "-i", pair["inventory"], "-m", "ansible.builtin.ping"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == 2
    assert '"ping": "pong"' in proc.stdout


def test_inventory_works_from_the_machine_netns_without_touching_it(pair):
    # The lab adds nothing to the machine's own network (no address or route
    # in the lab subnet), and Ansible still gets through from here, via the
    # ssh wrapper that enters the lab netns.
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert "10.79.0." not in addresses + routes
    assert "fd00:79:" not in addresses
    proc = subprocess.run([harness.venv_tool("ansible"), "bravo", "-i", pair["inventory"], "-m", "ansible.builtin.command",
                           "-a", "cat /etc/hostname"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bravo" in proc.stdout.split(">>", 1)[1]


def test_hosts_are_separate_machines(pair):
    name = pair["lab"]
    seen = {}
    for host in ("alpha", "bravo"):
        out = ssh(name, pair["hosts"][host]["address"],
                  "hostname; cat /etc/machine-id; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub;"
                  " systemctl is-system-running; ip -4 -o addr show dev eth0").stdout.splitlines()
        assert out[0] == host
        assert out[3] in ("running", "degraded")
        assert f"{pair['hosts'][host]['address']}/24" in out[4]
        seen[host] = out[1:3]
    assert seen["alpha"][0] != seen["bravo"][0], "machine ids must differ"
    assert seen["alpha"][1] != seen["bravo"][1], "SSH host keys must differ"


def test_host_to_host_tcp(pair):
    name = pair["lab"]
    alpha, bravo = pair["hosts"]["alpha"], pair["hosts"]["bravo"]
    ssh(name, bravo["address"], "systemd-run --unit=labtest-http --property=WorkingDirectory=/etc"
                                " python3 -m http.server 8080")
    try:
        fetch = ("for i in $(seq 50); do curl -sS -m 2 http://{0}:8080/hostname && exit 0; sleep 0.1; done;"
                 " exit 1")
        assert ssh(name, alpha["address"], fetch.format(bravo["address"])).stdout.strip() == "bravo"
        # IPv6 too, to bravo's sshd.
        probe = f"python3 -c \"import socket; socket.create_connection(('{bravo['address6']}', 22), 3)\""
        ssh(name, alpha["address"], probe)
    finally:
        ssh(name, bravo["address"], "systemctl stop labtest-http", check=False)


def test_net_cls_hierarchy_is_per_host(pair):
    # Each host mounts net_cls and sees a hierarchy of its own (its cgroup
    # namespace is rooted at its own net_cls cgroup): a cgroup made on alpha
    # is not visible on bravo.
    name = pair["lab"]
    mount = "mkdir -p /run/labtest-nc && (mountpoint -q /run/labtest-nc || mount -t cgroup -o net_cls net_cls /run/labtest-nc)"
    ssh(name, pair["hosts"]["alpha"]["address"], f"{mount} && mkdir /run/labtest-nc/only-on-alpha")
    try:
        out = ssh(name, pair["hosts"]["bravo"]["address"], f"{mount} && ls /run/labtest-nc").stdout.split()
        assert "net_cls.classid" in out
        assert "only-on-alpha" not in out
    finally:
        ssh(name, pair["hosts"]["alpha"]["address"], "rmdir /run/labtest-nc/only-on-alpha; umount /run/labtest-nc",
            check=False)
        ssh(name, pair["hosts"]["bravo"]["address"], "umount /run/labtest-nc", check=False)


def test_net_cls_helper_leaves_no_mountpoint_behind():
    # The lab mounts the net_cls hierarchy in a private mount namespace, on a
    # temporary directory of the machine's /tmp: that directory must go too.
    if "net_cls" in lab_tool.v1_mounts():
        pytest.skip("net_cls is mounted on this machine: the lab uses that mount")
    proc = lab_tool.net_cls_run('test -f "$NC/net_cls.classid" && echo "$NC"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("/tmp/hostmesh-lab-net_cls.")
    assert not os.path.exists(proc.stdout.strip())


def test_reboot_keeps_disk_and_resets_network(pair, lab_timings):
    name = pair["lab"]
    alpha = pair["hosts"]["alpha"]["address"]
    before = lab_tool.host_runtime(name, "alpha")
    mount_net_cls = "mkdir -p /run/labtest-nc && (mountpoint -q /run/labtest-nc || mount -t cgroup -o net_cls net_cls /run/labtest-nc)"
    ssh(name, alpha, "echo kept > /root/labtest-marker && iptables -t nat -N LABTEST && ss -tlnp | grep -q :22"
        f" && {mount_net_cls} && mkdir -p /run/labtest-nc/labtest/child")
    started = time.monotonic()
    after = lab_tool.reboot(name, "alpha")
    lab_timings.append(("reboot (clean, until SSH answers)", time.monotonic() - started))
    assert after["boot_count"] == before["boot_count"] + 1
    assert after["leader_pid"] != before["leader_pid"]
    out = ssh(name, alpha, "cat /root/labtest-marker; iptables -t nat -S | grep -c LABTEST || true").stdout.split()
    assert out == ["kept", "0"], "disk kept, iptables rules gone"
    # Like on a real machine, no cgroup of the last boot is left (a net_cls
    # cgroup would otherwise be found by the next boot's net_cls mount).
    assert ssh(name, alpha, f"{mount_net_cls} && ls -d /run/labtest-nc/labtest 2>&1; umount /run/labtest-nc",
               check=False).stdout.strip().endswith("No such file or directory")
    inventory = lab_tool.inventory_file(name).read_text(encoding="utf-8")
    assert f"lab_leader_pid: {after['leader_pid']}" in inventory

    started = time.monotonic()
    forced = lab_tool.reboot(name, "alpha", force=True)
    lab_timings.append(("reboot (forced: init killed)", time.monotonic() - started))
    assert forced["boot_count"] == after["boot_count"] + 1
    assert ssh(name, alpha, "cat /root/labtest-marker").stdout.strip() == "kept"


def test_host_reboots_itself(pair):
    # `systemctl reboot` inside (what ansible.builtin.reboot does) boots the
    # host again; the lab does not have to be told.
    name = pair["lab"]
    before = lab_tool.host_runtime(name, "bravo")["boot_count"]
    ssh(name, pair["hosts"]["bravo"]["address"], "systemctl reboot --no-block", check=False)
    runtime = lab_tool.wait_ready(name, "bravo", after_boot=before, timeout=120)
    assert runtime["boot_count"] == before + 1


def test_three_hosts_up_and_down_leaves_nothing(image, fresh_lab, lab_timings):
    name = fresh_lab("d")
    started = time.monotonic()
    state = lab_tool.up(name, ["alpha", "bravo", "charlie"], subnet="10.80.0.0/24")
    took = time.monotonic() - started
    lab_timings.append(("up, 3 hosts", took))
    try:
        assert took < 60, f"3 hosts took {took:.1f}s to boot"
        leaders = [info["leader_pid"] for info in state["hosts"].values()]
        assert all(os.path.exists(f"/proc/{pid}") for pid in leaders)
        # A controller-side leftover in the lab netns (like an ssh
        # ControlMaster): `down` must end it too.
        stray = subprocess.Popen(lab_tool.exec_argv(name, ["sleep", "600"]))
    finally:
        nspawn_locks = [lab_tool.nspawn_lock_file(name, host) for host in ("alpha", "bravo", "charlie")]
        started = time.monotonic()
        assert lab_tool.down(name) is True
        lab_timings.append(("down, 3 hosts", time.monotonic() - started))
    assert stray.wait(timeout=10) != 0
    assert all(lock is not None and not lock.exists() for lock in nspawn_locks)
    assert all(not lab_tool.pid_alive(pid) for pid in leaders)
    assert_nothing_left(name)
    assert lab_tool.down(name) is False, "a second down finds nothing"


@pytest.mark.parametrize("when", ["while booting", "once booted"])
def test_interrupted_up_leaves_nothing(image, monkeypatch, fresh_lab, when):
    # up fails halfway (here: ^C while it waits for the hosts, which are
    # already running or still booting): what it made is removed again.
    name = fresh_lab("f")
    real_wait_all = lab_tool.wait_all
    seen = {}

    def interrupted_wait_all(lab, hosts, after, timeout):
        if when == "once booted":
            real_wait_all(lab, hosts, after, timeout)
        seen["supervisors"] = [lab_tool.host_runtime(lab, host).get("supervisor_pid") for host in hosts]
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "wait_all", interrupted_wait_all)  # where up() looks it up
    with pytest.raises(KeyboardInterrupt):
        lab_tool.up(name, ["alpha", "bravo"], subnet="10.81.0.0/24")
    assert all(seen["supervisors"]), "the hosts were started before the interruption"
    assert_nothing_left(name)


def test_exec_creates_and_removes_the_lab_network(fresh_lab):
    # A controller that must live in the lab network before the lab exists
    # (molecule test: its destroy and create steps come later).
    name = fresh_lab("e")
    proc = subprocess.run([sys.executable, str(LAB_CLI), "exec", "--lab", name, "--subnet", "10.82.0.0/24", "--",
                           "ip", "-4", "-o", "addr", "show", "dev", "br0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "10.82.0.1/24" in proc.stdout
    assert_nothing_left(name)


@pytest.mark.parametrize("argv, message", [
    (["up", "--lab", "Bad-Name", "--hosts", "a"], "invalid lab name"),
    (["up", "--lab", "ok", "--hosts", "a,a"], "duplicate host names"),
    (["up", "--lab", "ok", "--hosts", "a_b"], "invalid host name"),
    (["up", "--lab", "ok", "--hosts", "a", "--subnet", "10.0.0.0/29"], "must be IPv4 with room"),
    (["reboot", "--lab", "nosuchlab", "alpha"], "does not exist"),
])
def test_bad_input_is_refused_before_anything_is_made(argv, message):
    proc = subprocess.run([sys.executable, str(LAB_CLI), *argv], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    for name in ("ok", "nosuchlab"):
        assert lab_tool.lab_leftovers(name) == []
