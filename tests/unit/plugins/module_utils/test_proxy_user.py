# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the pure parts of proxy_user: validation and planning."""

from __future__ import annotations

import grp
import pwd

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import HostmeshError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._proxy_user import (
    HOME,
    Account,
    AccountsView,
    Group,
    ProcessInfo,
    ProxyUserManager,
    UserSpec,
    find_nologin_shell,
    parse_status_ids,
    plan,
    processes_running_as,
    result_fields,
    validate_params,
)

NOLOGIN = "/usr/sbin/nologin"


def spec(**kw):
    params = {"name": "hostmesh-proxy", "uid": 1337, "gid": 1337}
    params.update(kw)
    return validate_params(params)


def proxy_account(**kw):
    values = dict(name="hostmesh-proxy", uid=1337, gid=1337, shell=NOLOGIN, home=HOME,
                  comment="hostmesh sidecar proxy")
    values.update(kw)
    return Account(**values)


def converged_view(**kw):
    values = dict(user=proxy_account(), group=Group("hostmesh-proxy", 1337), uid_owner="hostmesh-proxy",
                  gid_owner="hostmesh-proxy", nologin_shell=NOLOGIN)
    values.update(kw)
    return AccountsView(**values)


# -- validation ----------------------------------------------------------------

def test_defaults():
    got = validate_params({})
    assert got == UserSpec(name="hostmesh-proxy", uid=1337, group="hostmesh-proxy", gid=1337, state="present",
                           allow_uid_change=False, allow_gid_change=False, comment=None)


def test_group_defaults_to_name():
    assert validate_params({"name": "istio-proxy"}).group == "istio-proxy"
    assert validate_params({"name": "istio-proxy", "group": "mesh"}).group == "mesh"


@pytest.mark.parametrize("name", ["", "a/b", "a:b", "a b", "1337", "-x", "x" * 33, "é", "a\nb"])
def test_bad_names(name):
    with pytest.raises(HostmeshError, match=r"name=.* is not a valid account name"):
        validate_params({"name": name})


@pytest.mark.parametrize("name", ["hostmesh-proxy", "_envoy", "istio.proxy", "E", "x" * 32])
def test_good_names(name):
    assert validate_params({"name": name}).name == name


@pytest.mark.parametrize("uid, message", [
    (0, "uid=0 is root's"),
    (-1, "uid=-1 is out of range"),
    (2 ** 32 - 1, "uid=4294967295 is out of range"),
    (65535, "uid=65535 is reserved"),
    (True, "uid=True is not an integer"),
    ("1337", "uid='1337' is not an integer"),
])
def test_bad_uids(uid, message):
    with pytest.raises(HostmeshError) as err:
        validate_params({"uid": uid})
    assert message in str(err.value)


def test_bad_gid_and_group_reported_together_with_uid():
    with pytest.raises(HostmeshError) as err:
        validate_params({"uid": 0, "gid": -5, "group": "bad/group"})
    text = str(err.value)
    assert "uid=0" in text and "gid=-5" in text and "group='bad/group'" in text


@pytest.mark.parametrize("comment", ["a:b", "two\nlines"])
def test_bad_comment(comment):
    with pytest.raises(HostmeshError, match="comment="):
        validate_params({"comment": comment})


def test_bad_state():
    with pytest.raises(HostmeshError, match="state='gone'"):
        validate_params({"state": "gone"})


# -- planning: present ---------------------------------------------------------------

def test_fresh_host_creates_group_then_user():
    result = plan(spec(), AccountsView(nologin_shell=NOLOGIN))
    assert result.commands == [
        ["groupadd", "--gid", "1337", "hostmesh-proxy"],
        ["useradd", "--system", "--no-log-init", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", NOLOGIN, "--uid", "1337", "--gid", "hostmesh-proxy", "--comment", "hostmesh sidecar proxy",
         "hostmesh-proxy"],
    ]
    assert result.changed
    assert result.before == {"user": {"name": "hostmesh-proxy", "state": "absent"},
                             "group": {"name": "hostmesh-proxy", "state": "absent"}}
    assert result.after == {
        "user": {"name": "hostmesh-proxy", "state": "present", "uid": 1337, "gid": 1337, "shell": NOLOGIN,
                 "home": "/nonexistent", "comment": "hostmesh sidecar proxy"},
        "group": {"name": "hostmesh-proxy", "state": "present", "gid": 1337}}


