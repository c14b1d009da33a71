# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The mesh as one host sees it, planned by plugins/module_utils/_mesh.py from the inventory."""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh import (
    MEMBER_VARS,
    MESH_VARS,
    MeshError,
    is_member,
    mesh_model as plan,
)

DOCUMENTATION = r"""
name: mesh_model
short_description: The mesh as one host sees it (identity, inbound policy, peers, services), from the inventory
version_added: 0.4.0
description:
  - Members are the hosts of the group C(hostmesh_mesh_group) (read from this host's variables, default C(all))
    whose C(hostmesh_mesh) is true. A host that is not a member gets C(member=false), C(self=null) and empty lists,
    and never fails because of the mesh.
  - A member's address is C(hostmesh_mesh_address), else C(ansible_host), else its inventory name when that is an
    IP address (IPv4 or IPv6). Its identity is C(spiffe://<hostmesh_trust_domain>/host/<inventory_hostname>).
  - Per entry of this host's C(hostmesh_workload_ports), the keys C(mesh_mode) (default C(hostmesh_mesh_mode),
    default V(permissive)), C(server_first) (default false) and C(allow) (inventory group or host names; default
    every member) become the inbound policy; C(allow) resolves to the identities of the members it names.
  - Services come from this host's C(hostmesh_mesh_services) (normally in C(group_vars/all)); each gets a stable
    VIP from C(hostmesh_mesh_vip_range) unless it sets one, and the name C(<name>.<hostmesh_mesh_domain>).
  - Fails naming every bad variable and the host it is set on; the checks are listed in the collection's
    C(docs/mesh.md).
author:
  - hostmesh.sidecar contributors (@hostmesh)
options:
  _input:
    description: Ansible's C(hostvars).
    type: dict
    required: true
  groups:
    description: Ansible's C(groups).
    type: dict
    required: true
  inventory_hostname:
    description: The host the model is for (C(inventory_hostname)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Plan this host's view of the mesh
  ansible.builtin.set_fact:
    hostmesh_mesh_model: "{{ hostvars | hostmesh.sidecar.mesh_model(groups, inventory_hostname) }}"

- name: The service names for /etc/hosts
  ansible.builtin.blockinfile:
    path: /etc/hosts
    marker: "# {mark} hostmesh services"
    block: "{{ hostmesh_mesh_model.hosts_block }}"
  when: hostmesh_mesh_model.member
"""

RETURN = r"""
_value:
  description: The mesh model.
  type: dict
  contains:
    member:
      description: Whether this host is a mesh member.
      type: bool
    trust_domain:
      description: C(hostmesh_trust_domain).
      type: str
    domain:
      description: C(hostmesh_mesh_domain), under which services are named.
      type: str
    self:
      description: This host's C(name), C(identity) and C(address); null for a non-member.
      type: dict
    members:
      description: Every member (this host too) as C(name), C(identity), C(address), sorted by name.
      type: list
      elements: dict
    inbound_ports:
      description:
        - This host's workload ports, sorted by port, each with C(port), C(mode) (V(permissive) or V(strict)),
          C(server_first), C(allow_all_members) and C(allowed) (the identities allowed to call, sorted).
      type: list
      elements: dict
    peers:
      description:
        - The other members, sorted by name, with C(name), C(identity), C(address) and C(ports), their workload
          ports that take mesh mTLS (the ones not server_first).
      type: list
      elements: dict
    services:
      description:
        - Sorted by name, each with C(name), C(fqdn), C(vip), C(port) and C(members) (C(name), C(identity),
          C(address), sorted by name).
      type: list
      elements: dict
    hosts_block:
      description: Lines C(<vip> <fqdn> <name>) for /etc/hosts, one per service in name order; empty without services.
      type: str
"""


def mesh_model(hostvars, groups, inventory_hostname) -> dict:
    plain_groups = {str(name): [str(host) for host in hosts] for name, hosts in _plain(groups).items()}
    # hostvars is lazy: each host's variables are templated only when read, and some of them (connection
    # settings, vaulted secrets, variables of other plays) may fail to template or cost a lookup. Copy out only
    # the variables the model reads, once, as plain Python values, so _mesh sees ordinary dicts and strings:
    # hostmesh_mesh of every host, the rest only of the members, the mesh settings of this host.
    hosts = set(plain_groups.get("all", [])) | {str(inventory_hostname)}
    plain_hostvars = {host: _read(hostvars, host, ("hostmesh_mesh",)) for host in hosts}
    for host, host_vars in plain_hostvars.items():
        if is_member(host_vars):
            host_vars.update(_read(hostvars, host, MEMBER_VARS))
    plain_hostvars[str(inventory_hostname)].update(_read(hostvars, inventory_hostname, MESH_VARS))
    try:
        return plan(plain_hostvars, plain_groups, str(inventory_hostname))
    except MeshError as exc:
        raise AnsibleFilterError(str(exc)) from None


def _read(hostvars, host, names) -> dict:
    try:
        host_vars = hostvars[host]
    except KeyError:
        return {}
    return {name: _plain(host_vars[name]) for name in names if name in host_vars}


def _plain(value):
    """A deep copy made of dict, list, str, int, float, bool and None (no Ansible string or mapping types)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    return value


class FilterModule:
    def filters(self):
        return {"mesh_model": mesh_model}
