# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the mesh model (plugins/module_utils/_mesh.py): membership, policy, services, validation."""

import copy
import ipaddress
import random

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _mesh
from ansible_collections.hostmesh.sidecar.plugins.module_utils._mesh import MeshError, mesh_model

TD = "spiffe://hostmesh.local/host/"


def inventory():
    """alpha, beta (web) and gamma (db) are members; delta has the mesh off; epsilon sets nothing."""
    hostvars = {
        "alpha": {"hostmesh_mesh": True, "ansible_host": "10.0.0.1",
                  "hostmesh_workload_ports": [{"port": 8080}, {"port": 9000, "allow": ["db"]}]},
        "beta": {"hostmesh_mesh": "yes", "ansible_host": "10.0.0.2", "hostmesh_workload_ports": [{"port": 8080}]},
        "gamma": {"hostmesh_mesh": "True", "ansible_host": "10.0.0.3",
                  "hostmesh_workload_ports": [{"port": 5432}, {"port": 22, "server_first": True}]},
        "delta": {"hostmesh_mesh": False, "ansible_host": "10.0.0.4", "hostmesh_workload_ports": [{"port": 8080}]},
        "epsilon": {},
    }
    groups = {"all": ["alpha", "beta", "gamma", "delta", "epsilon"], "ungrouped": ["epsilon"],
              "web": ["alpha", "beta", "delta"], "db": ["gamma"], "empty": []}
    return hostvars, groups


def with_services(services, **own):
    hostvars, groups = inventory()
    hostvars["alpha"]["hostmesh_mesh_services"] = services
    hostvars["alpha"].update(own)
    return hostvars, groups


def problem(hostvars, groups, host="alpha"):
    with pytest.raises(MeshError) as info:
        mesh_model(hostvars, groups, host)
    return str(info.value)


# --- membership, identities, addresses ---------------------------------------------------------------

def test_a_member_sees_itself_its_peers_and_its_inbound_policy():
    model = mesh_model(*inventory(), "alpha")
    assert model["member"] is True
    assert model["trust_domain"] == "hostmesh.local" and model["domain"] == "mesh"
    assert model["self"] == {"name": "alpha", "identity": TD + "alpha", "address": "10.0.0.1"}
    assert [peer["name"] for peer in model["peers"]] == ["beta", "gamma"]  # delta: hostmesh_mesh false
    assert model["peers"][0] == {"name": "beta", "identity": TD + "beta", "address": "10.0.0.2", "ports": [8080]}
    assert model["peers"][1]["ports"] == [5432]  # gamma's server-first port 22 takes no mTLS
    assert model["inbound_ports"] == [
        {"port": 8080, "mode": "permissive", "server_first": False, "allow_all_members": True,
         "allowed": [TD + "alpha", TD + "beta", TD + "gamma"]},
        {"port": 9000, "mode": "permissive", "server_first": False, "allow_all_members": False,
         "allowed": [TD + "gamma"]},
    ]
    assert [member["name"] for member in model["members"]] == ["alpha", "beta", "gamma"]
    assert model["services"] == [] and model["hosts_block"] == ""


@pytest.mark.parametrize("host", ["delta", "epsilon", "nowhere"])
def test_a_non_member_gets_an_empty_model_and_is_never_checked(host):
    hostvars, groups = inventory()
    # Everything about the mesh is broken, yet a host outside it must not fail because of it.
    for host_vars in hostvars.values():
        host_vars.update(hostmesh_trust_domain="Bad Domain", hostmesh_mesh_services=[{"name": "x y"}],
                         hostmesh_mesh_vip_range="nonsense")
    hostvars["delta"]["hostmesh_workload_ports"] = [{"port": 15006, "mesh_mode": "bogus"}]
    hostvars["delta"]["ansible_host"] = "not-an-ip"
    trust_domain = "hostmesh.local" if host == "nowhere" else "Bad Domain"  # nowhere: no variables at all
    assert mesh_model(hostvars, groups, host) == {
        "member": False, "trust_domain": trust_domain, "domain": "mesh", "self": None, "members": [],
        "inbound_ports": [], "peers": [], "services": [], "hosts_block": ""}


