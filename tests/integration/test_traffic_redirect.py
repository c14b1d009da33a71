# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""traffic_redirect through ansible-playbook, on a real kernel, in fresh network
namespaces, for both iptables variants.

Two kinds of tests:

* lifecycle: apply / re-apply / update / drift in check mode / absent, with other
  tools' rules (a Docker-like chain and its jumps, an admin's OUTPUT rule, a
  filter-table rule) compared byte for byte at every step;
* behaviour: a listener on the redirect ports records each connection's original
  destination (SO_ORIGINAL_DST), so every assertion is about where a real TCP
  connection went, not about rule text.
"""

from __future__ import annotations

import json
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _host
from ansible_collections.hostmesh.sidecar.plugins.module_utils import _netfilter as nf
from harness import run_playbook

REPO = pathlib.Path(__file__).resolve().parents[2]
PROBE = pathlib.Path(__file__).parent / "files" / "redirect_probe.py"
PYTHON = "/usr/bin/python3"

FOREIGN_V4 = """\
*filter
:INPUT ACCEPT [0:0]
:ADMIN_IN - [0:0]
-A INPUT -p tcp -m tcp --dport 2222 -j ADMIN_IN
-A ADMIN_IN -s 192.0.2.0/24 -j ACCEPT
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -d 198.51.100.7/32 -p tcp -m comment --comment "admin: keep the backup target direct" -j RETURN
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8443 -j DNAT --to-destination 172.17.0.2:443
COMMIT
"""

FOREIGN_V6 = """\
*nat
:DOCKER - [0:0]
-A OUTPUT -d 2001:db8::7/128 -p tcp -j RETURN
-A DOCKER -i docker0 -j RETURN
COMMIT
"""


def save(ns, variant, family="ipv4"):
    binary = ("iptables" if family == "ipv4" else "ip6tables") + f"-{variant}-save"
    return ns.run([binary]).stdout


def foreign_lines(save_text, config):
    """Every line of an iptables-save dump that the engine does not own, with
    counters zeroed: what must come through every step byte for byte."""
    owned = set(config.owned_chains)
    out = []
    for raw in save_text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.startswith(":") and line[1:].split(" ")[0] in owned:
            continue
        if line.startswith("-A "):
            parsed = nf.Rule.parse(line)
            if parsed.chain in owned or parsed.target in owned:
                continue
        out.append(re.sub(r"\[\d+:\d+\]$", "[0:0]", line) if line.startswith(":") else line)
    return out


def test_foreign_lines_drop_owned_objects_and_counters():
    text = ("*nat\n:PREROUTING ACCEPT [5:300]\n:INPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:HOSTMESH_INBOUND - [0:0]\n"
            "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n"
            '-A PREROUTING -p tcp -m comment --comment "hostmesh:HOSTMESH" -j HOSTMESH_INBOUND\n'
            "-A HOSTMESH_INBOUND -p tcp -m multiport --dports 22 -j RETURN\nCOMMIT\n")
    lines = foreign_lines(text, nf.config_from_params({}))
    assert ":PREROUTING ACCEPT [0:0]" in lines and ":INPUT ACCEPT [0:0]" in lines
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER" in lines
    assert not [line for line in lines if "HOSTMESH" in line]


def foreign(ns, variant, family="ipv4"):
    return foreign_lines(save(ns, variant, family), nf.config_from_params({}))


def texts(rules):
    return [r.text() for r in rules]


def owned(ns, variant, family="ipv4"):
    text = save(ns, variant, family)
    return nf.owned_view(nf.parse_save(text).get("nat"), nf.config_from_params({}))


def restore(ns, variant, text, family="ipv4"):
    binary = ("iptables" if family == "ipv4" else "ip6tables") + f"-{variant}-restore"
    ns.run([binary, "--noflush"], input=text)


def redirect_task(name, variant, **args):
    return {"name": name, "hostmesh.sidecar.traffic_redirect": dict({"backend": variant}, **args),
            "register": "result"}


def ipv6_up(ns):
    ns.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"])


# ---------------------------------------------------------------------------
# lifecycle
# ---------------------------------------------------------------------------

def test_lifecycle_keeps_foreign_rules_byte_for_byte(netns, iptables_variant):
    variant = iptables_variant
    ipv6_up(netns)
    restore(netns, variant, FOREIGN_V4)
    restore(netns, variant, FOREIGN_V6, "ipv6")
    foreign_v4, foreign_v6 = foreign(netns, variant), foreign(netns, variant, "ipv6")
    assert "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8443 -j DNAT --to-destination 172.17.0.2:443" in foreign_v4

    def unchanged_foreign():
        assert foreign(netns, variant) == foreign_v4
        assert foreign(netns, variant, "ipv6") == foreign_v6

    # 1. apply, then the same again
    first = run_playbook([redirect_task("apply", variant, outbound_exclude_ports=[25])], netns=netns, diff=True)
    assert first.rc == 0, first.output
    applied = first.task("apply")
    assert applied["changed"] and applied["variant"] == variant and applied["families"] == ["ipv4", "ipv6"]
    assert applied["diff"][0]["before"] == ""
    assert "-A HOSTMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in applied["diff"][0]["after"]
    unchanged_foreign()
    live = owned(netns, variant)
    assert live.chains == ["HOSTMESH_INBOUND", "HOSTMESH_IN_REDIRECT", "HOSTMESH_OUTPUT", "HOSTMESH_REDIRECT"]
    assert len(live.jumps) == 2
    # Appended: other tools' rules in the hooks still come first.
    nat_rules = nf.parse_save(save(netns, variant))["nat"].rules
    output = [r for r in nat_rules if r.startswith("-A OUTPUT")]
    assert "hostmesh:HOSTMESH" in output[-1] and "DOCKER" in output[0]

    second = run_playbook([redirect_task("apply", variant, outbound_exclude_ports=[25])], netns=netns, diff=True)
    assert second.rc == 0 and not second.task("apply")["changed"], second.output
    assert second.task("apply")["diff"][0]["before"] == second.task("apply")["diff"][0]["after"]

    # 2. update: one more excluded CIDR; jumps untouched
    jumps_before = owned(netns, variant).jumps
    update = run_playbook([redirect_task("apply", variant, outbound_exclude_ports=[25],
                                         outbound_exclude_cidrs=["203.0.113.0/24"])], netns=netns)
    assert update.rc == 0 and update.task("apply")["changed"], update.output
    assert "-A HOSTMESH_OUTPUT -d 203.0.113.0/24 -j RETURN" in texts(owned(netns, variant).rules)
    assert texts(owned(netns, variant).jumps) == texts(jumps_before)
    unchanged_foreign()

    # 3. drift: somebody deletes one of our rules and duplicates a jump.
    netns.run([f"iptables-{variant}", "-t", "nat", "-D", "HOSTMESH_OUTPUT", "-d", "203.0.113.0/24", "-j", "RETURN"])
    netns.run([f"iptables-{variant}", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--syn", "-m", "comment",
               "--comment", "hostmesh:HOSTMESH", "-j", "HOSTMESH_OUTPUT"])
    drifted_v4 = save(netns, variant)
    check = run_playbook([redirect_task("apply", variant, outbound_exclude_ports=[25],
                                        outbound_exclude_cidrs=["203.0.113.0/24"])], netns=netns, check=True, diff=True)
    assert check.rc == 0 and check.task("apply")["changed"], check.output
    diff = check.task("apply")["diff"][0]
    assert "203.0.113.0/24" not in diff["before"] and "-A HOSTMESH_OUTPUT -d 203.0.113.0/24 -j RETURN" in diff["after"]
    assert diff["before"].count("-j HOSTMESH_OUTPUT") == 2 and diff["after"].count("-j HOSTMESH_OUTPUT") == 1
    # check mode changed nothing
    assert nf.parse_save(save(netns, variant)) == nf.parse_save(drifted_v4)

    repair = run_playbook([redirect_task("apply", variant, outbound_exclude_ports=[25],
                                         outbound_exclude_cidrs=["203.0.113.0/24"])], netns=netns)
    assert repair.rc == 0 and repair.task("apply")["changed"]
    assert len(owned(netns, variant).jumps) == 2
    unchanged_foreign()

    # 4. absent removes exactly what we own; a second absent has nothing to do.
    gone = run_playbook([redirect_task("remove", variant, state="absent")], netns=netns, diff=True)
    assert gone.rc == 0 and gone.task("remove")["changed"], gone.output
    assert gone.task("remove")["diff"][0]["after"] == ""
    for family in ("ipv4", "ipv6"):
        assert owned(netns, variant, family).is_empty()
        assert "HOSTMESH" not in save(netns, variant, family)
    unchanged_foreign()
    again = run_playbook([redirect_task("remove", variant, state="absent")], netns=netns)
    assert again.rc == 0 and not again.task("remove")["changed"]


def install_redirect_cli(directory):
    """Lay out the host-side command as the transparent_proxy role does."""
    directory.mkdir()
    shutil.copy(pathlib.Path(nf.__file__), directory / "hostmesh_netfilter.py")
    shutil.copy(pathlib.Path(_host.__file__), directory / "hostmesh_host.py")
    shutil.copy(REPO / "roles" / "transparent_proxy" / "files" / "hostmesh-redirect.py", directory / "hostmesh-redirect.py")
    return directory / "hostmesh-redirect.py"


def test_rules_file_written_restored_by_cli_and_removed(netns, tmp_path):
    redirect_cli = install_redirect_cli(tmp_path / "lib")
    rules_file = tmp_path / "etc" / "redirect.json"
    apply = run_playbook([redirect_task("apply", "nft", rules_file=str(rules_file), ip_families=["ipv4"])], netns=netns)
    assert apply.rc == 0 and apply.task("apply")["changed"], apply.output
    document = rules_file.read_text()
    assert '"outbound_port": 15001' in document
    # A reboot loses the rules; the host-side CLI restores them from the file,
    # and running it twice does not duplicate anything.
    netns.run(["iptables-nft", "-t", "nat", "-F"])
    netns.run(["iptables-nft", "-t", "nat", "-X"])
    cli = [PYTHON, str(redirect_cli), "apply", "--config", str(rules_file)]
    assert netns.run(cli).returncode == 0
    assert netns.run(cli).returncode == 0
    assert len(owned(netns, "nft").jumps) == 2
    check = netns.run([PYTHON, str(redirect_cli), "check", "--config", str(rules_file)], check=False)
    assert check.returncode == 0, check.stdout
    again = run_playbook([redirect_task("apply", "nft", rules_file=str(rules_file), ip_families=["ipv4"])], netns=netns)
    assert not again.task("apply")["changed"]
    assert rules_file.read_text() == document
    # The CLI's remove takes the rules away but keeps the file for the next start.
    netns.run([PYTHON, str(redirect_cli), "remove", "--config", str(rules_file)])
    assert owned(netns, "nft").is_empty() and rules_file.exists()
    gone = run_playbook([redirect_task("remove", "nft", state="absent", rules_file=str(rules_file),
                                       ip_families=["ipv4"])], netns=netns)
    assert gone.task("remove")["changed"] and not rules_file.exists()


@pytest.mark.parametrize("job, kept", [("restart", True), ("stop", False), (None, False)])
def test_cli_remove_keeps_the_rules_during_a_restart_job(netns, tmp_path, job, kept):
    # The boot unit's ExecStop: systemd restarts the unit (PartOf= the proxy)
    # whenever it restarts the proxy, also after a crash; only a stop job may
    # take the rules away. A stand-in systemctl reports the unit's job.
    redirect_cli = install_redirect_cli(tmp_path / "lib")
    rules_file = tmp_path / "etc" / "redirect.json"
    apply = run_playbook([redirect_task("apply", "nft", rules_file=str(rules_file), ip_families=["ipv4"])], netns=netns)
    assert apply.rc == 0 and apply.task("apply")["changed"], apply.output
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    listing = f"42 hostmesh-redirect.service {job} running" if job else ""
    (fake_bin / "systemctl").write_text(f"#!/bin/sh\n[ \"$1\" = list-jobs ] && echo '{listing}'\nexit 0\n")
    (fake_bin / "systemctl").chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    remove = netns.run([PYTHON, str(redirect_cli), "remove", "--config", str(rules_file),
                        "--keep-if-restarting", "hostmesh-redirect.service"], env=env)
    assert remove.returncode == 0
    assert owned(netns, "nft").is_empty() is not kept, remove.stderr
    if kept:
        assert "the rules stay" in remove.stderr


def test_auto_picks_the_variant_holding_rules_and_warns_about_the_other(netns):
    # An old-style host: only the legacy variant holds rules.
    restore(netns, "legacy", FOREIGN_V4)
    result = run_playbook([redirect_task("apply", "auto", ip_families=["ipv4"])], netns=netns)
    assert result.rc == 0 and result.task("apply")["variant"] == "legacy"
    # Now someone adds nft rules in the same hooks: we stay with legacy (our
    # chains are there) and say that the other variant is in use too.
    restore(netns, "nft", "*nat\n-A OUTPUT -d 192.0.2.9/32 -j RETURN\nCOMMIT\n")
    result = run_playbook([redirect_task("apply", "auto", ip_families=["ipv4"])], netns=netns)
    task = result.task("apply")
    assert task["variant"] == "legacy" and not task["changed"]
    assert any("iptables-nft also holds" in w for w in task.get("warnings", [])), task
    # Explicitly moving to nft removes our stray chains from legacy, and only those.
    foreign_legacy = foreign(netns, "legacy")
    moved = run_playbook([redirect_task("apply", "nft", ip_families=["ipv4"])], netns=netns, diff=True)
    assert moved.task("apply")["changed"]
    assert owned(netns, "legacy").is_empty() and not owned(netns, "nft").is_empty()
    assert foreign(netns, "legacy") == foreign_legacy


def test_auto_follows_the_configured_command_when_no_variant_holds_rules(netns, tmp_path):
    """A host whose iptables and ip6tables are the legacy variant (alternatives),
    where another tool has legacy IPv4 rules and no variant holds IPv6 rules:
    both families go to legacy, where ip6tables -t nat -S shows them."""
    legacy_bin = tmp_path / "bin"
    legacy_bin.mkdir()
    for name in ("iptables", "ip6tables"):
        (legacy_bin / name).symlink_to(shutil.which("xtables-legacy-multi"))
    ipv6_up(netns)
    restore(netns, "legacy", FOREIGN_V4)
    foreign_v4 = foreign(netns, "legacy")
    task = redirect_task("apply", "auto")
    task["environment"] = {"PATH": f"{legacy_bin}:/usr/sbin:/usr/bin:/sbin:/bin"}
    result = run_playbook([task], netns=netns)
    assert result.rc == 0, result.output
    assert result.task("apply")["variants"] == {"ipv4": "legacy", "ipv6": "legacy"}
    assert not owned(netns, "legacy", "ipv6").is_empty()
    assert owned(netns, "nft", "ipv6").is_empty() and "HOSTMESH" not in save(netns, "nft", "ipv6")
    assert foreign(netns, "legacy") == foreign_v4


GOLDEN_DIR = REPO / "tests" / "unit" / "plugins" / "module_utils" / "testdata" / "netfilter"


@pytest.mark.parametrize("mode", ["uid", "gid", "mark", "net_cls"])
def test_golden_rulesets_are_what_iptables_save_prints(netns, iptables_variant, mode):
    """The unit tests' golden files, restored into a real kernel, read back byte
    for byte: the engine renders in iptables-save's own spelling and order.
    (cgroup_path needs its cgroup to exist; its behaviour test covers it.)"""
    ipv6_up(netns)
    builtin = (":PREROUTING ", ":INPUT ", ":OUTPUT ", ":POSTROUTING ")
    for family in ("ipv4", "ipv6"):
        golden = (GOLDEN_DIR / f"{mode}-{family}.golden").read_text()
        restore(netns, iptables_variant, golden, family)
        printed = [re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in save(netns, iptables_variant, family).splitlines()
                   if not line.startswith(("#",) + builtin)]
        assert printed == golden.splitlines(), (family, printed)


def nft_tables(ns):
    return ns.run(["nft", "list", "tables"]).stdout.splitlines()


class WithoutNft:
    """A network namespace whose commands find no working nft binary: /dev/null
    is bound over it in a private mount namespace, as on a host without the
    nftables package. Passed as ``netns`` to run_playbook."""

    def __init__(self, netns):
        self.netns = netns
        self.nft = pathlib.Path(shutil.which("nft") or "/usr/sbin/nft").resolve()

    def command(self, argv):
        script = 'mount --bind /dev/null "$1" && shift && exec "$@"'
        return self.netns.command(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                                   str(self.nft)] + [str(arg) for arg in argv])

    def run(self, argv, check=True):
        return subprocess.run(self.command(argv), check=check, capture_output=True, text=True, timeout=60)


def test_without_nft_hides_the_nft_binary(netns):
    assert WithoutNft(netns).run(["sh", "-c", "nft list tables"], check=False).returncode != 0
    assert netns.run(["nft", "list", "tables"]).returncode == 0


def test_absent_deletes_the_nat_tables_the_apply_created(netns, tmp_path):
    """Without an nft binary: the tables are deleted over nfnetlink."""
    no_nft = WithoutNft(netns)
    redirect_cli = install_redirect_cli(tmp_path / "lib")
    rules_file = tmp_path / "etc" / "redirect.json"
    ipv6_up(netns)
    assert not [t for t in nft_tables(netns) if t.endswith(" nat")]
    apply = run_playbook([redirect_task("apply", "nft", rules_file=str(rules_file))], netns=no_nft)
    assert apply.rc == 0 and apply.task("apply")["changed"], apply.output
    assert {"table ip nat", "table ip6 nat"} <= set(nft_tables(netns))
    document = rules_file.read_text()
    assert json.loads(document)["created_tables"] == {"ipv4": "nft", "ipv6": "nft"}
    # Remembered across later applies, when the tables exist already.
    again = run_playbook([redirect_task("apply", "nft", rules_file=str(rules_file))], netns=no_nft)
    assert again.rc == 0 and not again.task("apply")["changed"] and rules_file.read_text() == document
    # A proxy stop (the boot unit's remove) takes the rules away but keeps the tables.
    assert netns.run([PYTHON, str(redirect_cli), "remove", "--config", str(rules_file)]).returncode == 0
    assert owned(netns, "nft").is_empty() and {"table ip nat", "table ip6 nat"} <= set(nft_tables(netns))
    check = run_playbook([redirect_task("remove", "nft", state="absent", rules_file=str(rules_file))],
                         netns=no_nft, check=True)
    assert check.rc == 0 and check.task("remove")["changed"], check.output
    assert {"table ip nat", "table ip6 nat"} <= set(nft_tables(netns)) and rules_file.exists()
    gone = run_playbook([redirect_task("remove", "nft", state="absent", rules_file=str(rules_file))],
                        netns=no_nft, diff=True)
    assert gone.rc == 0 and gone.task("remove")["changed"], gone.output
    assert gone.task("remove")["tables_removed"] == {"ipv4": "nft", "ipv6": "nft"}
    assert not [t for t in nft_tables(netns) if t.endswith(" nat")]
    assert not rules_file.exists()
    nothing = run_playbook([redirect_task("remove", "nft", state="absent", rules_file=str(rules_file))], netns=no_nft)
    assert nothing.rc == 0 and not nothing.task("remove")["changed"]


def test_absent_keeps_a_created_table_that_holds_someone_elses_rules(netns, tmp_path):
    no_nft = WithoutNft(netns)
    rules_file = tmp_path / "redirect.json"
    ipv6_up(netns)
    apply = run_playbook([redirect_task("apply", "nft", rules_file=str(rules_file))], netns=no_nft)
    assert apply.rc == 0 and apply.task("apply")["changed"], apply.output
    # Another tool adds its rules to the IPv4 nat table hostmesh created.
    restore(netns, "nft", FOREIGN_V4)
    foreign_v4 = foreign(netns, "nft")
    gone = run_playbook([redirect_task("remove", "nft", state="absent", rules_file=str(rules_file))], netns=no_nft)
    assert gone.rc == 0 and gone.task("remove")["changed"], gone.output
    assert gone.task("remove")["tables_removed"] == {"ipv6": "nft"}
    assert "table ip nat" in nft_tables(netns) and "table ip6 nat" not in nft_tables(netns)
    assert owned(netns, "nft").is_empty()
    assert foreign(netns, "nft") == foreign_v4


def nft_table_text(ns, family):
    return ns.run(["nft", "list", "table", nf.NFT_FAMILY[family], "nat"]).stdout


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("foreign_object", ["rule in a built-in chain", "empty chain"])
def test_the_kernel_keeps_a_table_that_gained_something_before_the_delete(netns, tmp_path, family, foreign_object):
    """The race the read before deleting cannot close: another tool adds to a
    created table after that read. The nfnetlink batch itself is refused
    (NLM_F_NONREC: EBUSY) and, being one transaction, deletes nothing: the
    table, all its chains and that tool's rule stay byte for byte."""
    lib = tmp_path / "lib"
    install_redirect_cli(lib)
    ipv6_up(netns)
    apply = run_playbook([redirect_task("apply", "nft", ip_families=[family])], netns=netns)
    assert apply.rc == 0 and apply.task("apply")["changed"], apply.output
    remove = run_playbook([redirect_task("remove", "nft", state="absent", ip_families=[family])], netns=netns)
    assert remove.rc == 0 and owned(netns, "nft", family).is_empty(), remove.output
    if foreign_object == "empty chain":
        restore(netns, "nft", "*nat\n:OTHER_TOOL - [0:0]\nCOMMIT\n", family)
        mark = "chain OTHER_TOOL"
    else:
        mark = "192.0.2.9" if family == "ipv4" else "2001:db8::9"
        restore(netns, "nft", f"*nat\n-A POSTROUTING -d {mark} -p tcp -m comment --comment \"other tool\" "
                              "-j RETURN\nCOMMIT\n", family)
    before, foreign_before = nft_table_text(netns, family), foreign(netns, "nft", family)
    assert mark in before
    code = (f"import sys; sys.path.insert(0, {str(lib)!r}); import hostmesh_netfilter as nf; "
            f"print(nf.delete_nft_table_over_netlink(nf.NFPROTO[{family!r}], 'nat'))")
    deleted = WithoutNft(netns).run([PYTHON, "-c", code])
    assert deleted.stdout.startswith("it is in use"), deleted
    assert nft_table_text(netns, family) == before
    assert foreign(netns, "nft", family) == foreign_before


