# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The iptables engine behind hostmesh.sidecar.traffic_redirect.

It is split the way the rest of the collection is:

* ``OPTIONS``: every option declared once; the module's argument spec, the
  defaults, the ``RedirectConfig`` fields and validation are derived from it;
* pure functions: validate options into a ``RedirectConfig``, render the desired
  rules as ``Rule`` values, parse ``iptables-save`` output, choose the variant,
  and plan the one ``iptables-restore --noflush`` block per IP family that
  turns the live rules into the desired ones (unit-tested without a kernel);
* a thin side-effect layer (``Netfilter``) that reads with ``<variant>-save`` and
  writes with ``<variant>-restore`` through an injected command runner;
* ``RedirectManager``: read, plan, act (skipped in check mode), read back;
  ``run() -> (result, diff)``, errors are ``HostmeshError``.

The file imports nothing outside the standard library and the collection's
``_host`` on purpose: the transparent_proxy role copies both to managed hosts
(``hostmesh_netfilter.py`` beside ``hostmesh_host.py``) with a small entry point
(``hostmesh-redirect.py apply --config FILE``) that a systemd one-shot runs to
restore the rules at boot with exactly the logic the module uses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import errno
import shlex
import shutil
import socket
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field, make_dataclass

try:
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import (
        MAX_ID,
        HostmeshError,
        Problems,
        atomic_write,
        parse_classid,
        parse_int,
        run_command,
    )
except ImportError:  # on a host: beside hostmesh_host.py in the helper directory
    from hostmesh_host import (  # pylint: disable=import-error
        MAX_ID,
        HostmeshError,
        Problems,
        atomic_write,
        parse_classid,
        parse_int,
        run_command,
    )

TABLE = "nat"
FAMILIES = ("ipv4", "ipv6")
BYPASS_MODES = ("uid", "gid", "mark", "net_cls", "cgroup_path")
BACKENDS = ("auto", "nft", "legacy")
VARIANTS = ("nft", "legacy")  # in order of preference
JUMP_POSITIONS = ("append", "insert")
# The suffixes of the chains this engine owns; nothing else in any table is ever
# written, flushed or deleted.
CHAIN_SUFFIXES = ("INBOUND", "IN_REDIRECT", "OUTPUT", "REDIRECT")
# The chains a nat table has before anyone adds to it.
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
HOOK_CHAINS = ("PREROUTING", "OUTPUT")
# iptables chain names are at most 28 characters (XT_EXTENSION_MAXNAMELEN - 1).
MAX_CHAIN_NAME = 28
# xt_multiport takes at most 15 ports per rule, a range counting as two.
MULTIPORT_SLOTS = 15
# The family names of nft for a nat table iptables-nft created.
NFT_FAMILY = {"ipv4": "ip", "ipv6": "ip6"}

LOOPBACK = {"ipv4": "127.0.0.0/8", "ipv6": "::1/128"}
# Only a connection's opening SYN enters the owned chains. When the first nat
# rules of a network namespace are created, conntrack starts tracking there and
# picks up connections that already exist (the SSH session applying the rules)
# mid-stream as NEW; without this match their next packet would be redirected
# and the session cut. Real new connections always start with a SYN.
NEW_TCP = ("-p", "tcp", "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN")
# Envoy's inbound passthrough connects to the local workload from this source
# (Istio's InboundPassthroughCluster address), so those connections are never
# captured again.
PASSTHROUGH_SOURCE = {"ipv4": "127.0.0.6/32", "ipv6": "::6/128"}


# ---------------------------------------------------------------------------
# Value parsers: value -> canonical value, or ValueError(reason)
# ---------------------------------------------------------------------------

PORT_SPEC_REASON = "must be a port (80) or a range (8000-8080)"


def parse_port(value) -> int:
    return parse_int(value, 1, 65535)


def parse_port_spec(value) -> str:
    """A port ("80") or an inclusive range ("8000-8080" or "8000:8080") in
    iptables' canonical spelling ("80", "8000:8080")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(parse_port(value))
    if not isinstance(value, str) or not value.strip():
        raise ValueError(PORT_SPEC_REASON)
    parts = [part.strip() for part in re.split(r"[-:]", value.strip())]
    if not all(part.isdigit() for part in parts) or len(parts) > 2:
        raise ValueError(PORT_SPEC_REASON)
    low, high = parse_port(parts[0]), parse_port(parts[-1])
    if low > high:
        raise ValueError("range start is greater than its end")
    return str(low) if low == high else f"{low}:{high}"


def parse_cidr(value) -> str:
    if not isinstance(value, str):
        raise ValueError("must be an IPv4 or IPv6 address or CIDR")
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError("is not a valid IPv4 or IPv6 address or CIDR") from None
    # iptables prints the network address (host bits cleared) with the prefix
    # length, so that is the spelling compared with the live rules.
    return str(network)


def parse_mark(value) -> str:
    """A firewall mark, optionally with a mask, as iptables-save prints it."""
    if isinstance(value, bool) or value is None:
        raise ValueError("must be a mark such as 0x1 or 0x10/0xff")
    mark_text, dummy, mask_text = str(value).strip().partition("/")
    if not mark_text:
        raise ValueError("must be a mark such as 0x1 or 0x10/0xff")
    mark = parse_int(mark_text, 0, 0xFFFFFFFF)
    mask = parse_int(mask_text, 1, 0xFFFFFFFF) if mask_text else 0xFFFFFFFF
    if mark == 0:
        # Every socket starts with mark 0: a zero mark would exempt all traffic.
        raise ValueError("must not be 0 (every unmarked socket has mark 0)")
    if mark & ~mask:
        raise ValueError("has bits set outside its mask")
    return f"0x{mark:x}" if mask == 0xFFFFFFFF else f"0x{mark:x}/0x{mask:x}"


def parse_cgroup_path(value) -> str:
    """A cgroup v2 path relative to the cgroup2 root, without leading or
    trailing slashes: iptables compares the text as written, so one spelling."""
    if not isinstance(value, str) or not value.strip("/ "):
        raise ValueError("must be a cgroup v2 path such as system.slice/hostmesh-envoy.service")
    parts = [p for p in value.strip().split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError("must not contain '.' or '..'")
    if any(c in value for c in "\"'\n\t "):
        raise ValueError("must not contain quotes or whitespace")
    path = "/".join(parts)
    if len(path) > 4095:
        raise ValueError("is too long")
    return path


def parse_chain_prefix(value) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", value):
        raise ValueError("must start with a letter and contain only letters, digits, '_' and '-'")
    longest = max(len(s) for s in CHAIN_SUFFIXES) + 1
    if len(value) + longest > MAX_CHAIN_NAME:
        raise ValueError(f"is too long: chain names are limited to {MAX_CHAIN_NAME} characters "
                         f"(at most {MAX_CHAIN_NAME - longest} for the prefix)")
    return value


def parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("must be a boolean")


def parse_absolute_path(value) -> str:
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ValueError("must be an absolute path")
    return value


def int_between(minimum: int, maximum: int):
    def parse(value) -> int:
        return parse_int(value, minimum, maximum)
    return parse


# ---------------------------------------------------------------------------
# The options, declared once
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One module option: its Ansible spec and how the engine validates it.

    ``parse`` canonicalises one value (one element for lists) or raises
    ValueError; ``required_if`` is ``(option, value)``: required when that
    option has that value. A None value means "not given": the default.
    """
    name: str
    type: str
    default: object = None
    elements: str = None
    choices: tuple = None
    required_if: tuple = None
    parse: object = None
    empty_reason: str = None  # a list that must not be empty: why

    def spec(self) -> dict:
        spec = {"type": self.type}
        if self.elements:
            spec["elements"] = self.elements
        if self.choices:
            spec["choices"] = list(self.choices)
        if self.default is not None:
            spec["default"] = list(self.default) if isinstance(self.default, (list, tuple)) else self.default
        return spec

    def _parse_one(self, value):
        if self.choices and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return self.parse(value) if self.parse else value

    def validate(self, value, problems: Problems):
        """The canonical value (lists as de-duplicated tuples); problems recorded."""
        if value is None:
            value = self.default
        if value is None:
            return None
        if self.type != "list":
            return problems.parse(self.name, self._parse_one, value)
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items and self.empty_reason:
            problems.add(self.name, value, self.empty_reason)
        canonical = []
        for item in items:
            parsed = problems.parse(self.name, self._parse_one, item)
            if parsed is not None and parsed not in canonical:
                canonical.append(parsed)
        return tuple(canonical)


