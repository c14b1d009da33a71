# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""hostmesh.sidecar.proxy_user through ansible-playbook, on the real shadow-utils.

Every playbook runs with /etc overlaid (the ``etc_overlay`` fixture): useradd
and friends write into the overlay's upper directory, the machine's own
accounts never change. Each test also checks that the real /etc is untouched.
"""

from __future__ import annotations

import grp
import os
import pathlib
import pwd
import subprocess

import pytest

import harness

ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")
MODULE = "hostmesh.sidecar.proxy_user"


def _ids_in_use():
    """UIDs and GIDs of every account, group and running process (as any of their ids)."""
    used = {entry.pw_uid for entry in pwd.getpwall()} | {entry.gr_gid for entry in grp.getgrall()}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = pathlib.Path("/proc", entry, "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith(("Uid:", "Gid:")):
                    used.update(int(value) for value in line.split()[1:])
    return used


def _free_id(start):
    """An id usable as both UID and GID that nothing on this machine uses."""
    used = _ids_in_use()
    for candidate in range(start, start + 1000):
        if candidate not in used:
            return candidate
    raise AssertionError("no free id")


# Not 1337: on a shared machine the proxy of some other run may be running as
# 1337, which (rightly) blocks state=absent. Only the defaults test uses 1337,
# and only with state=present.
TEST_ID = _free_id(21337)
OTHER_ID = _free_id(TEST_ID + 1)
DEFAULT_ID_FREE = not ({pw.pw_uid for pw in pwd.getpwall()} | {gr.gr_gid for gr in grp.getgrall()}) & {1337}


@pytest.fixture(autouse=True)
def real_etc_untouched():
    before = {name: pathlib.Path("/etc", name).read_bytes() for name in ACCOUNT_FILES}
    yield
    after = {name: pathlib.Path("/etc", name).read_bytes() for name in ACCOUNT_FILES}
    assert after == before, "the machine's own account files changed"


def accounts(overlay):
    """The account files as seen through the overlay."""
    return {name: overlay.run(["cat", "/etc/" + name]).stdout for name in ACCOUNT_FILES}


def getent(overlay, database, key):
    proc = overlay.run(["getent", database, str(key)], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def task(title, /, **args):
    """A task named ``title`` calling the module with ``args``."""
    return {"name": title, MODULE: args}


def play(overlay, netns, *tasks, **kw):
    return harness.run_playbook(list(tasks), etc_overlay=overlay, netns=netns, **kw)


def test_defaults_create_then_idempotent(etc_overlay, netns):
    if not DEFAULT_ID_FREE:
        pytest.skip("UID or GID 1337 belongs to an account on this machine")
    first = play(etc_overlay, netns, task("Proxy user"), diff=True)
    assert first.rc == 0, first.output
    result = first.task("Proxy user")
    assert result["changed"] is True
    assert {key: result[key] for key in ("name", "uid", "group", "gid", "shell", "home")} == {
        "name": "hostmesh-proxy", "uid": 1337, "group": "hostmesh-proxy", "gid": 1337,
        "shell": "/usr/sbin/nologin", "home": "/nonexistent"}
    assert result["diff"]["before"]["user"] == {"name": "hostmesh-proxy", "state": "absent"}
    assert result["diff"]["after"]["group"] == {"name": "hostmesh-proxy", "state": "present", "gid": 1337}
    assert getent(etc_overlay, "passwd", "hostmesh-proxy") == \
        "hostmesh-proxy:x:1337:1337:hostmesh sidecar proxy:/nonexistent:/usr/sbin/nologin"
    assert getent(etc_overlay, "group", "hostmesh-proxy") == "hostmesh-proxy:x:1337:"
    # The password is locked and the home was never created.
    shadow = [line for line in accounts(etc_overlay)["shadow"].splitlines() if line.startswith("hostmesh-proxy:")]
    assert shadow and shadow[0].split(":")[1].startswith("!")
    assert not pathlib.Path("/nonexistent").exists()

    files = accounts(etc_overlay)
    second = play(etc_overlay, netns, task("Proxy user"), diff=True)
    assert second.rc == 0, second.output
    assert second.task("Proxy user")["changed"] is False
    assert second.task("Proxy user")["diff"]["before"] == second.task("Proxy user")["diff"]["after"]
    assert accounts(etc_overlay) == files


def test_check_mode_on_drift_reports_and_changes_nothing(etc_overlay, netns):
    args = {"name": "hmt-proxy", "uid": TEST_ID, "gid": TEST_ID}
    converge = play(etc_overlay, netns, task("Converge", **args))
    assert converge.rc == 0, converge.output
    # Drift: someone gave the account a login shell and a home.
    etc_overlay.run(["usermod", "--shell", "/bin/bash", "--home", "/home/hmt-proxy", "hmt-proxy"])
    drifted = accounts(etc_overlay)

    check = play(etc_overlay, netns, task("Check", **args), check=True, diff=True)
    assert check.rc == 0, check.output
    result = check.task("Check")
    assert result["changed"] is True
    before, after = result["diff"]["before"]["user"], result["diff"]["after"]["user"]
    assert (before["shell"], before["home"]) == ("/bin/bash", "/home/hmt-proxy")
    assert (after["shell"], after["home"]) == ("/usr/sbin/nologin", "/nonexistent")
    assert result["diff"]["before"]["group"] == result["diff"]["after"]["group"]
    assert accounts(etc_overlay) == drifted

    repair = play(etc_overlay, netns, task("Repair", **args))
    assert repair.rc == 0 and repair.task("Repair")["changed"] is True, repair.output
    assert getent(etc_overlay, "passwd", "hmt-proxy").endswith(":/nonexistent:/usr/sbin/nologin")
    again = play(etc_overlay, netns, task("Again", **args))
    assert again.task("Again")["changed"] is False, again.output


def test_absent_removes_user_and_group(etc_overlay, netns):
    args = {"name": "hmt-proxy", "uid": TEST_ID, "gid": TEST_ID}
    assert play(etc_overlay, netns, task("Create", **args)).rc == 0
    pristine_check = play(etc_overlay, netns, task("Absent check", state="absent", **args), check=True, diff=True)
    assert pristine_check.task("Absent check")["changed"] is True
    assert getent(etc_overlay, "passwd", "hmt-proxy") is not None

    removed = play(etc_overlay, netns, task("Absent", state="absent", **args), diff=True)
    assert removed.rc == 0, removed.output
    result = removed.task("Absent")
    assert result["changed"] is True and result["uid"] == TEST_ID and result["gid"] == TEST_ID
    assert result["diff"]["after"] == {"user": {"name": "hmt-proxy", "state": "absent"},
                                       "group": {"name": "hmt-proxy", "state": "absent"}}
    assert getent(etc_overlay, "passwd", "hmt-proxy") is None
    assert getent(etc_overlay, "group", "hmt-proxy") is None
    again = play(etc_overlay, netns, task("Absent again", state="absent", **args))
    assert again.rc == 0 and again.task("Absent again")["changed"] is False, again.output


def test_absent_removes_a_group_of_another_name(etc_overlay, netns):
    """userdel removes a same-named group by itself; a group of another name is removed by groupdel."""
    args = {"name": "hmt-proxy", "group": "hmt-mesh", "uid": TEST_ID, "gid": TEST_ID}
    assert play(etc_overlay, netns, task("Create", **args)).rc == 0
    assert getent(etc_overlay, "group", "hmt-mesh") == "hmt-mesh:x:%d:" % TEST_ID
    removed = play(etc_overlay, netns, task("Absent", state="absent", **args))
    assert removed.rc == 0, removed.output
    assert getent(etc_overlay, "group", "hmt-mesh") is None


def test_running_process_blocks_absent(etc_overlay, netns):
    args = {"name": "hmt-proxy", "uid": TEST_ID, "gid": TEST_ID}
    assert play(etc_overlay, netns, task("Create", **args)).rc == 0
    files = accounts(etc_overlay)
    # A process that only has the UID as its saved/effective id counts too:
    # real UID root, effective UID the proxy's.
    sleeper = subprocess.Popen(["setpriv", "--euid", str(TEST_ID), "--", "sleep", "300"])
    try:
        blocked = play(etc_overlay, netns, task("Absent", state="absent", **args))
        assert blocked.rc == 2, blocked.output
        msg = blocked.task("Absent")["msg"]
        assert "refusing to remove user 'hmt-proxy' (UID %d) while processes run as it" % TEST_ID in msg
        assert "%d (sleep)" % sleeper.pid in msg
        assert accounts(etc_overlay) == files
    finally:
        sleeper.kill()
        sleeper.wait()
    removed = play(etc_overlay, netns, task("Absent", state="absent", **args))
    assert removed.rc == 0 and removed.task("Absent")["changed"] is True, removed.output


def test_uid_change_only_when_allowed(etc_overlay, netns):
    args = {"name": "hmt-proxy", "uid": TEST_ID, "gid": TEST_ID}
    assert play(etc_overlay, netns, task("Create", **args)).rc == 0
    moved = {**args, "uid": OTHER_ID, "gid": OTHER_ID}
    files = accounts(etc_overlay)
    refused = play(etc_overlay, netns, task("Move", **moved))
    assert refused.rc == 2
    msg = refused.task("Move")["msg"]
    assert "user 'hmt-proxy' exists with UID %d, not uid=%d; set allow_uid_change=true" % (TEST_ID, OTHER_ID) in msg
    assert "group 'hmt-proxy' exists with GID %d, not gid=%d; set allow_gid_change=true" % (TEST_ID, OTHER_ID) in msg
    assert accounts(etc_overlay) == files

    allowed = play(etc_overlay, netns, task("Move", allow_uid_change=True, allow_gid_change=True, **moved), diff=True)
    assert allowed.rc == 0, allowed.output
    assert allowed.task("Move")["diff"]["before"]["user"]["uid"] == TEST_ID
    assert getent(etc_overlay, "passwd", "hmt-proxy").split(":")[2:4] == [str(OTHER_ID), str(OTHER_ID)]
    assert getent(etc_overlay, "group", "hmt-proxy") == "hmt-proxy:x:%d:" % OTHER_ID


BAD_INPUTS = [
    pytest.param({"name": "bad/name", "uid": TEST_ID, "gid": TEST_ID},
                 "name='bad/name' is not a valid account name", id="name-with-slash"),
    pytest.param({"name": "hmt-proxy", "uid": 0, "gid": TEST_ID}, "uid=0 is root's", id="uid-root"),
    pytest.param({"name": "hmt-proxy", "uid": TEST_ID, "gid": 4294967295},
                 "gid=4294967295 is out of range", id="gid-out-of-range"),
    pytest.param({"name": "hmt-proxy", "uid": "many", "gid": TEST_ID},
                 "argument 'uid' is of type", id="uid-not-a-number"),
    pytest.param({"name": "hmt-proxy", "uid": "SQUATTER_UID", "gid": TEST_ID},
                 "uid=SQUATTER_UID already belongs to user 'hmt-squatter'", id="uid-collision"),
    pytest.param({"name": "hmt-proxy", "uid": TEST_ID, "gid": "SQUATTER_GID"},
                 "gid=SQUATTER_GID already belongs to group 'hmt-squatters'", id="gid-collision"),
    pytest.param({"name": "hmt-proxy", "uid": "SQUATTER_UID", "gid": "SQUATTER_GID"},
                 "uid=SQUATTER_UID already belongs to user 'hmt-squatter' and gid=SQUATTER_GID already belongs to "
                 "group 'hmt-squatters'; the proxy needs a free UID and a free GID", id="uid-and-gid-collision"),
    pytest.param({"name": "hmt-squatter", "uid": TEST_ID, "gid": TEST_ID},
                 "user 'hmt-squatter' exists with UID SQUATTER_UID, not uid=%d" % TEST_ID, id="existing-user-other-uid"),
    pytest.param({"name": "hmt-proxy", "uid": TEST_ID, "gid": TEST_ID, "comment": "a:b"},
                 "comment='a:b' must be text without ':'", id="comment-with-colon"),
    pytest.param({"name": "hmt-other", "group": "hmt-squatters", "uid": TEST_ID, "gid": "SQUATTER_GID",
                  "state": "absent"},
                 "refusing to remove group 'hmt-squatters' (GID SQUATTER_GID): it is the primary group of user(s) "
                 "hmt-squatter", id="absent-other-users-primary-group"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_fails_and_changes_nothing(etc_overlay, netns, args, message):
    # Another account already holds OTHER_ID (user hmt-squatter, group hmt-squatters).
    etc_overlay.run(["groupadd", "--gid", str(OTHER_ID), "hmt-squatters"])
    etc_overlay.run(["useradd", "--system", "--no-create-home", "--uid", str(OTHER_ID), "--gid", "hmt-squatters",
                     "hmt-squatter"])
    substitute = {"SQUATTER_UID": OTHER_ID, "SQUATTER_GID": OTHER_ID}
    args = {key: substitute.get(value, value) if isinstance(value, str) else value for key, value in args.items()}
    message = message.replace("SQUATTER_UID", str(OTHER_ID)).replace("SQUATTER_GID", str(OTHER_ID))
    files = accounts(etc_overlay)

    result = play(etc_overlay, netns, task("Bad input", **args))
    assert result.rc == 2, result.output
    failed = result.task("Bad input")
    assert failed["hostmesh_status"] == "failed"
    assert message in failed["msg"], failed["msg"]
    assert accounts(etc_overlay) == files
