# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""hostmesh lab: a small fleet of real systemd hosts, booted with systemd-nspawn.

Each host is a Debian 12 system running its own systemd (PID 1 in its own PID
namespace), its own network namespace with one address on a shared bridge, and
an overlayfs root over one cached debootstrap image, so a host boots in about a
second and keeps its disk across reboots. Ansible reaches the hosts over SSH.

    python3 tests/lab/hostmesh_lab.py build-image [--cache DIR]
    python3 tests/lab/hostmesh_lab.py up --lab NAME --hosts alpha,bravo,charlie [--subnet 10.77.0.0/24]
    python3 tests/lab/hostmesh_lab.py exec --lab NAME -- CMD...   # CMD runs in the lab network
    python3 tests/lab/hostmesh_lab.py reboot --lab NAME HOST [--force]
    python3 tests/lab/hostmesh_lab.py stop|start --lab NAME HOST
    python3 tests/lab/hostmesh_lab.py status --lab NAME [--json]
    python3 tests/lab/hostmesh_lab.py shell --lab NAME HOST [-- CMD...]
    python3 tests/lab/hostmesh_lab.py down --lab NAME

Layout (see tests/lab/README.md for the details and the reasons):
  lab network namespace  hmlab-NAME        bridge br0 + controller address (.1)
  host network namespace hmlab-NAME-HOST   eth0 (.11, .12, ...), default route via .1
  /var/lib/hostmesh-lab/NAME/              state.json, inventory.yml, SSH key,
                                           HOST/{upper,work,root,console.log}
  /var/cache/hostmesh-lab/bookworm-STAMP/  the read-only image (overlay lowerdir)

Every host runs under a small supervisor process (this file, `_supervise`),
which (re)creates the host's network namespace before each boot and boots the
host again when it reboots itself (`systemctl reboot`, ansible.builtin.reboot):
a reboot starts with a fresh network stack (no iptables rules, no sockets),
like a real machine, while the disk (the overlay upper dir) is kept.

Stdlib only; runs as root. Importable: `import hostmesh_lab` gives up(),
down(), reboot(), exec_argv(), load_state(), build_image() and friends.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

STATE_ROOT = Path(os.environ.get("HOSTMESH_LAB_STATE_DIR", "/var/lib/hostmesh-lab"))
DEFAULT_CACHE = Path(os.environ.get("HOSTMESH_LAB_CACHE", "/var/cache/hostmesh-lab"))
DEFAULT_SUBNET = "10.77.0.0/24"
LAB_CLI = Path(__file__).resolve()

