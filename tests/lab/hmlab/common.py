# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Constants, the error type and the small process, file and mount helpers every part of the lab uses."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path


STATE_ROOT = Path(os.environ.get("HOSTMESH_LAB_STATE_DIR", "/var/lib/hostmesh-lab"))
DEFAULT_CACHE = Path(os.environ.get("HOSTMESH_LAB_CACHE", "/var/cache/hostmesh-lab"))
DEFAULT_SUBNET = "10.77.0.0/24"
# The entry point the supervisors and the inventory name (python3 tests/lab/hostmesh_lab.py).
LAB_CLI = Path(__file__).resolve().parent.parent / "hostmesh_lab.py"

NAME_RE = {
    # Lab names end up in netns names (hmlab-NAME-HOST) and machine names; no
    # dash, so "hmlab-NAME-" is an unambiguous prefix for one lab's hosts.
    "lab": re.compile(r"^[a-z0-9]{1,16}$"),
    "host": re.compile(r"^[a-z][a-z0-9-]{0,30}$"),
}
BOOT_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
REBOOT_EXIT_STATUS = 133  # systemd-nspawn's exit status when the container rebooted
CGROUP_PARENT = "hostmesh-lab"


class LabError(Exception):
    """A lab operation failed; the message says what and where."""


# --------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"hostmesh-lab: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], check: bool = True, capture: bool = True, timeout: float | None = 60,
        input_text: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, check=False, text=True, input=input_text,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip() if capture else ""
        raise LabError(f"command failed (rc={proc.returncode}): {shlex.join(argv)}: {err}")
    return proc


def atomic_write(path: Path, content: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def validate_name(kind: str, value: str) -> str:
    if not NAME_RE[kind].match(value or ""):
        raise LabError(f"invalid {kind} name {value!r}: must match {NAME_RE[kind].pattern}")
    return value


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def proc_ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        pid = proc_ppid(pid)
    return seen


def kill_and_reap(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.05)


def mounts_below(prefix: Path) -> list[str]:
    """Mount points at or below prefix, deepest first (from /proc/self/mountinfo)."""
    found = []
    root = str(prefix).rstrip("/")
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_below(prefix: Path) -> None:
    for point in mounts_below(prefix):
        if run(["umount", point], check=False).returncode != 0:
            # Something still holds it open (a process we could not kill);
            # detach it so the directory can go, the kernel frees it later.
            run(["umount", "--lazy", point], check=False)


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to cross into anything still mounted below path."""
    if not path.exists() and not path.is_symlink():
        return
    left = mounts_below(path)
    if left:
        raise LabError(f"refusing to delete {path}: still mounted: {', '.join(left)}")
    run(["rm", "-rf", "--one-file-system", "--", str(path)], timeout=300)