def test_members_come_from_the_mesh_group_of_the_current_host():
    hostvars, groups = inventory()
    hostvars["alpha"]["hostmesh_mesh_group"] = "web"
    model = mesh_model(hostvars, groups, "alpha")
    assert [member["name"] for member in model["members"]] == ["alpha", "beta"]  # gamma is not in web
    assert model["inbound_ports"][1]["allowed"] == []  # allow: [db], and db has no member of this mesh now
    hostvars["gamma"]["hostmesh_mesh_group"] = "web"
    assert mesh_model(hostvars, groups, "gamma")["member"] is False


def test_address_prefers_hostmesh_mesh_address_then_ansible_host_then_an_ip_inventory_name():
    hostvars, groups = inventory()
    hostvars["beta"]["hostmesh_mesh_address"] = "192.168.7.2"
    hostvars["10.0.0.9"] = {"hostmesh_mesh": True}
    groups["all"].append("10.0.0.9")
    model = mesh_model(hostvars, groups, "alpha")
    assert {peer["name"]: peer["address"] for peer in model["peers"]} == {
        "10.0.0.9": "10.0.0.9", "beta": "192.168.7.2", "gamma": "10.0.0.3"}


def test_ipv6_addresses_are_normalised():
    hostvars, groups = inventory()
    hostvars["alpha"]["ansible_host"] = "fd00:0:0::0001"
    hostvars["beta"]["hostmesh_mesh_address"] = "FD00::2"
    model = mesh_model(hostvars, groups, "alpha")
    assert model["self"]["address"] == "fd00::1"
    assert model["peers"][0]["address"] == "fd00::2"


def test_the_trust_domain_and_mesh_domain_come_from_the_current_host():
    hostvars, groups = inventory()
    hostvars["alpha"].update(hostmesh_trust_domain="prod.example.org", hostmesh_mesh_domain="svc.example.org")
    model = mesh_model(hostvars, groups, "alpha")
    assert model["self"]["identity"] == "spiffe://prod.example.org/host/alpha"
    assert model["peers"][0]["identity"] == "spiffe://prod.example.org/host/beta"
    assert model["domain"] == "svc.example.org"


def test_none_means_unset():
    hostvars, groups = inventory()
    hostvars["alpha"].update(hostmesh_trust_domain=None, hostmesh_mesh_domain=None, hostmesh_mesh_mode=None,
                             hostmesh_mesh_services=None)
    model = mesh_model(hostvars, groups, "alpha")
    defaults = ("hostmesh.local", "mesh", "permissive")
    assert (model["trust_domain"], model["domain"], model["inbound_ports"][0]["mode"]) == defaults


# --- policy ------------------------------------------------------------------------------------------

def test_allow_resolves_groups_and_hosts_to_member_identities_sorted_and_once():
    hostvars, groups = inventory()
    hostvars["alpha"]["hostmesh_workload_ports"] = [{"port": 8080, "allow": ["gamma", "web", "db", "delta", "beta"]}]
    port = mesh_model(hostvars, groups, "alpha")["inbound_ports"][0]
    # delta is in web but is no member: it has no identity to allow.
    assert port["allowed"] == [TD + "alpha", TD + "beta", TD + "gamma"]
    assert port["allow_all_members"] is False


def test_an_empty_allow_list_allows_no_member():
    hostvars, groups = inventory()
    hostvars["alpha"]["hostmesh_workload_ports"] = [{"port": 8080, "allow": []}, {"port": 8081, "allow": ["empty"]}]
    ports = mesh_model(hostvars, groups, "alpha")["inbound_ports"]
    assert [(port["allow_all_members"], port["allowed"]) for port in ports] == [(False, []), (False, [])]


def test_modes_per_host_and_per_port_and_ports_sorted():
    hostvars, groups = inventory()
    hostvars["alpha"]["hostmesh_mesh_mode"] = "strict"
    hostvars["alpha"]["hostmesh_workload_ports"] = [
        {"port": 9000, "mesh_mode": "permissive"}, {"port": 8080}, {"port": 25, "server_first": "true", "mesh_mode": "permissive"}]
    ports = mesh_model(hostvars, groups, "alpha")["inbound_ports"]
    assert [(port["port"], port["mode"], port["server_first"]) for port in ports] == [
        (25, "permissive", True), (8080, "strict", False), (9000, "permissive", False)]