SUITE = "bookworm"
# The packages a fleet host needs: systemd as init, SSH and Python for Ansible,
# iptables/iproute2 for the redirect rules, and what the tests use inside hosts
# (curl for requests and the `url` install method, procps for pgrep/ps,
# ca-certificates for HTTPS, sudo for playbooks written with `become: true`,
# python3-apt so ansible.builtin.package/apt can check installed packages).
IMAGE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "iptables",
    "iproute2",
    "python3",
    "python3-apt",
    "openssh-server",
    "procps",
    "ca-certificates",
    "curl",
    "sudo",
)
# Units that only add noise or background work in a short-lived test host.
IMAGE_MASKED_UNITS = (
    "console-getty.service",
    "container-getty@.service",
    "getty@.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-pstore.service",
)
SSH_KEYGEN_UNIT = "hostmesh-lab-sshd-keygen.service"
# Files written into the image. Host keys are deliberately absent: each host
# makes its own at first boot (SSH_KEYGEN_UNIT), so no two hosts share a key.
IMAGE_FILES = {
    "etc/ssh/sshd_config.d/10-hostmesh-lab.conf": (
        "# hostmesh lab: root by key only, no DNS lookups, no banners\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        # Ansible opens many connections at once (forks, benchmarks).
        "MaxStartups 100:30:200\n"
        "MaxSessions 100\n"
    ),
    "etc/systemd/system/" + SSH_KEYGEN_UNIT: (
        "[Unit]\n"
        "Description=Generate this host's SSH host key (hostmesh lab)\n"
        "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n"
        "Before=ssh.service\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -C \"\" -f /etc/ssh/ssh_host_ed25519_key\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    ),
    "etc/systemd/system/ssh.service.d/10-hostmesh-lab.conf": (
        "[Unit]\n"
        "Wants=" + SSH_KEYGEN_UNIT + "\n"
        "After=" + SSH_KEYGEN_UNIT + "\n"
    ),
    "etc/systemd/journald.conf.d/10-hostmesh-lab.conf": (
        "[Journal]\nSystemMaxUse=32M\nRuntimeMaxUse=16M\n"
    ),
    # A hung unit must not stretch a lab reboot to 90 s.
    "etc/systemd/system.conf.d/10-hostmesh-lab.conf": (
        "[Manager]\nDefaultTimeoutStopSec=15s\n"
    ),
    "etc/default/locale": "LANG=C.UTF-8\n",
    "etc/resolv.conf": "# hostmesh lab: no DNS inside the lab; hosts are in /etc/hosts\n",
    "etc/fstab": "# hostmesh lab: the root is an overlay mounted by the lab\n",
    "etc/hostname": "localhost\n",
    "etc/motd": "",
    "root/.hushlogin": "",
}
# Bumped when the build steps change in a way IMAGE_* does not show.
IMAGE_LAYOUT = 1

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


# --------------------------------------------------------------------------
# image


def image_stamp() -> str:
    recipe = {
        "suite": SUITE,
        "packages": sorted(IMAGE_PACKAGES),
        "masked": sorted(IMAGE_MASKED_UNITS),
        "files": IMAGE_FILES,
        "layout": IMAGE_LAYOUT,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def image_path(cache: Path = DEFAULT_CACHE) -> Path:
    """The image root for the current recipe (it may not be built yet)."""
    return Path(cache) / f"{SUITE}-{image_stamp()}" / "rootfs"


def parse_apt_sources(text: str, deb822: bool) -> list[tuple[str, list[str]]]:
    """(uri, suites) of each `deb` entry in a sources.list or deb822 .sources text."""
    entries = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0].isspace() and key:
                    fields[key] += " " + line.strip()
                    continue
                key, value = line.partition(":")[::2]
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    else:
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            if words and words[0].startswith("["):
                while words and not words[0].endswith("]"):
                    words = words[1:]
                words = words[1:]
            if len(words) >= 2:
                entries.append((words[0], [words[1]]))
    return entries


def find_debian_mirror(suite: str = SUITE, etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for `suite`."""
    if os.environ.get("HOSTMESH_LAB_MIRROR"):
        return os.environ["HOSTMESH_LAB_MIRROR"]
    candidates = [(etc_apt / "sources.list", False)]
    sources_d = etc_apt / "sources.list.d"
    if sources_d.is_dir():
        for entry in sorted(sources_d.iterdir()):
            if entry.suffix in (".list", ".sources"):
                candidates.append((entry, entry.suffix == ".sources"))
    for path, deb822 in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for uri, suites in parse_apt_sources(text, deb822):
            if suite in suites:
                return uri
    raise LabError(f"no apt source for {suite} in {etc_apt}; set HOSTMESH_LAB_MIRROR")


def configure_image(root: Path) -> None:
    """Turn a fresh debootstrap tree into the lab's host image."""
    for key in root.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    sshd_config = root / "etc/ssh/sshd_config"
    # AcceptEnv is cumulative (a drop-in cannot remove it); forwarded LANG/LC_*
    # would make every tool inside warn about locales that are not installed.
    lines = sshd_config.read_text(encoding="utf-8").splitlines()
    sshd_config.write_text("\n".join(line for line in lines if not line.startswith("AcceptEnv")) + "\n",
                           encoding="utf-8")
    for rel, content in IMAGE_FILES.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(content, encoding="utf-8")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / SSH_KEYGEN_UNIT
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/" + SSH_KEYGEN_UNIT)
    for unit in IMAGE_MASKED_UNITS:
        mask = root / "etc/systemd/system" / unit
        if mask.exists() or mask.is_symlink():
            mask.unlink()
        mask.symlink_to("/dev/null")
    # Each host gets its own machine id (written by `up`); the image has none.
    (root / "etc/machine-id").write_text("", encoding="utf-8")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    for cache_bin in (root / "var/cache/apt").glob("*.bin"):
        cache_bin.unlink()


def build_image(cache: Path = DEFAULT_CACHE, mirror: str | None = None, force: bool = False) -> Path:
    """Build the host image once per recipe; returns its root. Atomic and locked."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    final = image_path(cache)
    stamp_file = final.parent / "stamp.json"
    with file_lock(cache / ".lock"):
        if force and str(final.parent) in images_in_use():
            raise LabError(f"{final.parent} is in use by a lab: take the lab down before --force")
        if not force and final.is_dir() and stamp_file.is_file():
            try:
                if json.loads(stamp_file.read_text(encoding="utf-8")).get("stamp") == image_stamp():
                    return final
            except ValueError:
                pass
        for stale in cache.glob(".build-*"):
            # Left by an interrupted build: debootstrap may have left /proc etc. mounted.
            unmount_below(stale)
            remove_tree(stale)
        mirror = mirror or find_debian_mirror()
        build_dir = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        started = time.monotonic()
        try:
            (cache / "debs").mkdir(exist_ok=True)
            rootfs = build_dir / "rootfs"
            log(f"debootstrap {SUITE} from {mirror} (once; cached in {cache})")
            proc = run(["debootstrap", "--variant=minbase", "--include=" + ",".join(IMAGE_PACKAGES),
                        "--cache-dir=" + str(cache / "debs"), SUITE, str(rootfs), mirror],
                       check=False, timeout=1800)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise LabError(f"debootstrap failed (rc={proc.returncode}):\n{tail}")
            unmount_below(rootfs)
            configure_image(rootfs)
            stamp = {"stamp": image_stamp(), "suite": SUITE, "mirror": mirror,
                     "packages": list(IMAGE_PACKAGES), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "build_seconds": round(time.monotonic() - started, 1)}
            (build_dir / "stamp.json").write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
            os.chmod(build_dir, 0o755)  # mkdtemp made it 0700
            if final.parent.exists():
                remove_tree(final.parent)
            os.rename(build_dir, final.parent)
        except BaseException:
            unmount_below(build_dir)
            remove_tree(build_dir)
            raise
        prune_images(cache, keep=final.parent)
        log(f"image ready: {final} ({time.monotonic() - started:.0f}s)")
        return final


def images_in_use() -> set[str]:
    """Image directories that a lab boots from (state files, overlay mounts)."""
    in_use = set()
    if STATE_ROOT.is_dir():
        for lab_state in STATE_ROOT.glob("*/state.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                in_use.add(str(Path(json.loads(lab_state.read_text(encoding="utf-8"))["image"]).parent))
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            for option in line.rsplit(" - ", 1)[-1].split()[-1].split(","):
                if option.startswith("lowerdir="):
                    in_use.add(str(Path(option[len("lowerdir="):]).parent))
    return in_use


def prune_images(cache: Path, keep: Path) -> None:
    """Remove images of older recipes that no existing lab still boots from."""
    in_use = images_in_use()
    for candidate in cache.glob(f"{SUITE}-*"):
        if candidate != keep and candidate.is_dir() and str(candidate) not in in_use:
            log(f"removing unused old image {candidate}")
            remove_tree(candidate)


# --------------------------------------------------------------------------
# names and paths


def lab_dir(lab: str) -> Path:
    return STATE_ROOT / lab


def host_dir(lab: str, host: str) -> Path:
    return lab_dir(lab) / host


def lab_netns(lab: str) -> str:
    return f"hmlab-{lab}"


def host_netns(lab: str, host: str) -> str:
    return f"hmlab-{lab}-{host}"


def netns_path(name: str) -> Path:
    return Path("/run/netns") / name


def machine_name(lab: str, host: str) -> str:
    # nspawn keys some runtime files (/run/systemd/nspawn/propagate/NAME) by
    # machine name, so it must be unique across labs; the hostname is set
    # separately from /etc/hostname.
    return f"hmlab-{lab}-{host}"


def state_file(lab: str) -> Path:
    return lab_dir(lab) / "state.json"


def inventory_file(lab: str) -> Path:
    return lab_dir(lab) / "inventory.yml"


def key_file(lab: str) -> Path:
    return lab_dir(lab) / "id_ed25519"


def lab_lock(lab: str) -> Path:
    # Outside the lab dir so `down` can hold it while it deletes the lab dir.
    return STATE_ROOT / f".{lab}.lock"


def mac_address(lab: str, index: int) -> str:
    """Stable, locally administered MAC: a host keeps its MAC across reboots,
    so the neighbour caches of the other hosts stay right (like a VM's NIC)."""
    lab_byte = hashlib.sha256(lab.encode()).digest()[0]
    return "02:68:6d:%02x:%02x:%02x" % (lab_byte, (index >> 8) & 0xFF, index & 0xFF)


# --------------------------------------------------------------------------
# state


def load_state(lab: str) -> dict:
    """The lab's state.json (hosts, addresses, leader PIDs, paths); {} if absent."""
    try:
        return json.loads(state_file(lab).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise LabError(f"{state_file(lab)} is not valid JSON: {exc}") from exc


def host_runtime(lab: str, host: str) -> dict:
    try:
        return json.loads((host_dir(lab, host) / "runtime.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def write_host_runtime(lab: str, host: str, **fields) -> dict:
    # The supervisor and the CLI both update it: read-modify-write under a lock.
    with file_lock(host_dir(lab, host) / ".runtime.lock"):
        data = host_runtime(lab, host)
        data.update(fields)
        atomic_write(host_dir(lab, host) / "runtime.json", json.dumps(data, indent=2) + "\n")
    return data


def yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(str(value))  # a JSON string is a valid double-quoted YAML scalar


def render_inventory(state: dict) -> str:
    """Ansible YAML inventory of the lab (all hosts in group `all`)."""
    lab = state["lab"]
    common = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": state["key"],
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                                   " -o IdentitiesOnly=yes -o LogLevel=ERROR",
        # These wrappers run ssh/sftp/scp inside the lab network namespace, so
        # this inventory also works from a controller outside it.
        "ansible_ssh_executable": state["ssh_wrappers"]["ssh"],
        "ansible_sftp_executable": state["ssh_wrappers"]["sftp"],
        "ansible_scp_executable": state["ssh_wrappers"]["scp"],
        # Per-lab ControlPath dir: two labs may use the same addresses.
        "ansible_control_path_dir": state["control_path_dir"],
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    lines = [
        f"# hostmesh lab {lab!r}: generated by {LAB_CLI.name}; rewritten on every boot of a host",
        "all:",
        "  vars:",
        f"    lab_name: {yaml_scalar(lab)}",
        f"    lab_cli: {yaml_scalar(str(LAB_CLI))}",
        f"    lab_netns: {yaml_scalar(state['netns'])}",
        f"    lab_controller_address: {yaml_scalar(state['controller_address'])}",
        f"    lab_subnet: {yaml_scalar(state['subnet'])}",
        "  hosts:",
    ]
    for host, info in state["hosts"].items():
        runtime = host_runtime(lab, host)
        lines.append(f"    {host}:")
        lines.append(f"      ansible_host: {yaml_scalar(info['address'])}")
        for key, value in common.items():
            lines.append(f"      {key}: {yaml_scalar(value)}")
        lines.append(f"      lab_address: {yaml_scalar(info['address'])}")
        if info.get("address6"):
            lines.append(f"      lab_address6: {yaml_scalar(info['address6'])}")
        lines.append(f"      lab_leader_pid: {yaml_scalar(runtime.get('leader_pid'))}")
        lines.append(f"      lab_netns: {yaml_scalar(info['netns'])}")
    return "\n".join(lines) + "\n"


def state_with_runtime(lab: str) -> dict:
    state = load_state(lab)
    for host, info in state.get("hosts", {}).items():
        runtime = host_runtime(lab, host)
        info["leader_pid"] = runtime.get("leader_pid")
        info["nspawn_pid"] = runtime.get("nspawn_pid")
        info["supervisor_pid"] = runtime.get("supervisor_pid")
        info["boot_count"] = runtime.get("boot_count", 0)
        info["running"] = bool(runtime.get("running")) and pid_alive(runtime.get("leader_pid"))
    return state


def refresh_inventory(lab: str) -> None:
    """Rewrite inventory.yml and state.json's PIDs from the hosts' runtime files."""
    if not state_file(lab).is_file():
        return  # being taken down: no lock file to leave behind
    with file_lock(lab_lock(lab)):
        if not state_file(lab).is_file():
            return
        state = state_with_runtime(lab)
        atomic_write(state_file(lab), json.dumps(state, indent=2) + "\n")
        atomic_write(inventory_file(lab), render_inventory(state))


# --------------------------------------------------------------------------
# network


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def netns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(netns_path(name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def caller_netns() -> tuple[int, int]:
    st = os.stat("/proc/self/ns/net")
    return (st.st_dev, st.st_ino)


def pids_in_netns(name: str) -> list[int]:
    ident = netns_inode(name)
    if ident is None:
        return []
    found = []
    for pid in all_pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            found.append(pid)
    return found


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return run(argv, check=check)


def ensure_lab_network(lab: str, subnet: str = DEFAULT_SUBNET) -> bool:
    """Create the lab netns with its bridge and the controller address; True if created.

    Reuses an existing lab netns (e.g. one `exec` made for a controller that
    must live in it before the hosts exist) when its bridge has the same subnet.
    """
    net = ipaddress.ip_network(subnet)
    controller = f"{net.network_address + 1}/{net.prefixlen}"
    name = lab_netns(lab)
    if netns_exists(name):
        shown = ip("-4", "-o", "addr", "show", "dev", "br0", netns=name, check=False).stdout
        if controller not in shown.split():
            raise LabError(f"netns {name} exists without the bridge address {controller}"
                           f" (another subnet?): run `down --lab {lab}` first")
        return False
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", netns=name)
        ip("link", "add", "br0", "address", mac_address(lab, 0), "type", "bridge", netns=name)
        ip("addr", "add", controller, "dev", "br0", netns=name)
        ip("link", "set", "br0", "up", netns=name)
    except BaseException:
        ip("netns", "del", name, check=False)
        raise
    return True


def reset_host_network(lab: str, host: str, info: dict, subnet: str, subnet6: str | None) -> None:
    """A fresh network namespace for one boot of a host: like a machine that
    powers on, it starts with no iptables rules, conntrack entries or sockets."""
    name = host_netns(lab, host)
    if netns_exists(name):
        kill_and_reap(pids_in_netns(name))
        ip("netns", "del", name)
    labns = lab_netns(lab)
    port = info["bridge_port"]
    ip("link", "del", port, netns=labns, check=False)
    net = ipaddress.ip_network(subnet)
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)
    ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "address", info["mac"],
       "netns", name, netns=labns)
    ip("link", "set", port, "master", "br0", "up", netns=labns)
    ip("addr", "add", f"{info['address']}/{net.prefixlen}", "dev", "eth0", netns=name)
    if subnet6 and info.get("address6"):
        net6 = ipaddress.ip_network(subnet6)
        ip("addr", "add", f"{info['address6']}/{net6.prefixlen}", "dev", "eth0", "nodad", netns=name)
    ip("link", "set", "eth0", "up", netns=name)
    ip("route", "add", "default", "via", str(net.network_address + 1), netns=name)
    # The bridge side may still remember this address at the old port.
    ip("neigh", "flush", "to", info["address"], netns=labns, check=False)


# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# one host: supervisor and boot


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


# --------------------------------------------------------------------------
# lab lifecycle


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


# --------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostmesh_lab.py", description=__doc__.split("\n\n", maxsplit=1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-image", help="debootstrap the cached host image (once per recipe)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--mirror", help="Debian mirror (default: from /etc/apt sources)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")

    p = sub.add_parser("up", help="boot a lab")
    p.add_argument("--lab", required=True)
    p.add_argument("--hosts", required=True, help="comma-separated host names")
    p.add_argument("--subnet", default=DEFAULT_SUBNET)
    p.add_argument("--subnet6", help="also give each host an IPv6 address from this prefix")
    p.add_argument("--cgroup", choices=("unified", "hybrid"), default="unified",
                   help="cgroup layout inside hosts (default unified, as on Debian 12)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    p.add_argument("--json", action="store_true", help="print the state as JSON")

    p = sub.add_parser("down", help="remove a lab and everything it made")
    p.add_argument("--lab", required=True)
    p.add_argument("--timeout", type=float, default=STOP_TIMEOUT)

    p = sub.add_parser("exec", help="run a command inside the lab network namespace")
    p.add_argument("--lab", required=True)
    p.add_argument("--subnet", default=DEFAULT_SUBNET, help="when the lab network does not exist yet")
    p.add_argument("cmd", nargs=argparse.REMAINDER)

    for name, text in (("reboot", "reboot a host (fresh network stack, same disk)"),
                       ("stop", "power a host off"), ("start", "boot a powered-off host")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--lab", required=True)
        p.add_argument("host")
        p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT if name != "stop" else STOP_TIMEOUT)
        if name == "reboot":
            p.add_argument("--force", action="store_true", help="kill the host's init instead of a clean reboot")

    p = sub.add_parser("status", help="show a lab")
    p.add_argument("--lab", required=True)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("shell", help="a shell (or CMD) inside a host, via nsenter")
    p.add_argument("--lab", required=True)
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)

    p = sub.add_parser("_supervise", help=argparse.SUPPRESS)
    p.add_argument("--lab", required=True)
    p.add_argument("host")

    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("must run as root")
    cmd = getattr(args, "cmd", None) or []
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        if args.command == "build-image":
            print(build_image(args.cache, args.mirror, args.force))
        elif args.command == "up":
            state = up(args.lab, [h.strip() for h in args.hosts.split(",") if h.strip()], args.subnet,
                       args.cache, args.cgroup, args.subnet6, args.timeout)
            print(json.dumps(state, indent=2) if args.json else state["inventory"])
        elif args.command == "down":
            started = time.monotonic()
            if down(args.lab, args.timeout):
                print(f"lab {args.lab}: removed in {time.monotonic() - started:.1f}s")
            else:
                print(f"lab {args.lab}: nothing to remove")
        elif args.command == "exec":
            return exec_in_lab(args.lab, cmd, args.subnet)
        elif args.command == "reboot":
            started = time.monotonic()
            runtime = reboot(args.lab, args.host, args.force, args.timeout)
            log(f"{args.host} rebooted in {time.monotonic() - started:.1f}s (leader pid {runtime['leader_pid']})")
        elif args.command == "stop":
            stop(args.lab, args.host, args.timeout)
        elif args.command == "start":
            start(args.lab, args.host, args.timeout)
        elif args.command == "status":
            info = status(args.lab)
            if args.json:
                print(json.dumps(info, indent=2))
            elif not info["exists"]:
                print(f"lab {args.lab}: not up" + (" (network namespace present)" if info["netns"] else ""))
            else:
                print(f"lab {args.lab}: {info['subnet']} controller {info['controller_address']}"
                      f" inventory {info['inventory']}")
                for host, hinfo in info["hosts"].items():
                    print(f"  {host:<12} {hinfo['address']:<15} "
                          f"{'running' if hinfo['running'] else 'stopped':<8} leader {hinfo['leader_pid']}"
                          f" boots {hinfo['boot_count']}")
        elif args.command == "shell":
            shell = shell_argv(args.lab, args.host, cmd)
            os.execvp(shell[0], shell)
        elif args.command == "_supervise":
            return supervise(args.lab, args.host)
    except LabError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
