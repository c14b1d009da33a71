# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the sidecar_probe action's controller side: merging manifests, the module's options, the comparison."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.hostmesh.sidecar.plugins.action.sidecar_probe import compare, merge_manifests, module_args

TP = {"role": "transparent_proxy", "state": "present", "units": ["r.service"],
      "user": {"name": "p", "group": "p", "uid": 1337, "gid": 1337, "manage": True},
      "redirect": {"bypass": "uid"},
      "files": [{"path": "/lib/hm", "state": "directory", "owner": "root", "group": "root", "mode": "0755"},
                {"path": "/lib/hm/a.py", "state": "file", "src": "/c/a.py", "mode": "0644"},
                {"path": "/old", "state": "absent"}]}
ES = {"role": "envoy_sidecar", "state": "present", "units": ["e.service", "r.service"],
      "binary": {"path": "/bin/envoy", "method": "file", "record": "/etc/rec.json", "src": "/c/envoy", "mode": "0755"},
      "served_config": {"config": "/etc/e.yaml", "template": "/c/e.j2", "state_file": "/run/s.json"},
      "files": [{"path": "/lib/hm", "state": "directory", "owner": "root", "group": "root", "mode": "0755"},
                {"path": "/etc/e.yaml", "state": "file", "template": "/c/e.j2", "mode": "0640"}]}

DIR = {"exists": True, "type": "directory", "mode": "0755", "uid": 0, "gid": 0, "owner": "root", "group": "root"}
FILE = dict(DIR, type="file", mode="0644")
SHA = {"/c/a.py": "a1", "/c/e.j2": "e1"}


def observed(**changes):
    found = {"paths": {"/lib/hm": DIR, "/lib/hm/a.py": dict(FILE, sha1="a1"), "/old": {"exists": False, "type": "absent"},
                       "/etc/e.yaml": dict(FILE, mode="0640", sha1="e1")},
             "units": {u: {"Id": u, "LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": "active",
                           "NeedDaemonReload": "no"} for u in ("e.service", "r.service")},
             "binary": dict(FILE, mode="0755", size=7, mtime=2.0, inode=3),
             "install_record": {"install_method": "file", "binary_path": "/bin/envoy", "size": 7, "mtime": 2.0,
                                "inode": 3, "src_size": 7, "src_mtime": 1.0},
             "supervisor_state": {"serving_config_sha1": "e1"}}
    found.update(changes)
    return found


def sha1(want):
    return SHA.get(want.get("template") or want.get("src"))


def test_merge_and_module_args():
    plan = merge_manifests([TP, ES])
    assert list(plan["files"]) == ["/lib/hm", "/lib/hm/a.py", "/old", "/etc/e.yaml"]
    assert len(plan["files"]["/lib/hm"]) == 2
    assert plan["units"] == ["r.service", "e.service"]
    args = module_args(plan)
    assert args["paths"] == [{"path": "/lib/hm", "digest": False}, {"path": "/lib/hm/a.py", "digest": True},
                             {"path": "/old", "digest": False}, {"path": "/etc/e.yaml", "digest": True}]
    assert args["binary"] == "/bin/envoy" and args["install_record"] == "/etc/rec.json"
    assert args["supervisor_state"] == "/run/s.json" and args["user"]["uid"] == 1337 and "net_cls" not in args


def test_converged_host_has_no_drift():
    assert compare(merge_manifests([TP, ES]), observed(), sha1, {"size": 7, "mtime": 1.0}) == []


def test_each_kind_of_drift_is_reported_once():
    plan = merge_manifests([TP, ES])
    found = observed()
    found["paths"]["/lib/hm"] = dict(DIR, mode="0700")
    found["paths"]["/etc/e.yaml"] = dict(FILE, mode="0640", sha1="edited")
    found["units"]["r.service"] = dict(found["units"]["r.service"], UnitFileState="disabled")
    found["binary"] = dict(found["binary"], inode=4)
    found["supervisor_state"] = {"serving_config_sha1": "e0"}
    msgs = [item["msg"] for item in compare(plan, found, sha1, {"size": 7, "mtime": 1.0})]
    assert msgs == ["directory /lib/hm: mode 0700 (want 0755)", "file /etc/e.yaml: content differs",
                    "unit r.service: disabled (want enabled)",
                    "binary /bin/envoy: not the installed one (inode changed)",
                    "config /etc/e.yaml: the running Envoy serves another configuration (hot restart due)"]


def test_render_failure_and_unprobed_role_are_drift():
    def failing(want):
        if want.get("template"):
            raise ValueError("'x' is undefined")
        return sha1(want)
    msgs = [item["msg"] for item in compare(merge_manifests([TP, ES]), observed(), failing, {"size": 7, "mtime": 1.0})]
    assert msgs == ["file /etc/e.yaml: cannot be rendered on the controller: 'x' is undefined"]
    msgs = [item["msg"] for item in compare(merge_manifests([TP, dict(ES, state="absent")]), observed(), sha1)]
    assert msgs == ["role envoy_sidecar: state is not present: not probed, the converge runs"]


def test_malformed_manifests_fail():
    with pytest.raises(AnsibleActionFail):
        merge_manifests([{"files": []}])
    with pytest.raises(AnsibleActionFail):
        merge_manifests([dict(TP, files=[{"path": "relative", "state": "file"}])])
