# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The mesh model: what the inventory says about identities, peers, policy and services.

Pure functions on plain data (dicts, lists, strings); the filter plugins
``mesh_spiffe_id`` and ``mesh_model`` only adapt Ansible's values to them and
turn ``MeshError`` into ``AnsibleFilterError``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

# SPIFFE ID spec (spiffe/spiffe standards/SPIFFE-ID.md): the trust domain is
# lowercase letters, digits, '.', '-' and '_'; a path segment is letters,
# digits, '.', '-' and '_' and neither '.' nor '..'.
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")
PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
TRUST_DOMAIN_MAX = 255


class MeshError(ValueError):
    """Bad mesh input; ``problems`` lists ``(variable, message)`` pairs, every one found."""

    def __init__(self, message: str, problems=None):
        super().__init__(message)
        self.problems = list(problems or [])


def check_trust_domain(trust_domain) -> str:
    """The trust domain, or ValueError saying why it is not a SPIFFE trust domain."""
    if not isinstance(trust_domain, str) or not trust_domain:
        raise ValueError("a SPIFFE trust domain must be a non-empty string")
    if "://" in trust_domain:
        raise ValueError("a SPIFFE trust domain has no scheme (write 'example.org', not 'spiffe://example.org')")
    if ":" in trust_domain:
        raise ValueError("a SPIFFE trust domain has no port")
    if "/" in trust_domain:
        raise ValueError("a SPIFFE trust domain has no path")
    if len(trust_domain) > TRUST_DOMAIN_MAX:
        raise ValueError(f"a SPIFFE trust domain is at most {TRUST_DOMAIN_MAX} characters (this one has {len(trust_domain)})")
    if not TRUST_DOMAIN_RE.match(trust_domain):
        raise ValueError("a SPIFFE trust domain holds only lowercase letters, digits, '.', '-' and '_'")
    return trust_domain


def check_path_segment(name) -> str:
    """A host name usable as one SPIFFE ID path segment, or ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError("a SPIFFE ID path segment must be a non-empty string")
    if name in (".", ".."):
        raise ValueError("'.' and '..' are not SPIFFE ID path segments")
    if not PATH_SEGMENT_RE.match(name):
        raise ValueError("a SPIFFE ID path segment holds only letters, digits, '.', '-' and '_'")
    return name


def spiffe_id(trust_domain, hostname) -> str:
    """``spiffe://<trust domain>/host/<hostname>``; MeshError naming the bad part."""
    try:
        check_trust_domain(trust_domain)
    except ValueError as exc:
        raise MeshError(f"hostmesh_trust_domain {trust_domain!r}: {exc}", [("hostmesh_trust_domain", str(exc))]) from None
    try:
        check_path_segment(hostname)
    except ValueError as exc:
        raise MeshError(f"inventory_hostname {hostname!r} cannot name a mesh identity: {exc}",
                        [("inventory_hostname", str(exc))]) from None
    return f"spiffe://{trust_domain}/host/{hostname}"


# ---------------------------------------------------------------------------
# The mesh model
# ---------------------------------------------------------------------------

DEFAULT_TRUST_DOMAIN = "hostmesh.local"
DEFAULT_MESH_DOMAIN = "mesh"
DEFAULT_MESH_GROUP = "all"
DEFAULT_VIP_RANGE = "240.240.0.0/16"
MODES = ("permissive", "strict")
# Well-known ports whose server speaks first (FTP, SSH, Telnet, SMTP, POP3, IMAP, submission,
# MySQL, VNC): a plaintext client there sends nothing the TLS inspector could read and would wait
# for its timeout. On a permissive port they default to server_first. On a strict port they keep
# the inspector: only members call there, and a member's sidecar speaks first (its ClientHello).
SERVER_FIRST_PORTS = frozenset((21, 22, 23, 25, 110, 143, 587, 3306, 5900))
DEFAULT_MODE = "permissive"

