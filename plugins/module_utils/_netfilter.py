# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The iptables engine behind hostmesh.sidecar.traffic_redirect.

It is split the way the rest of the collection is:

* pure functions: validate options into a ``RedirectConfig``, render the desired
  rules, parse and canonicalise ``iptables-save`` output, and plan the one
  ``iptables-restore --noflush`` block per IP family that turns the live rules
  into the desired ones (unit-tested without a kernel);
* a thin side-effect layer (``Netfilter``) that reads with ``<variant>-save`` and
  writes with ``<variant>-restore`` through an injected command runner.

The file imports nothing outside the standard library on purpose: the
transparent_proxy role copies it to managed hosts next to a small wrapper
(``hostmesh-redirect.py apply --config FILE``) that a systemd one-shot runs to
restore the rules at boot with exactly the logic the module uses (no Ansible on
the host).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field

TABLE = "nat"
FAMILIES = ("ipv4", "ipv6")
BYPASS_MODES = ("uid", "gid", "mark", "net_cls", "cgroup_path")
BACKENDS = ("auto", "nft", "legacy")
JUMP_POSITIONS = ("append", "insert")
# The suffixes of the chains this engine owns; nothing else in any table is ever
# written, flushed or deleted.
CHAIN_SUFFIXES = ("INBOUND", "IN_REDIRECT", "OUTPUT", "REDIRECT")
# iptables chain names are at most 28 characters (XT_EXTENSION_MAXNAMELEN - 1).
MAX_CHAIN_NAME = 28
# xt_multiport takes at most 15 ports per rule, a range counting as two.
MULTIPORT_SLOTS = 15
MAX_ID = 2 ** 32 - 2  # (uid_t)-1 means "no change" to the kernel

LOOPBACK = {"ipv4": "127.0.0.0/8", "ipv6": "::1/128"}
# Only a connection's opening SYN enters the owned chains. When the first nat
# rules of a network namespace are created, conntrack starts tracking there and
# picks up connections that already exist (the SSH session applying the rules)
# mid-stream as NEW; without this match their next packet would be redirected
# and the session cut. Real new connections always start with a SYN.
NEW_TCP = "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN"
# Envoy's inbound passthrough connects to the local workload from this source
# (Istio's InboundPassthroughCluster address), so those connections are never
# captured again.
PASSTHROUGH_SOURCE = {"ipv4": "127.0.0.6/32", "ipv6": "::6/128"}

DEFAULTS = {
    "state": "present",
    "inbound_port": 15006,
    "outbound_port": 15001,
    "capture_inbound": True,
    "capture_outbound": True,
    "inbound_ports": [],
    "inbound_exclude_ports": [22],
    "outbound_exclude_ports": [],
    "outbound_include_cidrs": [],
    "outbound_exclude_cidrs": [],
    "bypass": "uid",
    "proxy_uid": 1337,
    "proxy_gid": None,
    "proxy_mark": "0x1",
    "proxy_classid": "0x100001",
    "proxy_cgroup_path": None,
    "exclude_uids": [],
    "exclude_gids": [],
    "ip_families": None,
    "backend": "auto",
    "chain_prefix": "HOSTMESH",
    "jump_position": "append",
    "wait": 5,
    "rules_file": None,
}


class ConfigError(ValueError):
    """Bad input, naming the option and the value at fault."""

    def __init__(self, option: str, value, reason: str):
        self.option = option
        self.value = value
        super().__init__(f"{option}={value!r}: {reason}")


class NetfilterError(RuntimeError):
    """A command failed or the host cannot do what was asked."""

    def __init__(self, message: str, **details):
        self.details = details
        super().__init__(message)


# ---------------------------------------------------------------------------
# Validation: options -> RedirectConfig
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RedirectConfig:
    state: str
    inbound_port: int
    outbound_port: int
    capture_inbound: bool
    capture_outbound: bool
    inbound_ports: tuple
    inbound_exclude_ports: tuple
    outbound_exclude_ports: tuple
    outbound_include_cidrs: tuple
    outbound_exclude_cidrs: tuple
    bypass: str
    proxy_uid: int
    proxy_gid: object
    proxy_mark: str
    proxy_classid: int
    proxy_cgroup_path: object
    exclude_uids: tuple
    exclude_gids: tuple
    ip_families: object
    backend: str
    chain_prefix: str
    jump_position: str
    wait: int
    rules_file: object

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


