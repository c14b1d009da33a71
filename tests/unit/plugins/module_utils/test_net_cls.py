# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the pure parts of net_cls: class ids, validation, /proc parsing, planning."""

from __future__ import annotations

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import HostmeshError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._net_cls import (
    OWN_MOUNTPOINT,
    V1_MOUNTPOINT,
    CgroupState,
    Controller,
    FileState,
    NetClsSpec,
    NetClsView,
    PidState,
    choose_mountpoint,
    classid_tc,
    format_classid,
    is_cgroup2_host,
    mount_controllers,
    net_cls_mounts,
    parse_classid,
    parse_mountinfo,
    parse_pid_status,
    parse_proc_cgroups,
    plan,
    result_fields,
    run_cli,
    validate_params,
)

USERS = {"hostmesh-proxy": 1337}
GROUPS = {"hostmesh-proxy": 1337}


def validate(**params):
    return validate_params(params, user_id=USERS.__getitem__, group_id=GROUPS.__getitem__)


# -- class ids ----------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("0x100001", 0x100001), ("0X100001", 0x100001), ("0x00100001", 0x100001), (1048577, 0x100001),
    ("1048577", 0x100001), (1, 1), ("0xffffffff", 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), ("0xABCD0001", 0xABCD0001),
])
def test_parse_classid(value, expected):
    assert parse_classid(value) == expected


@pytest.mark.parametrize("value, message", [
    (0, "out of range"), ("0", "out of range"), ("0x0", "out of range"), (-1, "out of range"),
    ("-1", "out of range"), (2 ** 32, "out of range"), ("0x100000000", "out of range"),
    ("4294967296", "out of range"),
    ("garbage", "neither a hex number"), ("0x", "neither a hex number"), ("", "neither a hex number"),
    (" 0x1", "neither a hex number"), ("1_000", "neither a hex number"), ("0x1g", "neither a hex number"),
    ("010", "neither a hex number"), ("10:1", "neither a hex number"),
    (True, "must be a hex string"), (1.5, "must be a hex string"), (None, "must be a hex string"),
])
def test_parse_classid_rejects(value, message):
    with pytest.raises(ValueError) as err:
        parse_classid(value)
    assert message in str(err.value)
    assert str(err.value).startswith("classid=%r" % (value,))


def test_classid_forms():
    assert format_classid(0x100001) == "0x100001"
    assert classid_tc(0x100001) == "10:1"
    assert classid_tc(0xFFFF0000) == "ffff:0"


# -- validation -------------------------------------------------------------------------

def test_defaults():
    assert validate() == NetClsSpec(name="hostmesh-proxy", classid=0x100001, mountpoint=None, pids=(),
                                    state="present", owner=None, group=None)


@pytest.mark.parametrize("name, message", [
    ("a/b", "without '/'"), ("..", "without '/'"), (".", "without '/'"), ("../x", "without '/'"),
    ("", "non-empty"), ("a b", "may only contain"), ("x" * 256, "may only contain"), ("tasks", "control files"),
    ("cgroup.procs", "control files"), ("net_cls.classid", "control files"), ("notify_on_release", "control files"),
])
def test_bad_names(name, message):
    with pytest.raises(HostmeshError) as err:
        validate(name=name)
    assert message in str(err.value) and str(err.value).startswith("name=")


@pytest.mark.parametrize("path", ["relative/dir", "/", "/run/x/", "/run//x", "/run/../x", "/run/./x", "/a\nb"])
def test_bad_mountpoints(path):
    with pytest.raises(HostmeshError, match="mountpoint="):
        validate(mountpoint=path)


@pytest.mark.parametrize("pids, message", [
    ([0], "pids: 0 is not a process id"), ([-4], "pids: -4 is not a process id"),
    ([True], "pids: True is not a process id"), (["12"], "pids: '12' is not a process id"),
])
def test_bad_pids(pids, message):
    with pytest.raises(HostmeshError) as err:
        validate(pids=pids)
    assert message in str(err.value)


def test_duplicate_pids_collapse():
    assert validate(pids=[5, 7, 5]).pids == (5, 7)


def test_pids_only_with_present():
    with pytest.raises(HostmeshError, match="only be moved in with state=present"):
        validate(pids=[5], state="absent")


def test_owner_and_group_by_name_or_number():
    got = validate(owner="hostmesh-proxy", group="1337")
    assert (got.owner, got.group) == (1337, 1337)
    assert validate(owner=1500).owner == 1500