# The sidecar's own listeners on each host: (variables read in this order, default). A role variable wins
# over the hostmesh_* one, as in the playbooks; 0 means "no such listener".
SIDECAR_PORTS = (
    (("envoy_sidecar_inbound_port", "hostmesh_inbound_port"), 15006),
    (("envoy_sidecar_outbound_port", "hostmesh_outbound_port"), 15001),
    (("envoy_sidecar_prometheus_port",), 0),
)

# The host variables the model reads; the filter copies exactly these out of Ansible's lazy hostvars.
MEMBER_VARS = (
    "hostmesh_mesh", "hostmesh_mesh_address", "ansible_host", "hostmesh_mesh_mode", "hostmesh_workload_ports",
    "envoy_sidecar_dynamic_resources",
) + tuple(name for names, _default in SIDECAR_PORTS for name in names)
MESH_VARS = (
    "hostmesh_mesh_group", "hostmesh_trust_domain", "hostmesh_mesh_domain", "hostmesh_mesh_services",
    "hostmesh_mesh_vip_range",
)

DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DNS_NAME_MAX = 253
TRUE_WORDS = ("1", "true", "yes", "on", "y", "t")
FALSE_WORDS = ("0", "false", "no", "off", "n", "f", "")
HASH_BYTES = 16


class _Problems:
    """Every problem found, so one run names all of them; each names the variable and the host it is set on."""

    def __init__(self):
        self.items = []

    def add(self, variable: str, host: str, reason: str, value=None, show_value=True) -> None:
        shown = f" {value!r}" if show_value else ""
        self.items.append((variable, f"{variable}{shown} on {host}: {reason}"))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise MeshError("; ".join(message for _variable, message in self.items), self.items)


def _unset(value) -> bool:
    # An inventory line `hostmesh_trust_domain:` gives None: the same as not setting it.
    return value is None


def _get(host_vars: dict, name: str, default):
    value = host_vars.get(name)
    return default if _unset(value) else value


def _bool(value):
    """True/False for a boolean or a boolean word (INI inventories give strings); None when neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0 if value in (0, 1) else None
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


def _port(value, allow_zero=False):
    """A TCP port as an int (an int or a decimal string); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("must be a port number")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError("must be a port number")
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ValueError(f"must be a port number between {low} and 65535")
    return value


def check_dns_label(name) -> str:
    if not isinstance(name, str) or not DNS_LABEL_RE.match(name):
        raise ValueError("must be a DNS label: 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'")
    return name


def check_dns_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("must be a DNS name such as 'mesh' or 'mesh.example.org'")
    if len(name) > DNS_NAME_MAX:
        raise ValueError(f"a DNS name is at most {DNS_NAME_MAX} characters")
    for label in name.split("."):
        if not DNS_LABEL_RE.match(label):
            raise ValueError("must be a DNS name: dot-separated labels of 1 to 63 lowercase letters, digits and '-', "
                             "none starting or ending with '-' (no trailing dot)")
    return name


def _ip(value):
    if not isinstance(value, str):
        raise ValueError("is not an IP address")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError("is not an IP address") from None


def is_member(host_vars: dict) -> bool:
    return _bool(host_vars.get("hostmesh_mesh")) is True


def _member_address(name: str, host_vars: dict, problems: _Problems):
    """hostmesh_mesh_address, else ansible_host, else the inventory name when it is an IP address."""
    for variable in ("hostmesh_mesh_address", "ansible_host"):
        value = host_vars.get(variable)
        if not _unset(value):
            try:
                return _ip(value)
            except ValueError:
                if variable == "hostmesh_mesh_address":
                    problems.add(variable, name, "is not an IP address (the mesh address must be an IPv4 or IPv6 address)", value)
                else:
                    problems.add(variable, name, "is not an IP address, and hostmesh_mesh_address is not set: set "
                                 "hostmesh_mesh_address to the IP address other members reach this host on", value)
                return None
    try:
        return _ip(name)
    except ValueError:
        problems.add("hostmesh_mesh_address", name, "is not set, and neither ansible_host nor the inventory name is an IP "
                     "address: set it to the IP address other members reach this host on", show_value=False)
        return None


