# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The engine behind hostmesh.sidecar.net_cls.

net_cls is a cgroup v1 controller: every socket created by a process in a
net_cls cgroup carries the cgroup's class id, which ``iptables -m cgroup
--cgroup <classid>`` (and tc) match. It has no cgroup v2 form, so on a v2 host
the v1 hierarchy is mounted in a place of its own.

* pure part: option validation (``validate_params``), class id parsing and
  formatting, ``/proc/self/mountinfo`` and ``/proc/cgroups`` parsing, choosing
  the mount point, and ``plan``: given the observed ``NetClsView`` and the
  ``NetClsSpec``, the before/after state for the diff and the list of actions,
  or a ``HostmeshError`` naming every problem;
* side-effect part: ``read_view`` (mountinfo, the cgroup files, /proc) and
  ``NetClsManager``, which executes the actions (mount through an injected
  command runner, everything else as file operations) and verifies the result.

The file imports nothing outside the standard library and ``_host``: it is also
the host-side command. The transparent_proxy role installs it as
``hostmesh_net_cls.py`` beside ``hostmesh_host.py``, and its boot unit runs
``python3 hostmesh-net-cls.py ensure --classid 0x100001 ...`` (``run_cli``) to
re-create the cgroup after a reboot, with exactly the logic the module uses.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pwd
import grp
import re
import stat
import time
from dataclasses import dataclass, field

try:
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import (
        CLASSID_MAX,
        MAX_ID,
        HostmeshError,
        Problems,
        atomic_write,
        format_classid,
        parse_classid as _parse_classid,
        parse_int,
        parse_proc_status,
        read_proc_status,
        run_command,
    )
except ImportError:  # on a host: beside hostmesh_host.py in the helper directory
    from hostmesh_host import (  # pylint: disable=import-error
        CLASSID_MAX,
        MAX_ID,
        HostmeshError,
        Problems,
        atomic_write,
        format_classid,
        parse_classid as _parse_classid,
        parse_int,
        parse_proc_status,
        read_proc_status,
        run_command,
    )

DEFAULT_NAME = "hostmesh-proxy"
DEFAULT_CLASSID = "0x100001"
# Where v1/hybrid hosts keep their v1 hierarchies (systemd's layout).
V1_MOUNTPOINT = "/sys/fs/cgroup/net_cls"
# Where the hierarchy goes when /sys/fs/cgroup is a cgroup2 mount (or a
# read-only tmpfs without a net_cls directory): a directory of our own.
OWN_MOUNTPOINT = "/run/hostmesh/cgroup/net_cls"
# Mounts this module made, so that absent only ever unmounts its own.
MARKER_FILE = "/run/hostmesh/net_cls-mounts.json"
# The files through which a process (v1: cgroup.procs) or a thread (v1: tasks)
# is moved into the cgroup; the owner option chowns exactly these.
CONTROL_FILES = ("cgroup.procs", "tasks")
# Names a child cgroup cannot take: they are files of every v1 cgroup directory.
RESERVED_NAMES = {"tasks", "notify_on_release", "release_agent"}
RESERVED_PREFIXES = ("cgroup.", "net_cls.", "net_prio.")
NAME_RE = re.compile(r"^[A-Za-z0-9_.@:+-]{1,255}$")
STATES = ("present", "absent")
# How long absent waits for the kernel to free a removed cgroup before it
# unmounts: a v1 hierarchy unmounted while a child is still being freed stays
# alive in the kernel (empty and unmounted) until its next mount.
RELEASE_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# Class ids
# ---------------------------------------------------------------------------

def parse_classid(value) -> int:
    """The classid option: _host's class id grammar, with this module's messages.

    The messages name the option and keep the wording the module has always
    used; the grammar is ``_host.parse_classid``'s, except that surrounding
    blanks are refused here (the kernel's net_cls.classid file refuses them).
    """
    prefix = f"classid={value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{prefix} must be a hex string such as 0x100001 or an integer")
    if not isinstance(value, str) or value == value.strip():
        try:
            return _parse_classid(value)
        except ValueError:
            pass
        try:
            # Only to tell a number out of range from text that is no number.
            parse_int(value, -(2 ** 64), 2 ** 64)
        except ValueError:
            pass
        else:
            raise ValueError(f"{prefix} is out of range: a net_cls class id is 0xMMMMmmmm (16-bit major and "
                             f"minor), from 0x1 to 0x{CLASSID_MAX:x}; 0 means 'no class'")
    raise ValueError(f"{prefix} is neither a hex number (0x100001) nor a decimal integer")


