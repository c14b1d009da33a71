# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The demo's requests between the hosts, and the report of what the sidecars saw.

    python3 scripts/demo_report.py --state STATE_JSON --port 8080 --excluded-port 9999 --calls-per-pair 2 \\
        --trust-domain demo.local --bypass "alpha=uid bravo=mark ..." \\
        --service hello=alpha,bravo --service-caller delta --policy delta=alpha,bravo

STATE_JSON is the lab's state.json (addresses, SSH key and wrapper). Each host
runs its calls itself (over SSH, as root: a workload like any other) and reads
its own Envoy's admin interface right after them, since an ORIGINAL_DST cluster
forgets an idle destination after a few seconds. Each call remembers its local
address, which is the caller sidecar's access log key for the connection (its
``downstream``); the callee's line of the same connection is the first one after
it from the caller's address to that destination (the hosts share one clock).
Exit status 0 when every check passed. Everything but ``on_host``, ``on_hosts``
and ``main`` is pure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from collections_path import REPO_ROOT, link_checkout  # noqa: E402  pylint: disable=wrong-import-position,import-error

INBOUND_SOURCE = "127.0.0.6"  # the inbound sidecar's passthrough source address
PLAIN_OUT = "tcp.outbound_passthrough.downstream_cx_total"
MESH_DOMAIN = "mesh"  # hostmesh_mesh_domain's default: service names resolve as <name>.mesh
STATS_FILTER = (r"^(tcp\.|cluster\.(outbound_passthrough|inbound_passthrough|mesh_[^.]+|service_[^.]+)\."
                r"(upstream_cx_total|ssl\.handshake)$|inbound_[0-9]+\.rbac\.(allowed|denied)$)")
# Envoy's admin interface: a Unix socket that only root and the proxy user can open.
ADMIN_SOCKET = "/run/hostmesh-envoy/admin.sock"
ENVOY_UNIT = "hostmesh-envoy.service"
# Envoy writes access logs out every second (the unit's --file-flush-interval-msec 1000).
LOG_FLUSH_WAIT = 1.5
# The callee's access log line of a connection its RBAC filter closed: %CONNECTION_TERMINATION_DETAILS%.
DENIED_TERMINATION = "rbac_access_denied_matched_policy"
# What the report shows of the callee's access log line of a denied call.
DENIED_LOG_KEYS = ("direction", "downstream", "original_destination", "downstream_peer", "cluster", "bytes_sent",
                   "response_flags", "termination")

# Runs on a host (as root): the calls of the job, then a read of the local Envoy's admin interface
# and, when asked, of its access log in the journal.
REMOTE = r'''
import http.client, json, socket, subprocess, sys, urllib.parse
job = json.loads(sys.argv[1])
def address(pair):
    return "%s:%d" % pair[:2]
def get(call):
    url = urllib.parse.urlsplit(call["url"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.connect()
        seen = {"local": address(connection.sock.getsockname()), "remote": address(connection.sock.getpeername())}
        try:
            connection.request("GET", url.path or "/")
            body = json.loads(connection.getresponse().read().decode())
            return dict(call, **seen, ok=True, host=body["host"], peer=body["peer"])
        except Exception as exc:  # reported, not raised: the report shows which call failed and how
            return dict(call, **seen, ok=False, error="%s: %s" % (type(exc).__name__, exc))
    except Exception as exc:
        return dict(call, ok=False, error="%s: %s" % (type(exc).__name__, exc))
    finally:
        connection.close()
class AdminConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(job["admin_socket"])
def admin(path):
    connection = AdminConnection("localhost", timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise OSError("admin %s answered %d: %s" % (path, response.status, body[:200]))
        return body
    finally:
        connection.close()
out = {"calls": [get(call) for call in job["calls"]]}
out["ready"] = admin("/ready").strip()
out["stats"] = admin("/stats?filter=" + urllib.parse.quote(job["stats_filter"]))
out["clusters"] = admin("/clusters")
if job.get("log_since") is not None:
    out["log"] = subprocess.run(["journalctl", "--unit", job["unit"], "--output", "cat", "--no-pager",
                                 "--since", "@%d" % job["log_since"]],
                                capture_output=True, text=True, check=True).stdout
print(json.dumps(out))
'''