def test_well_known_server_first_ports_default_to_server_first_when_permissive():
    hostvars, groups = inventory()
    hostvars["alpha"]["hostmesh_workload_ports"] = [
        {"port": 3306}, {"port": 25, "mesh_mode": "strict"}, {"port": 22, "server_first": False}, {"port": 5432}]
    ports = mesh_model(hostvars, groups, "alpha")["inbound_ports"]
    # MySQL: no TLS inspector (plaintext clients would wait for it). SMTP on a strict port: members
    # only, whose sidecars speak TLS first. SSH: the explicit false wins. PostgreSQL: client first.
    assert [(port["port"], port["mode"], port["server_first"]) for port in ports] == [
        (22, "permissive", False), (25, "strict", False), (3306, "permissive", True), (5432, "permissive", False)]
    # A server-first port takes no mesh mTLS: peers do not route it to the sidecar's TLS.
    hostvars["beta"]["hostmesh_workload_ports"] = [{"port": 3306}, {"port": 8080}]
    assert mesh_model(hostvars, groups, "alpha")["peers"][0]["ports"] == [8080]


def test_workload_ports_as_strings_from_an_ini_inventory():
    hostvars, groups = inventory()
    hostvars["beta"]["hostmesh_workload_ports"] = [{"port": "8080", "server_first": "no"}]
    assert mesh_model(hostvars, groups, "alpha")["peers"][0]["ports"] == [8080]


# --- services ----------------------------------------------------------------------------------------

SERVICES = [{"name": "payments", "port": 8080, "group": "web"}, {"name": "pg", "port": 5432, "hosts": ["gamma"]}]


def test_services_members_fqdn_and_hosts_block():
    model = mesh_model(*with_services(SERVICES), "alpha")
    payments, pg = model["services"]
    assert payments["name"] == "payments" and payments["fqdn"] == "payments.mesh" and payments["port"] == 8080
    assert payments["members"] == [{"name": "alpha", "identity": TD + "alpha", "address": "10.0.0.1"},
                                   {"name": "beta", "identity": TD + "beta", "address": "10.0.0.2"}]  # not delta
    assert [member["name"] for member in pg["members"]] == ["gamma"]
    vips = [ipaddress.ip_address(service["vip"]) for service in model["services"]]
    assert all(vip in ipaddress.ip_network("240.240.0.0/16") for vip in vips) and len(set(vips)) == 2
    assert model["hosts_block"] == f"{payments['vip']} payments.mesh payments\n{pg['vip']} pg.mesh pg\n"


def test_services_are_sorted_by_name_whatever_the_order_given():
    forward = mesh_model(*with_services(SERVICES), "alpha")
    backward = mesh_model(*with_services(list(reversed(SERVICES))), "alpha")
    assert forward == backward
    assert [service["name"] for service in forward["services"]] == ["payments", "pg"]


def test_every_member_computes_the_same_services():
    hostvars, groups = with_services(SERVICES)
    for host in ("beta", "gamma"):
        hostvars[host]["hostmesh_mesh_services"] = copy.deepcopy(SERVICES)  # group_vars/all reaches every host
    models = [mesh_model(hostvars, groups, host) for host in ("alpha", "beta", "gamma")]
    assert models[0]["services"] == models[1]["services"] == models[2]["services"]
    assert models[0]["hosts_block"] == models[2]["hosts_block"]


def test_the_model_is_deterministic():
    hostvars, groups = with_services(SERVICES)
    first = mesh_model(hostvars, groups, "alpha")
    shuffled_groups = {name: random.sample(hosts, len(hosts)) for name, hosts in reversed(list(groups.items()))}
    shuffled_hostvars = dict(reversed(list(hostvars.items())))
    assert mesh_model(shuffled_hostvars, shuffled_groups, "alpha") == first
    assert mesh_model(copy.deepcopy(hostvars), copy.deepcopy(groups), "alpha") == first


def test_adding_or_removing_a_service_keeps_the_others_vips():
    many = [{"name": f"svc{number}", "port": 8080, "group": "web"} for number in range(40)]
    before = {service["name"]: service["vip"] for service in mesh_model(*with_services(many), "alpha")["services"]}
    added = many + [{"name": "newcomer", "port": 8080, "group": "web"}]
    after = {service["name"]: service["vip"] for service in mesh_model(*with_services(added), "alpha")["services"]}
    assert {name: after[name] for name in before} == before
    removed = many[5:]
    fewer = {service["name"]: service["vip"] for service in mesh_model(*with_services(removed), "alpha")["services"]}
    assert fewer == {name: vip for name, vip in before.items() if name in fewer}