def classid_tc(classid: int) -> str:
    """The tc notation MAJOR:MINOR (both hex) of a class id."""
    return f"{classid >> 16:x}:{classid & 0xFFFF:x}"


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NetClsSpec:
    name: str = DEFAULT_NAME
    classid: int = 0x100001
    mountpoint: str | None = None
    pids: tuple = ()
    state: str = "present"
    owner: int | None = None   # uid for the control files
    group: int | None = None   # gid for the control files (made group-writable)


def _check_name(name, problems):
    if not isinstance(name, str) or not name:
        problems.note("name", f"name={name!r} must be a non-empty cgroup name")
        return
    if "/" in name or name in (".", ".."):
        problems.note("name", f"name={name!r} must be a single cgroup directory name, without '/' and not "
                      f"'.' or '..'")
    elif not NAME_RE.match(name):
        problems.note("name", f"name={name!r} may only contain letters, digits and _ . @ : + - (at most 255)")
    elif name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        problems.note("name", f"name={name!r} collides with the control files of a cgroup directory")


def _check_mountpoint(path, problems):
    if path is None:
        return
    if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "\0\n"):
        problems.note("mountpoint", f"mountpoint={path!r} must be an absolute path")
    elif path == "/" or os.path.normpath(path) != path or "/../" in path + "/" or "/./" in path + "/":
        problems.note("mountpoint", f"mountpoint={path!r} must be a normalised absolute path other than / "
                      f"(no '..', '.', '//' or trailing '/')")


def _resolve_id(option, value, lookup, problems):
    if value is None:
        return None
    text = str(value)
    if text.isdigit():
        number = int(text)
        if number > MAX_ID:
            problems.note(option, f"{option}={value!r} is out of range (0 to {MAX_ID})")
            return None
        return number
    try:
        return lookup(text)
    except KeyError:
        kind = "user" if option == "owner" else "group"
        problems.add(option, value, f"no such {kind}")
    return None


def _user_id(name):
    return pwd.getpwnam(name).pw_uid


def _group_id(name):
    return grp.getgrnam(name).gr_gid


def validate_params(params: dict, user_id=_user_id, group_id=_group_id) -> NetClsSpec:
    """Check every option; raise one HostmeshError listing all problems."""
    problems = Problems()
    name = params.get("name", DEFAULT_NAME)
    _check_name(name, problems)
    classid = None
    try:
        classid = parse_classid(params.get("classid", DEFAULT_CLASSID))
    except ValueError as exc:
        problems.note("classid", str(exc))
    mountpoint = params.get("mountpoint")
    _check_mountpoint(mountpoint, problems)
    state = params.get("state", "present")
    if state not in STATES:
        problems.note("state", f"state={state!r} must be one of {', '.join(STATES)}")
    pids = params.get("pids") or []
    clean_pids = []
    for pid in pids:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            problems.note("pids", f"pids: {pid!r} is not a process id (a positive integer)")
        elif pid not in clean_pids:
            clean_pids.append(pid)
    if pids and state == "absent":
        problems.note("pids", f"pids={list(pids)!r} can only be moved in with state=present")
    owner = _resolve_id("owner", params.get("owner"), user_id, problems)
    group = _resolve_id("group", params.get("group"), group_id, problems)
    problems.raise_if_any()
    return NetClsSpec(name=name, classid=classid, mountpoint=mountpoint, pids=tuple(clean_pids),
                      state=state, owner=owner, group=group)


# ---------------------------------------------------------------------------
# /proc parsing
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    mount_options: tuple
    fstype: str
    source: str
    super_options: tuple

    @property
    def controllers(self) -> tuple:
        """cgroup v1 controllers of the hierarchy (flags, name= and key=value options left out)."""
        return tuple(opt for opt in self.super_options
                     if "=" not in opt and opt not in CGROUP_V1_FLAGS)


