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
  exact shadow-utils command lines to run - or a ``ProxyUserError`` that names
  every conflict (UID/GID owned by someone else, processes running as the user,
  a group that is another user's primary group);
* side-effect part: ``read_accounts`` reads the account databases through NSS
  (``pwd``/``grp``) and scans ``/proc``, ``ProxyUserManager`` runs the planned
  commands through ``module.run_command`` and verifies the result by reading
  the databases again.

Check mode follows the same path; only the command execution is skipped.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from dataclasses import dataclass, field, replace

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
# (uid_t)-1 means "unchanged" to the kernel's setresuid/chown; 65535 is the
# same value for 16-bit interfaces. Neither can be a real account's id.
MAX_ID = 2 ** 32 - 2
RESERVED_IDS = {65535: "(uid_t)-1 of 16-bit interfaces"}
# Portable account names (POSIX portable filename characters, not starting with
# a digit or '-'), at most 32 characters like utmp's ut_user.
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
STATES = ("present", "absent")
ENV = {"LC_ALL": "C", "LANGUAGE": "C"}


class ProxyUserError(Exception):
    """A problem that makes the module fail without having changed anything."""


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


def _check_name(option, value, errors):
    if not isinstance(value, str) or not NAME_RE.match(value):
        errors.append(
            f"{option}={value!r} is not a valid account name: use 1 to 32 characters of letters, digits, "
            "'_', '.' and '-', starting with a letter or '_'")


def _check_id(option, value, errors):
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(f"{option}={value!r} is not an integer")
    elif value == 0:
        errors.append(f"{option}=0 is root's: the proxy needs an unprivileged identity of its own")
    elif value < 1 or value > MAX_ID:
        errors.append(f"{option}={value} is out of range: use 1 to {MAX_ID}")
    elif value in RESERVED_IDS:
        errors.append(f"{option}={value} is reserved ({RESERVED_IDS[value]})")


def validate_params(params: dict) -> UserSpec:
    """Check every option; raise one ProxyUserError listing all problems."""
    errors = []
    name = params.get("name", DEFAULT_NAME)
    group = params.get("group")
    if group is None:
        group = name
    _check_name("name", name, errors)
    _check_name("group", group, errors)
    uid = params.get("uid", DEFAULT_ID)
    gid = params.get("gid", DEFAULT_ID)
    _check_id("uid", uid, errors)
    _check_id("gid", gid, errors)
    state = params.get("state", "present")
    if state not in STATES:
        errors.append(f"state={state!r} must be one of {', '.join(STATES)}")
    comment = params.get("comment")
    if comment is not None and (not isinstance(comment, str) or any(c in comment for c in ":\n\r\0")):
        errors.append(f"comment={comment!r} must be text without ':' or line breaks (it is a passwd field)")
    if errors:
        raise ProxyUserError("; ".join(errors))
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


def parse_status_ids(text: str):
    """(name, uids, gids) from the text of /proc/PID/status; uids and gids are 4-tuples."""
    name, uids, gids = "", (), ()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key == "Name":
            name = value.strip()
        elif key == "Uid":
            uids = tuple(int(v) for v in value.split())
        elif key == "Gid":
            gids = tuple(int(v) for v in value.split())
    return name, uids, gids


def processes_running_as(uid: int, proc: str = "/proc") -> list:
    """Processes with ``uid`` as real, effective, saved or filesystem UID."""
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "status"), encoding="utf-8", errors="replace") as handle:
                name, uids, _gids = parse_status_ids(handle.read())
        except OSError:
            continue  # exited while we looked
        if uid in uids:
            found.append(ProcessInfo(int(entry), name))
    return sorted(found, key=lambda p: p.pid)


def find_nologin_shell(exists=os.path.exists) -> str:
    for candidate in NOLOGIN_CANDIDATES:
        if exists(candidate):
            return candidate
    raise ProxyUserError("found no login-denying shell (tried %s)" % ", ".join(NOLOGIN_CANDIDATES))


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


def _plan_group_present(spec, view, errors, commands):
    group = view.group
    if group is None:
        if view.gid_owner is not None:
            errors.append(f"gid={spec.gid} already belongs to group {view.gid_owner!r}; choose another gid "
                          f"or remove that group")
            return None
        commands.append(["groupadd", "--gid", str(spec.gid), spec.group])
        return Group(spec.group, spec.gid)
    if group.gid == spec.gid:
        return group
    if not spec.allow_gid_change:
        errors.append(f"group {spec.group!r} exists with GID {group.gid}, not gid={spec.gid}; set "
                      f"allow_gid_change=true to change its GID (files keep their old numeric group)")
        return None
    if view.gid_owner is not None:
        errors.append(f"gid={spec.gid} already belongs to group {view.gid_owner!r}; cannot move group "
                      f"{spec.group!r} to it")
        return None
    # groupmod also rewrites the primary GID of the accounts in this group.
    commands.append(["groupmod", "--gid", str(spec.gid), spec.group])
    return Group(spec.group, spec.gid)