def test_absent_deletes_a_created_table_with_every_builtin_chain(netns, tmp_path):
    """A created table whose four built-in chains all exist (iptables-nft makes
    only the chains it needs): each goes in the one batch, and the table with them."""
    rules_file = tmp_path / "redirect.json"
    apply = run_playbook([redirect_task("apply", "nft", rules_file=str(rules_file), ip_families=["ipv4"])],
                         netns=netns)
    assert apply.rc == 0 and apply.task("apply")["changed"], apply.output
    for chain in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"):
        netns.run(["iptables-nft", "-t", "nat", "-P", chain, "ACCEPT"])
    assert nft_table_text(netns, "ipv4").count("type nat hook") == 4
    gone = run_playbook([redirect_task("remove", "nft", state="absent", rules_file=str(rules_file),
                                       ip_families=["ipv4"])], netns=WithoutNft(netns))
    assert gone.rc == 0 and gone.task("remove")["tables_removed"] == {"ipv4": "nft"}, gone.output
    assert "table ip nat" not in nft_tables(netns)


def test_ipv6_disabled_is_skipped_with_a_warning(netns):
    netns.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
    result = run_playbook([redirect_task("apply", "nft")], netns=netns)
    task = result.task("apply")
    assert result.rc == 0 and task["families"] == ["ipv4"]
    assert any("IPv6 rules were not managed" in w for w in task.get("warnings", []))
    asked = run_playbook([redirect_task("apply", "nft", ip_families=["ipv4", "ipv6"])], netns=netns)
    assert asked.rc != 0 and "IPv6 is disabled" in asked.task("apply")["msg"]