# Options of a cgroup v1 superblock that are not controller names.
CGROUP_V1_FLAGS = {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "none",
                   "favordynmods", "nofavordynmods"}

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field_text: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mountinfo(text: str) -> list:
    """Entries of /proc/PID/mountinfo (see proc(5)), with octal escapes decoded."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, sep, right = line.partition(" - ")
        if not sep:
            raise ValueError(f"malformed mountinfo line (no ' - ' separator): {line!r}")
        fields = left.split()
        tail = right.split()
        if len(fields) < 6 or len(tail) < 3:
            raise ValueError(f"malformed mountinfo line: {line!r}")
        major, minor = fields[2].split(":", 1)
        entries.append(MountEntry(
            mount_id=int(fields[0]), parent_id=int(fields[1]), major=int(major), minor=int(minor),
            root=_unescape(fields[3]), mountpoint=_unescape(fields[4]),
            mount_options=tuple(fields[5].split(",")), fstype=tail[0], source=_unescape(tail[1]),
            super_options=tuple(tail[2].split(","))))
    return entries


def net_cls_mounts(entries) -> list:
    """cgroup v1 mounts whose hierarchy carries net_cls (alone or co-mounted, e.g. net_cls,net_prio).

    Whole-hierarchy mounts (root '/') come first: a bind mount of a sub-cgroup
    would put our cgroup below that sub-cgroup.
    """
    found = [e for e in entries if e.fstype == "cgroup" and "net_cls" in e.controllers]
    return sorted(found, key=lambda e: e.root != "/")


def is_cgroup2_host(entries, base="/sys/fs/cgroup") -> bool:
    """True when ``base`` itself is a cgroup2 mount (a unified, v2-only host); the last mount there wins."""
    at_base = [e for e in entries if e.mountpoint == base]
    return bool(at_base) and at_base[-1].fstype == "cgroup2"


@dataclass(frozen=True)
class Controller:
    name: str
    hierarchy: int
    num_cgroups: int
    enabled: bool


def parse_proc_cgroups(text: str) -> dict:
    """name -> Controller from /proc/cgroups."""
    controllers = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 4:
            continue
        controllers[parts[0]] = Controller(parts[0], int(parts[1]), int(parts[2]), parts[3] == "1")
    return controllers


def mount_controllers(controllers: dict) -> list:
    """Controllers to name in ``mount -o``: net_cls and whatever shares its v1 hierarchy.

    A v1 controller belongs to one hierarchy at a time; mounting it again with a
    different set of controllers fails with EBUSY, so an existing co-mount
    (typically net_cls,net_prio) must be mounted with the same set.
    """
    net_cls = controllers["net_cls"]
    if net_cls.hierarchy == 0:
        return ["net_cls"]
    return sorted(c.name for c in controllers.values() if c.hierarchy == net_cls.hierarchy)


def parse_pid_list(text: str) -> list:
    return [int(line) for line in text.split() if line.strip()]


@dataclass(frozen=True)
class PidState:
    pid: int
    exists: bool
    tgid: int = 0
    kernel_thread: bool = False
    name: str = ""


def pid_state(pid: int, values: dict) -> PidState:
    """What planning needs to know of a process, from its parsed /proc/PID/status."""
    tgid = int(values.get("Tgid", pid))
    # "Kthread:" exists since Linux 6.4; before that kernel threads are the
    # children of kthreadd (PID 2) and kthreadd itself.
    if "Kthread" in values:
        kernel_thread = values["Kthread"] == "1"
    else:
        kernel_thread = pid == 2 or values.get("PPid") == "2"
    return PidState(pid=pid, exists=True, tgid=tgid, kernel_thread=kernel_thread, name=values.get("Name", ""))


def parse_pid_status(pid: int, text: str) -> PidState:
    return pid_state(pid, parse_proc_status(text))


# ---------------------------------------------------------------------------
# Observed state
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FileState:
    uid: int
    gid: int
    mode: int

    def as_dict(self) -> dict:
        return {"owner": self.uid, "group": self.gid, "mode": f"{self.mode:04o}"}


# What the kernel gives the files of a cgroup that root creates.
NEW_FILE = FileState(0, 0, 0o644)


@dataclass
class CgroupState:
    classid: int
    files: dict            # control file name -> FileState
    procs: list            # processes in the cgroup (cgroup.procs)
    tasks: list            # threads in the cgroup (tasks)
    children: list         # child cgroups below ours


@dataclass
class NetClsView:
    controller: Controller | None = None
    mount_with: list = field(default_factory=list)  # controllers for mount -o
    cgroup2_host: bool = False
    mountpoint: str = ""
    mounted: bool = False         # a net_cls hierarchy is visible at mountpoint
    # When not mounted: "missing", "empty", "not-empty", "not-directory" or
    # "mount:<fstype>" (something else is mounted there).
    mountpoint_status: str = "missing"
    missing_dirs: list = field(default_factory=list)   # what mkdir -p would create, outermost first
    cgroup: CgroupState | None = None
    siblings: list = field(default_factory=list)       # other child cgroups of the hierarchy root
    marker: dict = field(default_factory=dict)         # mountpoint -> {"created_dirs": [...]}
    pids: dict = field(default_factory=dict)           # pid -> PidState for the requested pids


def choose_mountpoint(requested, mounts, cgroup2_host, v1_dir_usable) -> tuple:
    """(mountpoint, mount entry or None) for the hierarchy.

    An explicit mount point is used as given (an existing hierarchy is mounted
    there too). Otherwise an existing net_cls mount is reused, and only where
    none is mounted does a new mount go to the v1 place (/sys/fs/cgroup/net_cls)
    or, on cgroup2 hosts and where that cannot be created, to our own place.
    """
    if requested:
        at = [m for m in mounts if m.mountpoint == requested]
        return requested, (at[-1] if at else None)
    if mounts:
        return mounts[0].mountpoint, mounts[0]
    if cgroup2_host or not v1_dir_usable:
        return OWN_MOUNTPOINT, None
    return V1_MOUNTPOINT, None


# ---------------------------------------------------------------------------
# Planning (pure)
# ---------------------------------------------------------------------------

@dataclass
class Plan:
    before: dict
    after: dict
    actions: list      # tuples: (verb, *arguments)
    path: str
    mountpoint: str
    pids_moved: list

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def describe(view: NetClsView, spec: NetClsSpec, path: str) -> dict:
    """The diff's view of the observed state."""
    state = {"mountpoint": view.mountpoint, "mounted": view.mounted, "path": path}
    cgroup = view.cgroup
    if cgroup is None:
        state.update({"cgroup": "absent", "classid": None, "pids": []})
        return state
    state.update({"cgroup": "present", "classid": format_classid(cgroup.classid) if cgroup.classid else "0x0"})
    for name in CONTROL_FILES:
        state[name] = cgroup.files[name].as_dict()
    if spec.state == "present":
        state["pids"] = sorted(pid for pid in spec.pids if pid in cgroup.procs)
    else:
        state["pids"] = sorted(cgroup.procs)
    return state