def _as_int(option: str, value, minimum: int, maximum: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(option, value, "must be an integer")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise ConfigError(option, value, "must be an integer") from None
    elif isinstance(value, int):
        number = value
    else:
        raise ConfigError(option, value, "must be an integer")
    if not minimum <= number <= maximum:
        raise ConfigError(option, value, f"must be between {minimum} and {maximum}")
    return number


def parse_port(option: str, value) -> int:
    return _as_int(option, value, 1, 65535)


def parse_port_spec(option: str, value) -> str:
    """A port ("80") or an inclusive range ("8000-8080" or "8000:8080") in
    iptables' canonical spelling ("80", "8000:8080")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(parse_port(option, value))
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(option, value, "must be a port (80) or a range (8000-8080)")
    parts = re.split(r"[-:]", value.strip())
    if len(parts) == 1 and parts[0].isdigit():
        return str(parse_port(option, parts[0]))
    if len(parts) != 2:
        raise ConfigError(option, value, "must be a port (80) or a range (8000-8080)")
    low = parse_port(option, parts[0]) if parts[0].strip().isdigit() else None
    high = parse_port(option, parts[1]) if parts[1].strip().isdigit() else None
    if low is None or high is None:
        raise ConfigError(option, value, "must be a port (80) or a range (8000-8080)")
    if low > high:
        raise ConfigError(option, value, "range start is greater than its end")
    return str(low) if low == high else f"{low}:{high}"


def parse_port_list(option: str, values) -> tuple:
    if values is None:
        return ()
    if not isinstance(values, (list, tuple)):
        values = [values]
    seen = []
    for value in values:
        spec = parse_port_spec(option, value)
        if spec not in seen:
            seen.append(spec)
    return tuple(seen)


def parse_cidr_list(option: str, values) -> tuple:
    if values is None:
        return ()
    if not isinstance(values, (list, tuple)):
        values = [values]
    seen = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(option, value, "must be an IPv4 or IPv6 address or CIDR")
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ConfigError(option, value, "is not a valid IPv4 or IPv6 address or CIDR") from None
        # iptables prints the network address (host bits cleared) with the
        # prefix length, so that is the spelling compared with the live rules.
        text = str(network)
        if text not in seen:
            seen.append(text)
    return tuple(seen)


def parse_mark(option: str, value) -> str:
    """A firewall mark, optionally with a mask, as iptables-save prints it."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(option, value, "must be a mark such as 0x1 or 0x10/0xff")
    text = str(value).strip()
    mark_text, dummy, mask_text = text.partition("/")
    mark = _as_int(option, mark_text, 0, 0xFFFFFFFF) if mark_text else None
    if mark is None:
        raise ConfigError(option, value, "must be a mark such as 0x1 or 0x10/0xff")
    mask = _as_int(option, mask_text, 1, 0xFFFFFFFF) if mask_text else 0xFFFFFFFF
    if mark == 0:
        # Every socket starts with mark 0: a zero mark would exempt all traffic.
        raise ConfigError(option, value, "must not be 0 (every unmarked socket has mark 0)")
    if mark & ~mask:
        raise ConfigError(option, value, "has bits set outside its mask")
    return f"0x{mark:x}" if mask == 0xFFFFFFFF else f"0x{mark:x}/0x{mask:x}"


def parse_classid(option: str, value) -> int:
    """A net_cls classid (0xMMMMmmmm). iptables-save prints it in decimal."""
    classid = _as_int(option, value, 0, 0xFFFFFFFF)
    if classid == 0:
        raise ConfigError(option, value, "must not be 0 (0 means 'no class' to net_cls)")
    return classid


def parse_cgroup_path(option: str, value) -> str:
    """A cgroup v2 path relative to the cgroup2 root, without leading or
    trailing slashes: iptables compares the text as written, so one spelling."""
    if not isinstance(value, str) or not value.strip("/ "):
        raise ConfigError(option, value, "must be a cgroup v2 path such as system.slice/hostmesh-envoy.service")
    parts = [p for p in value.strip().split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigError(option, value, "must not contain '.' or '..'")
    if any(c in value for c in "\"'\n\t "):
        raise ConfigError(option, value, "must not contain quotes or whitespace")
    path = "/".join(parts)
    if len(path) > 4095:
        raise ConfigError(option, value, "is too long")
    return path


def parse_id_list(option: str, values) -> tuple:
    if values is None:
        return ()
    if not isinstance(values, (list, tuple)):
        values = [values]
    ids = []
    for value in values:
        number = _as_int(option, value, 0, MAX_ID)
        if number not in ids:
            ids.append(number)
    return tuple(ids)


def _as_bool(option: str, value) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(option, value, "must be a boolean")


def _choice(option: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(option, value, f"must be one of {', '.join(choices)}")
    return value


def config_from_params(params: dict) -> RedirectConfig:
    """Validate module options (or a rules file) into a RedirectConfig.

    Raises ConfigError naming the first bad option and value; nothing on the
    host has been touched at that point.
    """
    p = dict(DEFAULTS)
    p.update({k: v for k, v in params.items() if v is not None or k in ("proxy_gid", "proxy_cgroup_path", "ip_families", "rules_file")})
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ConfigError(unknown[0], params[unknown[0]], "is not a known option")

    state = _choice("state", p["state"], ("present", "absent"))
    bypass = _choice("bypass", p["bypass"], BYPASS_MODES)
    backend = _choice("backend", p["backend"], BACKENDS)
    jump_position = _choice("jump_position", p["jump_position"], JUMP_POSITIONS)

    prefix = p["chain_prefix"]
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", prefix or ""):
        raise ConfigError("chain_prefix", prefix, "must start with a letter and contain only letters, digits, '_' and '-'")
    longest = max(len(s) for s in CHAIN_SUFFIXES) + 1
    if len(prefix) + longest > MAX_CHAIN_NAME:
        raise ConfigError("chain_prefix", prefix, f"is too long: chain names are limited to {MAX_CHAIN_NAME} characters "
                          f"(at most {MAX_CHAIN_NAME - longest} for the prefix)")

    proxy_uid = _as_int("proxy_uid", p["proxy_uid"], 0, MAX_ID)
    if bypass == "uid" and proxy_uid == 0:
        raise ConfigError("proxy_uid", p["proxy_uid"], "must not be 0: exempting root would let all root traffic bypass the proxy")
    proxy_gid = None
    if p["proxy_gid"] is not None:
        proxy_gid = _as_int("proxy_gid", p["proxy_gid"], 0, MAX_ID)
    if bypass == "gid":
        if proxy_gid is None:
            raise ConfigError("proxy_gid", None, "is required when bypass=gid")
        if proxy_gid == 0:
            raise ConfigError("proxy_gid", p["proxy_gid"], "must not be 0: exempting group root would let root traffic bypass the proxy")
    proxy_mark = parse_mark("proxy_mark", p["proxy_mark"])
    proxy_classid = parse_classid("proxy_classid", p["proxy_classid"])
    proxy_cgroup_path = None
    if p["proxy_cgroup_path"] is not None:
        proxy_cgroup_path = parse_cgroup_path("proxy_cgroup_path", p["proxy_cgroup_path"])
    if bypass == "cgroup_path" and proxy_cgroup_path is None:
        raise ConfigError("proxy_cgroup_path", None, "is required when bypass=cgroup_path")

    inbound_port = parse_port("inbound_port", p["inbound_port"])
    outbound_port = parse_port("outbound_port", p["outbound_port"])

    families = p["ip_families"]
    if families is not None:
        if not isinstance(families, (list, tuple)) or not families:
            raise ConfigError("ip_families", families, "must be a non-empty list of ipv4 and/or ipv6")
        for family in families:
            _choice("ip_families", family, FAMILIES)
        families = tuple(f for f in FAMILIES if f in families)

    wait = _as_int("wait", p["wait"], 0, 3600)
    rules_file = p["rules_file"]
    if rules_file is not None and (not isinstance(rules_file, str) or not os.path.isabs(rules_file)):
        raise ConfigError("rules_file", rules_file, "must be an absolute path")

    return RedirectConfig(
        state=state,
        inbound_port=inbound_port,
        outbound_port=outbound_port,
        capture_inbound=_as_bool("capture_inbound", p["capture_inbound"]),
        capture_outbound=_as_bool("capture_outbound", p["capture_outbound"]),
        inbound_ports=parse_port_list("inbound_ports", p["inbound_ports"]),
        inbound_exclude_ports=parse_port_list("inbound_exclude_ports", p["inbound_exclude_ports"]),
        outbound_exclude_ports=parse_port_list("outbound_exclude_ports", p["outbound_exclude_ports"]),
        outbound_include_cidrs=parse_cidr_list("outbound_include_cidrs", p["outbound_include_cidrs"]),
        outbound_exclude_cidrs=parse_cidr_list("outbound_exclude_cidrs", p["outbound_exclude_cidrs"]),
        bypass=bypass,
        proxy_uid=proxy_uid,
        proxy_gid=proxy_gid,
        proxy_mark=proxy_mark,
        proxy_classid=proxy_classid,
        proxy_cgroup_path=proxy_cgroup_path,
        exclude_uids=parse_id_list("exclude_uids", p["exclude_uids"]),
        exclude_gids=parse_id_list("exclude_gids", p["exclude_gids"]),
        ip_families=families,
        backend=backend,
        chain_prefix=prefix,
        jump_position=jump_position,
        wait=wait,
        rules_file=rules_file,
    )


# ---------------------------------------------------------------------------
# Rendering: RedirectConfig -> desired rules, in iptables-save spelling
# ---------------------------------------------------------------------------

@dataclass
class Ruleset:
    """The objects this engine owns in one family's nat table.

    ``rules`` hold "-A <owned chain> ..." lines and ``jumps`` the tagged
    "-A PREROUTING|OUTPUT ..." lines, both in the order iptables-save prints.
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
        out += self.jumps + self.rules
        out.append("COMMIT")
        return out

    def text(self) -> str:
        lines = self.lines()
        return "\n".join(lines) + "\n" if lines else ""


def quote(text: str) -> str:
    """Quote like iptables-save: double quotes only where needed."""
    if re.fullmatch(r"[A-Za-z0-9_.:/+=@%^,-]+", text) and ":" not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


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


def proxy_match(config: RedirectConfig, negate: bool, cgroup_id=None) -> str:
    """The match that identifies the proxy's own sockets, per bypass mode."""
    bang = "! " if negate else ""
    if config.bypass == "uid":
        return f"-m owner {bang}--uid-owner {config.proxy_uid}"
    if config.bypass == "gid":
        return f"-m owner {bang}--gid-owner {config.proxy_gid}"
    if config.bypass == "mark":
        return f"-m mark {bang}--mark {config.proxy_mark}"
    if config.bypass == "net_cls":
        return f"-m cgroup {bang}--cgroup {config.proxy_classid}"
    # xt_cgroup binds a --path rule to the cgroup object when the rule is
    # inserted: if systemd removes and re-creates the unit's cgroup, the rule
    # text stays the same but no longer matches. Carrying the cgroup's id in a
    # comment makes that visible as drift, so the next apply re-inserts it.
    comment = f"-m comment --comment {quote(f'hostmesh:cgroup-id={cgroup_id}')} " if cgroup_id is not None else ""
    return f"{comment}-m cgroup {bang}--path {quote(config.proxy_cgroup_path)}"


def render_ruleset(config: RedirectConfig, family: str, cgroup_id=None) -> Ruleset:
    """The desired owned objects of one family (empty when state=absent)."""
    ruleset = Ruleset()
    if config.state == "absent":
        return ruleset
    c = config.chain
    inbound, in_redirect, output, redirect = (c(s) for s in CHAIN_SUFFIXES)
    tag = quote(config.tag)

    def proxy(negate: bool) -> str:
        return proxy_match(config, negate, cgroup_id)

    if config.capture_inbound:
        ruleset.chains += [inbound, in_redirect]
        ruleset.jumps.append(f"-A PREROUTING {NEW_TCP} -m comment --comment {tag} -j {inbound}")
        for chunk in multiport_chunks(config.inbound_exclude_ports):
            ruleset.rules.append(f"-A {inbound} -p tcp -m multiport --dports {','.join(chunk)} -j RETURN")
        if config.inbound_ports:
            for chunk in multiport_chunks(config.inbound_ports):
                ruleset.rules.append(f"-A {inbound} -p tcp -m multiport --dports {','.join(chunk)} -j {in_redirect}")
        else:
            ruleset.rules.append(f"-A {inbound} -p tcp -j {in_redirect}")
        ruleset.rules.append(f"-A {in_redirect} -p tcp -j REDIRECT --to-ports {config.inbound_port}")

    if config.capture_outbound:
        ruleset.chains += [output, redirect]
        ruleset.jumps.append(f"-A OUTPUT {NEW_TCP} -m comment --comment {tag} -j {output}")
        loopback = LOOPBACK[family]
        # Envoy's inbound passthrough (source 127.0.0.6 / ::6) talking to the workload.
        ruleset.rules.append(f"-A {output} -s {PASSTHROUGH_SOURCE[family]} -o lo -j RETURN")
        if config.capture_inbound:
            # The proxy calling its own host's address goes through the inbound
            # listener, as a call from another host would (Istio's hairpin rule).
            ruleset.rules.append(f"-A {output} ! -d {loopback} -o lo -p tcp {proxy(False)} -j {inbound}")
        # A workload calling its own host over loopback is not mesh traffic.
        ruleset.rules.append(f"-A {output} -o lo {proxy(True)} -j RETURN")
        ruleset.rules.append(f"-A {output} -d {loopback} -j RETURN")
        for uid in config.exclude_uids:
            ruleset.rules.append(f"-A {output} -m owner --uid-owner {uid} -j RETURN")
        for gid in config.exclude_gids:
            ruleset.rules.append(f"-A {output} -m owner --gid-owner {gid} -j RETURN")
        for chunk in multiport_chunks(config.outbound_exclude_ports):
            ruleset.rules.append(f"-A {output} -p tcp -m multiport --dports {','.join(chunk)} -j RETURN")
        for cidr in cidrs_of_family(config.outbound_exclude_cidrs, family):
            ruleset.rules.append(f"-A {output} -d {cidr} -j RETURN")
        if config.outbound_include_cidrs:
            for cidr in cidrs_of_family(config.outbound_include_cidrs, family):
                ruleset.rules.append(f"-A {output} -d {cidr} {proxy(True)} -j {redirect}")
        else:
            ruleset.rules.append(f"-A {output} {proxy(True)} -j {redirect}")
        ruleset.rules.append(f"-A {redirect} -p tcp -j REDIRECT --to-ports {config.outbound_port}")
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
            raise NetfilterError(
                f"the {incompatible.group(1)} table holds native nftables rules that iptables-nft cannot show; "
                "hostmesh will not change a table it cannot read")
        if line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], TableDump())
        elif line == "COMMIT":
            current = None
        elif current is None:
            raise NetfilterError(f"unexpected line outside a table in iptables-save output: {line}")
        elif line.startswith(":"):
            name, dummy, rest = line[1:].partition(" ")
            current.chains[name] = rest.split(" ", 1)[0] if rest else "-"
        elif line.startswith("-A "):
            current.rules.append(line)
        else:
            raise NetfilterError(f"unexpected line in iptables-save output: {line}")
    return tables


def rule_tokens(line: str) -> tuple:
    """A rule line as a token tuple: the canonical form used for comparison.

    Rendered rules are written in iptables-save's own order and spelling, so
    only quoting can differ, and shlex undoes the quoting.
    """
    try:
        return tuple(shlex.split(line))
    except ValueError:
        return tuple(line.split())


def rule_chain(line: str) -> str:
    return line.split()[1]


def rule_target(line: str):
    tokens = rule_tokens(line)
    for index, token in enumerate(tokens[:-1]):
        if token in ("-j", "--jump", "-g", "--goto"):
            return tokens[index + 1]
    return None


def owned_view(dump, config: RedirectConfig) -> Ruleset:
    """The objects of a live nat table that belong to this engine.

    Ownership: the chains named <prefix>_<suffix>, and rules in built-in chains
    that jump to them or carry our tag. Everything else is somebody else's.
    """
    view = Ruleset()
    if dump is None:
        return view
    owned = set(config.owned_chains)
    tag_tokens = ("--comment", config.tag)
    view.chains = [name for name in dump.chains if name in owned]
    for line in dump.rules:
        chain = rule_chain(line)
        if chain in owned:
            view.rules.append(line)
            continue
        tokens = rule_tokens(line)
        carries_tag = any(tokens[i:i + 2] == tag_tokens for i in range(len(tokens) - 1))
        if rule_target(line) in owned or carries_tag:
            view.jumps.append(line)
    return view


def foreign_lines(save_text: str, config: RedirectConfig) -> list:
    """Every line of an iptables-save dump that this engine does not own
    (tests use it to prove other tools' rules come through byte for byte)."""
    owned = set(config.owned_chains)
    out = []
    for raw in save_text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.startswith(":") and line[1:].split(" ")[0] in owned:
            continue
        if line.startswith("-A "):
            if rule_chain(line) in owned or rule_target(line) in owned:
                continue
        out.append(re.sub(r"\[\d+:\d+\]$", "[0:0]", line) if line.startswith(":") else line)
    return out


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


def _same_rules(a, b) -> bool:
    return [rule_tokens(x) for x in a] == [rule_tokens(x) for x in b]


def plan_table(live: Ruleset, desired: Ruleset, config: RedirectConfig) -> Plan:
    """Compute the restore block that makes ``live`` equal to ``desired``.

    * Owned chains are replaced as a whole (":CHAIN - [0:0]" flushes them in
      --noflush mode) when anything in them differs; the kernel applies the
      block as one transaction, so there is no window without rules.
    * Jump rules that are already right are left alone (keeping counters and
      their position among other tools' rules); only missing ones are added and
      stale or duplicate ones deleted by their exact live text.
    * Nothing else in the table is named, so nothing else can change.
    """
    chains_in_sync = (sorted(live.chains) == sorted(desired.chains)
                      and _same_rules(live.rules, desired.rules))

    keep, delete = [], []
    wanted = [rule_tokens(j) for j in desired.jumps]
    for line in live.jumps:
        tokens = rule_tokens(line)
        if tokens in wanted and tokens not in [rule_tokens(k) for k in keep]:
            keep.append(line)
        else:
            delete.append(line)
    kept = [rule_tokens(k) for k in keep]
    add = [j for j in desired.jumps if rule_tokens(j) not in kept]

    # Shown "after": the live spelling of every rule that stays (iptables-save
    # quotes differently from us), so a diff only shows real changes.
    spelled = {rule_tokens(line): line for line in live.rules + live.jumps}
    after = Ruleset(list(desired.chains),
                    [spelled.get(rule_tokens(line), line) for line in desired.rules],
                    [spelled.get(rule_tokens(line), line) for line in desired.jumps])
    if chains_in_sync and not delete and not add:
        return Plan("", live, after)

    lines = [f"*{TABLE}"]
    if not chains_in_sync:
        lines += [f":{chain} - [0:0]" for chain in desired.chains]
    lines += ["-D" + line[2:] for line in delete]
    if not chains_in_sync:
        stale = [chain for chain in live.chains if chain not in desired.chains]
        # Flush before deleting: owned chains may reference each other.
        lines += [f"-F {chain}" for chain in stale]
        lines += [f"-X {chain}" for chain in stale]
        lines += desired.rules
    for line in add:
        if config.jump_position == "insert":
            lines.append("-I" + line[2:].replace(f" {rule_chain(line)} ", f" {rule_chain(line)} 1 ", 1))
        else:
            lines.append(line)
    lines.append("COMMIT")
    return Plan("\n".join(lines) + "\n", live, after)


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


def default_runner(argv, data=None):
    """Command runner for the host-side CLI (the module passes its own)."""
    proc = subprocess.run(argv, input=data, capture_output=True, text=True,
                          env=dict(os.environ, LC_ALL="C"), check=False)
    return proc.returncode, proc.stdout, proc.stderr


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


@dataclass
class Variant:
    name: str       # "nft" or "legacy"
    save: str
    restore: str


class Netfilter:
    """Reads and writes one family's nat table through iptables-save/-restore."""

    def __init__(self, config: RedirectConfig, runner=default_runner, warn=None):
        self.config = config
        self.run = runner
        self.warn = warn or (lambda message: None)

    # -- binaries ---------------------------------------------------------
    @staticmethod
    def _prefix(family: str) -> str:
        return "iptables" if family == "ipv4" else "ip6tables"

    def variants(self, family: str) -> dict:
        """Variants whose binaries exist, by name."""
        prefix = self._prefix(family)
        found = {}
        for name in ("nft", "legacy"):
            save = find_binary(f"{prefix}-{name}-save")
            restore = find_binary(f"{prefix}-{name}-restore")
            if save and restore:
                found[name] = Variant(name, save, restore)
        if not found:
            # Hosts with only the unsuffixed binaries (older RHEL): ask it which it is.
            save, restore = find_binary(f"{prefix}-save"), find_binary(f"{prefix}-restore")
            if save and restore:
                rc, out, err = self.run([save, "--version"])
                name = "nft" if "nf_tables" in (out + err) else "legacy"
                found[name] = Variant(name, save, restore)
        return found

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
            raise NetfilterError(f"{variant.save} failed (rc={rc}): {err.strip()}",
                                 cmd=variant.save, rc=rc, stdout=out, stderr=err)
        return out

    def read(self, variant: Variant, family: str):
        """(raw save text, nat TableDump or None) of a variant."""
        text = self.save(variant, family)
        return text, parse_save(text).get(TABLE)

    # -- choosing the variant ---------------------------------------------
    def choose(self, family: str):
        """Pick the variant to write to; return (variant, {name: (text, nat dump)}).

        auto: the variant that already holds our chains, else the one that
        holds rules when only one does (legacy on an old-style host), else nft.
        A warning is given whenever the other variant has rules in the same
        hooks: the kernel evaluates both, in an order the admin should know.
        """
        available = self.variants(family)
        if not available:
            raise NetfilterError(f"no iptables binaries for {family} found (install the iptables package)")
        wanted = self.config.backend
        if wanted != "auto" and wanted not in available:
            raise NetfilterError(f"backend={wanted} was requested but {self._prefix(family)}-{wanted}-save/-restore "
                                 f"are not installed (found: {', '.join(sorted(available))})")
        dumps = {name: self.read(variant, family) for name, variant in available.items()}
        views = {name: owned_view(dump, self.config) for name, (text, dump) in dumps.items()}

        def holds_ours(name):
            return not views[name].is_empty()

        def holds_rules(name):
            text = dumps[name][0]
            return any(line.startswith("-A ") for line in text.splitlines())

        if wanted != "auto":
            chosen = wanted
        else:
            ours = [n for n in ("nft", "legacy") if n in available and holds_ours(n)]
            busy = [n for n in ("nft", "legacy") if n in available and holds_rules(n)]
            if ours:
                chosen = ours[0]
            elif busy == ["legacy"]:
                chosen = "legacy"
            else:
                chosen = "nft" if "nft" in available else "legacy"
        for other in available:
            if other == chosen:
                continue
            dump = dumps[other][1]
            hooked = [r for r in (dump.rules if dump else []) if rule_chain(r) in ("PREROUTING", "OUTPUT")
                      and r not in views[other].jumps]
            if hooked and self.config.state == "present":
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
            raise NetfilterError(f"{variant.restore} --noflush failed (rc={rc}): {err.strip()}",
                                 cmd=" ".join(argv), rc=rc, stdout=out, stderr=err, restore_input=block)


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
        raise NetfilterError("bypass=cgroup_path needs a cgroup v2 hierarchy, and none is mounted on this host")
    try:
        return os.stat(os.path.join(root, path)).st_ino
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------
# The whole operation, shared by the module and the host-side CLI
# ---------------------------------------------------------------------------

@dataclass
class FamilyResult:
    family: str
    variant: str
    plan: Plan
    cleanup: dict = field(default_factory=dict)  # other variant -> Plan removing stray owned objects


def _absent_twin(config: RedirectConfig) -> RedirectConfig:
    data = config.to_json()
    data["state"] = "absent"
    return config_from_params(data)


class RedirectManager:
    """Reads state, plans, diffs, then acts (acting skipped in check mode)."""

    def __init__(self, config: RedirectConfig, runner=default_runner, warn=None, check_mode=False):
        self.config = config
        self.netfilter = Netfilter(config, runner, warn)
        self.warn = warn or (lambda message: None)
        self.check_mode = check_mode
        self.results = []
        self.file_change = None

    def families(self) -> list:
        if self.config.ip_families is not None:
            for family in self.config.ip_families:
                if family == "ipv6" and not ipv6_enabled():
                    raise NetfilterError("ip_families includes ipv6 but IPv6 is disabled on this host")
                if not self.netfilter.variants(family):
                    raise NetfilterError(f"ip_families includes {family} but no {Netfilter._prefix(family)} binaries are installed")
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
            raise NetfilterError(
                f"proxy_cgroup_path={self.config.proxy_cgroup_path!r}: no such cgroup under {cgroup2_root()}; "
                "the proxy's unit must be running (its cgroup exists) before rules can name it")
        return ident

    def plan(self) -> list:
        ident = self.desired_cgroup_id()
        absent = _absent_twin(self.config)
        self.results = []
        for family in self.families():
            variant, dumps = self.netfilter.choose(family)
            live = owned_view(dumps[variant.name][1], self.config)
            desired = render_ruleset(self.config, family, ident)
            result = FamilyResult(family, variant.name, plan_table(live, desired, self.config))
            for other, (text, dump) in dumps.items():
                if other == variant.name:
                    continue
                stray = owned_view(dump, self.config)
                if not stray.is_empty():
                    # Our chains in the variant we are not using (the iptables
                    # alternative was switched): remove them, never keep two copies.
                    result.cleanup[other] = plan_table(stray, Ruleset(), absent)
            self.results.append(result)
        return self.results

    @property
    def changed(self) -> bool:
        return any(r.plan.changed or any(p.changed for p in r.cleanup.values()) for r in self.results) \
            or bool(self.file_change)

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
                dump = self.netfilter.read(variant, result.family)[1]
                live = owned_view(dump, self.config)
                after = result.plan.after
                if not (sorted(live.chains) == sorted(after.chains) and _same_rules(live.rules, after.rules)
                        and sorted(map(rule_tokens, live.jumps)) == sorted(map(rule_tokens, after.jumps))):
                    raise NetfilterError(
                        f"{result.family}: after iptables-restore the live rules differ from the desired rules",
                        live="\n".join(live.lines()), desired="\n".join(after.lines()))

    # -- rules file -----------------------------------------------------------
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
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    def plan_rules_file(self):
        """(before, after) texts of the rules file, or None when unchanged."""
        path = self.config.rules_file
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                before = handle.read()
        except FileNotFoundError:
            before = ""
        after = "" if self.config.state == "absent" else self.rules_document()
        self.file_change = None if before == after else (before, after)
        return self.file_change

    def write_rules_file(self) -> None:
        if self.check_mode or not self.file_change:
            return
        path = self.config.rules_file
        after = self.file_change[1]
        if not after:
            os.unlink(path)
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hostmesh-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(after)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def run(self) -> dict:
        self.plan()
        self.plan_rules_file()
        self.apply()
        self.write_rules_file()
        return self.summary()

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
        }