def test_converged_is_not_changed():
    result = plan(spec(), converged_view())
    assert result.commands == []
    assert not result.changed
    assert result.before == result.after


def test_other_nologin_spelling_is_kept():
    view = converged_view(user=proxy_account(shell="/bin/false"))
    result = plan(spec(), view)
    assert result.commands == [] and not result.changed


def test_drift_is_repaired_with_one_usermod():
    view = converged_view(user=proxy_account(shell="/bin/bash", home="/home/hostmesh-proxy", gid=100))
    result = plan(spec(), view)
    assert result.commands == [["usermod", "--gid", "hostmesh-proxy", "--shell", NOLOGIN, "--home", HOME,
                                "hostmesh-proxy"]]
    assert result.before["user"]["shell"] == "/bin/bash"
    assert result.after["user"] == {"name": "hostmesh-proxy", "state": "present", "uid": 1337, "gid": 1337,
                                    "shell": NOLOGIN, "home": HOME, "comment": "hostmesh sidecar proxy"}


def test_comment_only_enforced_when_given():
    view = converged_view(user=proxy_account(comment="set by hand"))
    assert plan(spec(), view).commands == []
    assert plan(spec(comment="mesh proxy"), view).commands == [
        ["usermod", "--comment", "mesh proxy", "hostmesh-proxy"]]


def test_uid_owned_by_another_user_fails():
    view = AccountsView(uid_owner="postgres", nologin_shell=NOLOGIN)
    with pytest.raises(HostmeshError, match="uid=1337 already belongs to user 'postgres'"):
        plan(spec(), view)


def test_gid_owned_by_another_group_fails():
    view = AccountsView(gid_owner="docker", nologin_shell=NOLOGIN)
    with pytest.raises(HostmeshError, match="gid=1337 already belongs to group 'docker'"):
        plan(spec(), view)


def test_all_conflicts_are_reported_at_once():
    view = AccountsView(uid_owner="postgres", gid_owner="docker", nologin_shell=NOLOGIN)
    with pytest.raises(HostmeshError) as err:
        plan(spec(), view)
    assert "user 'postgres'" in str(err.value) and "group 'docker'" in str(err.value)


def test_a_taken_uid_and_gid_are_named_in_one_message():
    # What `useradd -u 1337 olduser` leaves on Debian: the UID and, for its group, the same GID.
    view = AccountsView(uid_owner="olduser", gid_owner="olduser", nologin_shell=NOLOGIN)
    with pytest.raises(HostmeshError) as err:
        plan(spec(), view)
    assert str(err.value) == (
        "uid=1337 already belongs to user 'olduser' and gid=1337 already belongs to group 'olduser'; the proxy "
        "needs a free UID and a free GID: choose another uid and another gid, or remove that user and that group")
    assert err.value.option == "uid" and len(err.value.problems) == 1
    assert err.value.details == {"taken": {"uid": {"id": 1337, "owner": "olduser"},
                                           "gid": {"id": 1337, "owner": "olduser"}}}
    assert err.value.fail_json_args()["taken"]["gid"]["owner"] == "olduser"


def test_a_taken_gid_alone_says_which_option_to_change():
    view = AccountsView(gid_owner="olduser", nologin_shell=NOLOGIN)
    with pytest.raises(HostmeshError) as err:
        plan(spec(uid=1338), view)
    assert str(err.value) == "gid=1337 already belongs to group 'olduser'; choose another gid or remove that group"
    assert err.value.option == "gid" and err.value.details == {"taken": {"gid": {"id": 1337, "owner": "olduser"}}}


