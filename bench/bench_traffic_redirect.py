# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Benchmark: traffic_redirect versus ansible.builtin.iptables (not a timed test).

In a fresh network namespace, apply a ruleset with 200 excluded ports and 100
excluded CIDRs:

* with hostmesh.sidecar.traffic_redirect (one task), and
* with ansible.builtin.iptables, one rule per loop item, producing the same
  resulting rules (checked by comparing the owned rules of both namespaces).

Prints both wall times and the ratio, then re-runs traffic_redirect with the
same options and counts the iptables commands it ran (through logging shims on
PATH): a no-op run must only read, with one -save per family.

Usage (as root, from the repository root):
    .venv/bin/python bench/bench_traffic_redirect.py [--variant nft|legacy]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import harness  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, str(harness.collections_path()))

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _netfilter as nf  # noqa: E402


def options(variant: str) -> dict:
    ports = [str(port) for port in range(20000, 20200)]
    cidrs = [f"10.{i // 250}.{i % 250}.0/24" for i in range(100)]
    return {"backend": variant, "ip_families": ["ipv4"], "outbound_exclude_ports": ports,
            "outbound_exclude_cidrs": cidrs}


def builtin_items(config) -> tuple:
    """ansible.builtin.iptables parameters producing exactly our rules."""
    ruleset = nf.render_ruleset(config, "ipv4")
    items = []
    for rule in ruleset.rules + ruleset.jumps:
        tokens = rule.params
        item = {"table": "nat", "chain": rule.chain}
        i, negate = 0, ""
        while i < len(tokens):
            token = tokens[i]
            if token == "!":
                negate = "!"
                i += 1
                continue
            value = tokens[i + 1] if i + 1 < len(tokens) else None
            if token == "--tcp-flags":
                # The jumps' SYN-only match: --tcp-flags MASK SET, two values.
                item["tcp_flags"] = {"flags": value.split(","), "flags_set": tokens[i + 2].split(",")}
                i += 3
                continue
            if token == "-s":
                item["source"] = negate + value
            elif token == "-d":
                item["destination"] = negate + value
            elif token == "-o":
                item["out_interface"] = value
            elif token == "-p":
                item["protocol"] = value
            elif token == "-m":
                if value not in ("multiport", "owner", "comment", "tcp"):
                    raise ValueError(f"bench cannot express -m {value}")
            elif token == "--dports":
                item["destination_ports"] = value.split(",")
            elif token == "--uid-owner":
                item["uid_owner"] = negate + value
            elif token == "--comment":
                item["comment"] = value
            elif token == "-j":
                item["jump"] = value
            elif token == "--to-ports":
                item["to_ports"] = value
            else:
                raise ValueError(f"bench cannot express {token}")
            negate = ""
            i += 2
        items.append(item)
    return ruleset.chains, items


def builtin_playbook(config, variant: str) -> list:
    chains, items = builtin_items(config)
    # ansible.builtin.iptables calls plain "iptables"; a PATH shim points it at the variant.
    return [
        {"name": "chains", "loop": chains,
         "ansible.builtin.iptables": {"table": "nat", "chain": "{{ item }}", "chain_management": True}},
        {"name": "rules", "ansible.builtin.iptables": "{{ item }}", "loop": items},
    ]


def shim_dir(variant: str, log: pathlib.Path) -> pathlib.Path:
    """PATH entries logging every iptables command, then running the real one."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="hm-bench-shims-"))
    for family in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            for name in sorted({f"{family}{suffix}", f"{family}-{variant}{suffix}"}):
                real = f"/usr/sbin/{family}-{variant}{suffix}"
                script = directory / name
                script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexec {real} "$@"\n')
                script.chmod(0o755)
    return directory


def timed(fn):
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def owned_rules(ns, variant):
    text = ns.run([f"iptables-{variant}-save", "-t", "nat"]).stdout
    view = nf.owned_view(nf.parse_save(text).get("nat"), nf.config_from_params({}))
    # Rules compare by their tokens (iptables-save's quoting undone).
    return sorted(view.chains), list(view.rules), sorted(view.jumps, key=lambda jump: (jump.chain, jump.params))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("nft", "legacy"), default="nft")
    args = parser.parse_args()
    variant = args.variant
    opts = options(variant)
    config = nf.config_from_params(opts)
    log = pathlib.Path(tempfile.mkstemp(prefix="hm-bench-log-")[1])
    shims = shim_dir(variant, log)
    env = {"PATH": f"{shims}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
    ours, theirs = harness.NetNS(), harness.NetNS()
    try:
        t_ours, first = timed(lambda: harness.run_playbook(
            [{"name": "redirect", "hostmesh.sidecar.traffic_redirect": opts}], netns=ours, env=env))
        assert first.rc == 0 and first.task("redirect")["changed"], first.output()
        t_builtin, builtin = timed(lambda: harness.run_playbook(builtin_playbook(config, variant), netns=theirs, env=env))
        assert builtin.rc == 0, builtin.output()
        same = owned_rules(ours, variant) == owned_rules(theirs, variant)
        rule_count = len(owned_rules(ours, variant)[1]) + len(owned_rules(ours, variant)[2])

        log.write_text("")
        t_noop, again = timed(lambda: harness.run_playbook(
            [{"name": "redirect", "hostmesh.sidecar.traffic_redirect": opts}], netns=ours, env=env))
        assert again.rc == 0 and not again.task("redirect")["changed"], again.output()
        commands = [line.split()[0] for line in log.read_text().splitlines()]
        writes = [c for c in commands if c.endswith("-restore") or c in ("iptables", "ip6tables")
                  or c in (f"iptables-{variant}", f"ip6tables-{variant}")]
        saves = [c for c in commands if c.endswith("-save")]

        print(f"ruleset: 200 excluded ports, 100 excluded CIDRs -> {rule_count} rules in nat (iptables-{variant})")
        print(f"{'method':<48}{'wall time':>12}")
        print(f"{'hostmesh.sidecar.traffic_redirect (1 task)':<48}{t_ours:>11.2f}s")
        print(f"{'ansible.builtin.iptables (1 rule per loop item)':<48}{t_builtin:>11.2f}s")
        print(f"{'ratio (builtin / traffic_redirect)':<48}{t_builtin / t_ours:>11.1f}x")
        print(f"{'traffic_redirect no-op re-run':<48}{t_noop:>11.2f}s")
        print(f"resulting rules identical: {same}")
        print(f"no-op re-run commands: {len(saves)} save ({', '.join(saves)}), {len(writes)} writes")
        return 0 if same and not writes and len(saves) == 1 else 1
    finally:
        ours.close()
        theirs.close()
        log.unlink()
        for item in shims.iterdir():
            item.unlink()
        shims.rmdir()


if __name__ == "__main__":
    sys.exit(main())