# ---------------------------------------------------------------------------
# bad input: clear message, nothing changed
# ---------------------------------------------------------------------------

BAD_INPUTS = [
    ({"inbound_port": 0}, "inbound_port"),
    ({"outbound_port": 70000}, "outbound_port"),
    ({"inbound_exclude_ports": ["22", "ssh"]}, "inbound_exclude_ports='ssh'"),
    ({"outbound_exclude_ports": ["9000-8000"]}, "range start is greater than its end"),
    ({"outbound_exclude_cidrs": ["10.0.0.0/33"]}, "outbound_exclude_cidrs='10.0.0.0/33'"),
    ({"outbound_include_cidrs": ["example.com"]}, "outbound_include_cidrs='example.com'"),
    ({"bypass": "mark", "proxy_mark": "0"}, "proxy_mark='0'"),
    ({"bypass": "net_cls", "proxy_classid": "0x0"}, "proxy_classid='0x0'"),
    ({"proxy_uid": 0}, "proxy_uid=0"),
    ({"bypass": "gid"}, "proxy_gid"),
    ({"bypass": "cgroup_path", "proxy_cgroup_path": "no-such.slice/none.service"}, "no such cgroup"),
    ({"chain_prefix": "A_PREFIX_THAT_IS_WAY_TOO_LONG"}, "chain_prefix='A_PREFIX_THAT_IS_WAY_TOO_LONG'"),
    ({"exclude_uids": [-3]}, "exclude_uids=-3"),
    ({"bypass": "sockets"}, "bypass"),
]