OPTIONS = (
    Option("state", "str", "present", choices=("present", "absent")),
    Option("inbound_port", "int", 15006, parse=parse_port),
    Option("outbound_port", "int", 15001, parse=parse_port),
    Option("capture_inbound", "bool", True, parse=parse_bool),
    Option("capture_outbound", "bool", True, parse=parse_bool),
    Option("inbound_ports", "list", (), elements="str", parse=parse_port_spec),
    Option("inbound_exclude_ports", "list", ("22",), elements="str", parse=parse_port_spec),
    Option("outbound_exclude_ports", "list", (), elements="str", parse=parse_port_spec),
    Option("outbound_include_cidrs", "list", (), elements="str", parse=parse_cidr),
    Option("outbound_exclude_cidrs", "list", (), elements="str", parse=parse_cidr),
    Option("bypass", "str", "uid", choices=BYPASS_MODES),
    Option("proxy_uid", "int", 1337, parse=int_between(0, MAX_ID)),
    Option("proxy_gid", "int", required_if=("bypass", "gid"), parse=int_between(0, MAX_ID)),
    Option("proxy_mark", "str", "0x1", parse=parse_mark),
    Option("proxy_classid", "str", "0x100001", parse=parse_classid),
    Option("proxy_cgroup_path", "str", required_if=("bypass", "cgroup_path"), parse=parse_cgroup_path),
    Option("exclude_uids", "list", (), elements="int", parse=int_between(0, MAX_ID)),
    Option("exclude_gids", "list", (), elements="int", parse=int_between(0, MAX_ID)),
    Option("ip_families", "list", elements="str", choices=FAMILIES,
           empty_reason="must be a non-empty list of ipv4 and/or ipv6"),
    Option("backend", "str", "auto", choices=BACKENDS),
    Option("chain_prefix", "str", "HOSTMESH", parse=parse_chain_prefix),
    Option("jump_position", "str", "append", choices=JUMP_POSITIONS),
    Option("wait", "int", 5, parse=int_between(0, 3600)),
    Option("rules_file", "path", parse=parse_absolute_path),
)
OPTION_NAMES = tuple(option.name for option in OPTIONS)
DEFAULTS = {option.name: option.default for option in OPTIONS}


def argument_spec() -> dict:
    return {option.name: option.spec() for option in OPTIONS}


def required_if() -> list:
    return [(option.required_if[0], option.required_if[1], [option.name]) for option in OPTIONS if option.required_if]


class _ConfigMethods:
    """What a RedirectConfig knows beyond its option values."""

    chain_prefix: str

    def chain(self, suffix: str) -> str:
        return f"{self.chain_prefix}_{suffix}"

    @property
    def owned_chains(self) -> tuple:
        return tuple(self.chain(s) for s in CHAIN_SUFFIXES)

    @property
    def tag(self) -> str:
        """Comment carried by the jump rules this engine adds to built-in chains."""
        return f"hostmesh:{self.chain_prefix}"

    def to_json(self) -> dict:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data


# The validated options: one field per declared option, in declaration order.
RedirectConfig = make_dataclass("RedirectConfig", [(name, object) for name in OPTION_NAMES],
                                bases=(_ConfigMethods,), frozen=True)


def config_from_params(params: dict):
    """Validate module options (or a rules file's config) into a RedirectConfig.

    Every bad option is reported at once, in one HostmeshError; nothing on the
    host has been touched at that point.
    """
    problems = Problems("Invalid option ")
    for name in sorted(set(params) - set(OPTION_NAMES)):
        problems.add(name, params[name], "is not a known option")
    values = {option.name: option.validate(params.get(option.name), problems) for option in OPTIONS}

    for option in OPTIONS:
        if option.required_if:
            other, wanted = option.required_if
            if values[other] == wanted and values[option.name] is None:
                problems.add(option.name, None, f"is required when {other}={wanted}")
    if values["bypass"] == "uid" and values["proxy_uid"] == 0:
        problems.add("proxy_uid", params.get("proxy_uid"),
                     "must not be 0: exempting root would let all root traffic bypass the proxy")
    if values["bypass"] == "gid" and values["proxy_gid"] == 0:
        problems.add("proxy_gid", params.get("proxy_gid"),
                     "must not be 0: exempting group root would let root traffic bypass the proxy")
    problems.raise_if_any()
    if values["ip_families"] is not None:
        values["ip_families"] = tuple(f for f in FAMILIES if f in values["ip_families"])
    return RedirectConfig(**values)


# ---------------------------------------------------------------------------
# Rules as values
# ---------------------------------------------------------------------------

_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.:/+=@%^,!-]+")