def _plan_user_present(spec, view, errors, commands):
    user = view.user
    if user is None:
        if view.uid_owner is not None:
            errors.append(f"uid={spec.uid} already belongs to user {view.uid_owner!r}; choose another uid "
                          f"or remove that user")
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
            errors.append(f"user {spec.name!r} exists with UID {user.uid}, not uid={spec.uid}; set "
                          f"allow_uid_change=true to change its UID (files outside its home keep the old UID)")
        elif view.uid_owner is not None:
            errors.append(f"uid={spec.uid} already belongs to user {view.uid_owner!r}; cannot move user "
                          f"{spec.name!r} to it")
        elif view.processes:
            errors.append(f"cannot change the UID of user {spec.name!r} while processes run as it: "
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
    """The commands that make ``view`` match ``spec``, or ProxyUserError naming every conflict."""
    before = {"user": user_state(spec.name, view.user), "group": group_state(spec.group, view.group)}
    errors, commands = [], []
    if spec.state == "present":
        group = _plan_group_present(spec, view, errors, commands)
        user = _plan_user_present(spec, view, errors, commands)
        after = {"user": user_state(spec.name, user), "group": group_state(spec.group, group)}
    else:
        if view.user is not None:
            if view.processes:
                errors.append(f"refusing to remove user {spec.name!r} (UID {view.user.uid}) while processes run "
                              f"as it: {_describe_processes(view.processes)}; stop them first")
            else:
                commands.append(["userdel", spec.name])
        if view.group is not None:
            if view.primary_group_users:
                errors.append(f"refusing to remove group {spec.group!r} (GID {view.group.gid}): it is the primary "
                              f"group of user(s) {', '.join(view.primary_group_users)}")
            else:
                commands.append(["groupdel", spec.group])
        after = {"user": user_state(spec.name, None), "group": group_state(spec.group, None)}
    if errors:
        raise ProxyUserError("; ".join(errors))
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
    """Read, plan, diff and (outside check mode) act, for one AnsibleModule."""

    def __init__(self, module):
        self.module = module

    def fail(self, msg, **kwargs):
        self.module.fail_json(msg=msg, **kwargs)

    def run(self) -> dict:
        try:
            spec = validate_params(self.module.params)
            the_plan = plan(spec, read_accounts(spec))
            # Resolve every tool before the first command runs, so a missing
            # one fails the task with nothing changed.
            tools = {argv[0]: self.module.get_bin_path(argv[0], required=True) for argv in the_plan.commands}
        except ProxyUserError as exc:
            self.fail(str(exc))
        if the_plan.changed and not self.module.check_mode:
            self._execute(spec, the_plan, tools)
        result = {"changed": the_plan.changed}
        if spec.state == "present":
            result.update(result_fields(spec, the_plan.after))
        else:
            result.update(result_fields(spec, the_plan.before))
        if self.module._diff:
            result["diff"] = {"before": the_plan.before, "after": the_plan.after}
        return result

    def _execute(self, spec, the_plan, tools):
        for argv in the_plan.commands:
            # userdel removes a same-named primary group itself when login.defs
            # has USERGROUPS_ENAB yes; groupdel then has nothing left to do.
            if argv[0] == "groupdel" and not _group_exists(argv[-1]):
                continue
            rc, out, err = self.module.run_command([tools[argv[0]]] + argv[1:], environ_update=ENV)
            if rc != 0:
                self.fail(f"{argv[0]} failed with exit code {rc}: {err.strip() or out.strip()}",
                          cmd=argv, rc=rc, stdout=out, stderr=err)
        # Verify through NSS: catches accounts that an earlier NSS source (LDAP,
        # sssd, systemd-userdb) shadows, where the files now differ from what
        # every program resolves.
        observed = read_accounts(replace(spec, state="absent"))
        got = {"user": user_state(spec.name, observed.user), "group": group_state(spec.group, observed.group)}
        if got != the_plan.after:
            self.fail("after running the account commands, the account databases (as read through NSS) do not "
                      "show the expected state", expected=the_plan.after, observed=got)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