def test_taken_ids_come_first_among_other_problems():
    view = converged_view(user=proxy_account(uid=990), group=None, gid_owner="docker", uid_owner=None)
    with pytest.raises(HostmeshError) as err:
        plan(spec(), view)
    assert [option for option, _message in err.value.problems] == ["gid", "uid"]
    assert str(err.value).startswith("gid=1337 already belongs to group 'docker'; choose another gid")
    assert "user 'hostmesh-proxy' exists with UID 990, not uid=1337" in str(err.value)


def test_moving_onto_a_taken_uid_names_the_account_to_move():
    view = converged_view(user=proxy_account(uid=990), uid_owner="postgres")
    with pytest.raises(HostmeshError) as err:
        plan(spec(allow_uid_change=True), view)
    assert str(err.value) == "uid=1337 already belongs to user 'postgres'; cannot move user 'hostmesh-proxy' to it"


def test_existing_user_with_other_uid_needs_allow_uid_change():
    view = converged_view(user=proxy_account(uid=990), uid_owner=None)
    with pytest.raises(HostmeshError, match="exists with UID 990, not uid=1337; set allow_uid_change=true"):
        plan(spec(), view)
    result = plan(spec(allow_uid_change=True), view)
    assert result.commands == [["usermod", "--uid", "1337", "hostmesh-proxy"]]
    assert result.before["user"]["uid"] == 990 and result.after["user"]["uid"] == 1337


def test_uid_change_refused_while_processes_run_or_uid_taken():
    view = converged_view(user=proxy_account(uid=990), uid_owner=None,
                          processes=[ProcessInfo(4242, "envoy")])
    with pytest.raises(HostmeshError, match=r"while processes run as it: 4242 \(envoy\)"):
        plan(spec(allow_uid_change=True), view)
    view = converged_view(user=proxy_account(uid=990), uid_owner="postgres")
    with pytest.raises(HostmeshError, match="uid=1337 already belongs to user 'postgres'"):
        plan(spec(allow_uid_change=True), view)


def test_existing_group_with_other_gid_needs_allow_gid_change():
    view = converged_view(user=proxy_account(gid=990), group=Group("hostmesh-proxy", 990), gid_owner=None)
    with pytest.raises(HostmeshError, match="group 'hostmesh-proxy' exists with GID 990, not gid=1337"):
        plan(spec(), view)
    result = plan(spec(allow_gid_change=True), view)
    # groupmod moves the user's primary GID along: no usermod --gid.
    assert result.commands == [["groupmod", "--gid", "1337", "hostmesh-proxy"]]
    assert result.after["group"]["gid"] == 1337 and result.after["user"]["gid"] == 1337


def test_gid_change_refused_when_gid_taken():
    view = converged_view(group=Group("hostmesh-proxy", 990), gid_owner="docker")
    with pytest.raises(HostmeshError, match="gid=1337 already belongs to group 'docker'"):
        plan(spec(allow_gid_change=True), view)


def test_user_exists_group_missing():
    view = AccountsView(user=proxy_account(gid=100), uid_owner="hostmesh-proxy", nologin_shell=NOLOGIN)
    result = plan(spec(), view)
    assert result.commands == [["groupadd", "--gid", "1337", "hostmesh-proxy"],
                               ["usermod", "--gid", "hostmesh-proxy", "hostmesh-proxy"]]


# -- planning: absent -----------------------------------------------------------------

def test_absent_removes_user_then_group():
    result = plan(spec(state="absent"), converged_view())
    assert result.commands == [["userdel", "hostmesh-proxy"], ["groupdel", "hostmesh-proxy"]]
    assert result.after == {"user": {"name": "hostmesh-proxy", "state": "absent"},
                            "group": {"name": "hostmesh-proxy", "state": "absent"}}
    assert result_fields(spec(state="absent"), result.before)["uid"] == 1337


def test_absent_when_nothing_exists_is_not_changed():
    result = plan(spec(state="absent"), AccountsView())
    assert result.commands == [] and not result.changed
    assert result_fields(spec(state="absent"), result.before) == {
        "name": "hostmesh-proxy", "uid": None, "group": "hostmesh-proxy", "gid": None, "shell": None, "home": None}


