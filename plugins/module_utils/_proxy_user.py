# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The engine behind hostmesh.sidecar.proxy_user.

* pure part: ``validate_params`` turns module options into a ``UserSpec`` (every
  problem reported at once), ``plan`` turns a ``UserSpec`` and an observed
  ``AccountsView`` into a ``Plan`` - the before/after state for the diff and the
  exact shadow-utils command lines to run - or a ``HostmeshError`` that names
  every conflict (UID/GID owned by someone else, processes running as the user,
  a group that is another user's primary group);
* side-effect part: ``read_accounts`` reads the account databases through NSS
  (``pwd``/``grp``) and scans ``/proc``, ``ProxyUserManager`` runs the planned
  commands through an injected command runner and verifies the result by
  reading the databases again.

Check mode follows the same path; only the command execution is skipped.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
from dataclasses import dataclass, field, replace

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import (
    MAX_ID,
    HostmeshError,
    Problems,
    parse_proc_status,
    read_proc_status,
)

DEFAULT_NAME = "hostmesh-proxy"
DEFAULT_ID = 1337
DEFAULT_COMMENT = "hostmesh sidecar proxy"
# The proxy never logs in and owns no files in a home directory: useradd gets
# this path with --no-create-home, the convention for daemon accounts on Debian
# (NONEXISTENT in login.defs) and elsewhere.
HOME = "/nonexistent"
NOLOGIN_CANDIDATES = ("/usr/sbin/nologin", "/sbin/nologin", "/usr/bin/nologin", "/bin/nologin",
                      "/usr/bin/false", "/bin/false")
# Shells that already deny logins: an existing account with one of them is left
# alone instead of flapping between /sbin/nologin and /usr/sbin/nologin.
NOLOGIN_BASENAMES = ("nologin", "false")
# (uid_t)-1 (beyond MAX_ID) means "unchanged" to the kernel's setresuid/chown;
# 65535 is the same value for 16-bit interfaces. Neither can be a real account's id.
RESERVED_IDS = {65535: "(uid_t)-1 of 16-bit interfaces"}
# Portable account names (POSIX portable filename characters, not starting with
# a digit or '-'), at most 32 characters like utmp's ut_user.
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
STATES = ("present", "absent")


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class UserSpec:
    name: str = DEFAULT_NAME
    uid: int = DEFAULT_ID
    group: str = DEFAULT_NAME
    gid: int = DEFAULT_ID
    state: str = "present"
    allow_uid_change: bool = False
    allow_gid_change: bool = False
    comment: str | None = None


def _check_name(option, value, problems):
    if not isinstance(value, str) or not NAME_RE.match(value):
        problems.note(option,
                      f"{option}={value!r} is not a valid account name: use 1 to 32 characters of letters, digits, "
                      "'_', '.' and '-', starting with a letter or '_'")


def _check_id(option, value, problems):
    if isinstance(value, bool) or not isinstance(value, int):
        problems.note(option, f"{option}={value!r} is not an integer")
    elif value == 0:
        problems.note(option, f"{option}=0 is root's: the proxy needs an unprivileged identity of its own")
    elif value < 1 or value > MAX_ID:
        problems.note(option, f"{option}={value} is out of range: use 1 to {MAX_ID}")
    elif value in RESERVED_IDS:
        problems.note(option, f"{option}={value} is reserved ({RESERVED_IDS[value]})")


def validate_params(params: dict) -> UserSpec:
    """Check every option; raise one HostmeshError listing all problems."""
    problems = Problems()
    name = params.get("name", DEFAULT_NAME)
    group = params.get("group")
    if group is None:
        group = name
    _check_name("name", name, problems)
    _check_name("group", group, problems)
    uid = params.get("uid", DEFAULT_ID)
    gid = params.get("gid", DEFAULT_ID)
    _check_id("uid", uid, problems)
    _check_id("gid", gid, problems)
    state = params.get("state", "present")
    if state not in STATES:
        problems.note("state", f"state={state!r} must be one of {', '.join(STATES)}")
    comment = params.get("comment")
    if comment is not None and (not isinstance(comment, str) or any(c in comment for c in ":\n\r\0")):
        problems.note("comment",
                      f"comment={comment!r} must be text without ':' or line breaks (it is a passwd field)")
    problems.raise_if_any()
    return UserSpec(name=name, uid=uid, group=group, gid=gid, state=state,
                    allow_uid_change=bool(params.get("allow_uid_change", False)),
                    allow_gid_change=bool(params.get("allow_gid_change", False)),
                    comment=comment)


# ---------------------------------------------------------------------------
# Observed state
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    shell: str
    home: str
    comment: str


@dataclass(frozen=True)
class Group:
    name: str
    gid: int


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    command: str


@dataclass
class AccountsView:
    """What the account databases and /proc say, as far as the spec is concerned."""

    user: Account | None = None            # the account called spec.name
    group: Group | None = None             # the group called spec.group
    uid_owner: str | None = None           # name of the account holding spec.uid
    gid_owner: str | None = None           # name of the group holding spec.gid
    # Accounts other than spec.name whose primary group is the group called spec.group.
    primary_group_users: list = field(default_factory=list)
    # Processes whose real, effective, saved or filesystem UID is the user's UID.
    processes: list = field(default_factory=list)
    nologin_shell: str = NOLOGIN_CANDIDATES[0]


def status_ids(values: dict):
    """(name, uids, gids) from a parsed /proc/PID/status; uids and gids are 4-tuples."""
    return (values.get("Name", ""), tuple(int(v) for v in values.get("Uid", "").split()),
            tuple(int(v) for v in values.get("Gid", "").split()))


def parse_status_ids(text: str):
    """(name, uids, gids) from the text of /proc/PID/status."""
    return status_ids(parse_proc_status(text))


def processes_running_as(uid: int, proc: str = "/proc") -> list:
    """Processes with ``uid`` as real, effective, saved or filesystem UID."""
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        values = read_proc_status(entry, proc)
        if values is None:
            continue  # exited while we looked
        name, uids, _gids = status_ids(values)
        if uid in uids:
            found.append(ProcessInfo(int(entry), name))
    return sorted(found, key=lambda p: p.pid)


def find_nologin_shell(exists=os.path.exists) -> str:
    for candidate in NOLOGIN_CANDIDATES:
        if exists(candidate):
            return candidate
    raise HostmeshError("found no login-denying shell (tried %s)" % ", ".join(NOLOGIN_CANDIDATES))


def _account(entry) -> Account:
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_shell, entry.pw_dir, entry.pw_gecos)