def quote(token: str, always: bool = False) -> str:
    """Quote a token like iptables-save: comments always, others only when needed."""
    if not always and _SAFE_TOKEN.fullmatch(token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_tokens(line: str) -> tuple:
    """A rule line as tokens, iptables-save's quoting undone."""
    try:
        return tuple(shlex.split(line))
    except ValueError:
        return tuple(line.split())


@dataclass(frozen=True)
class Rule:
    """One rule: its chain and its parameter tokens (Istio's Rule{chain, params}).

    Two rules are equal when their tokens are: iptables-save's quoting is the
    only spelling difference from how this engine renders, because rules are
    rendered in iptables-save's own order. ``spelling`` is the line as
    iptables-save printed it, kept for diffs only.
    """
    chain: str
    params: tuple
    spelling: str = field(default="", compare=False)

    @classmethod
    def parse(cls, line: str) -> "Rule":
        tokens = split_tokens(line)
        if len(tokens) < 2 or tokens[0] != "-A":
            raise HostmeshError(f"not an iptables-save rule: {line}")
        return cls(tokens[1], tokens[2:], line)

    def _render(self, command: str) -> str:
        params = [quote(token, always=previous == "--comment")
                  for previous, token in zip(("",) + self.params, self.params)]
        return " ".join(command + params)

    def append(self) -> str:
        return self._render(["-A", self.chain])

    def insert(self, position: int) -> str:
        return self._render(["-I", self.chain, str(position)])

    def delete(self) -> str:
        return self._render(["-D", self.chain])

    def text(self) -> str:
        """The line as iptables-save prints it (the live spelling when known)."""
        return self.spelling or self.append()

    @property
    def target(self):
        for option, value in zip(self.params, self.params[1:]):
            if option in ("-j", "--jump", "-g", "--goto"):
                return value
        return None

    def carries_comment(self, comment: str) -> bool:
        return any(pair == ("--comment", comment) for pair in zip(self.params, self.params[1:]))


def rule(chain: str, *parts) -> Rule:
    """A Rule from parameter parts, each a token or a tuple of tokens."""
    params = []
    for part in parts:
        params += list(part) if isinstance(part, tuple) else [str(part)]
    return Rule(chain, tuple(params))


@dataclass
class Ruleset:
    """The objects this engine owns in one family's nat table.

    ``rules`` are the Rules of the owned chains and ``jumps`` the tagged Rules
    in PREROUTING/OUTPUT, both in the order iptables-save prints them.
    """
    chains: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    jumps: list = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.chains or self.rules or self.jumps)

    def lines(self) -> list:
        """Owned objects as an iptables-save excerpt (what the diff shows)."""
        if self.is_empty():
            return []
        out = [f"*{TABLE}"]
        out += [f":{chain} - [0:0]" for chain in self.chains]
        out += [r.text() for r in self.jumps + self.rules]
        out.append("COMMIT")
        return out

    def text(self) -> str:
        lines = self.lines()
        return "\n".join(lines) + "\n" if lines else ""


def chains_in_sync(live: Ruleset, desired: Ruleset) -> bool:
    """The owned chains exist and hold the desired rules, in order."""
    return sorted(live.chains) == sorted(desired.chains) and live.rules == desired.rules


def in_sync(live: Ruleset, desired: Ruleset) -> bool:
    """Nothing to write: the one test used by planning and by the read-back
    after an apply. Jumps count as a multiset: their position among other
    tools' rules is theirs to keep, but a duplicate is drift."""
    return chains_in_sync(live, desired) and Counter(live.jumps) == Counter(desired.jumps)


# ---------------------------------------------------------------------------
# Rendering: RedirectConfig -> desired rules
# ---------------------------------------------------------------------------

def multiport_chunks(ports) -> list:
    """Split port specs into groups that fit one xt_multiport match."""
    chunks, current, used = [], [], 0
    for spec in ports:
        cost = 2 if ":" in spec else 1
        if used + cost > MULTIPORT_SLOTS:
            chunks.append(current)
            current, used = [], 0
        current.append(spec)
        used += cost
    if current:
        chunks.append(current)
    return chunks


def cidrs_of_family(cidrs, family: str) -> list:
    version = 4 if family == "ipv4" else 6
    return [c for c in cidrs if ipaddress.ip_network(c).version == version]


def proxy_match(config, negate: bool, cgroup_id=None) -> tuple:
    """The match that identifies the proxy's own sockets, per bypass mode."""
    bang = ("!",) if negate else ()
    if config.bypass == "uid":
        return ("-m", "owner") + bang + ("--uid-owner", str(config.proxy_uid))
    if config.bypass == "gid":
        return ("-m", "owner") + bang + ("--gid-owner", str(config.proxy_gid))
    if config.bypass == "mark":
        return ("-m", "mark") + bang + ("--mark", config.proxy_mark)
    if config.bypass == "net_cls":
        # iptables-save prints the classid in decimal.
        return ("-m", "cgroup") + bang + ("--cgroup", str(config.proxy_classid))
    # xt_cgroup binds a --path rule to the cgroup object when the rule is
    # inserted: if systemd removes and re-creates the unit's cgroup, the rule
    # text stays the same but no longer matches. Carrying the cgroup's id in a
    # comment makes that visible as drift, so the next apply re-inserts it.
    comment = ("-m", "comment", "--comment", f"hostmesh:cgroup-id={cgroup_id}") if cgroup_id is not None else ()
    return comment + ("-m", "cgroup") + bang + ("--path", config.proxy_cgroup_path)


def _dports(chunk) -> tuple:
    return ("-p", "tcp", "-m", "multiport", "--dports", ",".join(chunk))


