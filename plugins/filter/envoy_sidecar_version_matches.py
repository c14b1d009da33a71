# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Whether an Envoy release is the pinned one: the only version check of the envoy_sidecar role."""

from __future__ import annotations


DOCUMENTATION = r"""
name: envoy_sidecar_version_matches
short_description: Whether an Envoy release is the one the user pinned
version_added: 0.2.0
description:
  - True when nothing is pinned (an empty pin), or when the release starts with the pinned components;
    V(1.40) matches C(1.40.0) and C(1.40.3) but not C(1.4.0); V(1.40.0) matches only C(1.40.0).
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The release of the binary, as P(hostmesh.sidecar.envoy_sidecar_binary_version#filter) returns it.
    type: str
    required: true
  pinned:
    description: The pinned release (C(envoy_sidecar_version)); empty for none.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The installed Envoy is the pinned one
  ansible.builtin.assert:
    that:
      - found_version | hostmesh.sidecar.envoy_sidecar_version_matches(envoy_sidecar_version)
"""

RETURN = r"""
_value:
  description: Whether the release matches the pin.
  type: bool
"""


def version_matches(found, pinned) -> bool:
    """Whether the binary's version ``found`` is the ``pinned`` one.

    Nothing pinned matches any version. A pin names whole components, so ``1.40`` matches
    1.40.0 and 1.40.3 but not 1.4.0 or 1.400.0.
    """
    pinned_parts = str(pinned if pinned is not None else "").strip().split(".")
    if pinned_parts == [""]:
        return True
    found_parts = str(found or "").strip().split(".")
    return found_parts[:len(pinned_parts)] == pinned_parts


class FilterModule:
    def filters(self):
        return {"envoy_sidecar_version_matches": version_matches}
