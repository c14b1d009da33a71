# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the probe's pure comparisons and its reader (_probe)."""

from __future__ import annotations

import os

from ansible_collections.hostmesh.sidecar.plugins.module_utils._probe import (
    binary_drift,
    file_drift,
    file_sha1,
    messages,
    net_cls_drift,
    parse_systemctl_show,
    read_path,
    redirect_drift,
    served_config_drift,
    sha1_of,
    source_needs_digest,
    unit_drift,
    user_drift,
)

FOUND_FILE = {"exists": True, "type": "file", "mode": "0644", "uid": 0, "gid": 0, "owner": "root", "group": "root",
              "sha1": "aaa", "size": 10, "mtime": 1.5, "inode": 42}
WANT_FILE = {"path": "/etc/x", "state": "file", "sha1": "aaa", "mode": "0644", "owner": "root", "group": "root"}


def test_file_in_sync():
    assert file_drift(WANT_FILE, FOUND_FILE) == []


def test_file_content_mode_owner_group_each_reported():
    found = dict(FOUND_FILE, sha1="bbb", mode="0600", uid=1337, owner="hostmesh-proxy", gid=7, group="lp")
    assert messages(file_drift(WANT_FILE, found)) == [
        "file /etc/x: content differs", "file /etc/x: mode 0600 (want 0644)",
        "file /etc/x: owner hostmesh-proxy (want root)", "file /etc/x: group lp (want root)"]


def test_file_missing_wrong_type_and_absent():
    assert messages(file_drift(WANT_FILE, {"exists": False, "type": "absent"})) == ["file /etc/x: missing"]
    assert messages(file_drift(WANT_FILE, dict(FOUND_FILE, type="link"))) == ["file /etc/x: is a link (want a file)"]
    assert messages(file_drift({"path": "/d", "state": "absent"}, dict(FOUND_FILE, type="directory"))) == [
        "path /d: present (want absent), a directory"]
    assert file_drift({"path": "/d", "state": "absent"}, {"exists": False, "type": "absent"}) == []


def test_file_ids_by_number_and_unnamed_owner():
    assert file_drift(dict(WANT_FILE, owner="0", group=0), FOUND_FILE) == []
    found = dict(FOUND_FILE, uid=4242, owner=None)
    assert messages(file_drift(WANT_FILE, found)) == ["file /etc/x: owner 4242 (want root)"]


def test_file_content_not_compared_without_sha1():
    assert file_drift(dict(WANT_FILE, sha1=None), dict(FOUND_FILE, sha1="zzz")) == []


def test_systemctl_show_blocks_and_unit_drift():
    text = ("Id=a.service\nLoadState=loaded\nUnitFileState=disabled\nActiveState=inactive\nNeedDaemonReload=yes\n\n"
            "Id=b.service\nLoadState=loaded\nUnitFileState=enabled\nActiveState=active\nNeedDaemonReload=no\n\n"
            "Id=c.service\nLoadState=not-found\nUnitFileState=\nActiveState=inactive\nNeedDaemonReload=no\n")
    units = parse_systemctl_show(text)
    assert sorted(units) == ["a.service", "b.service", "c.service"]
    assert messages(unit_drift("a.service", units["a.service"])) == [
        "unit a.service: disabled (want enabled)", "unit a.service: inactive (want active)",
        "unit a.service: changed on disk since systemd read it (daemon-reload needed)"]
    assert unit_drift("b.service", units["b.service"]) == []
    assert messages(unit_drift("c.service", units["c.service"])) == [
        "unit c.service: not loaded (unit file missing or not known to systemd)"]
    assert len(unit_drift("d.service", None)) == 1


BIN_STAT = dict(FOUND_FILE, mode="0755", size=107, mtime=3.25, inode=9)
RECORD = {"install_method": "file", "binary_path": "/usr/local/bin/envoy", "size": 107, "mtime": 3.25, "inode": 9,
          "checksum": "c", "src_size": 107, "src_mtime": 1.0}
BIN_WANT = {"path": "/usr/local/bin/envoy", "method": "file", "mode": "0755", "owner": "root", "group": "root",
            "src": "/src/envoy"}


def test_binary_quick_check():
    assert binary_drift(BIN_WANT, BIN_STAT, RECORD, {"size": 107, "mtime": 1.0}) == []
    assert messages(binary_drift(BIN_WANT, dict(BIN_STAT, inode=10), RECORD, {"size": 107, "mtime": 1.0})) == [
        "binary /usr/local/bin/envoy: not the installed one (inode changed)"]
    assert messages(binary_drift(BIN_WANT, dict(BIN_STAT, mtime=4.0), RECORD, {"size": 107, "mtime": 1.0})) == [
        "binary /usr/local/bin/envoy: not the installed one (mtime changed)"]
    assert messages(binary_drift(BIN_WANT, BIN_STAT, RECORD, {"size": 107, "mtime": 2.0})) == [
        "binary /usr/local/bin/envoy: the source /src/envoy changed since it was installed"]
    assert messages(binary_drift(BIN_WANT, dict(BIN_STAT, mode="0700"), RECORD, {"size": 107, "mtime": 1.0})) == [
        "binary /usr/local/bin/envoy: mode 0700 (want 0755)"]


