# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A lab's lifecycle: up, down, reboot, stop, start, exec and status."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from .common import (
    BOOT_TIMEOUT,
    DEFAULT_CACHE,
    DEFAULT_SUBNET,
    LAB_CLI,
    LabError,
    STOP_TIMEOUT,
    all_pids,
    ancestors,
    atomic_write,
    kill_and_reap,
    log,
    mounts_below,
    pid_alive,
    proc_cmdline,
    remove_tree,
    run,
    unmount_below,
    validate_name,
)
from .image import build_image
from .state import (
    host_dir,
    host_netns,
    host_runtime,
    inventory_file,
    key_file,
    lab_dir,
    lab_lock,
    lab_netns,
    load_state,
    mac_address,
    machine_name,
    netns_path,
    refresh_inventory,
    state_file,
    state_with_runtime,
)
from .network import caller_netns, ensure_lab_network, ip, netns_exists, netns_inode, pids_in_netns
from .cgroups import lab_cgroup_bases, remove_cgroups
from .supervisor import console_tail, current_leader, start_supervisor, wait_all, wait_ready


@contextlib.contextmanager
def signals_as_exceptions():
    """SIGTERM/SIGHUP become SystemExit so the cleanup in `up` runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return

    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def write_ssh_wrappers(lab: str) -> dict:
    bindir = lab_dir(lab) / "_bin"
    bindir.mkdir(exist_ok=True)
    wrappers = {}
    for tool in ("ssh", "sftp", "scp"):
        path = bindir / tool
        atomic_write(path, "#!/bin/sh\n"
                           f"# hostmesh lab {lab}: run {tool} inside the lab network namespace\n"
                           f"exec nsenter --net={netns_path(lab_netns(lab))} -- /usr/bin/{tool} \"$@\"\n",
                     mode=0o755)
        wrappers[tool] = str(path)
    return wrappers


def seed_host(lab: str, host: str, hosts_file: str, pubkey: str) -> None:
    """Per-host files, written through the overlay before the first boot."""
    root = host_dir(lab, host) / "root"
    (root / "etc/hostname").write_text(host + "\n", encoding="utf-8")
    (root / "etc/hosts").write_text(hosts_file, encoding="utf-8")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n", encoding="utf-8")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(pubkey, encoding="utf-8")
    os.chmod(ssh_dir / "authorized_keys", 0o600)


def up(lab: str, hosts: list[str], subnet: str = DEFAULT_SUBNET, cache: Path = DEFAULT_CACHE,
       cgroup: str = "unified", subnet6: str | None = None, timeout: float = BOOT_TIMEOUT) -> dict:
    """Boot a lab of hosts and return its state (see state.json). Cleans up on failure."""
    validate_name("lab", lab)
    if not hosts:
        raise LabError("no hosts given")
    for host in hosts:
        validate_name("host", host)
    if len(set(hosts)) != len(hosts):
        raise LabError(f"duplicate host names in {hosts}")
    if cgroup not in ("unified", "hybrid"):
        raise LabError(f"invalid cgroup mode {cgroup!r}: unified or hybrid")
    net = ipaddress.ip_network(subnet)
    if net.version != 4 or net.num_addresses < len(hosts) + 12:
        raise LabError(f"subnet {subnet} must be IPv4 with room for .1 and .11-.{10 + len(hosts)}")
    net6 = ipaddress.ip_network(subnet6) if subnet6 else None
    if net6 is not None and net6.version != 6:
        raise LabError(f"subnet6 {subnet6} is not an IPv6 network")
    if lab_dir(lab).exists():
        raise LabError(f"lab {lab!r} already exists ({lab_dir(lab)}): run `down --lab {lab}` first")
    image = build_image(cache)
    started = time.monotonic()
    with signals_as_exceptions():
        try:
            ldir = lab_dir(lab)
            ldir.mkdir(parents=True)
            os.chmod(ldir, 0o700)
            (ldir / "_cp").mkdir(mode=0o700)
            state = {
                "lab": lab,
                "subnet": str(net),
                "subnet6": str(net6) if net6 else None,
                "controller_address": str(net.network_address + 1),
                "netns": lab_netns(lab),
                "bridge": "br0",
                "cgroup": cgroup,
                "image": str(image),
                "dir": str(ldir),
                "key": str(key_file(lab)),
                "inventory": str(inventory_file(lab)),
                "control_path_dir": str(ldir / "_cp"),
                "ssh_wrappers": write_ssh_wrappers(lab),
                "hosts": {},
            }
            for index, host in enumerate(hosts, start=1):
                state["hosts"][host] = {
                    "address": str(net.network_address + 10 + index),
                    "address6": str(net6.network_address + 10 + index) if net6 else None,
                    "netns": host_netns(lab, host),
                    "machine": machine_name(lab, host),
                    "bridge_port": f"vh{index}",
                    "mac": mac_address(lab, index),
                    "dir": str(host_dir(lab, host)),
                    "root": str(host_dir(lab, host) / "root"),
                    "console_log": str(host_dir(lab, host) / "console.log"),
                }
            atomic_write(state_file(lab), json.dumps(state, indent=2) + "\n")
            ensure_lab_network(lab, str(net))
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hostmesh-lab-{lab}",
                 "-f", str(key_file(lab))])
            pubkey = Path(str(key_file(lab)) + ".pub").read_text(encoding="utf-8")
            hosts_file = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
                f"{info['address']}\t{host}\n" for host, info in state["hosts"].items())
            hosts_file += f"{state['controller_address']}\tcontroller\n"
            for host in hosts:
                hdir = host_dir(lab, host)
                for sub in ("upper", "work", "root"):
                    (hdir / sub).mkdir(parents=True)
                run(["mount", "-t", "overlay", "overlay", "-o",
                     f"lowerdir={image},upperdir={hdir / 'upper'},workdir={hdir / 'work'}", str(hdir / "root")])
                seed_host(lab, host, hosts_file, pubkey)
            for host in hosts:
                start_supervisor(lab, host)
            wait_all(lab, hosts, {}, timeout)
            refresh_inventory(lab)
            log(f"lab {lab} up: {len(hosts)} hosts in {time.monotonic() - started:.1f}s;"
                f" inventory {inventory_file(lab)}")
            return state_with_runtime(lab)
        except BaseException:
            log(f"lab {lab}: up failed, removing what was created")
            with contextlib.suppress(Exception):
                down(lab)
            raise


def poweroff_host(lab: str, host: str, timeout: float = STOP_TIMEOUT) -> None:
    """Clean shutdown; SIGKILL the container's init (and nspawn) if it hangs."""
    runtime = host_runtime(lab, host)
    leader, supervisor = current_leader(runtime), runtime.get("supervisor_pid")
    deadline = time.monotonic() + timeout
    signalled = 0.0
    while time.monotonic() < deadline and (pid_alive(leader) or pid_alive(supervisor)):
        if not pid_alive(leader):
            leader = current_leader(host_runtime(lab, host)) or leader
        if pid_alive(leader) and time.monotonic() - signalled > 1.0:
            # SIGRTMIN+4 asks systemd for `poweroff` (as `systemctl poweroff`
            # does). Resent: a container's init ignores it until systemd has
            # installed its handlers early in boot.
            with contextlib.suppress(ProcessLookupError):
                os.kill(leader, signal.SIGRTMIN + 4)
            signalled = time.monotonic()
        time.sleep(0.05)
    stuck = [pid for pid in (leader, runtime.get("nspawn_pid")) if pid_alive(pid)]
    if stuck:
        log(f"{host}: did not power off in {timeout:.0f}s; killing its init. Console:\n{console_tail(lab, host, 8)}")
        kill_and_reap(stuck)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(supervisor):
        time.sleep(0.05)