def test_explicit_vips_are_kept_and_reserved_before_allocation():
    hostvars, groups = with_services(SERVICES)
    taken = mesh_model(hostvars, groups, "alpha")["services"][0]["vip"]  # what payments gets by its hash
    services = SERVICES + [{"name": "pinned", "port": 8080, "group": "web", "vip": taken}]
    model = mesh_model(*with_services(services), "alpha")
    vips = {service["name"]: service["vip"] for service in model["services"]}
    assert vips["pinned"] == taken
    assert vips["payments"] == str(ipaddress.ip_address(taken) + 1)  # the next free address after its slot


def test_allocation_probes_past_collisions_and_skips_network_and_broadcast():
    # A /29 has 6 usable addresses (.1-.6): six services fill it, whatever their hashes; none gets .0 or .7.
    services = [{"name": f"s{number}", "port": 8080, "group": "web"} for number in range(6)]
    model = mesh_model(*with_services(services, hostmesh_mesh_vip_range="10.99.0.0/29"), "alpha")
    assert sorted(service["vip"] for service in model["services"]) == [f"10.99.0.{last}" for last in range(1, 7)]


def test_a_collision_moves_the_later_name_to_the_next_free_address():
    vip_range = _mesh._VipRange(ipaddress.ip_network("10.99.0.0/24"))
    names = {}
    for number in range(1000):  # find two names hashing to the same slot
        slot = vip_range.start_slot(f"n{number}")
        if slot in names and slot < vip_range.size - 1:
            first, second = sorted([names[slot], f"n{number}"])
            break
        names[slot] = f"n{number}"
    services = [{"name": second, "port": 8080, "group": "web"}, {"name": first, "port": 8080, "group": "web"}]
    model = mesh_model(*with_services(services, hostmesh_mesh_vip_range="10.99.0.0/24"), "alpha")
    vips = {service["name"]: service["vip"] for service in model["services"]}
    assert vips[first] == str(vip_range.address(slot))
    assert vips[second] == str(vip_range.address(slot + 1))


def test_an_ipv6_vip_range():
    model = mesh_model(*with_services(SERVICES, hostmesh_mesh_vip_range="fd00:240::/112"), "alpha")
    for service in model["services"]:
        vip = ipaddress.ip_address(service["vip"])
        assert vip in ipaddress.ip_network("fd00:240::/112") and vip != ipaddress.ip_address("fd00:240::")


# --- validation: every message -----------------------------------------------------------------------

def set_vars(host, **values):
    hostvars, groups = inventory()
    hostvars[host].update(values)
    return hostvars, groups


@pytest.mark.parametrize("value,reason", [
    ("spiffe://x.org", "no scheme"), ("x.org:443", "no port"), ("x.org/a", "no path"), ("", "non-empty"),
    ("X.org", "lowercase"), ("a" * 256, "at most 255"),
])
def test_invalid_trust_domain(value, reason):
    message = problem(*set_vars("alpha", hostmesh_trust_domain=value))
    assert message.startswith(f"hostmesh_trust_domain {value!r} on alpha: ") and reason in message


@pytest.mark.parametrize("value", ["", "-mesh", "me sh", "mesh.", "Mesh", "a" * 64, ".".join(["abcdefgh"] * 30)])
def test_invalid_mesh_domain(value):
    assert problem(*set_vars("alpha", hostmesh_mesh_domain=value)).startswith(f"hostmesh_mesh_domain {value!r} on alpha: ")


def test_member_name_not_usable_in_an_identity():
    hostvars, groups = inventory()
    hostvars["be ta"] = hostvars.pop("beta")
    groups["all"] = ["alpha", "be ta", "gamma"]
    assert problem(hostvars, groups) == ("inventory_hostname 'be ta' on be ta: cannot name a mesh identity: a SPIFFE ID "
                                         "path segment holds only letters, digits, '.', '-' and '_'")


def test_member_without_an_ip_address():
    hostvars, groups = inventory()
    del hostvars["beta"]["ansible_host"]
    assert problem(hostvars, groups) == (
        "hostmesh_mesh_address on beta: is not set, and neither ansible_host nor the inventory name is an IP address: "
        "set it to the IP address other members reach this host on")
    hostvars["beta"]["ansible_host"] = "beta.example.org"
    assert problem(hostvars, groups).startswith("ansible_host 'beta.example.org' on beta: is not an IP address, and "
                                                "hostmesh_mesh_address is not set")
    hostvars["beta"]["hostmesh_mesh_address"] = "10.0.0.300"
    assert problem(hostvars, groups) == ("hostmesh_mesh_address '10.0.0.300' on beta: is not an IP address (the mesh "
                                         "address must be an IPv4 or IPv6 address)")