def _sidecar_ports(name: str, host_vars: dict, problems: _Problems) -> dict:
    """The sidecar's own listening ports on a host: {port: variable that sets it}."""
    ports = {}
    for names, default in SIDECAR_PORTS:
        variable, value = names[-1], default
        for candidate in names:
            if not _unset(host_vars.get(candidate)):
                variable, value = candidate, host_vars[candidate]
                break
        try:
            port = _port(value, allow_zero=True)
        except ValueError as exc:
            problems.add(variable, name, str(exc), value)
            continue
        if port:
            ports[port] = variable
    return ports


def _resolve_allow(allow, variable, name, groups, known_hosts, members, problems) -> list:
    """The member names among the groups and hosts that ``allow`` lists."""
    if not isinstance(allow, list):
        problems.add(variable, name, "must be a list of inventory group or host names", allow)
        return []
    allowed = set()
    for index, entry in enumerate(allow):
        entry_variable = f"{variable}[{index}]"
        if not isinstance(entry, str) or not entry:
            problems.add(entry_variable, name, "must be an inventory group or host name", entry)
            continue
        if entry not in groups and entry not in known_hosts:
            problems.add(entry_variable, name, "names no inventory group or host", entry)
            continue
        allowed.update(host for host in groups.get(entry, ()) if host in members)
        if entry in members:
            allowed.add(entry)
    return sorted(allowed)


def _workload_ports(name, host_vars, groups, known_hosts, members, problems) -> list:
    """A member's hostmesh_workload_ports with the mesh keys resolved; the allowed callers as member names."""
    host_mode = _get(host_vars, "hostmesh_mesh_mode", DEFAULT_MODE)
    if host_mode not in MODES:
        problems.add("hostmesh_mesh_mode", name, "must be one of: " + ", ".join(MODES), host_mode)
        host_mode = DEFAULT_MODE
    own_ports = _sidecar_ports(name, host_vars, problems)
    if host_vars.get("envoy_sidecar_dynamic_resources"):
        # Envoy has one dynamic_resources: on a member it is the mesh's file-based LDS and CDS.
        problems.add("envoy_sidecar_dynamic_resources", name, "cannot be set on a mesh member: its listeners and "
                     "clusters are the mesh's file-based LDS and CDS; use envoy_sidecar_extra_clusters or "
                     "envoy_sidecar_extra_listeners, or take the host out of the mesh",
                     host_vars.get("envoy_sidecar_dynamic_resources"))
    entries = _get(host_vars, "hostmesh_workload_ports", [])
    if not isinstance(entries, list):
        problems.add("hostmesh_workload_ports", name, "must be a list of {port, ...} entries", entries)
        return []
    ports, seen = [], {}
    for index, entry in enumerate(entries):
        variable = f"hostmesh_workload_ports[{index}]"
        if not isinstance(entry, dict):
            problems.add(variable, name, "must be a dict with at least a port", entry)
            continue
        try:
            port = _port(entry.get("port"))
        except ValueError as exc:
            problems.add(variable + ".port", name, str(exc), entry.get("port"))
            continue
        if port in own_ports:
            problems.add(variable + ".port", name, f"is the sidecar's own port ({own_ports[port]}): a workload port must "
                         "differ from the sidecar's listeners", port)
        if port in seen:
            problems.add(variable + ".port", name, f"is listed twice (also hostmesh_workload_ports[{seen[port]}])", port)
        seen.setdefault(port, index)
        mode = _get(entry, "mesh_mode", host_mode)
        if mode not in MODES:
            problems.add(variable + ".mesh_mode", name, "must be one of: " + ", ".join(MODES), mode)
            mode = host_mode
        server_first = _bool(_get(entry, "server_first", port in SERVER_FIRST_PORTS and mode == "permissive"))
        if server_first is None:
            problems.add(variable + ".server_first", name, "must be a boolean", entry.get("server_first"))
            server_first = False
        allow = entry.get("allow")
        if server_first and mode == "strict":
            problems.add(variable + ".mesh_mode", name, "strict cannot apply to a server_first port: the sidecar does not "
                         "inspect server-first connections, so it cannot tell mesh mTLS from plaintext there; use "
                         "permissive, or drop server_first if clients speak first", mode)
        if server_first and allow is not None:
            problems.add(variable + ".allow", name, "cannot be enforced on a server_first port: its connections are not "
                         "mesh mTLS, so the caller has no verified identity; drop allow or server_first", allow)
        allowed = None if allow is None else _resolve_allow(allow, variable + ".allow", name, groups, known_hosts,
                                                            members, problems)
        ports.append({"port": port, "mode": mode, "server_first": server_first, "allowed_members": allowed})
    return sorted(ports, key=lambda item: item["port"])