def test_bad_input_fails_clearly_and_changes_nothing(netns, tmp_path):
    restore(netns, "nft", FOREIGN_V4)
    ok = run_playbook([redirect_task("apply", "nft", ip_families=["ipv4"])], netns=netns)
    assert ok.rc == 0
    before = nf.parse_save(save(netns, "nft"))
    rules_file = tmp_path / "never.json"
    tasks = []
    for index, (args, dummy) in enumerate(BAD_INPUTS):
        task = redirect_task(f"bad {index}", "nft", ip_families=["ipv4"], rules_file=str(rules_file), **args)
        task["ignore_errors"] = True
        tasks.append(task)
    result = run_playbook(tasks, netns=netns)
    for index, (dummy, expected) in enumerate(BAD_INPUTS):
        task = result.task(f"bad {index}")
        assert task["hostmesh_status"] == "ignored", (index, task)
        assert expected in task["msg"], (index, task["msg"])
    assert nf.parse_save(save(netns, "nft")) == before
    assert not rules_file.exists()


# ---------------------------------------------------------------------------
# behaviour: where do real connections go?
# ---------------------------------------------------------------------------

HOST_V4, PEER_V4, PEER2_V4 = "10.77.1.1", "10.77.1.2", "10.77.2.2"
HOST_V6, PEER_V6 = "fd77::1", "fd77::2"
APP_UID, PROXY_UID = 1000, 1337