def read_accounts(spec: UserSpec) -> AccountsView:
    """Read the account databases through NSS, as every other program sees them."""
    view = AccountsView()
    try:
        view.user = _account(pwd.getpwnam(spec.name))
    except KeyError:
        pass
    try:
        entry = grp.getgrnam(spec.group)
        view.group = Group(entry.gr_name, entry.gr_gid)
    except KeyError:
        pass
    try:
        view.uid_owner = pwd.getpwuid(spec.uid).pw_name
    except KeyError:
        pass
    try:
        view.gid_owner = grp.getgrgid(spec.gid).gr_name
    except KeyError:
        pass
    if view.group is not None:
        view.primary_group_users = sorted(
            {entry.pw_name for entry in pwd.getpwall()
             if entry.pw_gid == view.group.gid and entry.pw_name != spec.name})
    if view.user is not None:
        view.processes = processes_running_as(view.user.uid)
    if spec.state == "present":
        view.nologin_shell = find_nologin_shell()
    return view


# ---------------------------------------------------------------------------
# Planning (pure)
# ---------------------------------------------------------------------------

@dataclass
class Plan:
    before: dict
    after: dict
    commands: list  # argv lists; the first element is the tool's name

    @property
    def changed(self) -> bool:
        return self.before != self.after


def is_nologin(shell: str) -> bool:
    return os.path.basename(shell or "") in NOLOGIN_BASENAMES


def user_state(name: str, account: Account | None) -> dict:
    if account is None:
        return {"name": name, "state": "absent"}
    return {"name": account.name, "state": "present", "uid": account.uid, "gid": account.gid,
            "shell": account.shell, "home": account.home, "comment": account.comment}


def group_state(name: str, group: Group | None) -> dict:
    if group is None:
        return {"name": name, "state": "absent"}
    return {"name": group.name, "state": "present", "gid": group.gid}


def _describe_processes(processes, limit=5) -> str:
    shown = ", ".join(f"{p.pid} ({p.command})" for p in processes[:limit])
    more = len(processes) - limit
    return shown + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class TakenId:
    """A UID or GID the spec asks for that another account holds."""

    option: str          # "uid" or "gid"
    number: int
    kind: str            # "user" or "group"
    owner: str           # the account holding it
    moving: str | None   # the existing account that was to move to it, or None when creating