def test_absent_refused_while_processes_run():
    view = converged_view(processes=[ProcessInfo(p, "sleep") for p in range(100, 108)])
    with pytest.raises(HostmeshError) as err:
        plan(spec(state="absent"), view)
    assert "refusing to remove user 'hostmesh-proxy' (UID 1337) while processes run as it" in str(err.value)
    assert "100 (sleep)" in str(err.value) and "and 3 more" in str(err.value)


def test_absent_refuses_to_delete_another_users_primary_group():
    view = converged_view(primary_group_users=["alice"])
    with pytest.raises(HostmeshError, match="refusing to remove group 'hostmesh-proxy' .* primary group of "
                                            "user.s. alice"):
        plan(spec(state="absent"), view)


# -- reading helpers -------------------------------------------------------------------

STATUS = """Name:\tenvoy
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
Pid:\t4242
PPid:\t1
Uid:\t1000\t1337\t1000\t1337
Gid:\t1337\t1337\t1337\t1337
"""


def test_parse_status_ids():
    assert parse_status_ids(STATUS) == ("envoy", (1000, 1337, 1000, 1337), (1337, 1337, 1337, 1337))


def test_processes_running_as_scans_every_uid_field(tmp_path):
    for pid, uids in ((10, "0\t0\t0\t0"), (11, "1000\t1337\t1000\t1337"), (12, "1337\t1337\t1337\t1337")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_text("Name:\tp%d\nUid:\t%s\n" % (pid, uids))
    (tmp_path / "self").mkdir()
    (tmp_path / "13").mkdir()  # exited: no status file
    assert processes_running_as(1337, str(tmp_path)) == [ProcessInfo(11, "p11"), ProcessInfo(12, "p12")]
    assert processes_running_as(4000, str(tmp_path)) == []


def test_find_nologin_shell():
    assert find_nologin_shell(lambda p: p in ("/sbin/nologin", "/bin/false")) == "/sbin/nologin"
    assert find_nologin_shell(lambda p: p == "/bin/false") == "/bin/false"
    with pytest.raises(HostmeshError, match="no login-denying shell"):
        find_nologin_shell(lambda p: False)


# -- manager (the thin side-effect layer, with injected runner and tool lookup) ----------------

def _unused_account():
    """A name, UID and GID that no account on this machine has: the plan creates both."""
    taken_ids = {entry.pw_uid for entry in pwd.getpwall()} | {entry.gr_gid for entry in grp.getgrall()}
    free = next(number for number in range(40000, 50000) if number not in taken_ids)
    return {"name": "hmt-unit-%d" % free, "uid": free, "gid": free}


def _never_run(argv):
    raise AssertionError("no command may run: %r" % (argv,))


def test_manager_check_mode_returns_result_and_diff_without_running_anything():
    params = _unused_account()
    manager = ProxyUserManager(validate_params(params), _never_run, check_mode=True,
                               get_bin_path=lambda name: "/usr/sbin/" + name)
    result, diff = manager.run()
    assert result["changed"] is True and result["uid"] == params["uid"] and "diff" not in result
    assert diff["before"]["user"] == {"name": params["name"], "state": "absent"}
    assert diff["after"]["group"] == {"name": params["name"], "state": "present", "gid": params["gid"]}


def test_manager_fails_before_the_first_command_when_a_tool_is_missing():
    manager = ProxyUserManager(validate_params(_unused_account()), _never_run,
                               get_bin_path=lambda name: None if name == "useradd" else "/usr/sbin/" + name)
    with pytest.raises(HostmeshError, match="cannot find useradd"):
        manager.run()


def test_manager_reports_a_failed_command_with_its_output():
    calls = []

    def refuse(argv):
        calls.append(argv)
        return 4, "", "groupadd: GID '%s' already exists\n" % argv[2]

    manager = ProxyUserManager(validate_params(_unused_account()), refuse, get_bin_path=lambda name: "/sbin/" + name)
    with pytest.raises(HostmeshError) as err:
        manager.run()
    assert len(calls) == 1 and calls[0][0] == "/sbin/groupadd"
    assert str(err.value).startswith("groupadd failed with exit code 4: groupadd: GID")
    assert err.value.details["rc"] == 4 and err.value.details["cmd"][0] == "groupadd"