class ProbeLab:
    """A host namespace (where rules are applied) and a peer namespace."""

    def __init__(self, netns_factory):
        self.host = netns_factory()
        self.peer = netns_factory()
        if_host, if_peer = self.host.add_veth_peer(self.peer, f"{HOST_V4}/24", f"{PEER_V4}/24")
        self.peer.run(["ip", "addr", "add", f"{PEER2_V4}/24", "dev", if_peer])
        self.host.run(["ip", "route", "add", "10.77.2.0/24", "dev", if_host])
        for ns in (self.host, self.peer):
            ipv6_up(ns)
        self.host.run(["ip", "-6", "addr", "add", f"{HOST_V6}/64", "dev", if_host, "nodad"])
        self.peer.run(["ip", "-6", "addr", "add", f"{PEER_V6}/64", "dev", if_peer, "nodad"])
        self._start(self.host, ["listen", "15001", "15006"])
        for addr, port, name in ((PEER_V4, 8080, "peer"), (PEER_V4, 9999, "peer-9999"), (PEER2_V4, 8080, "peer2"),
                                 (PEER_V6, 8080, "peer6")):
            self._start(self.peer, ["serve", addr, str(port), name])
        for addr, port, name in ((HOST_V4, 8082, "host-app"), ("127.0.0.1", 8081, "host-loopback"),
                                 (HOST_V4, 22, "host-ssh")):
            self._start(self.host, ["serve", addr, str(port), name])

    @staticmethod
    def _start(ns, args):
        proc = ns.popen([PYTHON, str(PROBE)] + args, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"

    def connect(self, ns, addr, port, uid=None, **opts):
        argv = [PYTHON, str(PROBE), "connect", addr, str(port)]
        for key, value in opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        if uid is not None:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] + argv
        return ns.run(argv, check=False).stdout.strip()

    def out(self, addr, port, **kw):
        return self.connect(self.host, addr, port, **kw)


