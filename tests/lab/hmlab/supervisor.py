# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One host: the supervisor process that boots it (again after each reboot) and waits until it is ready."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

from .common import BOOT_TIMEOUT, LAB_CLI, LabError, REBOOT_EXIT_STATUS, all_pids, kill_and_reap, pid_alive, proc_ppid
from .state import (
    host_dir,
    host_netns,
    host_runtime,
    key_file,
    lab_dir,
    lab_netns,
    load_state,
    machine_name,
    netns_path,
    refresh_inventory,
    write_host_runtime,
)
from .network import ip, netns_exists, pids_in_netns, reset_host_network
from .cgroups import host_cgroup_dirs, join_cgroups_preexec, join_net_cls_cgroup, reset_net_cls_cgroup


def nspawn_argv(lab: str, host: str) -> list[str]:
    return [
        "systemd-nspawn",
        "--directory", str(host_dir(lab, host) / "root"),
        "--boot",
        "--register=no",
        "--keep-unit",
        "--capability=all",
        f"--network-namespace-path={netns_path(host_netns(lab, host))}",
        f"--machine={machine_name(lab, host)}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]


def find_leader(nspawn_pid: int) -> int | None:
    """The container's PID 1: the child of systemd-nspawn that is PID 1 of a
    PID namespace of its own. (nspawn's first child is a short-lived "outer
    child" that creates it; that one must not be taken for the leader.)"""
    for pid in all_pids():
        if proc_ppid(pid) != nspawn_pid:
            continue
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
                nspid = next((line.split()[1:] for line in handle if line.startswith("NSpid:")), [])
        except OSError:
            continue
        if len(nspid) >= 2 and nspid[-1] == "1":
            return pid
    return None


def current_leader(runtime: dict) -> int | None:
    """The running boot's leader PID, re-found from the nspawn process if the
    recorded one is gone."""
    leader = runtime.get("leader_pid")
    if pid_alive(leader):
        return leader
    if pid_alive(runtime.get("nspawn_pid")):
        return find_leader(runtime["nspawn_pid"])
    return None


def supervise(lab: str, host: str) -> int:
    """Boot a host, and boot it again each time it reboots itself.

    Runs detached (started by `up`/`start`). Exits when the host powers off.
    """
    state = load_state(lab)
    info = state["hosts"][host]
    hdir = host_dir(lab, host)
    join_net_cls_cgroup(lab, host, os.getpid())
    env = dict(os.environ)
    if state.get("cgroup") == "unified":
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
    else:
        env.pop("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", None)
    boot_count = host_runtime(lab, host).get("boot_count", 0)
    reboot_flag = hdir / "reboot-requested"
    stopping_flag = lab_dir(lab) / "stopping"
    rc = 0
    try:
        while not stopping_flag.exists():
            reset_host_network(lab, host, info, state["subnet"], state.get("subnet6"))
            reset_net_cls_cgroup(lab, host)
            with contextlib.suppress(FileNotFoundError):
                reboot_flag.unlink()
            boot_count += 1
            with open(hdir / "console.log", "a", encoding="utf-8") as console:
                console.write(f"\n=== hostmesh lab: boot {boot_count} of {host} at {time.ctime()} ===\n")
                console.flush()
                proc = subprocess.Popen(nspawn_argv(lab, host), stdin=subprocess.DEVNULL, stdout=console,
                                        stderr=subprocess.STDOUT, env=env, close_fds=True,
                                        preexec_fn=join_cgroups_preexec(host_cgroup_dirs(lab, host)))
            write_host_runtime(lab, host, supervisor_pid=os.getpid(), nspawn_pid=proc.pid, leader_pid=None,
                               boot_count=boot_count, running=True, booted_at=time.time())
            leader = None
            while leader is None and proc.poll() is None:
                leader = find_leader(proc.pid)
                if leader is None:
                    time.sleep(0.02)
            if leader:
                write_host_runtime(lab, host, leader_pid=leader)
                refresh_inventory(lab)
            rc = proc.wait()
            write_host_runtime(lab, host, running=False, leader_pid=None, nspawn_pid=None, last_exit=rc)
            if rc != REBOOT_EXIT_STATUS and not reboot_flag.exists():
                break
    finally:
        write_host_runtime(lab, host, running=False, supervisor_pid=None)
        if netns_exists(host_netns(lab, host)):
            # A powered-off machine has no network stack.
            kill_and_reap(pids_in_netns(host_netns(lab, host)))
            ip("netns", "del", host_netns(lab, host), check=False)
        ip("link", "del", info["bridge_port"], netns=lab_netns(lab), check=False)
        with contextlib.suppress(OSError):
            refresh_inventory(lab)
    return 0 if rc in (0, REBOOT_EXIT_STATUS) else rc


def start_supervisor(lab: str, host: str) -> int:
    hdir = host_dir(lab, host)
    with open(hdir / "supervisor.log", "a", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, str(LAB_CLI), "_supervise", "--lab", lab, host],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    write_host_runtime(lab, host, supervisor_pid=proc.pid)
    return proc.pid


def lab_ssh_argv(lab: str, address: str, *command: str, connect_timeout: int = 3) -> list[str]:
    """ssh to a host as root with the lab key, run inside the lab netns."""
    return ["nsenter", f"--net={netns_path(lab_netns(lab))}", "--",
            "ssh", "-i", str(key_file(lab)), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
            f"root@{address}", *command]


def console_tail(lab: str, host: str, lines: int = 20) -> str:
    try:
        text = (host_dir(lab, host) / "console.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(lab: str, host: str, after_boot: int = 0, timeout: float = BOOT_TIMEOUT) -> dict:
    """Wait for boot number > after_boot to reach running/degraded and answer SSH."""
    deadline = time.monotonic() + timeout
    address = load_state(lab)["hosts"][host]["address"]
    phase = "leader"
    last = ""
    while time.monotonic() < deadline:
        runtime = host_runtime(lab, host)
        if phase == "leader":
            if runtime.get("boot_count", 0) > after_boot and runtime.get("leader_pid"):
                phase = "systemd"
            elif runtime.get("supervisor_pid") and not pid_alive(runtime["supervisor_pid"]):
                raise LabError(f"{host}: supervisor exited during boot\n{console_tail(lab, host)}")
            else:
                time.sleep(0.05)
                continue
        leader = current_leader(runtime)
        if not pid_alive(leader):
            phase = "leader"
            time.sleep(0.05)
            continue
        if phase == "systemd":
            try:
                exe = os.readlink(f"/proc/{leader}/exe")
            except OSError:
                exe = ""
            if os.path.basename(exe) != "systemd":
                # nspawn's child has not exec'd the container's init yet.
                time.sleep(0.02)
                continue
            left = max(1.0, deadline - time.monotonic())
            try:
                proc = subprocess.run(["nsenter", "-t", str(leader), "-a", "systemctl", "is-system-running", "--wait"],
                                      capture_output=True, text=True, timeout=left, check=False)
            except subprocess.TimeoutExpired:
                last = "still starting"
                continue
            last = (proc.stdout.strip() or proc.stderr.strip())
            if last in ("running", "degraded"):
                phase = "ssh"
            elif last in ("maintenance", "stopping"):
                raise LabError(f"{host}: systemd is {last}\n{console_tail(lab, host)}")
            else:
                time.sleep(0.1)
                continue
        try:
            proc = subprocess.run(lab_ssh_argv(lab, address, "true", connect_timeout=2),
                                  capture_output=True, text=True, timeout=15, check=False)
        except subprocess.TimeoutExpired:
            last = "ssh timed out"
            continue
        if proc.returncode == 0:
            return host_runtime(lab, host)
        last = proc.stderr.strip()
        time.sleep(0.1)
    raise LabError(f"{host}: not ready after {timeout:.0f}s (waiting for {phase}: {last})\n"
                   f"{console_tail(lab, host)}")


def wait_all(lab: str, hosts: list[str], after: dict[str, int], timeout: float) -> None:
    errors: dict[str, BaseException] = {}

    def one(host: str) -> None:
        try:
            wait_ready(lab, host, after.get(host, 0), timeout)
        except BaseException as exc:  # reported below, for every host
            errors[host] = exc

    threads = [threading.Thread(target=one, args=(host,), daemon=True) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise LabError("; ".join(f"{exc}" for host, exc in sorted(errors.items())))