def describe_taken(taken) -> str:
    """One message for every taken id: which id, held by whom, and what to do.

    On Debian ``useradd -u N`` also gives the new user's group GID N, so a
    taken UID usually comes with a taken GID: a message about one alone would
    send the user back for the other on the next run.
    """
    held = " and ".join(f"{t.option}={t.number} already belongs to {t.kind} {t.owner!r}" for t in taken)
    if len(taken) == 1:
        (one,) = taken
        if one.moving is not None:
            return f"{held}; cannot move {one.kind} {one.moving!r} to it"
        return f"{held}; choose another {one.option} or remove that {one.kind}"
    return (f"{held}; the proxy needs a free UID and a free GID: choose another uid and another gid, or remove "
            f"that user and that group")


def _plan_group_present(spec, view, problems, taken, commands):
    group = view.group
    if group is None:
        if view.gid_owner is not None:
            taken.append(TakenId("gid", spec.gid, "group", view.gid_owner, None))
            return None
        commands.append(["groupadd", "--gid", str(spec.gid), spec.group])
        return Group(spec.group, spec.gid)
    if group.gid == spec.gid:
        return group
    if not spec.allow_gid_change:
        problems.note("gid", f"group {spec.group!r} exists with GID {group.gid}, not gid={spec.gid}; set "
                      f"allow_gid_change=true to change its GID (files keep their old numeric group)")
        return None
    if view.gid_owner is not None:
        taken.append(TakenId("gid", spec.gid, "group", view.gid_owner, spec.group))
        return None
    # groupmod also rewrites the primary GID of the accounts in this group.
    commands.append(["groupmod", "--gid", str(spec.gid), spec.group])
    return Group(spec.group, spec.gid)


def _plan_user_present(spec, view, problems, taken, commands):
    user = view.user
    if user is None:
        if view.uid_owner is not None:
            taken.append(TakenId("uid", spec.uid, "user", view.uid_owner, None))
            return None
        comment = DEFAULT_COMMENT if spec.comment is None else spec.comment
        # --system: no aging, no mail spool; --no-log-init: no lastlog/faillog
        # entry (a sparse write outside /etc the account never needs).
        commands.append(["useradd", "--system", "--no-log-init", "--no-create-home", "--home-dir", HOME,
                         "--shell", view.nologin_shell, "--uid", str(spec.uid), "--gid", spec.group,
                         "--comment", comment, spec.name])
        return Account(spec.name, spec.uid, spec.gid, view.nologin_shell, HOME, comment)

    options = []
    uid = user.uid
    if user.uid != spec.uid:
        if not spec.allow_uid_change:
            problems.note("uid", f"user {spec.name!r} exists with UID {user.uid}, not uid={spec.uid}; set "
                          f"allow_uid_change=true to change its UID (files outside its home keep the "
                          f"old UID)")
        elif view.uid_owner is not None:
            taken.append(TakenId("uid", spec.uid, "user", view.uid_owner, spec.name))
        elif view.processes:
            problems.note("uid", f"cannot change the UID of user {spec.name!r} while processes run as it: "
                          f"{_describe_processes(view.processes)}")
        else:
            options += ["--uid", str(spec.uid)]
            uid = spec.uid
    # The primary group is right when it is the group we manage, before or
    # after a planned groupmod (which rewrites the account's GID itself).
    in_group = user.gid == spec.gid or (view.group is not None and user.gid == view.group.gid)
    if not in_group:
        options += ["--gid", spec.group]
    shell = user.shell
    if not is_nologin(user.shell):
        options += ["--shell", view.nologin_shell]
        shell = view.nologin_shell
    if user.home != HOME:
        # Without --move-home: nothing is moved or created.
        options += ["--home", HOME]
    comment = user.comment
    if spec.comment is not None and user.comment != spec.comment:
        options += ["--comment", spec.comment]
        comment = spec.comment
    if options:
        commands.append(["usermod"] + options + [spec.name])
    return Account(spec.name, uid, spec.gid, shell, HOME, comment)


