# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the pure parts of the iptables engine: validation, rendering,
parsing and canonicalising iptables-save output, and planning."""

from __future__ import annotations

import json

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _netfilter as nf


def config(**overrides):
    return nf.config_from_params(overrides)


def lines(rules):
    """Rules as the lines iptables-save prints."""
    return [r.text() for r in rules]


# -- validation -------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (80, "80"), ("80", "80"), ("8000-8080", "8000:8080"), ("8000:8080", "8000:8080"),
    (" 9000 - 9000 ", "9000"), ("65535", "65535"),
])
def test_port_spec_canonical(value, expected):
    assert nf.parse_port_spec(value) == expected


@pytest.mark.parametrize("value, reason", [
    (0, "between 1 and 65535"), (65536, "between 1 and 65535"), ("http", "must be a port"),
    ("90-80", "greater than its end"), ("1-2-3", "must be a port"), ("", "must be a port"),
    (True, "must be a port"), ("-5", "must be a port"),
])
def test_port_spec_rejects(value, reason):
    with pytest.raises(nf.HostmeshError) as err:
        nf.config_from_params({"inbound_exclude_ports": [value]})
    assert err.value.option == "inbound_exclude_ports"
    assert reason in str(err.value)
    assert repr(value) in str(err.value)


def test_port_list_deduplicates_equivalent_spellings():
    assert config(inbound_ports=[22, "22", "8000-8080", "8000:8080"]).inbound_ports == ("22", "8000:8080")


@pytest.mark.parametrize("value, expected", [
    ("10.1.2.3/16", "10.1.0.0/16"), ("10.0.0.1", "10.0.0.1/32"), ("fd00::1/64", "fd00::/64"),
    ("::1", "::1/128"),
])
def test_cidr_canonical(value, expected):
    assert config(outbound_exclude_cidrs=[value]).outbound_exclude_cidrs == (expected,)


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-a-net", "300.1.1.1", "fd00::/129", 5])
def test_cidr_rejects(value):
    with pytest.raises(nf.HostmeshError) as err:
        nf.config_from_params({"outbound_include_cidrs": [value]})
    assert err.value.option == "outbound_include_cidrs"


@pytest.mark.parametrize("value, expected", [
    ("0x1", "0x1"), ("1", "0x1"), (16, "0x10"), ("0x10/0xff", "0x10/0xff"), ("0x1/0xffffffff", "0x1"),
    ("0XAB", "0xab"),
])
def test_mark_canonical(value, expected):
    assert nf.parse_mark(value) == expected


@pytest.mark.parametrize("value, reason", [
    ("0", "must not be 0"), ("0x100/0xff", "outside its mask"), ("0x1/0", "between 1"),
    ("0x100000000", "between 0"), ("mark", "must be an integer"),
])
def test_mark_rejects(value, reason):
    with pytest.raises(ValueError) as err:
        nf.parse_mark(value)
    assert reason in str(err.value)


@pytest.mark.parametrize("value, expected", [("0x100001", 1048577), ("1048577", 1048577), (65537, 65537)])
def test_classid(value, expected):
    assert nf.parse_classid(value) == expected


@pytest.mark.parametrize("value", ["0", "0x0", "-1", "0x1ffffffff", "ten"])
def test_classid_rejects(value):
    with pytest.raises(ValueError):
        nf.parse_classid(value)


@pytest.mark.parametrize("value, expected", [
    ("/system.slice/hostmesh-envoy.service/", "system.slice/hostmesh-envoy.service"),
    ("a//b", "a/b"),
])
def test_cgroup_path_canonical(value, expected):
    assert nf.parse_cgroup_path(value) == expected


@pytest.mark.parametrize("value", ["", "/", "a/../b", "a b", 'x"y'])
def test_cgroup_path_rejects(value):
    with pytest.raises(ValueError):
        nf.parse_cgroup_path(value)


@pytest.mark.parametrize("params, option, reason", [
    ({"proxy_uid": 0}, "proxy_uid", "must not be 0"),
    ({"bypass": "gid"}, "proxy_gid", "required when bypass=gid"),
    ({"bypass": "cgroup_path"}, "proxy_cgroup_path", "required when bypass=cgroup_path"),
    ({"bypass": "tproxy"}, "bypass", "must be one of"),
    ({"backend": "iptables"}, "backend", "must be one of"),
    ({"chain_prefix": "HOSTMESH_IS_FAR_TOO_LONG"}, "chain_prefix", "too long"),
    ({"chain_prefix": "1BAD"}, "chain_prefix", "must start with a letter"),
    ({"chain_prefix": "BAD PREFIX"}, "chain_prefix", "must start with a letter"),
    ({"inbound_port": 70000}, "inbound_port", "between 1 and 65535"),
    ({"ip_families": ["ipv5"]}, "ip_families", "must be one of"),
    ({"ip_families": []}, "ip_families", "non-empty"),
    ({"exclude_uids": [-1]}, "exclude_uids", "between 0"),
    ({"rules_file": "relative/path.json"}, "rules_file", "absolute path"),
    ({"wait": -1}, "wait", "between 0"),
    ({"bogus": 1}, "bogus", "not a known option"),
])
def test_config_rejects(params, option, reason):
    with pytest.raises(nf.HostmeshError) as err:
        nf.config_from_params(params)
    assert err.value.option == option
    assert reason in str(err.value)


def test_config_defaults():
    c = config()
    assert (c.inbound_port, c.outbound_port, c.bypass, c.proxy_uid) == (15006, 15001, "uid", 1337)
    assert c.inbound_exclude_ports == ("22",)
    assert c.owned_chains == ("HOSTMESH_INBOUND", "HOSTMESH_IN_REDIRECT", "HOSTMESH_OUTPUT", "HOSTMESH_REDIRECT")
    assert c.ip_families is None


def test_config_round_trips_through_json():
    c = config(bypass="mark", proxy_mark="0x10/0xff", outbound_exclude_cidrs=["10.0.0.0/8"], ip_families=["ipv4"])
    assert nf.config_from_params(json.loads(json.dumps(c.to_json()))) == c


# -- rendering ----------------------------------------------------------------

def test_render_default_ipv4():
    r = nf.render_ruleset(config(), "ipv4")
    assert r.chains == ["HOSTMESH_INBOUND", "HOSTMESH_IN_REDIRECT", "HOSTMESH_OUTPUT", "HOSTMESH_REDIRECT"]
    assert lines(r.jumps) == [
        '-A PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_INBOUND',
        '-A OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT',
    ]
    assert lines(r.rules) == [
        "-A HOSTMESH_INBOUND -p tcp -m multiport --dports 22 -j RETURN",
        "-A HOSTMESH_INBOUND -p tcp -j HOSTMESH_IN_REDIRECT",
        "-A HOSTMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A HOSTMESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A HOSTMESH_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m owner --uid-owner 1337 -j HOSTMESH_INBOUND",
        "-A HOSTMESH_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A HOSTMESH_OUTPUT -d 127.0.0.0/8 -j RETURN",
        "-A HOSTMESH_OUTPUT -m owner ! --uid-owner 1337 -j HOSTMESH_REDIRECT",
        "-A HOSTMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ]


@pytest.mark.parametrize("params, negated", [
    ({"bypass": "uid", "proxy_uid": 2102}, "-m owner ! --uid-owner 2102"),
    ({"bypass": "gid", "proxy_gid": 1338}, "-m owner ! --gid-owner 1338"),
    ({"bypass": "mark", "proxy_mark": "0x10/0xff"}, "-m mark ! --mark 0x10/0xff"),
    ({"bypass": "net_cls", "proxy_classid": "0x100001"}, "-m cgroup ! --cgroup 1048577"),
])
def test_render_bypass_modes_use_the_designs_negated_match(params, negated):
    rules = lines(nf.render_ruleset(config(**params), "ipv4").rules)
    assert f"-A HOSTMESH_OUTPUT {negated} -j HOSTMESH_REDIRECT" in rules
    assert f"-A HOSTMESH_OUTPUT -o lo {negated} -j RETURN" in rules


def test_render_cgroup_path_carries_cgroup_id():
    c = config(bypass="cgroup_path", proxy_cgroup_path="system.slice/hostmesh-envoy.service")
    rules = lines(nf.render_ruleset(c, "ipv4", cgroup_id=4242).rules)
    assert ('-A HOSTMESH_OUTPUT -m comment --comment "hostmesh:cgroup-id=4242" '
            '-m cgroup ! --path system.slice/hostmesh-envoy.service -j HOSTMESH_REDIRECT') in rules
    # A re-created cgroup (new id) renders differently, so it shows up as drift.
    assert lines(nf.render_ruleset(c, "ipv4", cgroup_id=4243).rules) != rules


def test_render_ipv6_uses_ipv6_loopback_and_family_cidrs():
    c = config(outbound_exclude_cidrs=["10.0.0.0/8", "fd00::/8"], outbound_include_cidrs=["192.0.2.0/24", "2001:db8::/32"])
    v4 = lines(nf.render_ruleset(c, "ipv4").rules)
    v6 = lines(nf.render_ruleset(c, "ipv6").rules)
    assert "-A HOSTMESH_OUTPUT -s ::6/128 -o lo -j RETURN" in v6
    assert "-A HOSTMESH_OUTPUT -d ::1/128 -j RETURN" in v6
    assert "-A HOSTMESH_OUTPUT -d fd00::/8 -j RETURN" in v6 and "-A HOSTMESH_OUTPUT -d 10.0.0.0/8 -j RETURN" not in v6
    assert "-A HOSTMESH_OUTPUT -d 10.0.0.0/8 -j RETURN" in v4 and "-A HOSTMESH_OUTPUT -d fd00::/8 -j RETURN" not in v4
    assert "-A HOSTMESH_OUTPUT -d 2001:db8::/32 -m owner ! --uid-owner 1337 -j HOSTMESH_REDIRECT" in v6
    assert "-A HOSTMESH_OUTPUT -d 192.0.2.0/24 -m owner ! --uid-owner 1337 -j HOSTMESH_REDIRECT" in v4


def test_render_include_cidrs_of_other_family_only_captures_nothing_in_this_family():
    rules = lines(nf.render_ruleset(config(outbound_include_cidrs=["10.0.0.0/8"]), "ipv6").rules)
    assert not [r for r in rules if "-j HOSTMESH_REDIRECT" in r]


def test_render_multiport_chunks_respect_the_15_slot_limit():
    ports = [str(p) for p in range(1000, 1200)]
    c = config(outbound_exclude_ports=ports + ["2000-2100"])
    rules = [r for r in lines(nf.render_ruleset(c, "ipv4").rules) if "--dports" in r and r.startswith("-A HOSTMESH_OUTPUT")]
    covered = []
    for rule in rules:
        specs = rule.split("--dports ")[1].split(" ")[0].split(",")
        assert sum(2 if ":" in s else 1 for s in specs) <= 15
        covered += specs
    assert covered == ports + ["2000:2100"]


def test_render_single_port_design_and_capture_switches():
    c = config(inbound_port=5001, outbound_port=5001, capture_inbound=False)
    r = nf.render_ruleset(c, "ipv4")
    assert r.chains == ["HOSTMESH_OUTPUT", "HOSTMESH_REDIRECT"]
    assert not any("PREROUTING" in j for j in lines(r.jumps))
    # Without an inbound listener there is no hairpin rule into it.
    assert not any("HOSTMESH_INBOUND" in rule for rule in lines(r.rules))
    assert "-A HOSTMESH_REDIRECT -p tcp -j REDIRECT --to-ports 5001" in lines(r.rules)
    assert nf.render_ruleset(config(capture_inbound=False, capture_outbound=False), "ipv4").is_empty()
    assert nf.render_ruleset(config(state="absent"), "ipv4").is_empty()


def test_render_inbound_ports_and_excludes():
    c = config(inbound_ports=["80", "8000-8080"], inbound_exclude_ports=[22, 2222])
    rules = lines(nf.render_ruleset(c, "ipv4").rules)
    assert rules[:2] == [
        "-A HOSTMESH_INBOUND -p tcp -m multiport --dports 22,2222 -j RETURN",
        "-A HOSTMESH_INBOUND -p tcp -m multiport --dports 80,8000:8080 -j HOSTMESH_IN_REDIRECT",
    ]


def test_render_exclusions_come_before_capture():
    c = config(exclude_uids=[998], exclude_gids=[997], outbound_exclude_ports=[25], outbound_exclude_cidrs=["169.254.169.254"])
    rules = lines(nf.render_ruleset(c, "ipv4").rules)
    capture = rules.index("-A HOSTMESH_OUTPUT -m owner ! --uid-owner 1337 -j HOSTMESH_REDIRECT")
    for excluded in ("-A HOSTMESH_OUTPUT -m owner --uid-owner 998 -j RETURN",
                     "-A HOSTMESH_OUTPUT -m owner --gid-owner 997 -j RETURN",
                     "-A HOSTMESH_OUTPUT -p tcp -m multiport --dports 25 -j RETURN",
                     "-A HOSTMESH_OUTPUT -d 169.254.169.254/32 -j RETURN"):
        assert rules.index(excluded) < capture


# -- parsing and canonicalising ---------------------------------------------------

SAVE_WITH_FOREIGN = """\
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Wed Nov 25 21:44:38 2026
*filter
:INPUT ACCEPT [10:600]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [3:180]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
# Completed on Wed Nov 25 21:44:38 2026
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Wed Nov 25 21:44:38 2026
*nat
:PREROUTING ACCEPT [5:300]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [7:420]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:HOSTMESH_INBOUND - [0:0]
:HOSTMESH_IN_REDIRECT - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_INBOUND
-A OUTPUT -d 10.9.9.9/32 -p tcp -j RETURN
-A DOCKER -i docker0 -j RETURN
-A HOSTMESH_INBOUND -p tcp -m multiport --dports 22 -j RETURN
-A HOSTMESH_INBOUND -p tcp -j HOSTMESH_IN_REDIRECT
-A HOSTMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
# Completed on Wed Nov 25 21:44:38 2026
"""


def test_parse_save_tables_chains_rules():
    tables = nf.parse_save(SAVE_WITH_FOREIGN)
    assert set(tables) == {"filter", "nat"}
    nat = tables["nat"]
    assert nat.chains["PREROUTING"] == "ACCEPT" and nat.chains["DOCKER"] == "-"
    assert nat.rules[0] == "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER"
    assert len(nat.rules) == 7
    assert tables["filter"].chains["FORWARD"] == "DROP"


def test_parse_save_refuses_tables_it_cannot_read():
    text = "# Table `nat' is incompatible, use 'nft' tool.\n"
    with pytest.raises(nf.HostmeshError, match="native nftables"):
        nf.parse_save(text)


def test_parse_save_rejects_garbage():
    with pytest.raises(nf.HostmeshError):
        nf.parse_save("*nat\n-Z what\nCOMMIT\n")


def test_owned_view_takes_only_owned_objects():
    view = nf.owned_view(nf.parse_save(SAVE_WITH_FOREIGN)["nat"], config())
    assert view.chains == ["HOSTMESH_INBOUND", "HOSTMESH_IN_REDIRECT"]
    assert lines(view.jumps) == ['-A PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_INBOUND']
    assert all(r.startswith("-A HOSTMESH_") for r in lines(view.rules)) and len(view.rules) == 3


def test_owned_view_recognises_an_untagged_jump_and_a_tagged_rule():
    dump = nf.parse_save("*nat\n:HOSTMESH_OUTPUT - [0:0]\n-A OUTPUT -j HOSTMESH_OUTPUT\n"
                         '-A OUTPUT -m comment --comment "hostmesh:HOSTMESH" -j ACCEPT\n'
                         '-A OUTPUT -m comment --comment "hostmesh:OTHER" -j ACCEPT\nCOMMIT\n')["nat"]
    assert len(nf.owned_view(dump, config()).jumps) == 2


def test_rule_tokens_ignore_quoting_only():
    assert nf.Rule.parse('-A X -m comment --comment "a:b" -j Y') == nf.Rule.parse("-A X -m comment --comment a:b -j Y")
    assert nf.Rule.parse("-A X --path \"a/b\" -j Y") != nf.Rule.parse("-A X --path a/c -j Y")


# -- planning -----------------------------------------------------------------------

def live_of(save_text, c):
    return nf.owned_view(nf.parse_save(save_text).get("nat"), c)


def applied(c, family="ipv4"):
    """The save text of a table holding exactly the desired rules plus foreign ones."""
    desired = nf.render_ruleset(c, family)
    return ("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n"
            + "".join(f":{ch} - [0:0]\n" for ch in desired.chains)
            + "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n"
            + "".join(line + "\n" for line in lines(desired.jumps + desired.rules)) + "COMMIT\n")


def test_plan_empty_table_creates_chains_then_jumps():
    c = config()
    plan = nf.plan_table(nf.Ruleset(), nf.render_ruleset(c, "ipv4"), c)
    lines = plan.restore.splitlines()
    assert plan.changed and lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert lines.index(":HOSTMESH_OUTPUT - [0:0]") < lines.index(
        '-A OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT')
    assert not [line for line in lines if line.startswith(("-D", "-F", "-X"))]
    # Never names a chain that is not ours.
    assert not [line for line in lines if "DOCKER" in line]


def test_plan_in_sync_is_a_no_op():
    c = config()
    assert not nf.plan_table(live_of(applied(c), c), nf.render_ruleset(c, "ipv4"), c).changed


def test_plan_in_sync_despite_quoting_differences():
    c = config(bypass="cgroup_path", proxy_cgroup_path="a.slice")
    desired = nf.render_ruleset(c, "ipv4", cgroup_id=7)
    printed = applied(c).replace("--path a.slice", '--path "a.slice"')
    printed = printed.replace("--comment hostmesh:cgroup-id=7", '--comment "hostmesh:cgroup-id=7"')
    live = live_of(printed.replace("-m cgroup", '-m comment --comment "hostmesh:cgroup-id=7" -m cgroup'), c)
    assert not nf.plan_table(live, desired, c).changed


def test_plan_drifted_rule_rewrites_owned_chains_but_keeps_good_jumps():
    c = config()
    drifted = applied(c).replace("--to-ports 15001", "--to-ports 15999")
    plan = nf.plan_table(live_of(drifted, c), nf.render_ruleset(c, "ipv4"), c)
    lines = plan.restore.splitlines()
    assert "-A HOSTMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in lines
    assert not [line for line in lines if line.startswith(("-A PREROUTING", "-A OUTPUT", "-D"))]


def test_plan_missing_jump_only_adds_the_jump():
    c = config()
    text = applied(c).replace('-A OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT\n', "")
    plan = nf.plan_table(live_of(text, c), nf.render_ruleset(c, "ipv4"), c)
    assert plan.restore.splitlines() == [
        "*nat", '-A OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT', "COMMIT"]


def test_plan_duplicate_jump_is_deleted_by_its_exact_text():
    c = config()
    jump = '-A OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT'
    text = applied(c).replace(jump + "\n", jump + "\n" + jump + "\n")
    plan = nf.plan_table(live_of(text, c), nf.render_ruleset(c, "ipv4"), c)
    assert plan.restore.splitlines() == ["*nat", "-D" + jump[2:], "COMMIT"]


def test_plan_insert_position():
    c = config(jump_position="insert", capture_inbound=False)
    plan = nf.plan_table(nf.Ruleset(), nf.render_ruleset(c, "ipv4"), c)
    assert '-I OUTPUT 1 -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT' in plan.restore


def test_plan_absent_removes_jumps_then_chains():
    c = config()
    absent = config(state="absent")
    plan = nf.plan_table(live_of(applied(c), c), nf.render_ruleset(absent, "ipv4"), absent)
    lines = plan.restore.splitlines()
    deletes = [i for i, line in enumerate(lines) if line.startswith("-D")]
    flushes = [i for i, line in enumerate(lines) if line.startswith("-F")]
    removes = [i for i, line in enumerate(lines) if line.startswith("-X")]
    assert len(deletes) == 2 and len(flushes) == 4 and len(removes) == 4
    assert max(deletes) < min(flushes) and max(flushes) < min(removes)
    assert not [line for line in lines if "DOCKER" in line]
    assert not [line for line in lines if line.startswith(":")]


def test_plan_turning_inbound_off_drops_its_chains_and_jump():
    c = config()
    off = config(capture_inbound=False)
    lines = nf.plan_table(live_of(applied(c), c), nf.render_ruleset(off, "ipv4"), off).restore.splitlines()
    assert "-X HOSTMESH_INBOUND" in lines and "-X HOSTMESH_IN_REDIRECT" in lines
    assert "-D PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment \"hostmesh:HOSTMESH\" -j HOSTMESH_INBOUND" in lines
    assert ":HOSTMESH_OUTPUT - [0:0]" in lines


def test_ruleset_text_is_iptables_save_form():
    text = nf.render_ruleset(config(capture_outbound=False), "ipv4").text()
    assert text.splitlines()[0] == "*nat" and text.splitlines()[-1] == "COMMIT"
    assert nf.parse_save(text)["nat"].chains == {"HOSTMESH_INBOUND": "-", "HOSTMESH_IN_REDIRECT": "-"}


def test_plan_after_keeps_live_spelling_so_diffs_show_only_real_changes():
    c = config(bypass="cgroup_path", proxy_cgroup_path="a.slice")
    desired = nf.render_ruleset(c, "ipv4", cgroup_id=7)
    live = nf.Ruleset(list(desired.chains),
                      [nf.Rule.parse(line.replace("--path a.slice", '--path "a.slice"')) for line in lines(desired.rules)],
                      list(desired.jumps))
    live.rules[-1] = nf.Rule.parse(live.rules[-1].text().replace("15001", "15002"))
    plan = nf.plan_table(live, desired, c)
    assert plan.changed
    changed = [line for line in lines(plan.after.rules) if line not in lines(plan.before.rules)]
    assert changed == ["-A HOSTMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001"]