def _plan_mount(spec, view, problems, actions):
    if view.mounted:
        return
    status = view.mountpoint_status
    if status == "not-empty":
        problems.note("mountpoint", f"mountpoint {view.mountpoint} is a non-empty directory; refusing to "
                      f"mount the net_cls hierarchy over it")
    elif status == "not-directory":
        problems.note("mountpoint", f"mountpoint {view.mountpoint} exists and is not a directory")
    elif status.startswith("mount:"):
        problems.note("mountpoint", f"mountpoint {view.mountpoint} already holds a {status[6:]} mount that "
                      f"is not the net_cls hierarchy")
    if status == "missing":
        actions.append(("mkdirs", view.mountpoint, tuple(view.missing_dirs)))
    actions.append(("mount", tuple(view.mount_with), view.mountpoint))


def _plan_files(spec, current, actions, after):
    for name in CONTROL_FILES:
        have = current.get(name, NEW_FILE)
        uid = have.uid if spec.owner is None else spec.owner
        gid = have.gid if spec.group is None else spec.group
        # Group ownership is only useful with group write permission.
        mode = have.mode | 0o020 if spec.group is not None else have.mode
        if (uid, gid) != (have.uid, have.gid):
            actions.append(("chown", name, uid, gid))
        if mode != have.mode:
            actions.append(("chmod", name, mode))
        after[name] = FileState(uid, gid, mode).as_dict()


