# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Cgroups: each host gets its own cgroup in name=systemd, the unified hierarchy and net_cls."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from .common import CGROUP_PARENT, ancestors, kill_and_reap, log, run


# cgroups: each host gets its own cgroup in name=systemd, the unified
# hierarchy and net_cls, so hosts never share a cgroup (and their systemd
# never manages another host's units) and each host sees a net_cls hierarchy
# of its own when it mounts one (the net_cls bypass mode).


def v1_mounts() -> dict[str, str]:
    found = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            pre, post = line.partition(" - ")[::2]
            fields, tail = pre.split(), post.split()
            if tail and tail[0] == "cgroup2":
                found.setdefault("unified", fields[4])
            elif tail and tail[0] == "cgroup":
                for opt in tail[2].split(","):
                    if opt == "name=systemd":
                        found.setdefault("systemd", fields[4])
                    elif opt == "net_cls":
                        found.setdefault("net_cls", fields[4])
    return found


def host_cgroup(lab: str, host: str) -> str:
    return f"{CGROUP_PARENT}/{lab}/{host}"


def host_cgroup_dirs(lab: str, host: str) -> list[Path]:
    mounts = v1_mounts()
    return [Path(mounts[key]) / host_cgroup(lab, host) for key in ("systemd", "unified") if key in mounts]


def net_cls_run(script: str) -> subprocess.CompletedProcess:
    """Run a shell script with $NC = a net_cls hierarchy mount, never touching
    the machine's mounts: an existing mount is used as is, otherwise the
    hierarchy is mounted inside a private mount namespace."""
    existing = v1_mounts().get("net_cls")
    if existing:
        return run(["sh", "-euc", script], check=False, env={**os.environ, "NC": existing})
    # The mount lives and dies with the private mount namespace; the
    # directory is on the machine's /tmp, so unmount (here) and remove it.
    wrapper = ('NC=$(mktemp -d /tmp/hostmesh-lab-net_cls.XXXXXX); trap \'umount "$NC" 2>/dev/null || true; rmdir "$NC"\' EXIT; '
               'mount -t cgroup -o net_cls net_cls "$NC" 2>/dev/null '
               '|| mount -t cgroup -o net_cls,net_prio net_cls "$NC"; ' + script)
    return run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", wrapper],
               check=False, env={**os.environ})


def join_net_cls_cgroup(lab: str, host: str, pid: int) -> None:
    path = host_cgroup(lab, host)
    proc = net_cls_run(f'mkdir -p "$NC/{path}" && echo {pid} > "$NC/{path}/cgroup.procs"')
    if proc.returncode != 0:
        log(f"warning: {host}: no net_cls cgroup of its own ({proc.stderr.strip()});"
            " the net_cls hierarchy inside this host is shared")


def reset_net_cls_cgroup(lab: str, host: str) -> None:
    """Remove the cgroups a host made below its own net_cls cgroup before it
    boots: the lab's cgroup outlives the host's boots, a real machine's
    cgroups do not (a net_cls cgroup made by the last boot must not be found
    by the next one). The last boot's processes may still be dying: retry."""
    path = host_cgroup(lab, host)
    proc = net_cls_run(f'[ -d "$NC/{path}" ] || exit 0; '
                       f'for _ in $(seq 50); do '
                       f'find "$NC/{path}" -mindepth 1 -depth -type d -exec rmdir {{}} + 2>/dev/null || true; '
                       f'[ -z "$(find "$NC/{path}" -mindepth 1 -type d)" ] && exit 0; sleep 0.1; done; '
                       f'find "$NC/{path}" -mindepth 1 -type d >&2; exit 1')
    if proc.returncode != 0:
        log(f"warning: {host}: net_cls cgroups of its last boot are left: {proc.stderr.strip()}")


def lab_cgroup_bases(lab: str) -> list[Path]:
    mounts = v1_mounts()
    return [Path(mounts[key]) / CGROUP_PARENT / lab for key in ("systemd", "unified") if key in mounts]


def cgroup_members(base: Path) -> set[int]:
    members = set()
    for dirpath, _dirs, _files in os.walk(base):
        with contextlib.suppress(OSError):
            members |= {int(pid) for pid in (Path(dirpath) / "cgroup.procs").read_text(encoding="utf-8").split()}
    return members


def remove_cgroups(lab: str, timeout: float = 15.0) -> None:
    """Kill whatever is still in the lab's cgroups (processes of a killed host
    die asynchronously), then remove the cgroups, deepest first."""
    me = ancestors(os.getpid())
    deadline = time.monotonic() + timeout
    for base in lab_cgroup_bases(lab):
        while base.is_dir():
            members = cgroup_members(base) - me
            if members:
                kill_and_reap(sorted(members), timeout=1.0)
            for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda e: e[0].count("/"), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
            if not base.is_dir() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            os.rmdir(base.parent)  # hostmesh-lab/, when no other lab is left
    net_cls_run(f'if [ -d "$NC/{CGROUP_PARENT}/{lab}" ]; then '
                f'find "$NC/{CGROUP_PARENT}/{lab}" -depth -type d -exec rmdir {{}} \\; ; fi; '
                f'rmdir "$NC/{CGROUP_PARENT}" 2>/dev/null || true')


def join_cgroups_preexec(dirs: list[Path]):
    def preexec():
        for cgroup in dirs:
            cgroup.mkdir(parents=True, exist_ok=True)
            with open(cgroup / "cgroup.procs", "w", encoding="utf-8") as handle:
                handle.write("0")
    return preexec