def render_ruleset(config, family: str, cgroup_id=None) -> Ruleset:
    """The desired owned objects of one family (empty when state=absent)."""
    ruleset = Ruleset()
    if config.state == "absent":
        return ruleset
    inbound, in_redirect, output, redirect = config.owned_chains
    tagged = ("-m", "comment", "--comment", config.tag)

    def proxy(negate: bool) -> tuple:
        return proxy_match(config, negate, cgroup_id)

    if config.capture_inbound:
        ruleset.chains += [inbound, in_redirect]
        ruleset.jumps.append(rule("PREROUTING", NEW_TCP, tagged, "-j", inbound))
        for chunk in multiport_chunks(config.inbound_exclude_ports):
            ruleset.rules.append(rule(inbound, _dports(chunk), "-j", "RETURN"))
        if config.inbound_ports:
            for chunk in multiport_chunks(config.inbound_ports):
                ruleset.rules.append(rule(inbound, _dports(chunk), "-j", in_redirect))
        else:
            ruleset.rules.append(rule(inbound, "-p", "tcp", "-j", in_redirect))
        ruleset.rules.append(rule(in_redirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", config.inbound_port))

    if config.capture_outbound:
        ruleset.chains += [output, redirect]
        ruleset.jumps.append(rule("OUTPUT", NEW_TCP, tagged, "-j", output))
        loopback = LOOPBACK[family]
        # Envoy's inbound passthrough (source 127.0.0.6 / ::6) talking to the workload.
        ruleset.rules.append(rule(output, "-s", PASSTHROUGH_SOURCE[family], "-o", "lo", "-j", "RETURN"))
        if config.capture_inbound:
            # The proxy calling its own host's address goes through the inbound
            # listener, as a call from another host would (Istio's hairpin rule).
            ruleset.rules.append(rule(output, "!", "-d", loopback, "-o", "lo", "-p", "tcp", proxy(False), "-j", inbound))
        # A workload calling its own host over loopback is not mesh traffic.
        ruleset.rules.append(rule(output, "-o", "lo", proxy(True), "-j", "RETURN"))
        ruleset.rules.append(rule(output, "-d", loopback, "-j", "RETURN"))
        for uid in config.exclude_uids:
            ruleset.rules.append(rule(output, "-m", "owner", "--uid-owner", uid, "-j", "RETURN"))
        for gid in config.exclude_gids:
            ruleset.rules.append(rule(output, "-m", "owner", "--gid-owner", gid, "-j", "RETURN"))
        for chunk in multiport_chunks(config.outbound_exclude_ports):
            ruleset.rules.append(rule(output, _dports(chunk), "-j", "RETURN"))
        for cidr in cidrs_of_family(config.outbound_exclude_cidrs, family):
            ruleset.rules.append(rule(output, "-d", cidr, "-j", "RETURN"))
        if config.outbound_include_cidrs:
            for cidr in cidrs_of_family(config.outbound_include_cidrs, family):
                ruleset.rules.append(rule(output, "-d", cidr, proxy(True), "-j", redirect))
        else:
            ruleset.rules.append(rule(output, proxy(True), "-j", redirect))
        ruleset.rules.append(rule(redirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", config.outbound_port))
    return ruleset


# ---------------------------------------------------------------------------
# Parsing iptables-save output
# ---------------------------------------------------------------------------

@dataclass
class TableDump:
    chains: dict = field(default_factory=dict)  # name -> policy ("-" for user chains)
    rules: list = field(default_factory=list)   # "-A ..." lines as printed


INCOMPATIBLE = re.compile(r"^# Table `(\w+)' is incompatible")


def parse_save(text: str) -> dict:
    """Parse iptables-save output into {table: TableDump}.

    Counters and the "# Generated/Completed" comments are dropped. A table that
    iptables-nft cannot represent (native nft rules in it) is an error rather
    than an empty table: acting on it would be acting blind.
    """
    tables = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        incompatible = INCOMPATIBLE.match(line)
        if incompatible:
            raise HostmeshError(
                f"the {incompatible.group(1)} table holds native nftables rules that iptables-nft cannot show; "
                "hostmesh will not change a table it cannot read")
        if line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], TableDump())
        elif line == "COMMIT":
            current = None
        elif current is None:
            raise HostmeshError(f"unexpected line outside a table in iptables-save output: {line}")
        elif line.startswith(":"):
            name, dummy, rest = line[1:].partition(" ")
            current.chains[name] = rest.split(" ", 1)[0] if rest else "-"
        elif line.startswith("-A "):
            current.rules.append(line)
        else:
            raise HostmeshError(f"unexpected line in iptables-save output: {line}")
    return tables


def owned_view(dump, config) -> Ruleset:
    """The objects of a live nat table that belong to this engine.

    Ownership: the chains named <prefix>_<suffix>, and rules in built-in chains
    that jump to them or carry our tag. Everything else is somebody else's.
    """
    view = Ruleset()
    if dump is None:
        return view
    owned = set(config.owned_chains)
    view.chains = [name for name in dump.chains if name in owned]
    for line in dump.rules:
        live = Rule.parse(line)
        if live.chain in owned:
            view.rules.append(live)
        elif live.target in owned or live.carries_comment(config.tag):
            view.jumps.append(live)
    return view


def left_empty(dump, owned: Ruleset) -> bool:
    """Whether a nat table holds nothing but ``owned`` and its built-in chains
    with policy ACCEPT: what a table nobody else uses looks like."""
    if dump is None:
        return False
    for name, policy in dump.chains.items():
        if name not in owned.chains and (name not in BUILTIN_CHAINS or policy != "ACCEPT"):
            return False
    # owned_view takes every owned rule, so any other rule is somebody else's.
    return len(dump.rules) == len(owned.rules) + len(owned.jumps)


# ---------------------------------------------------------------------------
# Planning: live owned view + desired -> one iptables-restore --noflush block
# ---------------------------------------------------------------------------

@dataclass
class Plan:
    restore: str          # the iptables-restore --noflush input, "" when in sync
    before: Ruleset
    after: Ruleset

    @property
    def changed(self) -> bool:
        return bool(self.restore)


def plan_table(live: Ruleset, desired: Ruleset, config) -> Plan:
    """Compute the restore block that makes ``live`` equal to ``desired``.

    * Owned chains are replaced as a whole (":CHAIN - [0:0]" flushes them in
      --noflush mode) when anything in them differs; the kernel applies the
      block as one transaction, so there is no window without rules.
    * Jump rules that are already right are left alone (keeping counters and
      their position among other tools' rules); only missing ones are added and
      stale or duplicate ones deleted.
    * Nothing else in the table is named, so nothing else can change.
    """
    # Shown "after": the live spelling of every rule that stays (iptables-save
    # quotes differently from us), so a diff only shows real changes.
    spelled = {r: r for r in live.rules + live.jumps}
    after = Ruleset(list(desired.chains), [spelled.get(r, r) for r in desired.rules],
                    [spelled.get(j, j) for j in desired.jumps])
    if in_sync(live, desired):
        return Plan("", live, after)

    keep, delete = [], []
    for jump in live.jumps:
        (keep if jump in desired.jumps and jump not in keep else delete).append(jump)
    add = [jump for jump in desired.jumps if jump not in keep]
    rewrite_chains = not chains_in_sync(live, desired)

    lines = [f"*{TABLE}"]
    if rewrite_chains:
        lines += [f":{chain} - [0:0]" for chain in desired.chains]
    lines += [jump.delete() for jump in delete]
    if rewrite_chains:
        stale = [chain for chain in live.chains if chain not in desired.chains]
        # Flush before deleting: owned chains may reference each other.
        lines += [f"-F {chain}" for chain in stale]
        lines += [f"-X {chain}" for chain in stale]
        lines += [r.append() for r in desired.rules]
    lines += [jump.insert(1) if config.jump_position == "insert" else jump.append() for jump in add]
    lines.append("COMMIT")
    return Plan("\n".join(lines) + "\n", live, after)


# ---------------------------------------------------------------------------
# Choosing the variant (backend=auto)
# ---------------------------------------------------------------------------

def choose_variant(available, requested: str, holding_ours=(), holding_rules=(), configured=None,
                   other_family=None) -> str:
    """The iptables variant one family's rules go to.

    An explicit backend wins. auto: the variant that already holds our chains;
    else legacy when only legacy holds rules (an old-style host); when neither
    holds rules, what the host's unsuffixed iptables/ip6tables command is
    (``configured``, the alternatives choice the admin's own commands use) and
    else the variant the other IP family went to, so that both families land
    where ``iptables -t nat -S`` and ``ip6tables -t nat -S`` show them; nft
    otherwise.
    """
    if requested != "auto":
        return requested
    for name in VARIANTS:
        if name in available and name in holding_ours:
            return name
    busy = [name for name in VARIANTS if name in available and name in holding_rules]
    if busy == ["legacy"]:
        return "legacy"
    if not busy:
        for hint in (configured, other_family):
            if hint in available:
                return hint
    return "nft" if "nft" in available else "legacy"


def variant_of_version(text: str):
    """Which variant an ``iptables --version`` output names, or None."""
    if "nf_tables" in text:
        return "nft"
    if "legacy" in text:
        return "legacy"
    return None


# ---------------------------------------------------------------------------
# Deleting a created nftables table over nfnetlink (no nft binary needed)
# ---------------------------------------------------------------------------
# From the kernel's uapi headers: linux/netlink.h, linux/netfilter.h,
# linux/netfilter/nfnetlink.h and linux/netfilter/nf_tables.h.
NETLINK_NETFILTER = 12
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300          # NLM_F_ROOT | NLM_F_MATCH
# A DELETE modifier: refuse (EBUSY) instead of deleting the rules of a chain
# or the chains of a table along with it. Without it the kernel would take
# another tool's rules away with the chain.
NLM_F_NONREC = 0x100
NFNETLINK_V0 = 0
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10  # NLMSG_MIN_TYPE
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_DELCHAIN = 5
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NLA_TYPE_MASK = 0x3FFF       # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NFPROTO = {"ipv4": 2, "ipv6": 10}  # NFPROTO_IPV4, NFPROTO_IPV6
NFPROTO_NAME = {NFPROTO[family]: NFT_FAMILY[family] for family in FAMILIES}  # 2: "ip", 10: "ip6"
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host byte order)
NFGENMSG = struct.Struct("!BBH")    # family, version, res_id (big endian)
NLATTR = struct.Struct("=HH")       # len, type
NLMSGERR = struct.Struct("=i")      # error (-errno, 0 for an ACK), then the offending header
NETLINK_TIMEOUT = 5.0
NETLINK_BUFFER = 1 << 17


def nl_align(length: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: round up to 4 bytes."""
    return (length + 3) & ~3


def nl_attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute; its length excludes the padding to 4 bytes."""
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (nl_align(length) - length)


def nl_string(kind: int, text: str) -> bytes:
    """An NLA_STRING attribute, NUL-terminated as nft sends it."""
    return nl_attr(kind, text.encode("ascii") + b"\0")


def nfnl_message(msg_type: int, flags: int, seq: int, family: int, res_id: int = 0, attrs: bytes = b"") -> bytes:
    """One netlink message: nlmsghdr, nfgenmsg, attributes."""
    body = NFGENMSG.pack(family, NFNETLINK_V0, res_id) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def nft_type(message: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | message


def chain_dump_request(nfproto: int, seq: int) -> bytes:
    """Ask for every chain of one family (NFT_MSG_GETCHAIN, dump)."""
    return nfnl_message(nft_type(NFT_MSG_GETCHAIN), NLM_F_REQUEST | NLM_F_DUMP, seq, nfproto)


def table_deletion_batch(nfproto: int, table: str, chains, seq: int) -> tuple:
    """(bytes, seqs to be answered) of ONE nfnetlink transaction deleting ``chains`` then ``table``.

    Every delete carries NLM_F_NONREC, so the kernel refuses (EBUSY) a chain
    that still holds a rule and a table that still holds another chain, set
    or object; one refusal aborts the whole batch and nothing is deleted.
    Each delete asks for an ACK; the batch begin and end do not (the kernel
    never acknowledges an end, and nft sends them the same way).
    """
    deletes = [(NFT_MSG_DELCHAIN, nl_string(NFTA_CHAIN_TABLE, table) + nl_string(NFTA_CHAIN_NAME, name))
               for name in chains]
    deletes.append((NFT_MSG_DELTABLE, nl_string(NFTA_TABLE_NAME, table)))
    parts = [nfnl_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES)]
    acked = []
    for offset, (message, attrs) in enumerate(deletes, start=1):
        acked.append(seq + offset)
        parts.append(nfnl_message(nft_type(message), NLM_F_REQUEST | NLM_F_ACK | NLM_F_NONREC, seq + offset,
                                  nfproto, attrs=attrs))
    parts.append(nfnl_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + len(deletes) + 1, socket.AF_UNSPEC,
                              NFNL_SUBSYS_NFTABLES))
    return b"".join(parts), acked


def nl_messages(data: bytes):
    """(type, flags, seq, payload) of each netlink message in a datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, dummy = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise HostmeshError(f"malformed netlink message from the kernel (length {length})")
        yield msg_type, flags, seq, data[offset + NLMSGHDR.size:offset + length]
        offset += nl_align(length)


def nl_attrs(payload: bytes) -> dict:
    """{type: payload} of the attributes after an nfgenmsg."""
    attrs = {}
    offset = NFGENMSG.size
    while offset + NLATTR.size <= len(payload):
        length, kind = NLATTR.unpack_from(payload, offset)
        if length < NLATTR.size:
            break
        attrs[kind & NLA_TYPE_MASK] = payload[offset + NLATTR.size:offset + length]
        offset += nl_align(length)
    return attrs


def parse_chain_dump(data: bytes) -> tuple:
    """([(table, chain)], finished, {seq: errno}) from one datagram of a chain dump."""
    chains, finished, errors = [], False, {}
    for msg_type, dummy, seq, payload in nl_messages(data):
        if msg_type == nft_type(NFT_MSG_NEWCHAIN):
            attrs = nl_attrs(payload)
            if NFTA_CHAIN_TABLE in attrs and NFTA_CHAIN_NAME in attrs:
                chains.append((attrs[NFTA_CHAIN_TABLE].rstrip(b"\0").decode("ascii", "replace"),
                               attrs[NFTA_CHAIN_NAME].rstrip(b"\0").decode("ascii", "replace")))
        elif msg_type == NLMSG_DONE:
            finished = True
        elif msg_type == NLMSG_ERROR:
            # A refused dump (no ACK was asked for, so never a 0).
            errors[seq] = -NLMSGERR.unpack_from(payload)[0] if len(payload) >= NLMSGERR.size else errno.EIO
            finished = True
    return chains, finished, errors


def parse_acks(data: bytes) -> dict:
    """{seq: errno} of the NLMSG_ERROR messages in a datagram (0 for an ACK).

    The seq is the one of the request answered, read from the echoed header.
    """
    answers = {}
    for msg_type, dummy, seq, payload in nl_messages(data):
        if msg_type != NLMSG_ERROR:
            continue
        if len(payload) < NLMSGERR.size + NLMSGHDR.size:
            raise HostmeshError("malformed netlink error message from the kernel")
        error = NLMSGERR.unpack_from(payload)[0]
        answered = NLMSGHDR.unpack_from(payload, NLMSGERR.size)[3]
        answers[answered] = -error
    return answers


def deletion_outcome(answers: dict, nfproto: int, table: str):
    """None when the batch deleted the table; else why it was left (nothing was
    deleted: the batch is one transaction). Errors that are not about the
    table's contents raise HostmeshError."""
    failed = sorted({code for code in answers.values() if code})
    if not failed:
        return None
    if errno.EBUSY in failed:
        return "it is in use (a rule, chain, set or object of someone else's is in it now); nothing was deleted"
    if errno.ENOENT in failed:
        return "it changed meanwhile (a chain or the table itself is gone); nothing was deleted"
    name = f"{NFPROTO_NAME.get(nfproto, nfproto)} {table}"
    reasons = "; ".join(f"{errno.errorcode.get(code, code)}: {os.strerror(code)}" for code in failed)
    if errno.EPERM in failed:
        reasons += " (deleting an nftables table needs CAP_NET_ADMIN: run as root)"
    raise HostmeshError(f"deleting the nftables table {name} failed: {reasons}", errno=failed)


def delete_nft_table_over_netlink(nfproto: int, table: str):
    """Delete a table's built-in chains and the table in one nfnetlink batch.

    The side effect behind ``Netfilter.delete_table``: list the family's chains,
    send ``table_deletion_batch``, read every answer. Returns None when deleted,
    else why it was left (see deletion_outcome).
    """
    name = f"{NFPROTO_NAME.get(nfproto, nfproto)} {table}"
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as exc:
        raise HostmeshError(f"cannot delete the nftables table {name}: no nfnetlink socket ({exc})") from None
    try:
        with sock:
            sock.settimeout(NETLINK_TIMEOUT)
            sock.bind((0, 0))
            sock.send(chain_dump_request(nfproto, seq=1))
            chains, finished, errors = [], False, {}
            while not finished:
                more, finished, failed = parse_chain_dump(sock.recv(NETLINK_BUFFER))
                chains += more
                errors.update(failed)
            if any(errors.values()):
                return deletion_outcome(errors, nfproto, table)
            builtin = [chain for owner, chain in chains if owner == table and chain in BUILTIN_CHAINS]
            batch, acked = table_deletion_batch(nfproto, table, builtin, seq=2)
            sock.send(batch)
            answers = {}
            while not set(acked) <= set(answers):
                answers.update(parse_acks(sock.recv(NETLINK_BUFFER)))
    except socket.timeout:
        raise HostmeshError(f"deleting the nftables table {name}: no answer from the kernel within "
                            f"{NETLINK_TIMEOUT:g} s") from None
    except OSError as exc:
        raise HostmeshError(f"deleting the nftables table {name} failed: {exc}") from None
    return deletion_outcome(answers, nfproto, table)


# ---------------------------------------------------------------------------
# Side effects: binaries, variant detection, read, apply
# ---------------------------------------------------------------------------

SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin")


def find_binary(name: str):
    path = shutil.which(name)
    if path:
        return path
    for directory in SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ipv6_enabled() -> bool:
    if not os.path.exists("/proc/net/if_inet6"):
        return False
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6", encoding="ascii") as handle:
            return handle.read().strip() == "0"
    except OSError:
        return False


def legacy_tables(family: str) -> list:
    """Tables the legacy (x_tables) variant holds in this network namespace.

    Read from /proc so that looking does not create tables: running
    iptables-legacy-save -t nat would instantiate the legacy nat table.
    """
    name = "/proc/net/ip_tables_names" if family == "ipv4" else "/proc/net/ip6_tables_names"
    try:
        with open(name, encoding="ascii") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError:
        return []


def command_prefix(family: str) -> str:
    return "iptables" if family == "ipv4" else "ip6tables"


@dataclass
class Variant:
    name: str       # "nft" or "legacy"
    save: str
    restore: str


class Netfilter:
    """Reads and writes one family's nat table through iptables-save/-restore; deletes a
    created nft table over nfnetlink (``table_deleter``, injectable for tests)."""

    def __init__(self, config, runner=run_command, warn=None, table_deleter=None):
        self.config = config
        self.run = runner
        self.warn = warn or (lambda message: None)
        # (nfproto, table) -> None when deleted, else why it was left; see delete_nft_table_over_netlink.
        self.delete_table = table_deleter or delete_nft_table_over_netlink

    # -- binaries ---------------------------------------------------------
    def variants(self, family: str) -> dict:
        """Variants whose binaries exist, by name."""
        prefix = command_prefix(family)
        found = {}
        for name in VARIANTS:
            save = find_binary(f"{prefix}-{name}-save")
            restore = find_binary(f"{prefix}-{name}-restore")
            if save and restore:
                found[name] = Variant(name, save, restore)
        if not found:
            # Hosts with only the unsuffixed binaries (older RHEL): ask it which it is.
            save, restore = find_binary(f"{prefix}-save"), find_binary(f"{prefix}-restore")
            if save and restore:
                rc, out, err = self.run([save, "--version"])
                name = variant_of_version(out + err) or "legacy"
                found[name] = Variant(name, save, restore)
        return found

    def configured_variant(self, family: str):
        """The variant of the unsuffixed iptables/ip6tables (the host's alternatives), or None."""
        binary = find_binary(command_prefix(family))
        if not binary:
            return None
        rc, out, err = self.run([binary, "--version"])
        return variant_of_version(out + err) if rc == 0 else None

    def family_available(self, family: str) -> bool:
        if family == "ipv6" and not ipv6_enabled():
            return False
        return bool(self.variants(family))

    # -- reading ------------------------------------------------------------
    def save(self, variant: Variant, family: str) -> str:
        """Full iptables-save of a variant ("" when it holds nothing).

        The legacy variant is only asked when /proc says it has tables,
        and never with -t, so reading cannot create a legacy table.
        """
        if variant.name == "legacy" and not legacy_tables(family):
            return ""
        rc, out, err = self.run([variant.save])
        if rc != 0:
            raise HostmeshError(f"{variant.save} failed (rc={rc}): {err.strip()}",
                                cmd=variant.save, rc=rc, stdout=out, stderr=err)
        return out

    def read(self, variant: Variant, family: str):
        """(raw save text, nat TableDump or None) of a variant."""
        text = self.save(variant, family)
        return text, parse_save(text).get(TABLE)

    def choose(self, family: str, other_family=None):
        """Pick the variant to write to; return (variant, {name: (text, nat dump)}).

        See choose_variant. A warning is given whenever the other variant has
        rules in the same hooks: the kernel evaluates both, in an order the
        admin should know.
        """
        available = self.variants(family)
        if not available:
            raise HostmeshError(f"no iptables binaries for {family} found (install the iptables package)")
        wanted = self.config.backend
        if wanted != "auto" and wanted not in available:
            raise HostmeshError(f"backend={wanted} was requested but {command_prefix(family)}-{wanted}-save/-restore "
                                f"are not installed (found: {', '.join(sorted(available))})")
        dumps = {name: self.read(variant, family) for name, variant in available.items()}
        views = {name: owned_view(dump, self.config) for name, (text, dump) in dumps.items()}
        holding_ours = [name for name in available if not views[name].is_empty()]
        holding_rules = [name for name in available
                         if any(line.startswith("-A ") for line in dumps[name][0].splitlines())]
        # Only asked when it can decide, so a run with nothing to do stays read-only.
        configured = None
        if wanted == "auto" and not holding_ours and not holding_rules:
            configured = self.configured_variant(family)
        chosen = choose_variant(available, wanted, holding_ours, holding_rules, configured, other_family)
        for other in available:
            dump = dumps[other][1]
            if other == chosen or dump is None or self.config.state != "present":
                continue
            hooked = [r for r in map(Rule.parse, dump.rules) if r.chain in HOOK_CHAINS and r not in views[other].jumps]
            if hooked:
                self.warn(f"{family}: iptables-{other} also holds {len(hooked)} nat PREROUTING/OUTPUT rule(s); "
                          f"hostmesh writes to iptables-{chosen}. The kernel runs both variants' nat hooks, and the "
                          f"first to rewrite a connection wins; set backend to choose explicitly.")
        return available[chosen], dumps

    # -- writing --------------------------------------------------------------
    def restore(self, variant: Variant, block: str) -> None:
        argv = [variant.restore, "--noflush"]
        if variant.name == "legacy":
            # Only x_tables has the xtables lock; iptables-nft rejects -w on some builds.
            argv += ["-w", str(self.config.wait)]
        rc, out, err = self.run(argv, block)
        if rc != 0:
            raise HostmeshError(f"{variant.restore} --noflush failed (rc={rc}): {err.strip()}",
                                cmd=" ".join(argv), rc=rc, stdout=out, stderr=err, restore_input=block)

    def delete_nft_table(self, family: str):
        """Delete the nft nat table of a family (the caller checked it is empty).

        Returns None when it is gone, or why it was left (in use: nothing was deleted).
        """
        return self.delete_table(NFPROTO[family], TABLE)


def cgroup2_root():
    """Mount point of the cgroup v2 hierarchy (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified on hybrid hosts), or None."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


def cgroup_id(path: str):
    """The inode number of a cgroup v2 directory (its cgroup id), or None."""
    root = cgroup2_root()
    if root is None:
        raise HostmeshError("bypass=cgroup_path needs a cgroup v2 hierarchy, and none is mounted on this host")
    try:
        return os.stat(os.path.join(root, path)).st_ino
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------
# The whole operation, shared by the module and the host-side command
# ---------------------------------------------------------------------------

@dataclass
class FamilyPlan:
    family: str
    variant: str
    plan: Plan
    cleanup: dict = field(default_factory=dict)  # other variant -> Plan removing stray owned objects
    # present: the family's nat table in ``variant`` was created by this engine
    # (remembered in the rules file, so removal can take it away again).
    created_table: bool = False
    # absent: that table was created by this engine in nft and holds nothing
    # else: delete it after the owned objects.
    drop_table: bool = False


def _absent_twin(config):
    data = config.to_json()
    data["state"] = "absent"
    return config_from_params(data)


class RedirectManager:
    """Reads state, plans, diffs, then acts (acting skipped in check mode).

    ``run() -> (result, diff)``; every error is a HostmeshError.
    """

    def __init__(self, config, runner=run_command, check_mode=False, warn=None):
        self.config = config
        self.warn = warn or (lambda message: None)
        self.netfilter = Netfilter(config, runner, self.warn)
        self.check_mode = check_mode
        self.results = []
        self.file_before = self._read_rules_file()
        self.file_change = None

    def families(self) -> list:
        if self.config.ip_families is not None:
            for family in self.config.ip_families:
                if family == "ipv6" and not ipv6_enabled():
                    raise HostmeshError("ip_families includes ipv6 but IPv6 is disabled on this host")
                if not self.netfilter.variants(family):
                    raise HostmeshError(f"ip_families includes {family} but no {command_prefix(family)} "
                                        "binaries are installed")
            return list(self.config.ip_families)
        families = ["ipv4"]
        if self.netfilter.family_available("ipv6"):
            families.append("ipv6")
        elif self.config.state == "present":
            why = "IPv6 is disabled on this host" if not ipv6_enabled() else "ip6tables is not installed"
            self.warn(f"IPv6 rules were not managed: {why}; IPv6 TCP is not redirected through the proxy")
        return families

    def desired_cgroup_id(self):
        if self.config.bypass != "cgroup_path" or self.config.state == "absent":
            return None
        ident = cgroup_id(self.config.proxy_cgroup_path)
        if ident is None:
            raise HostmeshError(
                f"proxy_cgroup_path={self.config.proxy_cgroup_path!r}: no such cgroup under {cgroup2_root()}; "
                "the proxy's unit must be running (its cgroup exists) before rules can name it")
        return ident

    def recorded_tables(self) -> dict:
        """{family: variant} of the nat tables an earlier apply created (from the rules file)."""
        try:
            recorded = json.loads(self.file_before).get("created_tables", {}) if self.file_before else {}
        except (ValueError, AttributeError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def plan(self) -> list:
        ident = self.desired_cgroup_id()
        absent = _absent_twin(self.config)
        recorded = self.recorded_tables()
        self.results = []
        previous = None
        for family in self.families():
            variant, dumps = self.netfilter.choose(family, other_family=previous)
            previous = variant.name
            dump = dumps[variant.name][1]
            plan = plan_table(owned_view(dump, self.config), render_ruleset(self.config, family, ident), self.config)
            result = FamilyPlan(family, variant.name, plan)
            for other, (dummy, other_dump) in dumps.items():
                stray = owned_view(other_dump, self.config)
                if other != variant.name and not stray.is_empty():
                    # Our chains in the variant we are not using (the iptables
                    # alternative was switched): remove them, never keep two copies.
                    result.cleanup[other] = plan_table(stray, Ruleset(), absent)
            if self.config.state == "present":
                result.created_table = recorded.get(family) == variant.name or (dump is None and plan.changed)
            elif recorded.get(family) == "nft" and "nft" in dumps:
                nft_dump = dumps["nft"][1]
                result.drop_table = left_empty(nft_dump, owned_view(nft_dump, self.config))
            self.results.append(result)
        return self.results

    @property
    def changed(self) -> bool:
        return any(r.plan.changed or r.drop_table or any(p.changed for p in r.cleanup.values())
                   for r in self.results) or bool(self.file_change)

    def apply(self) -> None:
        if self.check_mode:
            return
        for result in self.results:
            variants = self.netfilter.variants(result.family)
            for other, plan in result.cleanup.items():
                if plan.changed:
                    self.netfilter.restore(variants[other], plan.restore)
            if result.plan.changed:
                variant = variants[result.variant]
                self.netfilter.restore(variant, result.plan.restore)
                # Verify by reading back: catches a concurrent writer and any
                # difference between how we render and how this iptables prints.
                live = owned_view(self.netfilter.read(variant, result.family)[1], self.config)
                if not in_sync(live, result.plan.after):
                    raise HostmeshError(
                        f"{result.family}: after iptables-restore the live rules differ from the desired rules",
                        live="\n".join(live.lines()), desired="\n".join(result.plan.after.lines()))
            if result.drop_table:
                # Read again right before deleting: only a table that is still
                # empty goes, never one somebody has put a rule in meanwhile.
                # The kernel checks again inside the deleting transaction (see
                # table_deletion_batch), so a rule added after this read keeps it too.
                if not left_empty(self.netfilter.read(variants["nft"], result.family)[1], Ruleset()):
                    left = "it holds other rules now"
                else:
                    left = self.netfilter.delete_nft_table(result.family)
                if left:
                    result.drop_table = False
                    self.warn(f"{result.family}: the nat table hostmesh created is kept: {left}")

    # -- rules file -----------------------------------------------------------
    def _read_rules_file(self) -> str:
        path = self.config.rules_file
        if not path:
            return ""
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise HostmeshError(f"Could not read rules_file {path}: {exc}") from None

    def rules_document(self) -> str:
        # Rendered without the cgroup id: the id changes whenever the proxy's
        # unit restarts, and the file should only change when the config does.
        rules = {r.family: render_ruleset(self.config, r.family).lines() for r in self.results}
        document = {
            "comment": "Managed by hostmesh.sidecar.traffic_redirect; restored at boot by hostmesh-redirect.py",
            "config": self.config.to_json(),
            "variants": {r.family: r.variant for r in self.results},
            "rules": rules,
        }
        handled = {r.family for r in self.results}
        created = {family: variant for family, variant in self.recorded_tables().items() if family not in handled}
        created.update({r.family: r.variant for r in self.results if r.created_table})
        if created:
            document["created_tables"] = created
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    def plan_rules_file(self):
        """(before, after) texts of the rules file, or None when unchanged."""
        if not self.config.rules_file:
            return None
        after = "" if self.config.state == "absent" else self.rules_document()
        self.file_change = None if self.file_before == after else (self.file_before, after)
        return self.file_change

    def write_rules_file(self) -> None:
        if self.check_mode or not self.file_change:
            return
        path = self.config.rules_file
        try:
            if self.file_change[1]:
                atomic_write(path, self.file_change[1])
            else:
                os.unlink(path)
        except OSError as exc:
            raise HostmeshError(f"Could not write rules_file {path}: {exc}") from None

    def run(self) -> tuple:
        self.plan()
        self.plan_rules_file()
        self.apply()
        self.write_rules_file()
        return self.summary(), self.diff()

    def diff(self) -> list:
        diffs = []
        for result in self.results:
            header = f"{result.family} {TABLE} (iptables-{result.variant}), owned rules"
            diffs.append({"before_header": header, "after_header": header,
                          "before": result.plan.before.text(), "after": result.plan.after.text()})
            for other, plan in result.cleanup.items():
                header = f"{result.family} {TABLE} (iptables-{other}), stray owned rules"
                diffs.append({"before_header": header, "after_header": header,
                              "before": plan.before.text(), "after": ""})
            if result.drop_table:
                header = f"{result.family} nftables tables, created by hostmesh"
                diffs.append({"before_header": header, "after_header": header,
                              "before": f"table {NFT_FAMILY[result.family]} {TABLE}\n", "after": ""})
        if self.file_change:
            diffs.append({"before_header": self.config.rules_file, "after_header": self.config.rules_file,
                          "before": self.file_change[0], "after": self.file_change[1]})
        return diffs

    def summary(self) -> dict:
        variants = {r.family: r.variant for r in self.results}
        distinct = sorted(set(variants.values()))
        return {
            "changed": self.changed,
            "variant": distinct[0] if len(distinct) == 1 else ",".join(distinct),
            "variants": variants,
            "families": [r.family for r in self.results],
            "rules": {r.family: r.plan.after.lines() for r in self.results},
            "restore_input": {r.family: r.plan.restore for r in self.results if r.plan.changed},
            "chains": list(self.config.owned_chains),
            "tables_removed": {r.family: "nft" for r in self.results if r.drop_table},
        }


# ---------------------------------------------------------------------------
# Host-side command (installed by the transparent_proxy role for boot-time restore)
# ---------------------------------------------------------------------------

def load_rules_file(path: str):
    """The config of a rules file (any version: 0.1.0 files hold config, rules and variants)."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    return config_from_params(document["config"])


def run_cli(argv) -> tuple:
    """The host-side command, as (exit code, stdout, stderr); hostmesh-redirect.py prints them."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="hostmesh-redirect",
        description="Apply, remove or check hostmesh.sidecar's redirect rules from a rules file "
                    "written by the traffic_redirect module.")
    parser.add_argument("action", choices=("apply", "remove", "check"),
                        help="apply: make the live rules match the file; remove: delete every owned chain and rule; "
                             "check: exit 1 (and print the plan) when the live rules differ from the file")
    parser.add_argument("--config", required=True, help="rules file written by traffic_redirect (rules_file option)")
    parser.add_argument("--missing-ok", action="store_true",
                        help="do nothing when the rules file does not exist yet (a proxy unit refreshing its "
                             "cgroup_path rules before the first deployment wrote them)")
    args = parser.parse_args(argv)

    if args.missing_ok and not os.path.exists(args.config):
        return 0, "", f"hostmesh-redirect: {args.config} does not exist yet, nothing to do\n"
    warnings = []
    try:
        data = load_rules_file(args.config).to_json()
        # The command never rewrites the file it reads; without the file, a
        # remove (a proxy stop) also never deletes tables: the next start
        # needs them, and only the module's state=absent removes for good.
        data["rules_file"] = None
        if args.action == "remove":
            data["state"] = "absent"
        manager = RedirectManager(config_from_params(data), check_mode=args.action == "check", warn=warnings.append)
        summary = manager.run()[0]
    except (HostmeshError, OSError, ValueError, KeyError) as exc:
        return 2, "", "".join(f"warning: {w}\n" for w in warnings) + f"hostmesh-redirect: {exc}\n"
    stderr = "".join(f"warning: {w}\n" for w in warnings)
    rc = 1 if args.action == "check" and summary["changed"] else 0
    return rc, json.dumps(summary, indent=2, sort_keys=True) + "\n", stderr