def plan(spec: NetClsSpec, view: NetClsView) -> Plan:
    """The actions that make ``view`` match ``spec``, or a HostmeshError naming every problem."""
    path = os.path.join(view.mountpoint, spec.name)
    before = describe(view, spec, path)
    problems, actions, pids_moved = Problems(), [], []
    controller = view.controller
    if spec.state == "present":
        if controller is None:
            problems.note(None, "this kernel has no net_cls cgroup controller (CONFIG_CGROUP_NET_CLASSID)")
        elif not controller.enabled:
            problems.note(None, "the net_cls cgroup controller is disabled (cgroup_disable=net_cls on the "
                          "kernel command line?)")
        for pid in spec.pids:
            info = view.pids.get(pid)
            if info is None or not info.exists:
                problems.note("pids", f"pids: process {pid} does not exist")
            elif info.kernel_thread:
                problems.note("pids", f"pids: {pid} ({info.name}) is a kernel thread and cannot be moved")
            elif info.tgid != pid:
                problems.note("pids", f"pids: {pid} is a thread of process {info.tgid}; give the process id")
        _plan_mount(spec, view, problems, actions)
        after = {"mountpoint": view.mountpoint, "mounted": True, "path": path, "cgroup": "present",
                 "classid": format_classid(spec.classid)}
        cgroup = view.cgroup
        if cgroup is None:
            actions.append(("mkdir", path))
        if cgroup is None or cgroup.classid != spec.classid:
            actions.append(("classid", spec.classid))
        _plan_files(spec, cgroup.files if cgroup else {}, actions, after)
        members = set(cgroup.procs) if cgroup else set()
        for pid in spec.pids:
            if pid not in members:
                actions.append(("move", pid))
                pids_moved.append(pid)
        after["pids"] = sorted(spec.pids)
    else:
        after = dict(before)
        if view.cgroup is not None:
            if view.cgroup.children:
                problems.note("name", f"cgroup {path} has child cgroups ({', '.join(view.cgroup.children)}); "
                              f"remove them first")
            # Processes still inside go back to the hierarchy root (class id 0,
            # as if they had never been moved): removing the cgroup must not
            # kill the proxy, and rmdir is refused while any task is inside.
            if view.cgroup.procs or view.cgroup.tasks:
                actions.append(("evacuate", path, view.mountpoint))
                pids_moved = sorted(view.cgroup.procs)
            actions.append(("rmdir", path))
            after = {"mountpoint": view.mountpoint, "mounted": view.mounted, "path": path, "cgroup": "absent",
                     "classid": None, "pids": []}
        own_mount = view.marker.get(view.mountpoint)
        if view.mounted and own_mount is not None and not view.siblings:
            actions.append(("umount", view.mountpoint))
            created = [d for d in own_mount.get("created_dirs", []) if isinstance(d, str)]
            if created:
                actions.append(("rmdirs", tuple(created)))
            after["mounted"] = False
    problems.raise_if_any()
    return Plan(before=before, after=after, actions=actions, path=path, mountpoint=view.mountpoint,
                pids_moved=pids_moved)


def result_fields(spec: NetClsSpec, the_plan: Plan) -> dict:
    return {
        "path": the_plan.path,
        "mountpoint": the_plan.mountpoint,
        "classid": format_classid(spec.classid),
        "classid_decimal": spec.classid,
        "classid_tc": classid_tc(spec.classid),
        "pids_moved": the_plan.pids_moved,
    }


# ---------------------------------------------------------------------------
# Side effects
# ---------------------------------------------------------------------------

def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _write(path: str, text: str) -> None:
    # One write() per value: the cgroup files take one value per write call.
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_marker(path: str = MARKER_FILE) -> dict:
    try:
        data = json.loads(_read(path))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise HostmeshError(f"cannot parse {path}: {exc}") from exc
    mounts = data.get("mounts", {}) if isinstance(data, dict) else {}
    return mounts if isinstance(mounts, dict) else {}