def plan(spec: UserSpec, view: AccountsView) -> Plan:
    """The commands that make ``view`` match ``spec``, or a HostmeshError naming every conflict.

    Ids held by other accounts are reported together in the first message and,
    for callers that name their own variables (the roles), as the error's
    ``taken`` detail: {"uid": {"id": ..., "owner": ...}, "gid": {...}}.
    """
    before = {"user": user_state(spec.name, view.user), "group": group_state(spec.group, view.group)}
    problems, taken, commands = Problems(), [], []
    if spec.state == "present":
        group = _plan_group_present(spec, view, problems, taken, commands)
        user = _plan_user_present(spec, view, problems, taken, commands)
        after = {"user": user_state(spec.name, user), "group": group_state(spec.group, group)}
    else:
        if view.user is not None:
            if view.processes:
                problems.note("name", f"refusing to remove user {spec.name!r} (UID {view.user.uid}) while "
                              f"processes run as it: {_describe_processes(view.processes)}; stop them "
                              f"first")
            else:
                commands.append(["userdel", spec.name])
        if view.group is not None:
            if view.primary_group_users:
                problems.note("group", f"refusing to remove group {spec.group!r} (GID {view.group.gid}): it is "
                              f"the primary group of user(s) {', '.join(view.primary_group_users)}")
            else:
                commands.append(["groupdel", spec.group])
        after = {"user": user_state(spec.name, None), "group": group_state(spec.group, None)}
    if taken:
        taken.sort(key=lambda t: t.option != "uid")
        problems.items.insert(0, (taken[0].option, describe_taken(taken)))
        raise HostmeshError("; ".join(message for _option, message in problems.items), problems=problems.items,
                            taken={t.option: {"id": t.number, "owner": t.owner} for t in taken})
    problems.raise_if_any()
    return Plan(before, after, commands)


def result_fields(spec: UserSpec, state: dict) -> dict:
    """Return values: the account after the run (for absent, as it was before)."""
    user, group = state["user"], state["group"]
    return {
        "name": spec.name,
        "uid": user.get("uid"),
        "group": spec.group,
        "gid": group.get("gid", user.get("gid")),
        "shell": user.get("shell"),
        "home": user.get("home"),
    }


# ---------------------------------------------------------------------------
# Side effects
# ---------------------------------------------------------------------------

class ProxyUserManager:
    """Read, plan and (outside check mode) act.

    ``run_command(argv) -> (rc, stdout, stderr)`` runs the shadow-utils tools
    (``argv[0]`` is the resolved path); ``get_bin_path(name)`` resolves a tool
    to its path or returns None. Raises HostmeshError only.
    """

    def __init__(self, spec: UserSpec, run_command, check_mode=False, get_bin_path=shutil.which,
                 warn=lambda msg: None):
        self.spec = spec
        self.run_command = run_command
        self.check_mode = check_mode
        self.get_bin_path = get_bin_path
        self.warn = warn

    def run(self) -> tuple:
        """(result dict, diff dict)."""
        spec = self.spec
        the_plan = plan(spec, read_accounts(spec))
        # Resolve every tool before the first command runs, so a missing one
        # fails the task with nothing changed.
        tools = {argv[0]: self._tool(argv[0]) for argv in the_plan.commands}
        if the_plan.changed and not self.check_mode:
            self._execute(the_plan, tools)
        result = {"changed": the_plan.changed}
        result.update(result_fields(spec, the_plan.after if spec.state == "present" else the_plan.before))
        return result, {"before": the_plan.before, "after": the_plan.after}

    def _tool(self, name):
        path = self.get_bin_path(name)
        if not path:
            raise HostmeshError(f"cannot find {name} (shadow-utils, the passwd package) in PATH; nothing was "
                                f"changed")
        return path

    def _execute(self, the_plan, tools):
        spec = self.spec
        for argv in the_plan.commands:
            # userdel removes a same-named primary group itself when login.defs
            # has USERGROUPS_ENAB yes; groupdel then has nothing left to do.
            if argv[0] == "groupdel" and not _group_exists(argv[-1]):
                continue
            rc, out, err = self.run_command([tools[argv[0]]] + argv[1:])
            if rc != 0:
                raise HostmeshError(f"{argv[0]} failed with exit code {rc}: {err.strip() or out.strip()}",
                                    cmd=argv, rc=rc, stdout=out, stderr=err)
        # Verify through NSS: catches accounts that an earlier NSS source (LDAP,
        # sssd, systemd-userdb) shadows, where the files now differ from what
        # every program resolves.
        observed = read_accounts(replace(spec, state="absent"))
        got = {"user": user_state(spec.name, observed.user), "group": group_state(spec.group, observed.group)}
        if got != the_plan.after:
            raise HostmeshError("after running the account commands, the account databases (as read through NSS) "
                                "do not show the expected state", expected=the_plan.after, observed=got)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