class _VipRange:
    """The usable addresses of the VIP range, numbered 0..size-1 (no network or broadcast address)."""

    def __init__(self, network):
        self.network = network
        # IPv4 ranges of 4 and more addresses keep the network and broadcast addresses out, like a subnet's hosts;
        # IPv6 has no broadcast, but its first address is the subnet-router anycast address.
        self.skip_first = network.num_addresses > 2
        skip_last = network.version == 4 and network.num_addresses > 2
        self.size = network.num_addresses - int(self.skip_first) - int(skip_last)
        self.first = int(network.network_address) + int(self.skip_first)

    def address(self, slot: int):
        return ipaddress.ip_address(self.first + slot)

    def is_usable(self, address) -> bool:
        return address.version == self.network.version and 0 <= int(address) - self.first < self.size

    def start_slot(self, name: str) -> int:
        # A hash of the name alone: a service's VIP does not depend on which other services exist, only a
        # collision (rare in a /16) moves the later-sorted of the two to the next free address.
        digest = hashlib.sha256(name.encode("utf-8")).digest()[:HASH_BYTES]
        return int.from_bytes(digest, "big") % self.size


def _vip_range(own_name, own_vars, member_addresses, problems):
    value = _get(own_vars, "hostmesh_mesh_vip_range", DEFAULT_VIP_RANGE)
    try:
        network = ipaddress.ip_network(value.strip() if isinstance(value, str) else value, strict=True)
    except (TypeError, ValueError) as exc:
        problems.add("hostmesh_mesh_vip_range", own_name, f"is not a valid network such as {DEFAULT_VIP_RANGE} ({exc})", value)
        return None
    for host, address in sorted(member_addresses.items()):
        if address.version == network.version and address in network:
            problems.add("hostmesh_mesh_vip_range", own_name, f"overlaps the mesh address {address} of member {host}: "
                         "choose a range no member uses", value)
    return _VipRange(network)