def test_duplicate_member_addresses():
    hostvars, groups = inventory()
    hostvars["gamma"]["hostmesh_mesh_address"] = "10.0.0.2"
    assert problem(hostvars, groups) == ("hostmesh_mesh_address '10.0.0.2' on gamma: is also the mesh address of member "
                                         "beta: each member needs its own")


def test_a_member_in_an_unknown_mesh_group():
    assert problem(*set_vars("alpha", hostmesh_mesh_group="mesh")) == (
        "hostmesh_mesh_group 'mesh' on alpha: names no inventory group, so this host with hostmesh_mesh true cannot "
        "be a mesh member")
    assert mesh_model(*set_vars("delta", hostmesh_mesh_group="mesh"), "delta")["member"] is False


@pytest.mark.parametrize("port,expected", [
    (15006, "hostmesh_workload_ports[1].port 15006 on beta: is the sidecar's own port (hostmesh_inbound_port)"),
    (15001, "hostmesh_workload_ports[1].port 15001 on beta: is the sidecar's own port (hostmesh_outbound_port)"),
])
def test_workload_port_equal_to_the_sidecars_own(port, expected):
    hostvars, groups = inventory()
    hostvars["beta"]["hostmesh_workload_ports"].append({"port": port})
    assert problem(hostvars, groups).startswith(expected)


def test_workload_port_equal_to_a_moved_or_role_level_sidecar_port():
    hostvars, groups = inventory()
    hostvars["beta"].update(hostmesh_inbound_port=8080)
    assert problem(hostvars, groups).startswith(
        "hostmesh_workload_ports[0].port 8080 on beta: is the sidecar's own port (hostmesh_inbound_port): a workload port "
        "must differ from the sidecar's listeners")
    hostvars["beta"].update(envoy_sidecar_inbound_port=8081, envoy_sidecar_prometheus_port=8080)
    assert problem(hostvars, groups).startswith(
        "hostmesh_workload_ports[0].port 8080 on beta: is the sidecar's own port (envoy_sidecar_prometheus_port)")
    hostvars["beta"].update(envoy_sidecar_prometheus_port=0)
    assert mesh_model(hostvars, groups, "alpha")["peers"][0]["ports"] == [8080]


def test_sidecar_port_variable_that_is_no_port():
    assert problem(*set_vars("beta", hostmesh_outbound_port="x")) == (
        "hostmesh_outbound_port 'x' on beta: must be a port number")


@pytest.mark.parametrize("entry,expected", [
    ({"port": 0}, "hostmesh_workload_ports[0].port 0 on beta: must be a port number between 1 and 65535"),
    ({"port": True}, "hostmesh_workload_ports[0].port True on beta: must be a port number"),
    ({}, "hostmesh_workload_ports[0].port None on beta: must be a port number"),
    ("8080", "hostmesh_workload_ports[0] '8080' on beta: must be a dict with at least a port"),
    ({"port": 8080, "mesh_mode": "mtls"}, "hostmesh_workload_ports[0].mesh_mode 'mtls' on beta: must be one of: "
                                          "permissive, strict"),
    ({"port": 8080, "server_first": "sometimes"}, "hostmesh_workload_ports[0].server_first 'sometimes' on beta: must "
                                                  "be a boolean"),
    ({"port": 8080, "allow": "web"}, "hostmesh_workload_ports[0].allow 'web' on beta: must be a list of inventory group "
                                     "or host names"),
    ({"port": 8080, "allow": ["web", "payments"]}, "hostmesh_workload_ports[0].allow[1] 'payments' on beta: names no "
                                                   "inventory group or host"),
    ({"port": 25, "server_first": True, "mesh_mode": "strict"},
     "hostmesh_workload_ports[0].mesh_mode 'strict' on beta: strict cannot apply to a server_first port: the sidecar "
     "does not inspect server-first connections, so it cannot tell mesh mTLS from plaintext there"),
    ({"port": 25, "server_first": True, "allow": ["web"]},
     "hostmesh_workload_ports[0].allow ['web'] on beta: cannot be enforced on a server_first port"),
])
def test_bad_workload_port_entries(entry, expected):
    hostvars, groups = inventory()
    hostvars["beta"]["hostmesh_workload_ports"] = [entry]
    assert problem(hostvars, groups).startswith(expected)