@pytest.fixture
def lab(netns_factory):
    return ProbeLab(netns_factory)


def apply(lab, variant, **args):
    result = run_playbook([redirect_task("apply", variant, **args)], netns=lab.host)
    assert result.rc == 0, result.output
    return result.task("apply")


def assert_common_behaviour(lab, proxied_kw, direct_kw):
    """What every bypass mode must do, given how to open a connection as a
    workload (proxied_kw) and as the proxy (direct_kw)."""
    assert lab.out(PEER_V4, 8080, **proxied_kw) == f"proxy 15001 {PEER_V4}:8080"
    assert lab.out(PEER_V4, 8080, **direct_kw) == "direct peer"
    assert lab.out(PEER_V6, 8080, **proxied_kw) == f"proxy 15001 [{PEER_V6}]:8080"
    assert lab.out(PEER_V6, 8080, **direct_kw) == "direct peer6"
    # loopback is never captured, and neither is a workload calling its own host
    assert lab.out("127.0.0.1", 8081, **proxied_kw) == "direct host-loopback"
    assert lab.out(HOST_V4, 8082, **proxied_kw) == "direct host-app"
    # the proxy calling its own host's address is handed to the inbound listener ...
    assert lab.out(HOST_V4, 8082, **direct_kw) == f"proxy 15006 {HOST_V4}:8082"
    # ... and the inbound listener's passthrough (source 127.0.0.6) reaches the workload: no loop
    assert lab.out(HOST_V4, 8082, bind="127.0.0.6", **direct_kw) == "direct host-app"
    # inbound from another host
    assert lab.connect(lab.peer, HOST_V4, 8082) == f"proxy 15006 {HOST_V4}:8082"
    assert lab.connect(lab.peer, HOST_V4, 22) == "direct host-ssh"