def write_marker(mounts: dict, path: str = MARKER_FILE) -> None:
    if not mounts:
        if os.path.exists(path):
            os.unlink(path)
        return
    document = {"comment": "net_cls hierarchies mounted by hostmesh.sidecar.net_cls; "
                           "absent unmounts only these", "mounts": mounts}
    atomic_write(path, json.dumps(document, indent=2, sort_keys=True) + "\n", prefix=".net_cls-")


def _visible(entry: MountEntry) -> bool:
    """True when ``entry`` is what its mount point shows now (not covered by a later mount)."""
    try:
        st = os.stat(entry.mountpoint)
    except OSError:
        return False
    return st.st_dev == os.makedev(entry.major, entry.minor) and os.path.ismount(entry.mountpoint)


def _mountpoint_status(path: str, entries) -> tuple:
    """(status, missing_dirs) of a directory that does not show a net_cls hierarchy."""
    if os.path.ismount(path):
        others = [e for e in entries if e.mountpoint == path and _visible(e)]
        return "mount:" + (others[-1].fstype if others else "unknown"), []
    if not os.path.lexists(path):
        missing, walk = [], path
        while walk != "/" and not os.path.lexists(walk):
            missing.insert(0, walk)
            walk = os.path.dirname(walk)
        return "missing", missing
    if not os.path.isdir(path) or os.path.islink(path):
        return "not-directory", []
    return ("not-empty" if os.listdir(path) else "empty"), []


def _v1_dir_usable(entries) -> bool:
    """Can the hierarchy go to /sys/fs/cgroup/net_cls: it exists as an empty directory, or can be made."""
    if os.path.isdir(V1_MOUNTPOINT) and not os.path.islink(V1_MOUNTPOINT):
        return not os.path.ismount(V1_MOUNTPOINT) and not os.listdir(V1_MOUNTPOINT)
    base = [e for e in entries if e.mountpoint == os.path.dirname(V1_MOUNTPOINT) and _visible(e)]
    return bool(base) and base[-1].fstype == "tmpfs" and "rw" in base[-1].mount_options \
        and not os.path.lexists(V1_MOUNTPOINT)


def read_cgroup(path: str) -> CgroupState | None:
    if not os.path.isdir(path):
        return None
    files = {}
    for name in CONTROL_FILES:
        st = os.stat(os.path.join(path, name))
        files[name] = FileState(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return CgroupState(
        classid=int(_read(os.path.join(path, "net_cls.classid")).strip() or 0),
        files=files,
        procs=parse_pid_list(_read(os.path.join(path, "cgroup.procs"))),
        tasks=parse_pid_list(_read(os.path.join(path, "tasks"))),
        children=sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)))


def read_pid(pid: int, proc: str = "/proc") -> PidState:
    values = read_proc_status(pid, proc)
    return PidState(pid=pid, exists=False) if values is None else pid_state(pid, values)


def read_view(spec: NetClsSpec, marker_file: str = MARKER_FILE) -> NetClsView:
    view = NetClsView()
    try:
        controllers = parse_proc_cgroups(_read("/proc/cgroups"))
    except FileNotFoundError:
        controllers = {}
    view.controller = controllers.get("net_cls")
    entries = parse_mountinfo(_read("/proc/self/mountinfo"))
    mounts = [m for m in net_cls_mounts(entries) if _visible(m)]
    view.cgroup2_host = is_cgroup2_host(entries)
    view.mountpoint, entry = choose_mountpoint(spec.mountpoint, mounts, view.cgroup2_host, _v1_dir_usable(entries))
    if entry is None and spec.state == "absent" and mounts:
        # The cgroup is the same object under every mount of the hierarchy:
        # removing it needs no mount at the requested place.
        view.mountpoint, entry = mounts[0].mountpoint, mounts[0]
    view.mounted = entry is not None
    if entry is not None:
        view.mount_with = list(entry.controllers)
    elif view.controller is not None:
        view.mount_with = mount_controllers(controllers)
    if not view.mounted:
        view.mountpoint_status, view.missing_dirs = _mountpoint_status(view.mountpoint, entries)
    else:
        view.cgroup = read_cgroup(os.path.join(view.mountpoint, spec.name))
        view.siblings = sorted(e.name for e in os.scandir(view.mountpoint)
                               if e.is_dir(follow_symlinks=False) and e.name != spec.name)
    view.marker = read_marker(marker_file)
    view.pids = {pid: read_pid(pid) for pid in spec.pids}
    return view


