#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: traffic_redirect
short_description: Redirect a host's TCP through a local proxy with iptables
version_added: 0.1.0
description:
  - Manages the C(nat) table rules (IPv4 with iptables, IPv6 with ip6tables) that transparently send a host's inbound
    and outbound TCP through a local proxy such as an Envoy sidecar, the way Istio's sidecar init does in Kubernetes.
  - Inbound TCP arriving in C(PREROUTING) is redirected to O(inbound_port); outbound TCP leaving through C(OUTPUT) is
    redirected to O(outbound_port). The proxy's own connections escape redirection by the O(bypass) mode.
  - The module owns only the chains C(<prefix>_INBOUND), C(<prefix>_IN_REDIRECT), C(<prefix>_OUTPUT) and
    C(<prefix>_REDIRECT) plus the jump rules it adds to C(PREROUTING) and C(OUTPUT), which carry the comment
    C(hostmesh:<prefix>). Rules of other tools (Docker, firewalld, kube-proxy, the admin's own) are never flushed,
    rewritten or reordered.
  - Each IP family is applied as one C(iptables-restore --noflush) transaction. Whether anything changes is decided by
    comparing the live rules, read with the variant's C(iptables-save) and canonicalised, with the desired rules; a run
    that finds nothing to change only reads.
  - Traffic to loopback addresses is never captured, a workload calling its own host over C(lo) is not captured, and
    the proxy calling its own host's address is sent to the inbound listener instead of looping.
  - Does not use python-iptables, which only reaches the legacy tables and takes no xtables lock.
author:
  - hostmesh.sidecar contributors (@hostmesh)
extends_documentation_fragment:
  - hostmesh.sidecar._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the owned rules of each IP family before and after, in C(iptables-save) form, and the rules file.
  platform:
    support: full
    platforms: linux
options:
  state:
    description:
      - V(present) makes the owned chains and jump rules match the options.
      - V(absent) removes every owned chain and jump rule (and O(rules_file) when given), and nothing else.
      - With O(rules_file), V(absent) also deletes a C(nat) table that an earlier V(present) created (it did not exist
        before), if it now holds nothing but its built-in chains with policy C(ACCEPT). Only nftables tables can be
        deleted (with the C(nft) command); a legacy (x_tables) table stays until the kernel module is unloaded.
    type: str
    choices: [present, absent]
    default: present
  inbound_port:
    description: Port of the proxy's inbound listener; inbound TCP is redirected here.
    type: int
    default: 15006
  outbound_port:
    description:
      - Port of the proxy's outbound listener; outbound TCP is redirected here.
      - May equal O(inbound_port), as in a single-port design.
    type: int
    default: 15001
  capture_inbound:
    description: Whether inbound TCP is redirected to O(inbound_port).
    type: bool
    default: true
  capture_outbound:
    description: Whether outbound TCP is redirected to O(outbound_port).
    type: bool
    default: true
  inbound_ports:
    description:
      - Destination ports whose inbound TCP is captured. Empty means all ports.
      - Each item is a port (V(8080)) or an inclusive range (V(8000-8090) or V(8000:8090)).
    type: list
    elements: str
    default: []
  inbound_exclude_ports:
    description:
      - Destination ports whose inbound TCP is never captured. The default keeps SSH out of the proxy.
      - Ports and ranges as for O(inbound_ports).
    type: list
    elements: str
    default: ['22']
  outbound_exclude_ports:
    description: Destination ports whose outbound TCP is never captured. Ports and ranges as for O(inbound_ports).
    type: list
    elements: str
    default: []
  outbound_include_cidrs:
    description:
      - Destination networks whose outbound TCP is captured. Empty means all destinations.
      - IPv4 and IPv6 networks may be mixed; each family's rules use the networks of that family.
    type: list
    elements: str
    default: []
  outbound_exclude_cidrs:
    description: Destination networks whose outbound TCP is never captured. IPv4 and IPv6 may be mixed.
    type: list
    elements: str
    default: []
  bypass:
    description:
      - How the proxy's own traffic escapes redirection.
      - V(uid) matches the proxy's user (C(-m owner ! --uid-owner)); V(gid) its group (C(--gid-owner)).
      - V(mark) matches sockets the proxy marks with C(SO_MARK) (C(-m mark ! --mark)).
      - V(net_cls) matches the net_cls cgroup classid the proxy runs in (C(-m cgroup ! --cgroup)).
      - V(cgroup_path) matches the proxy's cgroup v2 path (C(-m cgroup ! --path)), such as its systemd unit's cgroup.
        The kernel binds such a rule to the cgroup when it is inserted, so the rule carries the cgroup's id in a comment
        and is re-inserted when the cgroup has been re-created (a unit restart); the cgroup must exist when applying.
    type: str
    choices: [uid, gid, mark, net_cls, cgroup_path]
    default: uid
  proxy_uid:
    description: The proxy's UID, used by O(bypass=uid). Must not be 0.
    type: int
    default: 1337
  proxy_gid:
    description: The proxy's GID. Required by O(bypass=gid); must not be 0.
    type: int
  proxy_mark:
    description:
      - The firewall mark the proxy sets on its sockets, used by O(bypass=mark). Hex or decimal, with an optional mask
        (V(0x10/0xff)). Must not be 0.
    type: str
    default: '0x1'
  proxy_classid:
    description: The net_cls classid of the proxy's cgroup (V(0x100001) is 10:1), used by O(bypass=net_cls). Hex or decimal.
    type: str
    default: '0x100001'
  proxy_cgroup_path:
    description:
      - The proxy's cgroup v2 path relative to the cgroup2 root, for example V(system.slice/hostmesh-envoy.service).
      - Required by O(bypass=cgroup_path).
    type: str
  exclude_uids:
    description: UIDs of other local processes (an agent, a resolver) whose outbound traffic is never captured.
    type: list
    elements: int
    default: []
  exclude_gids:
    description: GIDs of other local processes whose outbound traffic is never captured.
    type: list
    elements: int
    default: []
  ip_families:
    description:
      - The IP families to manage.
      - By default IPv4, plus IPv6 where the host has IPv6 enabled and ip6tables installed; a warning says when IPv6 is
        skipped.
    type: list
    elements: str
    choices: [ipv4, ipv6]
  backend:
    description:
      - The iptables variant to write to.
      - V(auto) uses the variant that already holds these chains, else the legacy variant when only it holds rules.
        When neither variant holds rules for a family, it uses the variant of the host's C(iptables) (or
        C(ip6tables)) command as the alternatives system configures it, else the variant chosen for the other family,
        else nft. It warns when the other variant holds rules in the same hooks.
      - Owned chains found in the variant not chosen are removed, so the rules never exist twice.
    type: str
    choices: [auto, nft, legacy]
    default: auto
  chain_prefix:
    description: Prefix of the owned chain names and of the jump rule comment. At most 16 characters.
    type: str
    default: HOSTMESH
  jump_position:
    description:
      - Where a missing jump rule is added in C(PREROUTING) and C(OUTPUT). V(append) puts it after other tools' rules
        (so, for example, Docker's port publishing keeps working); V(insert) puts it first.
      - A jump rule that already exists is left where it is.
    type: str
    choices: [append, insert]
    default: append
  wait:
    description: Seconds to wait for the xtables lock (legacy variant only; iptables-nft has no such lock).
    type: int
    default: 5
  rules_file:
    description:
      - Where the applied configuration and rules are kept (JSON) so that C(hostmesh-redirect.py apply --config FILE)
        can restore them at boot. Removed by O(state=absent).
      - It also records the C(nat) tables the module created, so that O(state=absent) can delete them again.
    type: path
notes:
  - Needs root (CAP_NET_ADMIN), the iptables package and, for IPv6, ip6tables.
seealso:
  - module: hostmesh.sidecar.proxy_user
  - module: hostmesh.sidecar.net_cls
"""

EXAMPLES = r"""
- name: Redirect all TCP through an Envoy sidecar running as UID 1337
  hostmesh.sidecar.traffic_redirect:
    state: present

- name: Single-port design, proxy identified by its socket mark, SSH and the node exporter left alone
  hostmesh.sidecar.traffic_redirect:
    inbound_port: 5001
    outbound_port: 5001
    bypass: mark
    proxy_mark: "0x1"
    inbound_exclude_ports: [22, 9100]
    outbound_exclude_cidrs: [169.254.169.254/32]
    exclude_uids: [998]

- name: Proxy in its systemd unit's cgroup, only capture traffic to the mesh network, keep rules for boot
  hostmesh.sidecar.traffic_redirect:
    bypass: cgroup_path
    proxy_cgroup_path: system.slice/hostmesh-envoy.service
    outbound_include_cidrs: [10.20.0.0/16, fd00:20::/48]
    rules_file: /etc/hostmesh/redirect.json

- name: Remove every rule and chain the module added
  hostmesh.sidecar.traffic_redirect:
    state: absent
"""

RETURN = r"""
variant:
  description: The iptables variant written to (V(nft) or V(legacy)); comma-separated if the families differ.
  returned: always
  type: str
  sample: nft
variants:
  description: The variant used per IP family.
  returned: always
  type: dict
  sample: {"ipv4": "nft", "ipv6": "nft"}
families:
  description: The IP families handled.
  returned: always
  type: list
  elements: str
  sample: [ipv4, ipv6]
rules:
  description: The desired owned objects per family, as C(iptables-save) lines (empty when O(state=absent)).
  returned: always
  type: dict
  sample:
    ipv4:
      - "*nat"
      - ":HOSTMESH_INBOUND - [0:0]"
      - ":HOSTMESH_IN_REDIRECT - [0:0]"
      - "-A PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment \"hostmesh:HOSTMESH\" -j HOSTMESH_INBOUND"
      - "-A HOSTMESH_INBOUND -p tcp -m multiport --dports 22 -j RETURN"
      - "-A HOSTMESH_INBOUND -p tcp -j HOSTMESH_IN_REDIRECT"
      - "-A HOSTMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"
      - "COMMIT"
restore_input:
  description: Per family, the C(iptables-restore --noflush) input applied (or, in check mode, that would be applied).
  returned: always
  type: dict
chains:
  description: The names of the chains the module owns.
  returned: always
  type: list
  elements: str
  sample: [HOSTMESH_INBOUND, HOSTMESH_IN_REDIRECT, HOSTMESH_OUTPUT, HOSTMESH_REDIRECT]
tables_removed:
  description:
    - Per IP family, the variant whose C(nat) table was deleted by O(state=absent) because an earlier apply had
      created it (recorded in O(rules_file)) and it held nothing else any more. Only V(nft) tables can be deleted.
    - The deletion talks nfnetlink directly (no C(nft) command is needed) as one transaction that the kernel refuses
      when anything is in the table; a table another tool added anything to meanwhile is kept, with a warning, and
      not listed here.
  returned: always
  type: dict
  sample: {"ipv6": "nft"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import LC_ENV, HostmeshError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._netfilter import (
    RedirectManager,
    argument_spec,
    config_from_params,
    required_if,
)


def main() -> None:
    # The options are declared once, in _netfilter.OPTIONS; DOCUMENTATION above
    # is kept equal to them by a unit test (ansible-doc reads it as text).
    module = AnsibleModule(argument_spec=argument_spec(), required_if=required_if(), supports_check_mode=True)

    def run(argv, data=None):
        # binary_data keeps run_command from appending a newline of its own;
        # LC_ALL=C because error text is passed on to the user verbatim.
        return module.run_command(argv, data=data, binary_data=data is not None, environ_update=LC_ENV)

    try:
        config = config_from_params(module.params)
        result, diff = RedirectManager(config, run, check_mode=module.check_mode, warn=module.warn).run()
    except HostmeshError as exc:
        module.fail_json(**exc.fail_json_args())
    else:
        if module._diff:
            result["diff"] = diff
        module.exit_json(**result)


if __name__ == "__main__":
    main()