def test_strict_host_mode_with_a_server_first_port():
    hostvars, groups = set_vars("beta", hostmesh_mesh_mode="strict")
    hostvars["beta"]["hostmesh_workload_ports"] = [{"port": 25, "server_first": True}]
    assert problem(hostvars, groups).startswith("hostmesh_workload_ports[0].mesh_mode 'strict' on beta: strict cannot "
                                                "apply to a server_first port")


def test_workload_port_listed_twice_and_bad_host_mode():
    hostvars, groups = set_vars("beta", hostmesh_mesh_mode="off")
    hostvars["beta"]["hostmesh_workload_ports"] = [{"port": 8080}, {"port": "8080"}]
    assert problem(hostvars, groups) == (
        "hostmesh_mesh_mode 'off' on beta: must be one of: permissive, strict; "
        "hostmesh_workload_ports[1].port 8080 on beta: is listed twice (also hostmesh_workload_ports[0])")


def test_workload_ports_not_a_list():
    assert problem(*set_vars("beta", hostmesh_workload_ports={"port": 8080})) == (
        "hostmesh_workload_ports {'port': 8080} on beta: must be a list of {port, ...} entries")


def service(**values):
    entry = {"name": "payments", "port": 8080, "group": "web"}
    entry.update(values)
    return {key: value for key, value in entry.items() if value is not None}


@pytest.mark.parametrize("services,expected", [
    ([service(name="pay ments")], "hostmesh_mesh_services[0].name 'pay ments' on alpha: must be a DNS label: 1 to 63 "
                                  "lowercase letters, digits and '-', not starting or ending with '-'"),
    ([service(name="Payments")], "hostmesh_mesh_services[0].name 'Payments' on alpha: must be a DNS label"),
    ([service(name="payments.eu")], "hostmesh_mesh_services[0].name 'payments.eu' on alpha: must be a DNS label"),
    ([service(name=None)], "hostmesh_mesh_services[0].name None on alpha: must be a DNS label"),
    ([service(), service(port=9000, group=None, hosts=["alpha"])],
     "hostmesh_mesh_services[1].name 'payments' on alpha: is also the name of hostmesh_mesh_services[0]: service names "
     "must be unique"),
    ([service(name="beta")], "hostmesh_mesh_services[0].name 'beta' on alpha: is the name of inventory host beta: the "
                             "/etc/hosts line of the service would shadow that host's name"),
    ([service(port=70000)], "hostmesh_mesh_services[0].port 70000 on alpha: must be a port number between 1 and 65535"),
    ([service(port="http")], "hostmesh_mesh_services[0].port 'http' on alpha: must be a port number"),
    ([service(group="nope")], "hostmesh_mesh_services[0].group 'nope' on alpha: names no inventory group"),
    ([service(group="empty")], "hostmesh_mesh_services[0] on alpha: has no mesh member in its group 'empty' (members "
                               "are the hosts of hostmesh_mesh_group with hostmesh_mesh true)"),
    ([service(group=None, hosts=["delta"])], "hostmesh_mesh_services[0] on alpha: has no mesh member in its hosts"),
    ([service(group=None, hosts=["beta", "zeta"])], "hostmesh_mesh_services[0].hosts[1] 'zeta' on alpha: names no "
                                                    "inventory host"),
    ([service(group=None, hosts="beta")], "hostmesh_mesh_services[0].hosts 'beta' on alpha: must be a non-empty list "
                                          "of inventory host names"),
    ([service(group=None)], "hostmesh_mesh_services[0] on alpha: needs exactly one of group (an inventory group) or hosts"),
    ([service(hosts=["beta"])], "hostmesh_mesh_services[0] on alpha: needs exactly one of group"),
    ([service(port=9000)], "hostmesh_mesh_services[0].port 9000 on alpha: is not a port member beta takes mesh mTLS on: "
                           "add it to beta's hostmesh_workload_ports (not server_first)"),
    ([service(name="ssh", port=22, group="db")], "hostmesh_mesh_services[0].port 22 on alpha: is not a port member gamma "
                                                 "takes mesh mTLS on"),
    ([service(vip="10.0.0.300")], "hostmesh_mesh_services[0].vip '10.0.0.300' on alpha: is not an IP address"),
    ([service(vip="10.1.2.3")], "hostmesh_mesh_services[0].vip '10.1.2.3' on alpha: is not a usable address of "
                                "hostmesh_mesh_vip_range 240.240.0.0/16 (outside it, or its network or broadcast address)"),
    ([service(vip="240.240.255.255")], "hostmesh_mesh_services[0].vip '240.240.255.255' on alpha: is not a usable "
                                       "address of hostmesh_mesh_vip_range"),
    ([service(vip="240.240.1.1"), service(name="pg", port=5432, group="db", vip="240.240.1.1")],
     "hostmesh_mesh_services[1].vip '240.240.1.1' on alpha: is also the vip of hostmesh_mesh_services[0]: each service "
     "needs its own"),
    (["payments"], "hostmesh_mesh_services[0] 'payments' on alpha: must be a dict {name, port, group or hosts, vip?}"),
    ({"name": "payments"}, "hostmesh_mesh_services {'name': 'payments'} on alpha: must be a list of {name, port, group "
                           "or hosts, vip?} entries"),
])
def test_bad_services(services, expected):
    assert problem(*with_services(services)).startswith(expected)