class NetClsManager:
    """Read, plan and (outside check mode) act; ``run_command(argv) -> (rc, out, err)`` runs mount/umount.

    Raises HostmeshError only: an OSError from the cgroup files becomes one,
    with the text the module has always shown ("net_cls: ...").
    """

    def __init__(self, spec: NetClsSpec, run_command, check_mode=False, marker_file=MARKER_FILE,
                 warn=lambda msg: None):
        self.spec = spec
        self.run_command = run_command
        self.check_mode = check_mode
        self.marker_file = marker_file
        self.warn = warn

    def run(self) -> tuple:
        """(result dict, diff dict)."""
        try:
            return self._run()
        except OSError as exc:
            raise HostmeshError(f"net_cls: {exc}") from exc

    def _run(self) -> tuple:
        spec = self.spec
        the_plan = plan(spec, read_view(spec, self.marker_file))
        if the_plan.changed and not self.check_mode:
            for action in the_plan.actions:
                getattr(self, "_do_" + action[0])(the_plan, *action[1:])
            self._verify(the_plan)
        result = {"changed": the_plan.changed}
        result.update(result_fields(spec, the_plan))
        return result, {"before": the_plan.before, "after": the_plan.after}

    # -- actions ----------------------------------------------------------------
    def _cmd(self, argv):
        rc, out, err = self.run_command(argv)
        if rc != 0:
            raise HostmeshError(f"{' '.join(argv)} failed with exit code {rc}: {(err or out).strip()}",
                                cmd=list(argv), rc=rc, stdout=out, stderr=err)

    def _do_mkdirs(self, the_plan, mountpoint, missing):
        os.makedirs(mountpoint, mode=0o755, exist_ok=True)

    def _do_mount(self, the_plan, controllers, mountpoint):
        self._cmd(["mount", "-t", "cgroup", "-o", ",".join(controllers), "net_cls", mountpoint])
        marker = read_marker(self.marker_file)
        created = [a[2] for a in the_plan.actions if a[0] == "mkdirs"]
        marker[mountpoint] = {"controllers": list(controllers),
                              "created_dirs": list(created[0]) if created else []}
        write_marker(marker, self.marker_file)

    def _do_mkdir(self, the_plan, path):
        try:
            os.mkdir(path)
        except FileExistsError:
            # The plan was made before this run mounted the hierarchy, and the
            # kernel keeps a v1 hierarchy and its cgroups while it is unmounted:
            # the cgroup may already be there. The classid and ownership steps
            # that follow bring it to the desired state either way.
            pass

    def _do_classid(self, the_plan, classid):
        _write(os.path.join(the_plan.path, "net_cls.classid"), str(classid))

    def _do_chown(self, the_plan, name, uid, gid):
        os.chown(os.path.join(the_plan.path, name), uid, gid)

    def _do_chmod(self, the_plan, name, mode):
        os.chmod(os.path.join(the_plan.path, name), mode)

    def _do_move(self, the_plan, pid):
        try:
            _write(os.path.join(the_plan.path, "cgroup.procs"), str(pid))
        except ProcessLookupError as exc:
            raise HostmeshError(f"pids: process {pid} exited before it could be moved") from exc

    def _do_evacuate(self, the_plan, path, root):
        # New children of a process inside start inside too, so repeat until
        # the cgroup is empty; a fork bomb would outlast the loop and fail rmdir.
        for _round in range(50):
            procs = parse_pid_list(_read(os.path.join(path, "cgroup.procs")))
            tasks = parse_pid_list(_read(os.path.join(path, "tasks")))
            if not procs and not tasks:
                return
            for source, target in ((procs, "cgroup.procs"), (tasks, "tasks")):
                for pid in source:
                    try:
                        _write(os.path.join(root, target), str(pid))
                    except ProcessLookupError:
                        pass  # exited meanwhile
        raise HostmeshError(f"could not move every process out of {path}")

    def _do_rmdir(self, the_plan, path):
        os.rmdir(path)

    def _do_umount(self, the_plan, mountpoint):
        self._wait_for_release()
        self._cmd(["umount", mountpoint])
        marker = read_marker(self.marker_file)
        marker.pop(mountpoint, None)
        write_marker(marker, self.marker_file)

    def _do_rmdirs(self, the_plan, directories):
        for directory in reversed(directories):
            try:
                os.rmdir(directory)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                    raise
                break

    def _wait_for_release(self):
        """Wait until the kernel has freed removed child cgroups (see RELEASE_TIMEOUT)."""
        deadline = time.monotonic() + RELEASE_TIMEOUT
        while True:
            net_cls = parse_proc_cgroups(_read("/proc/cgroups")).get("net_cls")
            if net_cls is None or net_cls.hierarchy == 0 or net_cls.num_cgroups <= 1:
                return
            if time.monotonic() > deadline:
                self.warn("the kernel still holds a removed net_cls cgroup; the empty hierarchy may stay "
                          "registered until it is mounted again")
                return
            time.sleep(0.05)

    def _verify(self, the_plan):
        spec = self.spec
        view = read_view(spec, self.marker_file)
        if spec.state == "absent":
            if view.cgroup is not None and view.mountpoint == the_plan.mountpoint:
                raise HostmeshError(f"{the_plan.path} still exists after removal")
            return
        cgroup = view.cgroup
        if not view.mounted or cgroup is None:
            raise HostmeshError(f"{the_plan.path} does not exist after creating it")
        if cgroup.classid != spec.classid:
            raise HostmeshError(f"{the_plan.path}/net_cls.classid reads {cgroup.classid}, not {spec.classid}")
        missing = [pid for pid in spec.pids if pid not in cgroup.procs]
        if missing:
            raise HostmeshError(f"processes {missing} are not in {the_plan.path} after moving them")