def test_behaviour_uid_bypass(lab, iptables_variant):
    apply(lab, iptables_variant)
    assert_common_behaviour(lab, {"uid": APP_UID}, {"uid": PROXY_UID})
    # root is a workload like any other
    assert lab.out(PEER_V4, 8080) == f"proxy 15001 {PEER_V4}:8080"


def test_behaviour_gid_bypass(lab):
    apply(lab, "nft", bypass="gid", proxy_gid=1338)
    assert_common_behaviour(lab, {"uid": APP_UID}, {"uid": 1338})


def test_behaviour_mark_bypass(lab, iptables_variant):
    apply(lab, iptables_variant, bypass="mark", proxy_mark="0x10/0xf0")
    assert_common_behaviour(lab, {}, {"mark": "0x13"})
    # a mark outside the mask does not count
    assert lab.out(PEER_V4, 8080, mark="0x103") == f"proxy 15001 {PEER_V4}:8080"


@pytest.fixture
def net_cls_cgroup(tmp_path):
    """A net_cls cgroup with classid 0x100001, on a mount of our own."""
    mountpoint = tmp_path / "net_cls"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "cgroup", "-o", "net_cls", "hm-test-net_cls", str(mountpoint)], check=True)
    group = mountpoint / ("hm-test-" + secrets.token_hex(3))
    try:
        group.mkdir()
        (group / "net_cls.classid").write_text(str(0x100001))
        yield group
    finally:
        _remove_cgroup(group, mountpoint / "cgroup.procs")
        subprocess.run(["umount", str(mountpoint)], check=False)


@pytest.fixture
def cgroup_v2_group():
    root = nf.cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    group = pathlib.Path(root) / ("hm-test-" + secrets.token_hex(3))
    group.mkdir()
    try:
        yield group
    finally:
        _remove_cgroup(group, pathlib.Path(root) / "cgroup.procs")


def _remove_cgroup(group, parent_procs):
    if not group.exists():
        return
    for attempt in range(50):  # pylint: disable=unused-variable
        pids = (group / "cgroup.procs").read_text().split()
        for pid in pids:
            try:
                parent_procs.write_text(pid)
            except OSError:
                pass
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    group.rmdir()


def test_behaviour_net_cls_bypass(lab, iptables_variant, net_cls_cgroup):
    apply(lab, iptables_variant, bypass="net_cls", proxy_classid="0x100001")
    assert_common_behaviour(lab, {}, {"join_cgroup": net_cls_cgroup / "cgroup.procs"})


