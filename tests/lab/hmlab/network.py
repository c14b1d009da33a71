# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Network namespaces: the lab's bridge namespace and each host's namespace, re-created at every boot."""

from __future__ import annotations

import ipaddress
import os
import subprocess

from .common import DEFAULT_SUBNET, LabError, all_pids, kill_and_reap, run
from .state import host_netns, lab_netns, mac_address, netns_path


# network


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def netns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(netns_path(name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def caller_netns() -> tuple[int, int]:
    st = os.stat("/proc/self/ns/net")
    return (st.st_dev, st.st_ino)


def pids_in_netns(name: str) -> list[int]:
    ident = netns_inode(name)
    if ident is None:
        return []
    found = []
    for pid in all_pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            found.append(pid)
    return found


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return run(argv, check=check)


def ensure_lab_network(lab: str, subnet: str = DEFAULT_SUBNET) -> bool:
    """Create the lab netns with its bridge and the controller address; True if created.

    Reuses an existing lab netns (e.g. one `exec` made for a controller that
    must live in it before the hosts exist) when its bridge has the same subnet.
    """
    net = ipaddress.ip_network(subnet)
    controller = f"{net.network_address + 1}/{net.prefixlen}"
    name = lab_netns(lab)
    if netns_exists(name):
        shown = ip("-4", "-o", "addr", "show", "dev", "br0", netns=name, check=False).stdout
        if controller not in shown.split():
            raise LabError(f"netns {name} exists without the bridge address {controller}"
                           f" (another subnet?): run `down --lab {lab}` first")
        return False
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", netns=name)
        ip("link", "add", "br0", "address", mac_address(lab, 0), "type", "bridge", netns=name)
        ip("addr", "add", controller, "dev", "br0", netns=name)
        ip("link", "set", "br0", "up", netns=name)
    except BaseException:
        ip("netns", "del", name, check=False)
        raise
    return True


def reset_host_network(lab: str, host: str, info: dict, subnet: str, subnet6: str | None) -> None:
    """A fresh network namespace for one boot of a host: like a machine that
    powers on, it starts with no iptables rules, conntrack entries or sockets."""
    name = host_netns(lab, host)
    if netns_exists(name):
        kill_and_reap(pids_in_netns(name))
        ip("netns", "del", name)
    labns = lab_netns(lab)
    port = info["bridge_port"]
    ip("link", "del", port, netns=labns, check=False)
    net = ipaddress.ip_network(subnet)
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)
    ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "address", info["mac"],
       "netns", name, netns=labns)
    ip("link", "set", port, "master", "br0", "up", netns=labns)
    ip("addr", "add", f"{info['address']}/{net.prefixlen}", "dev", "eth0", netns=name)
    if subnet6 and info.get("address6"):
        net6 = ipaddress.ip_network(subnet6)
        ip("addr", "add", f"{info['address6']}/{net6.prefixlen}", "dev", "eth0", "nodad", netns=name)
    ip("link", "set", "eth0", "up", netns=name)
    ip("route", "add", "default", "via", str(net.network_address + 1), netns=name)
    # The bridge side may still remember this address at the old port.
    ip("neigh", "flush", "to", info["address"], netns=labns, check=False)
