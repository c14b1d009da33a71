# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The host image: one debootstrapped Debian root, configured once and cached (an overlay lowerdir)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from .common import DEFAULT_CACHE, LabError, STATE_ROOT, file_lock, log, remove_tree, run, unmount_below


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
    "python3-cryptography",  # mesh_identity: the host key and CSR (community.crypto)
    # debootstrap does not resolve virtual packages: python3-cryptography needs
    # python3-cffi-backend-api-min/-max, which only python3-cffi-backend provides.
    "python3-cffi-backend",
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