def envoy_stats_filters():
    """(parse, delta): the collection's /stats filters (plugins/filter/envoy_stats.py), the one place counters are read."""
    sys.path.insert(0, str(link_checkout(REPO_ROOT / ".cache" / "demo-collections")))
    # pylint: disable-next=import-outside-toplevel,import-error
    from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_stats import envoy_stats_delta, parse_envoy_stats
    return parse_envoy_stats, envoy_stats_delta


def spiffe_id(trust_domain: str, host: str) -> str:
    """A member's identity (docs/mesh.md)."""
    return f"spiffe://{trust_domain}/host/{host}"


def plan_calls(hosts: list[str], address: dict, port: int, excluded: int, calls_per_pair: int) -> dict:
    """Each host calls every other host's port calls_per_pair times, and the next host's excluded port once."""
    plan = {}
    for index, caller in enumerate(hosts):
        calls = [{"to": callee, "port": port, "url": f"http://{address[callee]}:{port}/"}
                 for callee in hosts if callee != caller for _repeat in range(calls_per_pair)]
        next_host = hosts[(index + 1) % len(hosts)]
        calls.append({"to": next_host, "port": excluded, "url": f"http://{address[next_host]}:{excluded}/"})
        plan[caller] = calls
    return plan


def plan_service_calls(service: str, port: int, count: int, domain: str = MESH_DOMAIN) -> list:
    """count calls to the service by its name (resolved by the caller's /etc/hosts block)."""
    return [{"service": service, "port": port, "url": f"http://{service}.{domain}:{port}/"} for _repeat in range(count)]


def cluster_destinations(clusters_text: str, prefix: str) -> dict:
    """{cluster: {destination: cx_total}} of the clusters named prefix*, from the admin /clusters page."""
    destinations = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0].startswith(prefix) and parts[2] == "cx_total":
            destinations.setdefault(parts[0], {})[parts[1]] = int(parts[3])
    return destinations


def destination_deltas(before: dict, after: dict) -> dict:
    """Per-destination connections between two /clusters readings ({destination: cx_total}).

    An idle ORIGINAL_DST destination may be dropped and come back with counters from zero: a count
    lower than before is then a new entry's whole count."""
    deltas = {}
    for destination, count in after.items():
        previous = before.get(destination, 0)
        if count != previous:
            deltas[destination] = count - previous if count > previous else count
    return deltas


def parse_access_log(text: str) -> list:
    """The sidecar's access log entries (one JSON object per connection) among the unit's journal lines."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue  # Envoy's own log lines
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "direction" in entry:
            entries.append(entry)
    return entries


def ip_of(endpoint: str) -> str:
    """The address of an "address:port" (IPv6 in brackets or not)."""
    return endpoint.rsplit(":", 1)[0].strip("[]") if endpoint else ""


def start_time(entry: dict) -> datetime.datetime:
    """An entry's %START_TIME% (UTC, milliseconds)."""
    return datetime.datetime.strptime(entry["start_time"], "%Y-%m-%dT%H:%M:%S.%fZ")


def caller_entry(log: list, call: dict):
    """The caller sidecar's entry of the call's connection: its downstream is the call's local address."""
    return next((entry for entry in log if call.get("local") and entry.get("downstream") == call["local"]), None)


def callee_entry(log: list, caller_line: dict, caller_address: str, taken: set):
    """The callee sidecar's entry of the connection the caller's sidecar logged as caller_line.

    Its inbound entry from the caller's address to the same destination that started first at or
    after the caller's (one clock for the lab hosts); ``taken`` holds the ids of entries already
    matched to earlier calls, and gets this one's."""
    if caller_line is None:
        return None
    destination = caller_line.get("upstream") or caller_line.get("original_destination")
    since = start_time(caller_line)
    candidates = [entry for entry in log
                  if id(entry) not in taken and entry.get("direction", "").startswith("inbound_")
                  and ip_of(entry.get("downstream", "")) == caller_address
                  and entry.get("original_destination") == destination and start_time(entry) >= since]
    if not candidates:
        return None
    found = min(candidates, key=start_time)
    taken.add(id(found))
    return found