def _short_name(host: str) -> str:
    """The name /etc/hosts would resolve for a host: its first label (an IP address stays whole)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return host.split(".")[0]


def _services(own_name, own_vars, groups, known_hosts, members, member_addresses, mtls_ports, problems):
    """Validated services with VIPs; [] (after adding problems) when they cannot be planned."""
    entries = _get(own_vars, "hostmesh_mesh_services", [])
    if not isinstance(entries, list):
        problems.add("hostmesh_mesh_services", own_name, "must be a list of {name, port, group or hosts, vip?} entries", entries)
        return []
    vip_range = _vip_range(own_name, own_vars, member_addresses, problems)
    short_host_names = {_short_name(host): host for host in known_hosts}
    services, names, explicit = [], {}, {}
    for index, entry in enumerate(entries):
        variable = f"hostmesh_mesh_services[{index}]"
        if not isinstance(entry, dict):
            problems.add(variable, own_name, "must be a dict {name, port, group or hosts, vip?}", entry)
            continue
        service = {"index": index}
        name = entry.get("name")
        try:
            service["name"] = check_dns_label(name)
        except ValueError as exc:
            problems.add(variable + ".name", own_name, str(exc), name)
        else:
            if name in names:
                problems.add(variable + ".name", own_name, f"is also the name of hostmesh_mesh_services[{names[name]}]: "
                             "service names must be unique", name)
            elif name in short_host_names:
                problems.add(variable + ".name", own_name, f"is the name of inventory host {short_host_names[name]}: the "
                             "/etc/hosts line of the service would shadow that host's name", name)
            names.setdefault(name, index)
        try:
            service["port"] = _port(entry.get("port"))
        except ValueError as exc:
            problems.add(variable + ".port", own_name, str(exc), entry.get("port"))
        service["members"] = _service_members(entry, variable, own_name, groups, known_hosts, members, problems)
        if "port" in service:
            for host in service["members"]:
                if service["port"] not in mtls_ports.get(host, ()):
                    problems.add(variable + ".port", own_name, f"is not a port member {host} takes mesh mTLS on: add it to "
                                 f"{host}'s hostmesh_workload_ports (not server_first)", service["port"])
        vip = entry.get("vip")
        if not _unset(vip):
            try:
                address = _ip(vip)
            except ValueError as exc:
                problems.add(variable + ".vip", own_name, str(exc), vip)
            else:
                if vip_range is not None and not vip_range.is_usable(address):
                    problems.add(variable + ".vip", own_name, f"is not a usable address of hostmesh_mesh_vip_range "
                                 f"{vip_range.network} (outside it, or its network or broadcast address)", vip)
                elif address in explicit:
                    problems.add(variable + ".vip", own_name, f"is also the vip of hostmesh_mesh_services[{explicit[address]}]: "
                                 "each service needs its own", vip)
                explicit.setdefault(address, index)
                service["vip"] = address
        services.append(service)
    if vip_range is not None and len(entries) > vip_range.size:
        problems.add("hostmesh_mesh_vip_range", own_name, f"has {vip_range.size} usable addresses for "
                     f"{len(entries)} services: choose a larger range", str(vip_range.network))
    if problems:
        return []
    _allocate_vips(services, vip_range)
    return services


def _service_members(entry, variable, own_name, groups, known_hosts, members, problems) -> list:
    group, hosts = entry.get("group"), entry.get("hosts")
    if _unset(group) == _unset(hosts):
        problems.add(variable, own_name, "needs exactly one of group (an inventory group) or hosts (a list of inventory "
                     "hosts)", show_value=False)
        return []
    if not _unset(group):
        if not isinstance(group, str) or group not in groups:
            problems.add(variable + ".group", own_name, "names no inventory group", group)
            return []
        chosen = sorted(host for host in groups[group] if host in members)
        where = f"group {group!r}"
    else:
        if not isinstance(hosts, list) or not hosts:
            problems.add(variable + ".hosts", own_name, "must be a non-empty list of inventory host names", hosts)
            return []
        unknown = [(index, host) for index, host in enumerate(hosts) if not isinstance(host, str) or host not in known_hosts]
        for index, host in unknown:
            problems.add(f"{variable}.hosts[{index}]", own_name, "names no inventory host", host)
        if unknown:
            return []
        chosen = sorted(set(host for host in hosts if host in members))
        where = "hosts"
    if not chosen:
        problems.add(variable, own_name, f"has no mesh member in its {where} (members are the hosts of "
                     "hostmesh_mesh_group with hostmesh_mesh true)", show_value=False)
    return chosen


def _allocate_vips(services, vip_range) -> None:
    """Give each service without an explicit vip one from the range: stable, see _VipRange.start_slot."""
    taken = {int(service["vip"]) for service in services if "vip" in service}
    for service in sorted((service for service in services if "vip" not in service), key=lambda item: item["name"]):
        slot = vip_range.start_slot(service["name"])
        # Explicit VIPs are reserved first, then services take addresses in name order, each the first free one
        # from its hashed slot on; the range holds at least as many addresses as services (checked).
        while int(vip_range.address(slot)) in taken:
            slot = (slot + 1) % vip_range.size
        service["vip"] = vip_range.address(slot)
        taken.add(int(service["vip"]))


def _non_member_model(trust_domain, domain) -> dict:
    return {"member": False, "trust_domain": trust_domain, "domain": domain, "self": None, "members": [],
            "inbound_ports": [], "peers": [], "services": [], "hosts_block": ""}


def mesh_model(hostvars: dict, groups: dict, inventory_hostname: str) -> dict:
    """The mesh as seen from ``inventory_hostname``.

    ``hostvars`` maps each inventory host to a plain dict of its variables (at least MEMBER_VARS, and MESH_VARS
    for ``inventory_hostname``); ``groups`` maps group names to host names, as Ansible's ``groups``. Raises
    MeshError naming every bad variable and the host it is set on. A host that is not a member gets an empty
    model and is never failed because of the mesh.
    """
    own = hostvars.get(inventory_hostname) or {}
    trust_domain = _get(own, "hostmesh_trust_domain", DEFAULT_TRUST_DOMAIN)
    domain = _get(own, "hostmesh_mesh_domain", DEFAULT_MESH_DOMAIN)
    mesh_group = _get(own, "hostmesh_mesh_group", DEFAULT_MESH_GROUP)
    known_hosts = set(groups.get("all") or ()) | set(hostvars)
    problems = _Problems()
    if mesh_group not in groups:
        if is_member(own):
            problems.add("hostmesh_mesh_group", inventory_hostname, "names no inventory group, so this host with "
                         "hostmesh_mesh true cannot be a mesh member", mesh_group)
            problems.raise_if_any()
        return _non_member_model(trust_domain, domain)
    members = sorted(host for host in set(groups[mesh_group]) if is_member(hostvars.get(host) or {}))
    if inventory_hostname not in members:
        return _non_member_model(trust_domain, domain)

    for variable, check, value in (("hostmesh_trust_domain", check_trust_domain, trust_domain),
                                   ("hostmesh_mesh_domain", check_dns_name, domain)):
        try:
            check(value)
        except ValueError as exc:
            problems.add(variable, inventory_hostname, str(exc), value)
    identities, addresses, ports = {}, {}, {}
    for host in members:
        host_vars = hostvars.get(host) or {}
        try:
            check_path_segment(host)
        except ValueError as exc:
            problems.add("inventory_hostname", host, f"cannot name a mesh identity: {exc}", host)
        identities[host] = f"spiffe://{trust_domain}/host/{host}"
        address = _member_address(host, host_vars, problems)
        if address is not None:
            addresses[host] = address
        ports[host] = _workload_ports(host, host_vars, groups, known_hosts, members, problems)
    by_address = {}
    for host in members:
        if host in addresses:
            by_address.setdefault(addresses[host], []).append(host)
    for address, hosts in sorted(by_address.items(), key=lambda item: str(item[0])):
        for host in hosts[1:]:
            problems.add("hostmesh_mesh_address", host, f"is also the mesh address of member {hosts[0]}: each member "
                         "needs its own", str(address))
    mtls_ports = {host: [item["port"] for item in ports[host] if not item["server_first"]] for host in members}
    services = _services(inventory_hostname, own, groups, known_hosts, set(members), addresses, mtls_ports, problems)
    problems.raise_if_any()

    def endpoint(host):
        return {"name": host, "identity": identities[host], "address": str(addresses[host])}

    every_identity = [identities[host] for host in members]
    inbound_ports = [{
        "port": item["port"], "mode": item["mode"], "server_first": item["server_first"],
        "allow_all_members": item["allowed_members"] is None,
        "allowed": every_identity if item["allowed_members"] is None else [identities[host] for host in item["allowed_members"]],
    } for item in ports[inventory_hostname]]
    service_model = [{
        "name": service["name"], "fqdn": f"{service['name']}.{domain}", "vip": str(service["vip"]),
        "port": service["port"], "members": [endpoint(host) for host in service["members"]],
    } for service in sorted(services, key=lambda item: item["name"])]
    return {
        "member": True,
        "trust_domain": trust_domain,
        "domain": domain,
        "self": endpoint(inventory_hostname),
        "members": [endpoint(host) for host in members],
        "inbound_ports": inbound_ports,
        "peers": [dict(endpoint(host), ports=sorted(mtls_ports[host])) for host in members if host != inventory_hostname],
        "services": service_model,
        "hosts_block": "".join(f"{item['vip']} {item['fqdn']} {item['name']}\n" for item in service_model),
    }