def nspawn_lock_file(lab: str, host: str) -> Path | None:
    """The lock file systemd-nspawn keeps for a host's root (named by the
    overlay's device and inode); nspawn does not always remove it on exit."""
    root = host_dir(lab, host) / "root"
    if not os.path.ismount(root):
        return None
    st = os.stat(root)
    return Path("/run/systemd/nspawn/locks") / f"inode-{st.st_dev}:{st.st_ino}"


def lab_processes(lab: str) -> list[int]:
    """Supervisors and nspawn processes of this lab, found by their command lines."""
    root_prefix = str(lab_dir(lab)) + "/"
    found = []
    for pid in all_pids():
        argv = proc_cmdline(pid)
        if not argv:
            continue
        if "_supervise" in argv and str(LAB_CLI.name) in " ".join(argv) and \
                argv[argv.index("_supervise") + 1:argv.index("_supervise") + 3] == ["--lab", lab]:
            found.append(pid)
        elif os.path.basename(argv[0]) == "systemd-nspawn" and any(a.startswith(root_prefix) for a in argv):
            found.append(pid)
    return found


def lab_leftovers(lab: str) -> list[str]:
    """What of this lab exists on the machine (empty once `down` is done)."""
    found = []
    if lab_dir(lab).exists():
        found.append(str(lab_dir(lab)))
    if Path("/run/netns").is_dir():
        found += sorted(f"netns {entry.name}" for entry in Path("/run/netns").iterdir()
                        if entry.name == lab_netns(lab) or entry.name.startswith(lab_netns(lab) + "-"))
    found += [f"mount {point}" for point in mounts_below(lab_dir(lab))]
    found += [f"process {pid} ({' '.join(proc_cmdline(pid))[:80]})" for pid in lab_processes(lab)]
    found += [f"cgroup {base}" for base in lab_cgroup_bases(lab) if base.exists()]
    return found


