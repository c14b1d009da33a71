# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A host's mesh identity (SPIFFE ID), checked by plugins/module_utils/_mesh.py."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh import MeshError, spiffe_id

DOCUMENTATION = r"""
name: mesh_spiffe_id
short_description: A host's mesh identity, spiffe://<trust domain>/host/<hostname>
version_added: 0.4.0
description:
  - The SPIFFE ID a mesh member's certificate carries as its one URI SAN, and that peers and policy match.
  - Fails with a message naming C(hostmesh_trust_domain) when the trust domain is not a SPIFFE trust domain
    (lowercase letters, digits, C(.), C(-), C(_); no scheme, port or path; not empty; at most 255 characters),
    and naming C(inventory_hostname) when the host name is not usable as a path segment
    (letters, digits, C(.), C(-), C(_); not C(.) or C(..)).
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: The trust domain (C(hostmesh_trust_domain)).
    type: str
    required: true
  hostname:
    description: The host's inventory name (C(inventory_hostname)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: This host's identity
  ansible.builtin.debug:
    msg: "{{ 'hostmesh.local' | hostmesh.sidecar.mesh_spiffe_id(inventory_hostname) }}"  # spiffe://hostmesh.local/host/alpha
"""

RETURN = r"""
_value:
  description: The SPIFFE ID.
  type: str
"""


def mesh_spiffe_id(trust_domain, hostname) -> str:
    try:
        return spiffe_id(_plain(trust_domain), _plain(hostname))
    except MeshError as exc:
        raise AnsibleFilterError(str(exc)) from None


def _plain(value):
    # Ansible hands templated strings as str subclasses (AnsibleUnsafeText, tagged strings): compare them as str.
    return str(value) if isinstance(value, str) else value


class FilterModule:
    def filters(self):
        return {"mesh_spiffe_id": mesh_spiffe_id}