# ---------------------------------------------------------------------------
# Host-side CLI (installed by the transparent_proxy role for boot-time restore)
# ---------------------------------------------------------------------------

def load_rules_file(path: str) -> RedirectConfig:
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    return config_from_params(document["config"])


def run_cli(argv) -> tuple:
    """The host-side command, as (exit code, stdout, stderr).

    Printing and exiting are left to the small wrapper the transparent_proxy
    role installs (hostmesh-redirect.py), so that this file stays a plain
    module_utils file.
    """
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
        config = load_rules_file(args.config)
        data = config.to_json()
        data["rules_file"] = None  # the command never rewrites the file it reads
        if args.action == "remove":
            data["state"] = "absent"
        config = config_from_params(data)
        manager = RedirectManager(config, warn=warnings.append, check_mode=args.action == "check")
        summary = manager.run()
    except (ConfigError, NetfilterError, OSError, ValueError, KeyError) as exc:
        return 2, "", "".join(f"warning: {w}\n" for w in warnings) + f"hostmesh-redirect: {exc}\n"
    stderr = "".join(f"warning: {w}\n" for w in warnings)
    rc = 1 if args.action == "check" and summary["changed"] else 0
    return rc, json.dumps(summary, indent=2, sort_keys=True) + "\n", stderr