def down(lab: str, timeout: float = STOP_TIMEOUT) -> bool:
    """Remove everything the lab made; True if there was anything.

    Idempotent; works on a half-created lab (it finds hosts by their
    directories, namespaces and processes, not only from state.json).
    """
    validate_name("lab", lab)
    ldir = lab_dir(lab)
    existed = bool(lab_leftovers(lab))
    state = load_state(lab) if ldir.is_dir() else {}
    hosts = set(state.get("hosts", {}))
    if ldir.is_dir():
        hosts |= {entry.name for entry in ldir.iterdir() if (entry / "runtime.json").exists()}
    if ldir.is_dir():
        (ldir / "stopping").touch()
    threads = [threading.Thread(target=poweroff_host, args=(lab, host, timeout), daemon=True)
               for host in sorted(hosts) if (ldir / host).is_dir()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    me = ancestors(os.getpid())
    leftovers = [pid for pid in lab_processes(lab) if pid not in me]
    if leftovers:
        log(f"killing leftover lab processes {leftovers}")
        kill_and_reap(leftovers)
    prefix = lab_netns(lab) + "-"
    host_namespaces = {host_netns(lab, host) for host in hosts}
    if Path("/run/netns").is_dir():
        host_namespaces |= {entry.name for entry in Path("/run/netns").iterdir() if entry.name.startswith(prefix)}
    keep_lab_netns = netns_inode(lab_netns(lab)) == caller_netns()
    for name in sorted(host_namespaces) + [lab_netns(lab)]:
        # Controller-side leftovers too: ssh ControlMaster processes, servers a
        # test started with `exec`. Never this process or its parents.
        stray = [pid for pid in pids_in_netns(name) if pid not in me]
        if stray:
            kill_and_reap(stray)
    for name in sorted(host_namespaces) + ([] if keep_lab_netns else [lab_netns(lab)]):
        if netns_exists(name):
            ip("netns", "del", name, check=False)
    if keep_lab_netns:
        # We run inside it (a controller started with `exec`): deleting it now
        # would strand us, so it stays (the hosts' bridge ports went with their
        # namespaces); `exec` removes it when its command ends.
        log(f"keeping {lab_netns(lab)}: this process runs inside it")
    nspawn_locks = [nspawn_lock_file(lab, host) for host in hosts]
    if ldir.is_dir():
        unmount_below(ldir)
    for lock in nspawn_locks:
        if lock is not None:
            with contextlib.suppress(OSError):
                lock.unlink()
    remove_cgroups(lab)
    for host in hosts:
        propagate = Path("/run/systemd/nspawn/propagate") / machine_name(lab, host)
        with contextlib.suppress(OSError):
            shutil.rmtree(propagate)
    remove_tree(ldir)
    with contextlib.suppress(OSError):
        lab_lock(lab).unlink()
    return existed


def host_names(lab: str) -> list[str]:
    state = load_state(lab)
    if not state:
        raise LabError(f"lab {lab!r} does not exist")
    return list(state["hosts"])


def check_host(lab: str, host: str) -> None:
    if host not in host_names(lab):
        raise LabError(f"lab {lab!r} has no host {host!r} (hosts: {', '.join(host_names(lab))})")


def reboot(lab: str, host: str, force: bool = False, timeout: float = BOOT_TIMEOUT) -> dict:
    """Reboot one host: fresh network namespace and PID 1, same disk. Waits for SSH.

    Clean by default (`systemctl reboot` inside); force=True kills the host's
    init instead, like pulling the power cord (no unit gets to stop).
    """
    check_host(lab, host)
    runtime = host_runtime(lab, host)
    leader = current_leader(runtime)
    if not runtime.get("running") or not pid_alive(leader):
        raise LabError(f"{host} is not running (use `start`)")
    before = runtime.get("boot_count", 0)
    (host_dir(lab, host) / "reboot-requested").touch()
    if force:
        kill_and_reap([leader])
    else:
        run(["nsenter", "-t", str(leader), "-a", "systemctl", "reboot", "--no-block"], check=False, timeout=15)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and pid_alive(leader):
            time.sleep(0.05)
        if pid_alive(leader):
            log(f"{host}: did not stop in {STOP_TIMEOUT:.0f}s; killing its init")
            kill_and_reap([leader])
    wait_ready(lab, host, before, timeout)
    refresh_inventory(lab)
    return host_runtime(lab, host)


def stop(lab: str, host: str, timeout: float = STOP_TIMEOUT) -> None:
    check_host(lab, host)
    with contextlib.suppress(FileNotFoundError):
        (host_dir(lab, host) / "reboot-requested").unlink()
    poweroff_host(lab, host, timeout)
    refresh_inventory(lab)


def start(lab: str, host: str, timeout: float = BOOT_TIMEOUT) -> dict:
    check_host(lab, host)
    runtime = host_runtime(lab, host)
    if pid_alive(runtime.get("supervisor_pid")):
        raise LabError(f"{host} is already running")
    start_supervisor(lab, host)
    wait_ready(lab, host, runtime.get("boot_count", 0), timeout)
    refresh_inventory(lab)
    return host_runtime(lab, host)


def exec_argv(lab: str, argv: list[str]) -> list[str]:
    """argv wrapped to run in the lab netns (mount namespace kept: cgroups and
    files stay as they are, unlike `ip netns exec`, which remounts /sys)."""
    return ["nsenter", f"--net={netns_path(lab_netns(lab))}", "--", *argv]


def exec_in_lab(lab: str, argv: list[str], subnet: str = DEFAULT_SUBNET) -> int:
    """Run argv inside the lab netns, creating the netns if the lab is not up yet
    (so a controller such as `molecule test` can start before its `create`)."""
    validate_name("lab", lab)
    if not argv:
        raise LabError("exec: no command given")
    state = load_state(lab)
    ensure_lab_network(lab, state.get("subnet", subnet))
    env = {**os.environ, "HOSTMESH_LAB": lab, "HOSTMESH_LAB_INVENTORY": str(inventory_file(lab))}
    proc = subprocess.Popen(exec_argv(lab, argv), env=env)
    forward = {sig: signal.signal(sig, lambda signum, _f: proc.send_signal(signum))
               for sig in (signal.SIGTERM, signal.SIGHUP)}
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child gets ^C from the terminal
    try:
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        for sig, previous in forward.items():
            signal.signal(sig, previous)
    if not lab_dir(lab).exists() and netns_exists(lab_netns(lab)) and not pids_in_netns(lab_netns(lab)):
        # The lab was taken down from inside (molecule destroy) or never came up.
        ip("netns", "del", lab_netns(lab), check=False)
    return rc


def status(lab: str) -> dict:
    validate_name("lab", lab)
    state = state_with_runtime(lab)
    if not state:
        return {"lab": lab, "exists": False, "netns": netns_exists(lab_netns(lab))}
    state["exists"] = True
    return state


def shell_argv(lab: str, host: str, command: list[str]) -> list[str]:
    check_host(lab, host)
    leader = current_leader(host_runtime(lab, host))
    if not pid_alive(leader):
        raise LabError(f"{host} is not running")
    term = os.environ.get("TERM", "dumb")
    inner = command or ["/bin/bash", "-l"]
    # env -C, not nsenter --wd: nsenter opens the --wd path before it enters
    # the host's mount namespace, so it would name the machine's /root.
    return ["nsenter", "-t", str(leader), "-a", "env", "-i", "-C", "/root", f"TERM={term}", "HOME=/root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", *inner]