def test_binary_source_copied_to_another_controller():
    # Same size, another mtime: the action digests the source; the same bytes are no drift, others are.
    moved = {"size": 107, "mtime": 2.0}
    assert source_needs_digest(RECORD, moved)
    assert not source_needs_digest(RECORD, {"size": 107, "mtime": 1.0})
    assert not source_needs_digest(RECORD, {"size": 108, "mtime": 2.0})
    assert not source_needs_digest(None, moved)
    assert binary_drift(BIN_WANT, BIN_STAT, RECORD, dict(moved, sha1="c")) == []
    assert messages(binary_drift(BIN_WANT, BIN_STAT, RECORD, dict(moved, sha1="d"))) == [
        "binary /usr/local/bin/envoy: the source /src/envoy changed since it was installed"]


def test_file_sha1_reads_in_chunks(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * ((1 << 20) + 3))
    assert file_sha1(str(path)) == sha1_of(b"x" * ((1 << 20) + 3))


def test_binary_record_missing_old_or_other_method():
    assert messages(binary_drift(BIN_WANT, BIN_STAT, None, None))[0].endswith("no install record (not installed by this role)")
    old = {"install_method": "file", "binary_path": "/usr/local/bin/envoy"}
    assert "holds no size, mtime and inode" in messages(binary_drift(BIN_WANT, BIN_STAT, old, {"size": 107, "mtime": 1.0}))[0]
    assert "installed by method url" in messages(binary_drift(BIN_WANT, BIN_STAT, dict(RECORD, install_method="url"), None))[0]
    assert messages(binary_drift(BIN_WANT, {"exists": False, "type": "absent"}, RECORD, None)) == [
        "binary /usr/local/bin/envoy: missing"]


def test_binary_url_sha256_and_path_method():
    want = dict(BIN_WANT, method="url", sha256="AB" * 32)
    record = dict(RECORD, install_method="url", sha256="ab" * 32)
    assert binary_drift(want, BIN_STAT, record) == []
    assert messages(binary_drift(want, BIN_STAT, dict(record, sha256="cd" * 32))) == [
        "binary /usr/local/bin/envoy: installed from another sha256"]
    path_want = {"path": "/usr/bin/envoy", "method": "path"}
    assert binary_drift(path_want, BIN_STAT, None) == []
    assert messages(binary_drift(path_want, dict(BIN_STAT, mode="0644"), None)) == ["binary /usr/bin/envoy: not executable"]


def test_served_config():
    assert served_config_drift("/e.yaml", "s1", {"serving_config_sha1": "s1"}) == []
    assert "hot restart due" in messages(served_config_drift("/e.yaml", "s1", {"serving_config_sha1": "s0"}))[0]
    assert "no running Envoy" in messages(served_config_drift("/e.yaml", "s1", None))[0]


def test_user_drift_from_proxy_user_diff():
    present = {"user": {"name": "p", "state": "present", "uid": 1337, "gid": 1337, "shell": "/usr/sbin/nologin"},
               "group": {"name": "p", "state": "present", "gid": 1337}}
    assert user_drift({"before": present, "after": present}) == []
    missing = {"user": {"name": "p", "state": "absent"}, "group": {"name": "p", "state": "present", "gid": 1337}}
    assert messages(user_drift({"before": missing, "after": present})) == ["user p: missing"]
    moved = {"user": dict(present["user"], uid=1400), "group": present["group"]}
    assert messages(user_drift({"before": moved, "after": present})) == ["user p: uid 1400 (want 1337)"]


def test_net_cls_drift():
    assert net_cls_drift({"changed": False, "path": "/c"}, {}) == []
    diff = {"before": {"cgroup": "absent", "path": "/c"}, "after": {"cgroup": "present", "path": "/c"}}
    assert messages(net_cls_drift({"changed": True, "path": "/c"}, diff)) == ["cgroup /c: missing"]
    diff = {"before": {"cgroup": "present", "classid": "0x1"}, "after": {"cgroup": "present", "classid": "0x2"}}
    assert messages(net_cls_drift({"changed": True, "path": "/c"}, diff)) == ["cgroup /c: differs: classid"]


def test_redirect_drift_counts_rules_and_names_the_rules_file():
    diff = [{"before_header": "ipv4 nat", "before": "-A X -j A\n-A X -j B\n", "after": "-A X -j A\n-A X -j C\n-A X -j D\n"},
            {"before_header": "ipv6 nat", "before": "-A X -j A\n", "after": "-A X -j A\n"},
            {"before_header": "/etc/hostmesh/redirect.json", "before": "{}", "after": "{\"a\": 1}"}]
    assert messages(redirect_drift(diff, "/etc/hostmesh/redirect.json")) == [
        "rules: 2 to add, 1 to delete", "file /etc/hostmesh/redirect.json: content differs (the rules file)"]
    assert redirect_drift(diff[1:2], None) == []


def test_read_path(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"hello")
    os.chmod(target, 0o640)
    found = read_path(str(target))
    assert found["type"] == "file" and found["mode"] == "0640" and found["sha1"] == sha1_of(b"hello")
    assert found["size"] == 5 and found["inode"] == os.stat(target).st_ino and found["mtime"] == os.stat(target).st_mtime
    assert "sha1" not in read_path(str(target), digest=False)
    assert read_path(str(tmp_path))["type"] == "directory"
    os.symlink(target, tmp_path / "l")
    assert read_path(str(tmp_path / "l"))["type"] == "link"
    assert read_path(str(tmp_path / "none")) == {"exists": False, "type": "absent"}
