# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the iptables engine's shape: the one option declaration and
the module documentation that must match it, the Rule value, the one in-sync
test, the auto variant choice, which created tables removal may delete, and the
golden rulesets (one per bypass mode and IP family, as Istio keeps them).

Regenerate the golden files after an intended rendering change with
``HOSTMESH_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/plugins/module_utils/test_netfilter_shape.py``
and review the diff; without the variable the files are only compared.
"""

from __future__ import annotations

import os
import pathlib

import pytest
import yaml

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _netfilter as nf
from ansible_collections.hostmesh.sidecar.plugins.modules import traffic_redirect

GOLDEN_DIR = pathlib.Path(__file__).parent / "testdata" / "netfilter"
UPDATE_GOLDEN = os.environ.get("HOSTMESH_UPDATE_GOLDEN") == "1"


# -- one declaration -----------------------------------------------------------

def test_documentation_options_equal_the_declaration():
    documented = yaml.safe_load(traffic_redirect.DOCUMENTATION)["options"]
    assert list(documented) == list(nf.OPTION_NAMES)
    for option in nf.OPTIONS:
        doc = documented[option.name]
        default = list(option.default) if isinstance(option.default, tuple) else option.default
        assert doc["type"] == option.type, option.name
        assert doc.get("default") == default, option.name
        assert doc.get("choices") == (list(option.choices) if option.choices else None), option.name
        assert doc.get("elements") == option.elements, option.name
        assert not doc.get("required", False), option.name


def test_argument_spec_defaults_and_config_fields_come_from_the_declaration():
    spec = nf.argument_spec()
    assert list(spec) == list(nf.OPTION_NAMES) == list(nf.RedirectConfig.__dataclass_fields__)
    assert spec["inbound_exclude_ports"] == {"type": "list", "elements": "str", "default": ["22"]}
    assert spec["ip_families"] == {"type": "list", "elements": "str", "choices": ["ipv4", "ipv6"]}
    assert spec["proxy_gid"] == {"type": "int"}
    assert nf.required_if() == [("bypass", "gid", ["proxy_gid"]), ("bypass", "cgroup_path", ["proxy_cgroup_path"])]
    assert nf.DEFAULTS["proxy_uid"] == 1337 and nf.DEFAULTS["rules_file"] is None


def test_validation_reports_every_bad_option_at_once():
    with pytest.raises(nf.HostmeshError) as err:
        nf.config_from_params({"inbound_port": 0, "inbound_exclude_ports": ["22", "ssh", "9-8"], "bypass": "gid",
                               "proxy_mark": "0", "chain_prefix": "1BAD", "bogus": True})
    options = [option for option, dummy in err.value.problems]
    assert options == ["bogus", "inbound_port", "inbound_exclude_ports", "inbound_exclude_ports", "proxy_mark",
                       "chain_prefix", "proxy_gid"]
    message = str(err.value)
    assert message.startswith("Invalid option ")
    for part in ("inbound_port=0", "inbound_exclude_ports='ssh'", "range start is greater than its end",
                 "proxy_mark='0'", "chain_prefix='1BAD'", "is required when bypass=gid", "bogus=True"):
        assert part in message
    assert err.value.fail_json_args()["option"] == "bogus"


@pytest.mark.parametrize("option", ["proxy_classid", "proxy_uid", "inbound_port", "wait", "proxy_mark"])
def test_one_integer_grammar_refuses_underscores(option):
    with pytest.raises(nf.HostmeshError) as err:
        nf.config_from_params({option: "1_048_577" if option != "inbound_port" else "8_080"})
    assert err.value.option == option


def test_rules_file_of_0_1_0_still_loads(tmp_path):
    # The document 0.1.0 wrote: config (with the classid as an integer), rules and variants.
    path = tmp_path / "redirect.json"
    path.write_text('{"comment": "x", "variants": {"ipv4": "nft"}, "rules": {"ipv4": []}, "config": {'
                    '"backend": "auto", "bypass": "net_cls", "capture_inbound": true, "capture_outbound": true, '
                    '"chain_prefix": "HOSTMESH", "exclude_gids": [], "exclude_uids": [998], "inbound_exclude_ports": '
                    '["22"], "inbound_port": 15006, "inbound_ports": [], "ip_families": null, "jump_position": "append", '
                    '"outbound_exclude_cidrs": [], "outbound_exclude_ports": [], "outbound_include_cidrs": [], '
                    '"outbound_port": 15001, "proxy_cgroup_path": null, "proxy_classid": 1048577, "proxy_gid": null, '
                    '"proxy_mark": "0x1", "proxy_uid": 1337, "rules_file": "/etc/hostmesh/redirect.json", '
                    '"state": "present", "wait": 5}}')
    config = nf.load_rules_file(str(path))
    assert (config.bypass, config.proxy_classid, config.exclude_uids) == ("net_cls", 0x100001, (998,))


# -- rules as values --------------------------------------------------------------

JUMP = '-A OUTPUT -p tcp -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT'


def test_rule_renders_append_insert_and_delete_from_its_tokens():
    rule = nf.Rule.parse(JUMP)
    assert (rule.chain, rule.target) == ("OUTPUT", "HOSTMESH_OUTPUT")
    assert rule.params[4:6] == ("--comment", "hostmesh:HOSTMESH")
    assert rule.append() == JUMP
    assert rule.insert(1) == '-I OUTPUT 1 -p tcp -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT'
    assert rule.delete() == '-D OUTPUT -p tcp -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_OUTPUT'
    assert rule.carries_comment("hostmesh:HOSTMESH") and not rule.carries_comment("hostmesh:OTHER")


def test_rule_keeps_the_live_spelling_for_display_but_compares_tokens():
    live = nf.Rule.parse('-A X -m cgroup ! --path "a.slice" -j Y')
    rendered = nf.rule("X", "-m", "cgroup", "!", "--path", "a.slice", "-j", "Y")
    assert live == rendered and hash(live) == hash(rendered)
    assert live.text() == '-A X -m cgroup ! --path "a.slice" -j Y'
    assert rendered.text() == "-A X -m cgroup ! --path a.slice -j Y"
    with pytest.raises(nf.HostmeshError):
        nf.Rule.parse("-I X 1 -j Y")


def test_in_sync_is_the_one_test_of_planning_and_read_back():
    config = nf.config_from_params({})
    desired = nf.render_ruleset(config, "ipv4")
    same = nf.Ruleset(list(reversed(desired.chains)), list(desired.rules), list(reversed(desired.jumps)))
    assert nf.in_sync(same, desired) and not nf.plan_table(same, desired, config).changed
    doubled = nf.Ruleset(list(desired.chains), list(desired.rules), desired.jumps + desired.jumps[:1])
    assert not nf.in_sync(doubled, desired) and nf.plan_table(doubled, desired, config).changed
    reordered = nf.Ruleset(list(desired.chains), list(reversed(desired.rules)), list(desired.jumps))
    assert not nf.in_sync(reordered, desired) and nf.plan_table(reordered, desired, config).changed


# -- the auto variant choice -------------------------------------------------------

BOTH = ("nft", "legacy")


@pytest.mark.parametrize("kwargs, expected", [
    ({"requested": "legacy", "holding_ours": ["nft"]}, "legacy"),
    ({"requested": "auto", "holding_ours": ["legacy"], "holding_rules": ["nft", "legacy"]}, "legacy"),
    ({"requested": "auto", "holding_ours": ["nft", "legacy"]}, "nft"),
    ({"requested": "auto", "holding_rules": ["legacy"]}, "legacy"),
    ({"requested": "auto", "holding_rules": ["nft"], "configured": "legacy"}, "nft"),
    ({"requested": "auto", "holding_rules": ["nft", "legacy"], "configured": "legacy"}, "nft"),
    ({"requested": "auto"}, "nft"),
    # The reported bug: iptables and ip6tables are legacy, IPv4 went to legacy
    # (another tool's rules are there), no variant holds IPv6 rules yet.
    ({"requested": "auto", "configured": "legacy", "other_family": "legacy"}, "legacy"),
    ({"requested": "auto", "configured": None, "other_family": "legacy"}, "legacy"),
    ({"requested": "auto", "configured": "nft", "other_family": "legacy"}, "nft"),
])
def test_choose_variant(kwargs, expected):
    assert nf.choose_variant(BOTH, **kwargs) == expected


def test_choose_variant_only_picks_available_variants():
    assert nf.choose_variant(("legacy",), "auto", configured="nft", other_family="nft") == "legacy"
    assert nf.choose_variant(("nft",), "auto", holding_rules=["legacy"], configured="legacy") == "nft"


@pytest.mark.parametrize("text, expected", [
    ("iptables v1.8.9 (legacy)\n", "legacy"), ("ip6tables v1.8.9 (nf_tables)\n", "nft"), ("iptables v1.4.21\n", None),
])
def test_variant_of_version(text, expected):
    assert nf.variant_of_version(text) == expected


# -- which created table removal may delete -------------------------------------------

EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"


def nat_dump(extra=""):
    return nf.parse_save(EMPTY_NAT + extra + "COMMIT\n")["nat"]


@pytest.mark.parametrize("extra, empty", [
    ("", True),
    (":HOSTMESH_OUTPUT - [0:0]\n-A OUTPUT -m comment --comment \"hostmesh:HOSTMESH\" -j HOSTMESH_OUTPUT\n"
     "-A HOSTMESH_OUTPUT -j RETURN\n", True),
    ("-A POSTROUTING -j MASQUERADE\n", False),
    (":DOCKER - [0:0]\n", False),
    (":HOSTMESH_OUTPUT - [0:0]\n-A OUTPUT -d 10.0.0.1/32 -j RETURN\n", False),
])
def test_left_empty_counts_only_owned_objects_and_builtin_chains(extra, empty):
    dump = nat_dump(extra)
    assert nf.left_empty(dump, nf.owned_view(dump, nf.config_from_params({}))) is empty


def test_left_empty_refuses_a_changed_policy_and_a_missing_table():
    dump = nf.parse_save(EMPTY_NAT.replace(":OUTPUT ACCEPT", ":OUTPUT DROP") + "COMMIT\n")["nat"]
    assert not nf.left_empty(dump, nf.Ruleset())
    assert not nf.left_empty(None, nf.Ruleset())


# -- golden rulesets -------------------------------------------------------------------

GOLDEN_OPTIONS = {
    "uid": {"bypass": "uid", "proxy_uid": 2102},
    "gid": {"bypass": "gid", "proxy_gid": 1338},
    "mark": {"bypass": "mark", "proxy_mark": "0x10/0xf0"},
    "net_cls": {"bypass": "net_cls", "proxy_classid": "0x100001"},
    "cgroup_path": {"bypass": "cgroup_path", "proxy_cgroup_path": "system.slice/hostmesh-envoy.service"},
}
# The same exclusions everywhere, so each file shows where they go.
COMMON = {"inbound_exclude_ports": ["22", "9100"], "outbound_exclude_ports": ["25", "8000-8100"],
          "outbound_exclude_cidrs": ["169.254.169.254/32", "fd00:ec2::254/128"], "exclude_uids": [998]}


@pytest.mark.parametrize("family", nf.FAMILIES)
@pytest.mark.parametrize("mode", nf.BYPASS_MODES)
def test_golden_ruleset(mode, family):
    config = nf.config_from_params(dict(COMMON, **GOLDEN_OPTIONS[mode]))
    text = nf.render_ruleset(config, family, cgroup_id=4242 if mode == "cgroup_path" else None).text()
    golden = GOLDEN_DIR / f"{mode}-{family}.golden"
    if UPDATE_GOLDEN:
        golden.write_text(text)
    assert text == golden.read_text(), f"rendering changed; see {golden} (HOSTMESH_UPDATE_GOLDEN=1 rewrites it)"
    # And the rendering reads back as itself: what iptables-save would print.
    dump = nf.parse_save(text)["nat"]
    assert nf.in_sync(nf.owned_view(dump, config), nf.render_ruleset(
        config, family, cgroup_id=4242 if mode == "cgroup_path" else None))
