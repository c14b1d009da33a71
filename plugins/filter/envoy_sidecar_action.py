# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Decisions of the envoy_sidecar role, made here so they have unit tests instead of YAML expressions."""

from __future__ import annotations

import base64
import binascii
import json

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.module_utils._probe import (
    served_config_sha1 as served_config_sha1_of_state,
)

DOCUMENTATION = r"""
name: envoy_sidecar_action
short_description: How the running Envoy sidecar takes up what the envoy_sidecar role changed
version_added: 0.2.0
description:
  - V(none) when systemd is not managed here (the start task was skipped) or nothing needs applying.
  - V(start) when the run started the sidecar, which came up with everything new.
  - V(restart) when the unit, the Envoy binary or the hot-restart supervisor changed; only a full restart
    (which drops the connections in flight) takes them up. The role's handler does it.
  - V(hot_restart) when the bootstrap the running Envoy serves (the checksum its supervisor recorded) is not
    the one the role rendered (the one just rendered, or one whose reload an earlier, interrupted run never
    did). A change of the file on disk alone (drift that the template puts back) is not one.
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The registered results of the tasks whose change needs a full restart (unit, supervisor, binary).
    type: list
    elements: dict
    required: true
  started:
    description: The registered result of the task that starts the unit (skipped when systemd is not managed).
    type: dict
    required: true
  supervisor_state:
    description:
      - The registered C(ansible.builtin.slurp) result of the supervisor's state file (C(content) is base64 JSON),
        or the decoded state. Missing content (no state file) means the served bootstrap is unknown.
    type: raw
    required: true
  config_sha1:
    description: SHA-1 of the bootstrap the role rendered, or would render in check mode.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Decide how the sidecar takes up the changes
  ansible.builtin.set_fact:
    sidecar_action: >-
      {{ [unit_result, binary_result] | hostmesh.sidecar.envoy_sidecar_action(started, state, config.checksum) }}
"""

RETURN = r"""
_value:
  description: One of V(none), V(start), V(restart), V(hot_restart).
  type: str
"""

NONE = "none"
START = "start"
RESTART = "restart"
HOT_RESTART = "hot_restart"


def is_changed(result) -> bool:
    """Like Ansible's ``changed`` test: the result, or one of its loop results, changed."""
    if not isinstance(result, dict):
        return False
    if result.get("changed"):
        return True
    return any(is_changed(item) for item in result.get("results") or [])


def served_config_sha1(supervisor_state) -> str:
    """The checksum of the bootstrap the serving epoch started with, '' when not known."""
    state = supervisor_state
    if isinstance(state, dict) and "content" in state:
        try:
            state = json.loads(base64.b64decode(state["content"]).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise AnsibleFilterError("the hot-restart supervisor's state file is not JSON: %s" % exc)
    return served_config_sha1_of_state(state)


def sidecar_action(restart_causes, started, supervisor_state, config_sha1) -> str:
    """none, start, restart or hot_restart: see DOCUMENTATION."""
    if not isinstance(started, dict) or started.get("skipped"):
        return NONE
    if is_changed(started):
        return START
    if any(is_changed(result) for result in restart_causes or []):
        return RESTART
    if served_config_sha1(supervisor_state) != str(config_sha1 or "").strip():
        return HOT_RESTART
    return NONE


class FilterModule:
    def filters(self):
        return {
            "envoy_sidecar_action": sidecar_action,
        }