def match_calls(calls: list, logs: dict, address: dict) -> list:
    """Each call (with its ``caller``) with ``sent`` (its caller sidecar's log entry), ``callee`` (the host the
    connection went to) and ``received`` (that host's sidecar's entry of it); None where a log has none."""
    host_of = {value: key for key, value in address.items()}
    taken = {host: set() for host in logs}
    matched = []
    for call in calls:
        sent = caller_entry(logs.get(call["caller"], []), call)
        callee = host_of.get(ip_of(sent.get("upstream") or "")) if sent else None
        received = callee_entry(logs[callee], sent, address[call["caller"]], taken[callee]) if callee in logs else None
        matched.append(dict(call, sent=sent, callee=callee, received=received))
    return matched


def render_table(header: list, rows: list) -> str:
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, ["-" * width for width in widths]] + rows]
    return "\n".join("  " + line for line in lines)


def answer_text(call: dict) -> str:
    """What the caller got: the host that answered, or the error."""
    return call["host"] if call.get("ok") else "no answer (" + call.get("error", "?") + ")"


def log_field(entry, key: str) -> str:
    """A field of an access log entry for the tables ("-" for an absent entry or an empty field)."""
    return (entry or {}).get(key) or "-"


class Report:
    """The readings of one demo run and what they show.

    before / runs / after: each host's admin reads before the calls, right after its own calls, after
    every host's calls; service_run: the service caller's calls by name and its admin read right after;
    final: every host's admin read and access log at the end."""

    def __init__(self, setup: dict, before: dict, runs: dict, after: dict, service_run: dict, final: dict, stats_delta):
        self.hosts, self.address, self.bypass = setup["hosts"], setup["address"], setup["bypass"]
        self.port, self.excluded, self.calls_per_pair = setup["port"], setup["excluded"], setup["calls_per_pair"]
        self.trust_domain = setup["trust_domain"]
        self.service, self.service_members, self.service_caller = setup["service"], setup["service_members"], setup["service_caller"]
        self.policy_host, self.policy_allow = setup["policy_host"], setup["policy_allow"]
        self.before, self.runs, self.after, self.service_run, self.final = before, runs, after, service_run, final
        self.stats_delta = stats_delta
        self.host_of = {value: key for key, value in self.address.items()}
        self.logs = {host: parse_access_log(final[host].get("log", "")) for host in self.hosts}
        calls = [dict(call, caller=caller) for caller in self.hosts for call in runs[caller]["calls"]]
        service_calls = [dict(call, caller=self.service_caller) for call in service_run["calls"]]
        matched = match_calls([call for call in calls if call["port"] == self.port] + service_calls, self.logs, self.address)
        self.mesh_calls = [call for call in matched if "service" not in call]
        self.service_calls = [call for call in matched if "service" in call]
        self.excluded_calls = [call for call in calls if call["port"] == self.excluded]
        self.denied_callers = [host for host in self.hosts if host not in self.policy_allow and host != self.policy_host]

    # --- what was expected -------------------------------------------------------------------

    def denied(self, caller: str, callee: str) -> bool:
        return callee == self.policy_host and caller in self.denied_callers

    def callers_of(self, host: str) -> list:
        return [caller for caller in self.hosts if caller != host]

    # --- readings ----------------------------------------------------------------------------

    def delta(self, host: str, name: str) -> int:
        """A counter's change over every host's :port calls."""
        return self.stats_delta(self.after[host]["stats"], self.before[host]["stats"], name)

    def service_delta(self, name: str) -> int:
        """A counter's change on the service caller over its calls by name."""
        return self.stats_delta(self.service_run["stats"], self.after[self.service_caller]["stats"], name)

    def destinations(self, host: str) -> dict:
        """{destination: connections} of the host's mesh_<peer> clusters over its own calls (/clusters)."""
        before = cluster_destinations(self.before[host]["clusters"], "mesh_")
        during = cluster_destinations(self.runs[host]["clusters"], "mesh_")
        deltas = {}
        for cluster, destinations in during.items():
            for destination, count in destination_deltas(before.get(cluster, {}), destinations).items():
                deltas[f"{cluster}:{destination}"] = count
        return deltas

    def peer_sum(self, host: str, template: str) -> int:
        return sum(self.delta(host, template.format(peer=peer)) for peer in self.hosts if peer != host)

    # --- the text ----------------------------------------------------------------------------

    def text(self) -> str:
        return "\n".join(self.counters_part() + self.calls_part() + self.denied_part() + self.service_part()
                         + self.excluded_part() + [""] + [f"  {'ok  ' if passed else 'FAIL'} {text}" for text, passed in self.checks()])

    def counters_part(self) -> list:
        port = self.port
        out = [
            "",
            f"Each host called every other host's :{port} {self.calls_per_pair} times over the mesh, and the next "
            f"host's :{self.excluded} once (an excluded port). Every host is a mesh member: "
            f"identity {spiffe_id(self.trust_domain, '<host>')}.",
            f"Counters are the change of each host's Envoy stats (admin socket {ADMIN_SOCKET}) over these calls:",
            "  mTLS out     connections from this host's workload to peers, over mTLS (sum of tcp.outbound_mesh_<peer>)",
            "  handshakes   TLS handshakes of this host's sidecar with its peers (sum of cluster.mesh_<peer>.ssl.handshake)",
            "  plain out    connections passed through in plaintext (tcp.outbound_passthrough)",
            f"  mTLS in      mesh connections to :{port} (tcp.inbound_{port}_mtls); plain in: plaintext ones (tcp.inbound_{port})",
            f"  allowed / denied  the policy's decisions on :{port} (inbound_{port}.rbac.allowed / .denied)",
            "  per destination   connections per peer cluster and original destination, from the admin /clusters page",
            "",
        ]
        rows = []
        for host in self.hosts:
            per_destination = []
            for key, count in sorted(self.destinations(host).items()):
                cluster, dest_address, dest_port = key.rsplit(":", 2)
                per_destination.append(f"{cluster}→{self.host_of.get(dest_address, dest_address)}:{dest_port}={count}")
            rows.append([host, self.address[host], self.bypass.get(host, "?"), self.after[host]["ready"],
                         f"+{self.peer_sum(host, 'tcp.outbound_mesh_{peer}.downstream_cx_total')}",
                         f"+{self.peer_sum(host, 'cluster.mesh_{peer}.ssl.handshake')}",
                         f"+{self.delta(host, PLAIN_OUT)}",
                         f"+{self.delta(host, f'tcp.inbound_{port}_mtls.downstream_cx_total')}",
                         f"+{self.delta(host, f'tcp.inbound_{port}.downstream_cx_total')}",
                         f"+{self.delta(host, f'inbound_{port}.rbac.allowed')} / +{self.delta(host, f'inbound_{port}.rbac.denied')}",
                         " ".join(per_destination) or "-"])
        out.append(render_table(["host", "address", "bypass", "envoy", "mTLS out", "handshakes", "plain out",
                                 f"mTLS in :{port}", f"plain in :{port}", "allowed / denied", "per destination (/clusters)"],
                                rows))
        return out

    def calls_part(self) -> list:
        out = ["", f"Each call to :{self.port}: who answered (the workload saw {INBOUND_SOURCE}, its inbound sidecar, "
                   "as the caller), and from each sidecar's access log line of the connection (journal of "
                   f"{ENVOY_UNIT}):",
               "  the identity the caller's sidecar verified (upstream_peer), the one the callee's sidecar verified "
               "(downstream_peer), and why the callee's sidecar ended the connection, if it did (termination)", ""]
        rows = [[call["caller"], call["to"], answer_text(call) if call.get("ok") else "refused",
                 log_field(call["sent"], "upstream_peer"), log_field(call["received"], "downstream_peer"),
                 log_field(call["received"], "termination")] for call in self.mesh_calls]
        out.append(render_table(["from", "to", "answered by", "caller's sidecar verified", "callee's sidecar verified",
                                 "callee's termination"], rows))
        return out

    def denied_part(self) -> list:
        port, host = self.port, self.policy_host
        denied = [call for call in self.mesh_calls if self.denied(call["caller"], call["to"])]
        out = ["", f"Denied by policy: {host}'s :{port} allows {', '.join(self.policy_allow)} "
                   f"(hostmesh_workload_ports: [{{port: {port}, allow: [{', '.join(self.policy_allow)}]}}])"]
        if not denied:
            return out + ["  (no call was made to it from a host it does not allow)"]
        call = denied[0]
        caller, received = call["caller"], call["received"] or {}
        lines = [
            (f"what {caller} got", answer_text(call)),
            (f"{caller}'s sidecar verified", f"{log_field(call['sent'], 'upstream_peer')} (the TLS handshake succeeded: "
                                             f"cluster.mesh_{host}.ssl.handshake "
                                             f"+{self.delta(caller, f'cluster.mesh_{host}.ssl.handshake')} on {caller})"),
            (f"{host}'s sidecar verified", f"{log_field(received, 'downstream_peer')} and refused it: "
                                           f"inbound_{port}.rbac.denied +{self.delta(host, f'inbound_{port}.rbac.denied')} "
                                           f"on {host}"),
            (f"{host}'s access log line", json.dumps({key: received.get(key) for key in DENIED_LOG_KEYS})),
        ]
        width = max(len(label) for label, _value in lines)
        return out + [f"  {caller} -> {host}:{port}, {len(denied)} calls; the first one:"] + [
            f"    {label.ljust(width)}  {value}" for label, value in lines]

    def service_part(self) -> list:
        name, caller = self.service, self.service_caller
        vips = sorted({ip_of(call.get("remote", "")) for call in self.service_calls} - {""})
        out = ["", f"By service name: {caller} called http://{name}.{MESH_DOMAIN}:{self.port}/ {len(self.service_calls)} times "
                   f"(service {name}: {', '.join(self.service_members)}; {name}.{MESH_DOMAIN} is {', '.join(vips) or '?'} "
                   f"in {caller}'s /etc/hosts)", ""]
        rows = [[f"{name}.{MESH_DOMAIN}", answer_text(call), log_field(call["sent"], "cluster"),
                 log_field(call["sent"], "upstream"), log_field(call["sent"], "upstream_peer"),
                 log_field(call["received"], "downstream_peer")] for call in self.service_calls]
        out.append(render_table(["called", "answered by", "cluster", "member", f"{caller}'s sidecar verified",
                                 "member's sidecar verified"], rows))
        out.append(f"  {caller}: tcp.outbound_service_{name}.downstream_cx_total "
                   f"+{self.service_delta(f'tcp.outbound_service_{name}.downstream_cx_total')}, "
                   f"cluster.service_{name}.ssl.handshake +{self.service_delta(f'cluster.service_{name}.ssl.handshake')}")
        return out

    def excluded_part(self) -> list:
        out = ["", f"Calls to the excluded port :{self.excluded} (past both sidecars: the workload sees the caller's own "
                   "address)", ""]
        out.append(render_table(["from", "to", "answered by", "caller address the workload saw"],
                                [[call["caller"], call["to"], answer_text(call), call.get("peer", "-")]
                                 for call in self.excluded_calls]))
        return out

    # --- the checks --------------------------------------------------------------------------

    def identities_seen(self, call: dict, callee: str) -> bool:
        """Both sidecars logged the connection, each with the other side's identity."""
        return (call["sent"] is not None and call["received"] is not None
                and call["sent"].get("upstream_peer") == spiffe_id(self.trust_domain, callee)
                and call["received"].get("downstream_peer") == spiffe_id(self.trust_domain, call["caller"]))

    def checks(self) -> list:
        """(what, passed) for each property the demo shows."""
        port, excluded, hosts, per_pair = self.port, self.excluded, self.hosts, self.calls_per_pair
        policy_host, service, caller = self.policy_host, self.service, self.service_caller
        denied_calls = [call for call in self.mesh_calls if self.denied(call["caller"], call["to"])]
        allowed_calls = [call for call in self.mesh_calls if not self.denied(call["caller"], call["to"])]
        denied_text = ", ".join(self.denied_callers) or "nobody"
        service_count = len(self.service_calls)

        def callee_took(host):
            callers = self.callers_of(host)
            refused = per_pair * sum(1 for other in callers if self.denied(other, host))
            return (self.delta(host, f"tcp.inbound_{port}_mtls.downstream_cx_total") == per_pair * len(callers)
                    and self.delta(host, f"tcp.inbound_{port}.downstream_cx_total") == 0
                    and self.delta(host, f"inbound_{port}.rbac.allowed") == per_pair * len(callers) - refused)

        return [
            (f"every :{port} call was answered by the host it was sent to, except {denied_text}'s to {policy_host} "
             "(refused)",
             all(call["ok"] and call["host"] == call["to"] for call in allowed_calls)
             and all(not call["ok"] for call in denied_calls)),
            (f":{port} calls reached the workload from {INBOUND_SOURCE} (through the callee's inbound sidecar)",
             all(call.get("peer") == INBOUND_SOURCE for call in allowed_calls)),
            ("for each call both sidecars logged the connection, the caller's with the callee's identity and the callee's "
             "with the caller's",
             all(call["callee"] == call["to"] and self.identities_seen(call, call["to"]) for call in self.mesh_calls)),
            (f"each caller's sidecar sent each of its :{port} calls once over mTLS, per peer (tcp.outbound_mesh_<peer>, "
             f"cluster.mesh_<peer>.ssl.handshake), none in plaintext (:{excluded} not counted)",
             all(self.delta(host, f"tcp.outbound_mesh_{peer}.downstream_cx_total")
                 == self.delta(host, f"cluster.mesh_{peer}.upstream_cx_total")
                 == self.delta(host, f"cluster.mesh_{peer}.ssl.handshake") == per_pair
                 and self.delta(host, PLAIN_OUT) == 0
                 for host in hosts for peer in self.callers_of(host))),
            (f"each callee's sidecar took each :{port} call over mTLS (tcp.inbound_{port}_mtls), none in plaintext, and "
             f"its policy allowed every caller it lets in (inbound_{port}.rbac.allowed)",
             all(callee_took(host) for host in hosts)),
            (f"{policy_host}'s policy denied {denied_text}'s calls, and only those, after verifying the caller "
             f"(inbound_{port}.rbac.denied; the callee's access log line: the caller's identity, termination "
             f"{DENIED_TERMINATION}..., nothing sent back)",
             bool(denied_calls)
             and all(self.delta(host, f"inbound_{port}.rbac.denied")
                     == (per_pair * len(self.denied_callers) if host == policy_host else 0) for host in hosts)
             and all(call["received"] is not None
                     and str(call["received"].get("termination", "")).startswith(DENIED_TERMINATION)
                     and call["received"].get("bytes_sent") in (0, "0") for call in denied_calls)),
            # Not the exact count: with two workers, each may make its own ORIGINAL_DST host for a destination,
            # and /clusters shows the last one (the stats above count exactly).
            ("each caller's /clusters page shows its calls under the peer's cluster and original destination "
             f"(mesh_<peer>: <peer address>:{port}), and no other",
             all(set(self.destinations(host)) == {f"mesh_{callee}:{self.address[callee]}:{port}"
                                                  for callee in self.callers_of(host)}
                 and all(1 <= count <= per_pair for count in self.destinations(host).values()) for host in hosts)),
            (f":{excluded} calls went past both sidecars (the workload saw the caller's address)",
             all(call.get("peer") == self.address[call["caller"]] for call in self.excluded_calls)),
            (f"{caller}'s calls to {service}.{MESH_DOMAIN} were answered by members of {service} over mTLS, both sidecars "
             f"logging the other's identity (tcp.outbound_service_{service}, cluster.service_{service}.ssl.handshake)",
             service_count > 0
             and all(call["ok"] and call["host"] in self.service_members and call["callee"] == call["host"]
                     and self.identities_seen(call, call["host"]) for call in self.service_calls)
             and self.service_delta(f"tcp.outbound_service_{service}.downstream_cx_total") == service_count
             and self.service_delta(f"cluster.service_{service}.ssl.handshake") == service_count),
        ]


