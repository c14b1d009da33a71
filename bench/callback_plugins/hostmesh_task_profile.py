# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where a playbook run spends its time, for bench/bench_fleet.py (not part of the collection's API).

ansible-core has no profile_tasks (that one is in ansible.posix, which the fleet benchmark does not
install). This aggregate callback writes one JSON document when the run ends: per task (includes
and handlers too) its wall time from its start to the start of the next task, which also counts
the controller's work between tasks (templating, loading included files), and each host's time
from the task's start to its result, with the result's status.

Enable it with:
  ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins ANSIBLE_CALLBACKS_ENABLED=hostmesh_task_profile
  HOSTMESH_TASK_PROFILE=/path/to/profile.json
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: hostmesh_task_profile
type: aggregate
short_description: Write the wall time of every task and every host's share of it to a JSON file
description:
  - Used by the fleet benchmark C(bench/bench_fleet.py) of hostmesh.sidecar.
requirements:
  - enable in configuration
options:
  output:
    description: Path of the JSON file written at the end of the run.
    type: path
    required: true
    env:
      - name: HOSTMESH_TASK_PROFILE
"""

import json
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Records task boundaries and per-host results; writes them out at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hostmesh_task_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._started = time.monotonic()
        self._tasks = []
        self._current = None

    def _close_current(self, now):
        if self._current is not None:
            self._current["wall"] = now - self._current.pop("start")
            self._tasks.append(self._current)
            self._current = None

    def _start(self, task, kind):
        now = time.monotonic()
        self._close_current(now)
        role = getattr(task, "_role", None)
        self._current = {
            "kind": kind,
            "name": task.get_name(),
            "action": task.action,
            "role": role.get_name() if role is not None else "",
            "path": task.get_path() or "",
            "start": now,
            "start_offset": now - self._started,
            "hosts": {},
        }

    def _result(self, result, status):
        if self._current is None:
            return
        host = result._host.get_name()  # pylint: disable=protected-access
        if status == "ok" and result._result.get("changed", False):  # pylint: disable=protected-access
            status = "changed"
        self._current["hosts"][host] = {
            "status": status,
            "seconds": time.monotonic() - self._current["start"],
        }

    def v2_playbook_on_play_start(self, play):
        self._close_current(time.monotonic())

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task, "task")

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task, "handler")

    def v2_runner_on_ok(self, result):
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        now = time.monotonic()
        self._close_current(now)
        document = {"seconds_since_callback_load": now - self._started, "tasks": self._tasks}
        with open(self.get_option("output"), "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1)
