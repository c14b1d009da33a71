# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Tests of the integration harness itself: if these fail, no other
integration test can be trusted to be isolated from the machine."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

import harness


def _root_rules():
    """Everything both iptables variants hold in the root namespace, read without side effects.

    ``iptables-legacy-save -t TABLE`` would instantiate an empty legacy table
    in the root namespace, so the legacy side is read only when some table
    already exists, and then with a full save (no -t).
    """
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    legacy_tables = pathlib.Path("/proc/net/ip_tables_names").read_text()
    legacy = ""
    if legacy_tables.strip():
        legacy = subprocess.run(["iptables-legacy-save"], capture_output=True, text=True,
                                check=True).stdout
    return nft, legacy_tables, "\n".join(line for line in legacy.splitlines() if not line.startswith("#"))


def test_rule_added_in_netns_is_invisible_in_root_namespace(netns, iptables_variant):
    comment = "hm-harness-" + netns.name
    before = _root_rules()
    netns.run(["iptables-" + iptables_variant, "-w", "5", "-A", "OUTPUT", "-m", "comment",
               "--comment", comment, "-j", "ACCEPT"])
    inside = netns.run(["iptables-%s-save" % iptables_variant, "-t", "filter"]).stdout
    assert comment in inside
    after = _root_rules()
    assert comment not in "".join(after)
    assert before == after


def test_netns_has_only_loopback_up(netns):
    links = netns.run(["ip", "-o", "link", "show"]).stdout.splitlines()
    assert len(links) == 1 and ": lo:" in links[0] and "UP" in links[0]


def test_nsenter_keeps_cgroup_mounts_visible(netns):
    root_mounts = [line.split()[1] for line in pathlib.Path("/proc/mounts").read_text().splitlines()
                   if line.split()[2] in ("cgroup", "cgroup2")]
    inside = netns.run(["cat", "/proc/self/mounts"]).stdout
    for mountpoint in root_mounts:
        assert " %s " % mountpoint in inside


def test_veth_pair_carries_tcp(netns, netns_factory):
    server_ns = netns_factory()
    if_client, if_server = netns.add_veth_peer(server_ns, "10.77.1.1/24", "10.77.1.2/24")
    assert if_client in netns.run(["ip", "-o", "link", "show"]).stdout
    assert if_server in server_ns.run(["ip", "-o", "link", "show"]).stdout
    server = server_ns.popen(
        [harness.TARGET_PYTHON, "-c",
         "import socket\n"
         "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "s.bind(('10.77.1.2', 18080)); s.listen(1); print('ready', flush=True)\n"
         "c, peer = s.accept(); c.sendall(('hello ' + peer[0]).encode()); c.close()\n"],
        stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    reply = netns.run([harness.TARGET_PYTHON, "-c",
                       "import socket\n"
                       "c = socket.create_connection(('10.77.1.2', 18080), timeout=5)\n"
                       "print(c.recv(100).decode())\n"]).stdout
    assert reply.strip() == "hello 10.77.1.1"
    # The root namespace has no route to the test network.
    root = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    assert "10.77.1." not in root


def test_close_removes_namespace_and_kills_its_processes(netns_factory):
    namespace = netns_factory()
    sleeper = namespace.popen(["sleep", "600"])
    stray = subprocess.Popen(namespace.command(["sleep", "600"]))  # not tracked by popen()
    try:
        # nsenter joins the namespace a moment after Popen returns.
        deadline = time.monotonic() + 10
        while len(namespace.pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(namespace.pids()) == 2
        namespace.close()
        assert sleeper.poll() is not None
        assert stray.wait(timeout=10) != 0
        assert namespace.name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                    text=True, check=True).stdout
    finally:
        if stray.poll() is None:
            stray.kill()


def test_dummy_interface(netns):
    netns.add_dummy("hmdummy0", "192.0.2.10/32")
    assert "192.0.2.10/32" in netns.run(["ip", "-o", "addr", "show", "hmdummy0"]).stdout


def test_etc_overlay_keeps_useradd_out_of_real_etc(etc_overlay, netns):
    real = {name: pathlib.Path("/etc", name).read_bytes() for name in ("passwd", "group", "shadow", "gshadow")}
    user = "hm-" + netns.name[3:]
    etc_overlay.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                    netns=netns)
    # The overlay persists between invocations ...
    assert etc_overlay.run(["getent", "passwd", user]).stdout.startswith(user + ":")
    assert user in (etc_overlay.upper / "passwd").read_text()
    # ... and the real /etc never sees it.
    assert subprocess.run(["getent", "passwd", user], check=False).returncode == 2
    assert {name: pathlib.Path("/etc", name).read_bytes() for name in real} == real


