# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The transparent_proxy role's proxy identity (tasks_from: user) through ansible-playbook.

Every playbook runs with /etc overlaid (the ``etc_overlay`` fixture), as in
test_proxy_user.py: the machine's own accounts never change.
"""

from __future__ import annotations

import grp
import json
import pathlib
import pwd
import tempfile

import pytest

import harness
from test_proxy_user import OTHER_ID, TEST_ID, getent, real_etc_untouched  # noqa: F401  pylint: disable=unused-import

DEFAULT_ID = 1337
ROLE_USER_TASKS = [{"name": "Proxy identity",
                    "ansible.builtin.include_role": {"name": "hostmesh.sidecar.transparent_proxy",
                                                     "tasks_from": "user"}}]


def role_user(overlay, netns, host_vars=None, **kw):
    """Run the role's user tasks on localhost, with ``host_vars`` set in the inventory."""
    extra_args = []
    with tempfile.TemporaryDirectory(prefix="hm-inventory-") as inventory_dir:
        if host_vars is not None:
            inventory = pathlib.Path(inventory_dir, "hosts.yml")
            # JSON is YAML: localhost's host_vars, merged with the harness's own inventory line.
            inventory.write_text(json.dumps({"all": {"hosts": {"localhost": host_vars}}}), encoding="utf-8")
            extra_args = ["-i", str(inventory)]
        return harness.run_playbook(ROLE_USER_TASKS, etc_overlay=overlay, netns=netns, extra_args=extra_args, **kw)


def failure_message(result):
    return result.task("Say which variables choose the proxy's ids")["msg"]


@pytest.fixture
def foreign_1337(etc_overlay):
    """A foreign account holding UID and GID 1337 (useradd -U takes the GID too, as on Debian)."""
    if DEFAULT_ID in {pw.pw_uid for pw in pwd.getpwall()} | {gr.gr_gid for gr in grp.getgrall()}:
        pytest.skip("UID or GID 1337 belongs to an account on this machine")
    etc_overlay.run(["useradd", "--no-create-home", "--user-group", "--uid", str(DEFAULT_ID), "hmt-foreign"])
    assert getent(etc_overlay, "passwd", DEFAULT_ID).startswith("hmt-foreign:")
    return etc_overlay


def test_taken_1337_names_the_variables_to_set(foreign_1337, netns):
    refused = role_user(foreign_1337, netns)
    assert refused.rc == 2, refused.output
    msg = failure_message(refused)
    assert "uid=1337 already belongs to user 'hmt-foreign'" in msg
    for variable in ("hostmesh_proxy_uid", "hostmesh_proxy_gid", "transparent_proxy_uid", "transparent_proxy_gid"):
        assert variable in msg
    assert getent(foreign_1337, "passwd", "hostmesh-proxy") is None


def test_one_variable_is_enough_the_gid_follows(foreign_1337, netns):
    """hostmesh_proxy_uid alone: the GID follows it, so the group 1337 of useradd -U is no obstacle."""
    created = role_user(foreign_1337, netns, host_vars={"hostmesh_proxy_uid": TEST_ID})
    assert created.rc == 0, created.output
    assert getent(foreign_1337, "passwd", "hostmesh-proxy").startswith("hostmesh-proxy:x:%d:%d:" % (TEST_ID, TEST_ID))
    assert getent(foreign_1337, "group", "hostmesh-proxy") == "hostmesh-proxy:x:%d:" % TEST_ID


def test_role_variable_in_the_inventory_wins_over_the_shared_one(etc_overlay, netns):
    created = role_user(etc_overlay, netns, host_vars={
        "hostmesh_proxy_uid": TEST_ID, "transparent_proxy_uid": OTHER_ID, "hostmesh_proxy_user": "hmt-proxy"})
    assert created.rc == 0, created.output
    assert getent(etc_overlay, "passwd", "hmt-proxy").startswith("hmt-proxy:x:%d:%d:" % (OTHER_ID, OTHER_ID))
    assert getent(etc_overlay, "passwd", TEST_ID) is None


def test_other_failures_are_passed_on_without_the_hint(etc_overlay, netns):
    """A user name that is not one: the module's own message, no advice about ids."""
    refused = role_user(etc_overlay, netns, host_vars={"hostmesh_proxy_user": "Bad Name", "hostmesh_proxy_uid": TEST_ID})
    assert refused.rc == 2, refused.output
    msg = failure_message(refused)
    assert "Bad Name" in msg
    assert "hostmesh_proxy_uid" not in msg