# ---------------------------------------------------------------------------
# Host-side command (the boot unit's privileged ExecStartPre; no Ansible needed)
# ---------------------------------------------------------------------------

def _argument_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="hostmesh-net-cls",
        description="Create (ensure) or remove the net_cls cgroup exactly as hostmesh.sidecar.net_cls does. "
                    "Prints the result as JSON; exit code 0 on success, 2 on error.")
    parser.add_argument("action", choices=("ensure", "remove", "check"),
                        help="ensure: mount, create, set the class id and ownership; remove: state=absent; "
                             "check: exit 1 when ensure would change something")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--classid", default=DEFAULT_CLASSID)
    parser.add_argument("--mountpoint")
    parser.add_argument("--owner")
    parser.add_argument("--group")
    parser.add_argument("--pid", type=int, action="append", default=[], help="process to move in (repeatable)")
    return parser


def run_cli(argv) -> tuple:
    """The host-side command, as (exit code, stdout, stderr); ``_host.cli_main`` prints them.

    0: done (check: in sync), 1: check found a difference, 2: error.
    """
    usage_out, usage_err = io.StringIO(), io.StringIO()
    try:
        # argparse prints usage and help itself and exits: keep both in the returned text.
        with contextlib.redirect_stdout(usage_out), contextlib.redirect_stderr(usage_err):
            args = _argument_parser().parse_args(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
        return code, usage_out.getvalue(), usage_err.getvalue()
    params = {"name": args.name, "classid": args.classid, "mountpoint": args.mountpoint, "owner": args.owner,
              "group": args.group, "pids": args.pid, "state": "absent" if args.action == "remove" else "present"}
    warnings = []
    try:
        spec = validate_params(params)
        result, _diff = NetClsManager(spec, run_command, check_mode=args.action == "check",
                                      warn=warnings.append).run()
    except HostmeshError as exc:
        return 2, "", "".join(f"warning: {w}\n" for w in warnings) + f"hostmesh-net-cls: {exc}\n"
    code = 1 if args.action == "check" and result["changed"] else 0
    return code, json.dumps(result, indent=2, sort_keys=True) + "\n", "".join(f"warning: {w}\n" for w in warnings)