def test_behaviour_cgroup_path_bypass_and_recreated_cgroup(lab, iptables_variant, cgroup_v2_group):
    path = cgroup_v2_group.name
    first = apply(lab, iptables_variant, bypass="cgroup_path", proxy_cgroup_path=path)
    assert first["changed"]
    assert_common_behaviour(lab, {}, {"join_cgroup": cgroup_v2_group / "cgroup.procs"})
    assert not apply(lab, iptables_variant, bypass="cgroup_path", proxy_cgroup_path=path)["changed"]
    # The unit restarts: systemd removes and re-creates its cgroup. The old
    # rule would silently stop matching; the module sees the new cgroup id.
    cgroup_v2_group.rmdir()
    cgroup_v2_group.mkdir()
    assert apply(lab, iptables_variant, bypass="cgroup_path", proxy_cgroup_path=path)["changed"]
    assert lab.out(PEER_V4, 8080, join_cgroup=cgroup_v2_group / "cgroup.procs") == "direct peer"


def test_behaviour_exclusions_and_includes(lab, iptables_variant):
    apply(lab, iptables_variant, outbound_exclude_ports=["9990-9999"], outbound_exclude_cidrs=["10.77.2.0/24"],
          exclude_uids=[1500], inbound_exclude_ports=[22, 8082])
    assert lab.out(PEER_V4, 9999, uid=APP_UID) == "direct peer-9999"
    assert lab.out(PEER2_V4, 8080, uid=APP_UID) == "direct peer2"
    assert lab.out(PEER_V4, 8080, uid=1500) == "direct peer"
    assert lab.out(PEER_V4, 8080, uid=APP_UID) == f"proxy 15001 {PEER_V4}:8080"
    assert lab.connect(lab.peer, HOST_V4, 8082) == "direct host-app"
    # Only capture one destination network
    apply(lab, iptables_variant, outbound_include_cidrs=["10.77.2.0/24"])
    assert lab.out(PEER2_V4, 8080, uid=APP_UID) == f"proxy 15001 {PEER2_V4}:8080"
    assert lab.out(PEER_V4, 8080, uid=APP_UID) == "direct peer"
    assert lab.out(PEER_V6, 8080, uid=APP_UID) == "direct peer6"


def test_behaviour_single_port_and_inbound_port_list(lab):
    apply(lab, "nft", inbound_port=15001, outbound_port=15001, inbound_ports=["8080-8090"])
    assert lab.out(PEER_V4, 8080, uid=APP_UID) == f"proxy 15001 {PEER_V4}:8080"
    assert lab.connect(lab.peer, HOST_V4, 8082) == f"proxy 15001 {HOST_V4}:8082"
    assert lab.connect(lab.peer, HOST_V4, 22) == "direct host-ssh"


def test_existing_connections_survive_the_first_rules(netns_factory, iptables_variant):
    """The SSH session that applies the first rules of a host must live on.

    Before a network namespace has nat rules, conntrack does not track there;
    the first rules make it pick up live connections mid-stream as NEW. Only a
    SYN may enter the owned chains, or their next packet would be redirected.
    """
    host, peer = netns_factory(), netns_factory()
    host.add_veth_peer(peer, f"{HOST_V4}/24", f"{PEER_V4}/24")
    for ns, addr in ((host, HOST_V4), (peer, PEER_V4)):
        server = ns.popen([PYTHON, str(PROBE), "echo", addr, "2200"], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
    inbound = peer.popen([PYTHON, str(PROBE), "hold", HOST_V4, "2200"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    outbound = host.popen(["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups",
                           PYTHON, str(PROBE), "hold", PEER_V4, "2200"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def say(proc, text):
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    for proc in (inbound, outbound):
        assert proc.stdout.readline().strip() == "connected"
        assert say(proc, "before") == "echo before"
    result = run_playbook([redirect_task("apply", iptables_variant, ip_families=["ipv4"])], netns=host)
    assert result.rc == 0 and result.task("apply")["changed"], result.output
    # Both connections were open while the first rules of the namespace arrived.
    assert say(inbound, "after") == "echo after"
    assert say(outbound, "after") == "echo after"
    # A new connection is captured as usual (to port 15001, where nothing listens here).
    fresh = host.run(["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups",
                      PYTHON, str(PROBE), "connect", PEER_V4, "2200"], check=False).stdout.strip()
    assert fresh.startswith("failed") and "refused" in fresh, fresh


def test_behaviour_absent_restores_direct_traffic(lab):
    apply(lab, "nft")
    assert lab.out(PEER_V4, 8080, uid=APP_UID).startswith("proxy")
    apply(lab, "nft", state="absent")
    assert lab.out(PEER_V4, 8080, uid=APP_UID) == "direct peer"
    assert lab.connect(lab.peer, HOST_V4, 8082) == "direct host-app"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__] + sys.argv[1:]))
