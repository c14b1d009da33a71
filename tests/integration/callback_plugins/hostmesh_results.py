# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Test-harness callback: ansible-core 2.19 ships no JSON callback and
# ansible.posix is not installed, so the integration harness records task
# results itself. The layout follows ansible.posix.json (plays -> tasks ->
# hosts) so tests read the same structure users know. It is an aggregate
# callback: the human-readable default output stays on stdout for debugging.

from __future__ import annotations

DOCUMENTATION = r"""
name: hostmesh_results
type: aggregate
short_description: Write every task result as JSON to the file named by E(HOSTMESH_RESULTS_FILE)
description:
  - Used by the hostmesh.sidecar integration test harness only.
options: {}
"""

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hostmesh_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plays = []
        self._tasks_by_uuid = {}

    def _current_tasks(self):
        if not self._plays:
            self._plays.append({"play": {"name": "", "id": ""}, "tasks": []})
        return self._plays[-1]["tasks"]

    def v2_playbook_on_play_start(self, play):
        self._plays.append({"play": {"name": play.get_name(), "id": str(play._uuid)}, "tasks": []})

    def _start_task(self, task, is_handler):
        record = {
            "task": {
                "name": task.get_name(),
                "plain_name": task.name or "",
                "id": str(task._uuid),
                "action": task.action,
                "path": task.get_path() or "",
                "handler": is_handler,
            },
            "hosts": {},
        }
        self._current_tasks().append(record)
        self._tasks_by_uuid[str(task._uuid)] = record

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start_task(task, False)

    def v2_playbook_on_handler_task_start(self, task):
        self._start_task(task, True)

    def _record(self, result, status):
        record = self._tasks_by_uuid.get(str(result.task._uuid))
        if record is None:
            self._start_task(result.task, False)
            record = self._tasks_by_uuid[str(result.task._uuid)]
        data = dict(result.result)
        data.setdefault("changed", False)
        data["hostmesh_status"] = status
        record["hosts"][result.host.get_name()] = data

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        path = os.environ.get("HOSTMESH_RESULTS_FILE")
        if not path:
            return
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"plays": self._plays, "stats": summary}, handle, default=repr, indent=1)