@pytest.mark.parametrize("vip_range,expected", [
    ("240.240.0.1/16", "hostmesh_mesh_vip_range '240.240.0.1/16' on alpha: is not a valid network such as 240.240.0.0/16 "
                       "(240.240.0.1/16 has host bits set)"),
    ("nonsense", "hostmesh_mesh_vip_range 'nonsense' on alpha: is not a valid network"),
    ("10.0.0.0/24", "hostmesh_mesh_vip_range '10.0.0.0/24' on alpha: overlaps the mesh address 10.0.0.1 of member alpha: "
                    "choose a range no member uses"),
    ("10.99.0.0/31", "hostmesh_mesh_vip_range '10.99.0.0/31' on alpha: has 2 usable addresses for 3 services: choose a "
                     "larger range"),
    ("10.99.0.0/30", "hostmesh_mesh_vip_range '10.99.0.0/30' on alpha: has 2 usable addresses for 3 services"),
])
def test_bad_vip_ranges(vip_range, expected):
    services = [service(), service(name="web2"), service(name="web3")]
    assert problem(*with_services(services, hostmesh_mesh_vip_range=vip_range)).startswith(expected)


def test_vip_range_overlapping_an_ipv6_member():
    hostvars, groups = with_services([service()], hostmesh_mesh_vip_range="fd00::/64")
    hostvars["gamma"]["hostmesh_mesh_address"] = "fd00::3"
    assert problem(hostvars, groups).startswith("hostmesh_mesh_vip_range 'fd00::/64' on alpha: overlaps the mesh address "
                                                "fd00::3 of member gamma")


def test_every_problem_is_named_at_once():
    hostvars, groups = with_services([service(name="pay ments", port=0)], hostmesh_trust_domain="BAD")
    hostvars["gamma"]["hostmesh_workload_ports"] = [{"port": 15001, "mesh_mode": "tight"}]
    with pytest.raises(MeshError) as info:
        mesh_model(hostvars, groups, "alpha")
    assert [variable for variable, _message in info.value.problems] == [
        "hostmesh_trust_domain", "hostmesh_workload_ports[0].port", "hostmesh_workload_ports[0].mesh_mode",
        "hostmesh_mesh_services[0].name", "hostmesh_mesh_services[0].port"]


def test_a_peer_problem_fails_every_member_so_no_host_gets_half_a_mesh():
    hostvars, groups = inventory()
    hostvars["gamma"]["hostmesh_workload_ports"] = [{"port": 15006}]
    for host in ("alpha", "beta", "gamma"):
        assert problem(hostvars, groups, host).startswith("hostmesh_workload_ports[0].port 15006 on gamma: ")


def test_a_member_cannot_bring_dynamic_resources_of_its_own():
    hostvars, groups = inventory()
    hostvars["beta"]["envoy_sidecar_dynamic_resources"] = {"ads_config": {"api_type": "GRPC"}}
    with pytest.raises(MeshError) as error:
        mesh_model(hostvars, groups, "alpha")
    assert "envoy_sidecar_dynamic_resources" in str(error.value) and "on beta" in str(error.value)
    hostvars["beta"]["envoy_sidecar_dynamic_resources"] = {}
    assert mesh_model(hostvars, groups, "alpha")["member"]