def test_run_playbook_reports_changed_then_not_changed(netns, tmp_path):
    marker = tmp_path / "marker"
    tasks = [{"name": "Create marker", "ansible.builtin.copy": {"dest": str(marker), "content": "x\n"}},
             {"name": "Which python", "ansible.builtin.command": "{{ ansible_python_interpreter }} -c 'import sys; print(sys.executable)'",
              "changed_when": False},
             {"name": "Which netns", "ansible.builtin.command": "ip -o link show", "changed_when": False}]
    first = harness.run_playbook(tasks, netns=netns)
    assert first.rc == 0, first.output
    assert first.changed_tasks() == ["Create marker"]
    assert first.task("Create marker")["changed"] is True
    assert first.task("Which python")["stdout"] == harness.TARGET_PYTHON
    # The playbook really ran inside the namespace: it sees only lo.
    assert len(first.task("Which netns")["stdout_lines"]) == 1

    second = harness.run_playbook(tasks, netns=netns, check=True, diff=True)
    assert second.rc == 0, second.output
    assert second.changed_tasks() == []
    assert second.task("Create marker")["changed"] is False


def test_run_playbook_keeps_failures(netns):
    result = harness.run_playbook(
        [{"name": "Fail on purpose", "ansible.builtin.fail": {"msg": "bad value {{ answer }}"}}],
        netns=netns, extra_vars={"answer": 42})
    assert result.rc == 2
    failed = result.task("Fail on purpose")
    assert failed["hostmesh_status"] == "failed"
    assert failed["msg"] == "bad value 42"


def test_run_playbook_with_etc_overlay_creates_user_only_in_overlay(etc_overlay, netns):
    passwd = pathlib.Path("/etc/passwd").read_bytes()
    user = "hm-" + netns.name[3:]
    tasks = [{"name": "Create user",
              "ansible.builtin.user": {"name": user, "system": True, "create_home": False}}]
    first = harness.run_playbook(tasks, netns=netns, etc_overlay=etc_overlay)
    assert first.rc == 0, first.output
    assert first.task("Create user")["changed"] is True
    second = harness.run_playbook(tasks, netns=netns, etc_overlay=etc_overlay)
    assert second.rc == 0, second.output
    assert second.task("Create user")["changed"] is False
    assert pathlib.Path("/etc/passwd").read_bytes() == passwd
    assert not any(line.startswith(user + ":") for line in open("/etc/passwd", encoding="utf-8"))


def test_collection_is_visible_to_ansible():
    base = harness.collections_path()
    link = base / "ansible_collections" / "hostmesh" / "sidecar"
    assert link.resolve() == harness.REPO_ROOT
    assert os.path.isfile(link / "galaxy.yml")


def test_task_lookup_rejects_missing_and_ambiguous_names(netns):
    tasks = [{"name": "Twice", "ansible.builtin.debug": {"msg": "one"}},
             {"name": "Twice", "ansible.builtin.debug": {"msg": "two"}}]
    result = harness.run_playbook(tasks, netns=netns)
    assert result.rc == 0, result.output
    for name, message in (("Twice", "ambiguous"), ("Never ran", "did not run")):
        try:
            result.task(name)
        except AssertionError as error:
            assert message in str(error)
        else:
            raise AssertionError("task(%r) should have failed" % name)


def test_collection_python_is_importable_by_fqcn():
    from ansible_collections.hostmesh.sidecar.plugins.doc_fragments._attributes import ModuleDocFragment

    assert "check_mode" in ModuleDocFragment.DOCUMENTATION
