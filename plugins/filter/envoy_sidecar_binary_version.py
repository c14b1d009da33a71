# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Which Envoy release a binary is, read from its own output."""

from __future__ import annotations

import re

DOCUMENTATION = r"""
name: envoy_sidecar_binary_version
short_description: The Envoy release named by the output of C(envoy --version)
version_added: 0.2.0
description:
  - >-
    Reads the C(X.Y.Z) release from the output of C(envoy --version) (for example
    C(envoy  version: 5a8a9d6/1.40.0/Clean/RELEASE/BoringSSL)), so nobody has to type the version of the binary.
  - An empty string when the output names no release.
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The standard output of C(envoy --version).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Show the version of the installed Envoy
  ansible.builtin.debug:
    msg: "{{ envoy_version_output.stdout | hostmesh.sidecar.envoy_sidecar_binary_version }}"  # 1.40.0
"""

RETURN = r"""
_value:
  description: The release, for example V(1.40.0), or an empty string.
  type: str
"""

# "envoy  version: 5a8a9d6.../1.40.0/Clean/RELEASE/BoringSSL"
_VERSION_RE = re.compile(r"/([0-9]+\.[0-9]+\.[0-9]+)/")


def binary_version(output) -> str:
    """The X.Y.Z release in the output of ``envoy --version``, '' when there is none."""
    found = _VERSION_RE.search(str(output or ""))
    return found.group(1) if found else ""


class FilterModule:
    def filters(self):
        return {"envoy_sidecar_binary_version": binary_version}