def remote_job(calls: list, admin_socket: str = ADMIN_SOCKET, log_since=None) -> str:
    """The argument of REMOTE: the calls to make, what to read from the admin interface, and from when
    (seconds since the epoch) the sidecar's access log, if at all."""
    return json.dumps({"calls": calls, "stats_filter": STATS_FILTER, "admin_socket": admin_socket,
                       "unit": ENVOY_UNIT, "log_since": log_since})


def on_host(state: dict, host: str, calls: list, log_since=None) -> dict:
    """Run the calls on the host over SSH and read its Envoy's admin interface (and access log) right after them."""
    argv = [state["ssh_wrappers"]["ssh"], "-i", state["key"], "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{state['hosts'][host]['address']}",
            "python3 - " + shlex.quote(remote_job(calls, log_since=log_since))]
    proc = subprocess.run(argv, input=REMOTE, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        sys.exit(f"[demo] {host}: the request run failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def on_hosts(state: dict, jobs: dict, log_since=None) -> dict:
    """on_host on several hosts at once ({host: calls}): one phase of the demo, every host's part in parallel."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {host: pool.submit(on_host, state, host, calls, log_since) for host, calls in jobs.items()}
        return {host: future.result() for host, future in futures.items()}


def host_list(text: str) -> list:
    return [item for item in text.split(",") if item]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The demo's requests between the hosts, and what the sidecars saw.")
    parser.add_argument("--state", required=True, help="the lab's state.json")
    parser.add_argument("--port", type=int, required=True, help="the workload port every host takes mesh calls on")
    parser.add_argument("--excluded-port", type=int, required=True, help="a port excluded from the redirect")
    parser.add_argument("--calls-per-pair", type=int, required=True)
    parser.add_argument("--trust-domain", required=True)
    parser.add_argument("--bypass", default="", help='"alpha=uid bravo=mark ...": what the table says per host')
    parser.add_argument("--service", required=True, help="NAME=MEMBER,MEMBER: a service on --port")
    parser.add_argument("--service-caller", required=True, help="the host that calls the service by name")
    parser.add_argument("--service-calls", type=int, default=2)
    parser.add_argument("--policy", required=True, help="HOST=ALLOWED,ALLOWED: the host whose --port allows only those")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    state = json.loads(Path(args.state).read_text(encoding="utf-8"))
    hosts = list(state["hosts"])
    service, _sep, members = args.service.partition("=")
    policy_host, _sep, allowed = args.policy.partition("=")
    setup = {"hosts": hosts, "address": {host: state["hosts"][host]["address"] for host in hosts},
             "bypass": dict(item.split("=") for item in args.bypass.split()),
             "port": args.port, "excluded": args.excluded_port, "calls_per_pair": args.calls_per_pair,
             "trust_domain": args.trust_domain, "service": service, "service_members": host_list(members),
             "service_caller": args.service_caller, "policy_host": policy_host, "policy_allow": host_list(allowed)}
    stats_delta = envoy_stats_filters()[1]
    log_since = int(time.time()) - 1  # journalctl --since takes whole seconds

    # Phases, each on every host at once: the counters before; every host's calls (callers' calls run side by
    # side: a callee tells their connections apart by the caller's address); the counters after; the calls by
    # service name; the access logs once Envoy has written them out.
    nothing = {host: [] for host in hosts}
    before = on_hosts(state, nothing)
    runs = on_hosts(state, plan_calls(hosts, setup["address"], args.port, args.excluded_port, args.calls_per_pair))
    after = on_hosts(state, nothing)
    service_run = on_host(state, args.service_caller, plan_service_calls(service, args.port, args.service_calls))
    time.sleep(LOG_FLUSH_WAIT)
    final = on_hosts(state, nothing, log_since=log_since)
    report = Report(setup, before, runs, after, service_run, final, stats_delta)
    print(report.text())
    return 0 if all(passed for _text, passed in report.checks()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