def test_unknown_owner_and_group_and_more_are_reported_together():
    with pytest.raises(HostmeshError) as err:
        validate(owner="nobody-here", group="nogroup-here", classid="zz", name="a/b")
    text = str(err.value)
    for part in ("owner='nobody-here': no such user", "group='nogroup-here': no such group", "classid='zz'",
                 "name='a/b'"):
        assert part in text


# -- /proc parsing ------------------------------------------------------------------------

HYBRID_MOUNTINFO = r"""21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
44 31 0:41 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,net_cls,net_prio
45 31 0:42 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,cpu,cpuacct
46 31 0:43 / /sys/fs/cgroup/systemd rw,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
50 21 0:44 /sub /srv/my\040cgroups rw,relatime - cgroup net_cls rw,net_cls,clone_children
"""

V2_MOUNTINFO = """21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""


def test_parse_mountinfo():
    entries = parse_mountinfo(HYBRID_MOUNTINFO)
    assert len(entries) == 7
    comount = entries[3]
    assert (comount.mount_id, comount.parent_id, comount.major, comount.minor) == (44, 31, 0, 41)
    assert comount.mountpoint == "/sys/fs/cgroup/net_cls,net_prio"
    assert comount.fstype == "cgroup" and comount.controllers == ("net_cls", "net_prio")
    assert entries[5].controllers == ()  # name=systemd, xattr: no controllers
    escaped = entries[6]
    assert escaped.mountpoint == "/srv/my cgroups" and escaped.root == "/sub"
    assert escaped.controllers == ("net_cls",)


def test_parse_mountinfo_rejects_garbage():
    with pytest.raises(ValueError, match="malformed mountinfo"):
        parse_mountinfo("this is not mountinfo\n")


def test_net_cls_mounts_prefers_whole_hierarchy():
    mounts = net_cls_mounts(parse_mountinfo(HYBRID_MOUNTINFO))
    assert [m.mountpoint for m in mounts] == ["/sys/fs/cgroup/net_cls,net_prio", "/srv/my cgroups"]


def test_cgroup2_host_detection():
    assert is_cgroup2_host(parse_mountinfo(V2_MOUNTINFO))
    assert not is_cgroup2_host(parse_mountinfo(HYBRID_MOUNTINFO))
    assert not is_cgroup2_host([])


PROC_CGROUPS = """#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
net_cls\t%s\t1\t1
net_prio\t%s\t1\t1
pids\t8\t1\t1
"""


def test_mount_controllers():
    assert mount_controllers(parse_proc_cgroups(PROC_CGROUPS % (0, 0))) == ["net_cls"]
    assert mount_controllers(parse_proc_cgroups(PROC_CGROUPS % (9, 0))) == ["net_cls"]
    assert mount_controllers(parse_proc_cgroups(PROC_CGROUPS % (9, 9))) == ["net_cls", "net_prio"]
    assert parse_proc_cgroups(PROC_CGROUPS % (9, 9))["net_cls"] == Controller("net_cls", 9, 1, True)


def test_parse_pid_status():
    process = parse_pid_status(42, "Name:\tenvoy\nTgid:\t42\nPPid:\t1\nKthread:\t0\n")
    assert process == PidState(pid=42, exists=True, tgid=42, kernel_thread=False, name="envoy")
    assert parse_pid_status(43, "Name:\tenvoy\nTgid:\t42\nPPid:\t1\n").tgid == 42
    assert parse_pid_status(77, "Name:\tkworker/0:1\nTgid:\t77\nPPid:\t2\nKthread:\t1\n").kernel_thread
    # Kernels without the Kthread field: children of kthreadd.
    assert parse_pid_status(77, "Name:\tkworker/0:1\nTgid:\t77\nPPid:\t2\n").kernel_thread
    assert not parse_pid_status(78, "Name:\tsh\nTgid:\t78\nPPid:\t1\n").kernel_thread


def test_choose_mountpoint():
    mounts = net_cls_mounts(parse_mountinfo(HYBRID_MOUNTINFO))
    assert choose_mountpoint(None, mounts, False, True) == ("/sys/fs/cgroup/net_cls,net_prio", mounts[0])
    assert choose_mountpoint("/srv/my cgroups", mounts, False, True) == ("/srv/my cgroups", mounts[1])
    assert choose_mountpoint("/run/x", mounts, False, True) == ("/run/x", None)
    assert choose_mountpoint(None, [], False, True) == (V1_MOUNTPOINT, None)
    assert choose_mountpoint(None, [], True, True) == (OWN_MOUNTPOINT, None)
    assert choose_mountpoint(None, [], False, False) == (OWN_MOUNTPOINT, None)


# -- planning --------------------------------------------------------------------------------

MP = "/sys/fs/cgroup/net_cls"
PATH = MP + "/hostmesh-proxy"
ROOT_FILES = {"cgroup.procs": FileState(0, 0, 0o644), "tasks": FileState(0, 0, 0o644)}
ENABLED = Controller("net_cls", 0, 1, True)


def unmounted_view(**kw):
    values = dict(controller=ENABLED, mount_with=["net_cls"], mountpoint=MP, mounted=False,
                  mountpoint_status="missing", missing_dirs=[MP])
    values.update(kw)
    return NetClsView(**values)


def mounted_view(cgroup=None, **kw):
    values = dict(controller=Controller("net_cls", 9, 2, True), mount_with=["net_cls"], mountpoint=MP,
                  mounted=True, cgroup=cgroup)
    values.update(kw)
    return NetClsView(**values)


def cgroup_state(classid=0x100001, files=None, procs=(), tasks=None, children=()):
    return CgroupState(classid=classid, files=dict(files or ROOT_FILES), procs=list(procs),
                       tasks=list(procs if tasks is None else tasks), children=list(children))


def test_fresh_host_mounts_creates_and_sets_classid():
    result = plan(validate(), unmounted_view())
    assert result.actions == [("mkdirs", MP, (MP,)), ("mount", ("net_cls",), MP), ("mkdir", PATH),
                              ("classid", 0x100001)]
    assert result.before == {"mountpoint": MP, "mounted": False, "path": PATH, "cgroup": "absent",
                             "classid": None, "pids": []}
    assert result.after == {"mountpoint": MP, "mounted": True, "path": PATH, "cgroup": "present",
                            "classid": "0x100001", "cgroup.procs": {"owner": 0, "group": 0, "mode": "0644"},
                            "tasks": {"owner": 0, "group": 0, "mode": "0644"}, "pids": []}
    assert result.changed


def test_empty_existing_directory_is_mounted_without_mkdir():
    result = plan(validate(), unmounted_view(mountpoint_status="empty", missing_dirs=[],
                                             mount_with=["net_cls", "net_prio"]))
    assert result.actions[0] == ("mount", ("net_cls", "net_prio"), MP)


def test_converged_is_not_changed():
    result = plan(validate(), mounted_view(cgroup_state()))
    assert result.actions == [] and not result.changed and result.before == result.after


def test_classid_drift_is_the_only_action_and_in_the_diff():
    result = plan(validate(classid=0x100002), mounted_view(cgroup_state(classid=0x100001)))
    assert result.actions == [("classid", 0x100002)]
    assert result.before["classid"] == "0x100001" and result.after["classid"] == "0x100002"
    assert result_fields(validate(classid=0x100002), result) == {
        "path": PATH, "mountpoint": MP, "classid": "0x100002", "classid_decimal": 1048578, "classid_tc": "10:2",
        "pids_moved": []}


def test_owner_and_group_chown_and_make_group_writable():
    spec = validate(owner="hostmesh-proxy", group="hostmesh-proxy")
    result = plan(spec, mounted_view(cgroup_state()))
    assert result.actions == [("chown", "cgroup.procs", 1337, 1337), ("chmod", "cgroup.procs", 0o664),
                              ("chown", "tasks", 1337, 1337), ("chmod", "tasks", 0o664)]
    assert result.after["cgroup.procs"] == {"owner": 1337, "group": 1337, "mode": "0664"}
    owned = {name: FileState(1337, 1337, 0o664) for name in ROOT_FILES}
    assert plan(spec, mounted_view(cgroup_state(files=owned))).actions == []


def test_owner_only_keeps_group_and_mode():
    result = plan(validate(owner="1337"), mounted_view(cgroup_state()))
    assert result.actions == [("chown", "cgroup.procs", 1337, 0), ("chown", "tasks", 1337, 0)]


def test_new_cgroup_with_owner_gets_chown_after_mkdir():
    result = plan(validate(owner="hostmesh-proxy"), mounted_view(None))
    assert result.actions == [("mkdir", PATH), ("classid", 0x100001), ("chown", "cgroup.procs", 1337, 0),
                              ("chown", "tasks", 1337, 0)]


def test_pids_moved_only_when_not_inside():
    spec = validate(pids=[100, 200])
    view = mounted_view(cgroup_state(procs=[100]), pids={100: PidState(100, True, 100), 200: PidState(200, True, 200)})
    result = plan(spec, view)
    assert result.actions == [("move", 200)]
    assert result.pids_moved == [200]
    assert result.before["pids"] == [100] and result.after["pids"] == [100, 200]


def test_bad_pids_and_mountpoint_fail_together():
    spec = validate(pids=[100, 101, 102])
    view = unmounted_view(mountpoint_status="not-empty", missing_dirs=[], pids={
        100: PidState(100, False), 101: PidState(101, True, 99, name="worker"),
        102: PidState(102, True, 102, kernel_thread=True, name="kworker/0:1")})
    with pytest.raises(HostmeshError) as err:
        plan(spec, view)
    text = str(err.value)
    assert "pids: process 100 does not exist" in text
    assert "pids: 101 is a thread of process 99" in text
    assert "pids: 102 (kworker/0:1) is a kernel thread" in text
    assert "mountpoint /sys/fs/cgroup/net_cls is a non-empty directory" in text


@pytest.mark.parametrize("status, message", [
    ("not-directory", "exists and is not a directory"), ("mount:tmpfs", "already holds a tmpfs mount")])
def test_unusable_mountpoint(status, message):
    with pytest.raises(HostmeshError, match=message):
        plan(validate(), unmounted_view(mountpoint_status=status, missing_dirs=[]))


def test_missing_or_disabled_controller():
    with pytest.raises(HostmeshError, match="no net_cls cgroup controller"):
        plan(validate(), unmounted_view(controller=None))
    with pytest.raises(HostmeshError, match="controller is disabled"):
        plan(validate(), unmounted_view(controller=Controller("net_cls", 0, 1, False)))


def test_absent_moves_processes_to_root_and_removes():
    view = mounted_view(cgroup_state(procs=[300, 301], tasks=[300, 301, 302]))
    result = plan(validate(state="absent"), view)
    assert result.actions == [("evacuate", PATH, MP), ("rmdir", PATH)]
    assert result.pids_moved == [300, 301]
    assert result.before["pids"] == [300, 301] and result.after["pids"] == []
    assert result.after["cgroup"] == "absent" and result.after["mounted"] is True


def test_absent_unmounts_only_own_mount_without_other_cgroups():
    marker = {MP: {"created_dirs": [MP]}}
    result = plan(validate(state="absent"), mounted_view(cgroup_state(), marker=marker))
    assert result.actions == [("rmdir", PATH), ("umount", MP), ("rmdirs", (MP,))]
    assert result.after["mounted"] is False
    # Another cgroup lives in the hierarchy: keep the mount.
    result = plan(validate(state="absent"), mounted_view(cgroup_state(), marker=marker, siblings=["other"]))
    assert result.actions == [("rmdir", PATH)]
    # Mounted by someone else: keep the mount.
    result = plan(validate(state="absent"), mounted_view(cgroup_state()))
    assert result.actions == [("rmdir", PATH)]


def test_absent_finishes_an_interrupted_unmount():
    result = plan(validate(state="absent"), mounted_view(None, marker={MP: {"created_dirs": []}}))
    assert result.actions == [("umount", MP)]


def test_absent_refuses_child_cgroups():
    with pytest.raises(HostmeshError, match="has child cgroups .worker.; remove them first"):
        plan(validate(state="absent"), mounted_view(cgroup_state(children=["worker"])))


def test_absent_with_nothing_there_is_not_changed():
    result = plan(validate(state="absent"), unmounted_view())
    assert result.actions == [] and not result.changed and result.before == result.after


# -- host-side command ------------------------------------------------------------------------

def test_run_cli_reports_bad_input_as_exit_2_without_printing(capsys):
    code, out, err = run_cli(["ensure", "--name", "a/b", "--classid", "zz"])
    assert (code, out) == (2, "")
    assert err.startswith("hostmesh-net-cls: ") and "classid='zz' is neither a hex number" in err and "name='a/b'" in err
    assert capsys.readouterr() == ("", "")


def test_run_cli_returns_usage_instead_of_exiting(capsys):
    code, out, err = run_cli(["--help"])
    assert code == 0 and "ensure" in out and err == ""
    code, out, err = run_cli(["mount"])
    assert code == 2 and out == "" and "invalid choice: 'mount'" in err
    assert capsys.readouterr() == ("", "")
