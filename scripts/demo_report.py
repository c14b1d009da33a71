# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The demo's requests between the hosts, and the report of what the sidecars saw.

    python3 scripts/demo_report.py STATE_JSON PORT EXCLUDED_PORT CALLS_PER_PAIR "alpha=uid bravo=mark ..."

STATE_JSON is the lab's state.json (addresses, SSH key and wrapper). Each host
runs its calls itself (over SSH, as root: a workload like any other) and reads
its own Envoy's admin interface right after them, since an ORIGINAL_DST cluster
forgets an idle destination after a few seconds. Exit status 0 when every
check passed. Everything but ``on_host`` and ``main`` is pure.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from collections_path import REPO_ROOT, link_checkout  # noqa: E402  pylint: disable=wrong-import-position,import-error

INBOUND_SOURCE = "127.0.0.6"  # the inbound sidecar's passthrough source address
OUT = "tcp.outbound_passthrough.downstream_cx_total"
IN_OTHER = "tcp.inbound_passthrough.downstream_cx_total"
UP_OUT = "cluster.outbound_passthrough.upstream_cx_total"
UP_IN = "cluster.inbound_passthrough.upstream_cx_total"
STATS_FILTER = r"^(tcp\.|cluster\.(outbound|inbound)_passthrough\.)"
# Envoy's admin interface: a Unix socket that only root and the proxy user can open.
ADMIN_SOCKET = "/run/hostmesh-envoy/admin.sock"

# Runs on a host (as root): the calls of the job, then a read of the local Envoy's admin interface.
REMOTE = r'''
import http.client, json, socket, sys, urllib.parse, urllib.request
job = json.loads(sys.argv[1])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(url):
    with opener.open(url, timeout=10) as response:
        return response.read().decode()
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
out = {"calls": []}
for call in job["calls"]:
    try:
        body = json.loads(get(call["url"]))
        out["calls"].append(dict(call, ok=True, host=body["host"], peer=body["peer"]))
    except Exception as exc:  # reported, not raised: the table shows which call failed
        out["calls"].append(dict(call, ok=False, error=str(exc)))
out["ready"] = admin("/ready").strip()
out["stats"] = admin("/stats?filter=" + urllib.parse.quote(job["stats_filter"]))
out["clusters"] = admin("/clusters")
print(json.dumps(out))
'''


def envoy_stats_filters():
    """(parse, delta): the collection's /stats filters (plugins/filter/envoy_stats.py), the one place counters are read."""
    sys.path.insert(0, str(link_checkout(REPO_ROOT / ".cache" / "demo-collections")))
    # pylint: disable-next=import-outside-toplevel,import-error
    from ansible_collections.hostmesh.sidecar.plugins.filter.envoy_stats import envoy_stats_delta, parse_envoy_stats
    return parse_envoy_stats, envoy_stats_delta


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


def passthrough_destinations(clusters_text: str) -> dict:
    """{destination: cx_total} of the outbound_passthrough cluster, from the admin /clusters page."""
    destinations = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "outbound_passthrough" and parts[2] == "cx_total":
            destinations[parts[1]] = int(parts[3])
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


def render_table(header: list, rows: list) -> str:
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, ["-" * width for width in widths]] + rows]
    return "\n".join("  " + line for line in lines)


class Report:
    """The readings of one demo run (admin reads before, during and after the calls) and what they show."""

    def __init__(self, hosts, address, bypass, port, excluded, calls_per_pair, before, runs, after, stats_delta):
        self.hosts, self.address, self.bypass = hosts, address, bypass
        self.port, self.excluded, self.calls_per_pair = port, excluded, calls_per_pair
        self.before, self.runs, self.after = before, runs, after
        self.stats_delta = stats_delta
        self.host_of = {value: key for key, value in address.items()}
        self.all_calls = [dict(call, caller=caller) for caller in hosts for call in runs[caller]["calls"]]
        self.mesh_calls = [call for call in self.all_calls if call["port"] == port]
        self.excluded_calls = [call for call in self.all_calls if call["port"] == excluded]
        self.peers_in = len(hosts) - 1

    def delta(self, host: str, name: str) -> int:
        return self.stats_delta(self.after[host]["stats"], self.before[host]["stats"], name)

    def destinations(self, host: str) -> dict:
        return destination_deltas(passthrough_destinations(self.before[host]["clusters"]),
                                  passthrough_destinations(self.runs[host]["clusters"]))

    def text(self) -> str:
        port, excluded, hosts = self.port, self.excluded, self.hosts
        inbound = f"tcp.inbound_{port}.downstream_cx_total"
        out = [
            "",
            f"What the sidecars saw: each host called every other host's :{port} {self.calls_per_pair} times "
            f"({self.peers_in * self.calls_per_pair} calls) and the next host's :{excluded} once (an excluded port).",
            f"Counters are the change of each host's Envoy stats (admin socket {ADMIN_SOCKET}) over these calls:",
            "  outbound  connections the outbound listener took from this host's workload (tcp.outbound_passthrough)",
            "  upstream  connections the outbound sidecar opened to their destinations (not captured again: no loop)",
            f"  inbound   connections the inbound listener took for the workload's :{port}, and for any other port",
            "  per destination  connections per original destination, from the admin /clusters page (outbound_passthrough)",
            "",
        ]
        rows = []
        for host in hosts:
            per_destination = []
            for destination, count in sorted(self.destinations(host).items()):
                dest_address, dest_port = destination.rsplit(":", 1)
                per_destination.append(f"{self.host_of.get(dest_address, dest_address)}:{dest_port}={count}")
            rows.append([host, self.address[host], self.bypass.get(host, "?"), self.after[host]["ready"],
                         f"+{self.delta(host, OUT)}", f"+{self.delta(host, UP_OUT)}",
                         f"+{self.delta(host, inbound)}", f"+{self.delta(host, IN_OTHER)}",
                         " ".join(per_destination) or "-"])
        out.append(render_table(["host", "address", "bypass", "envoy", "outbound", "upstream", f"inbound :{port}",
                                 "inbound other", "outbound per destination (/clusters cx_total)"], rows))
        out += ["", f"Calls to :{port} as the called workload saw them: answered/sent and the caller address it saw "
                    f"({INBOUND_SOURCE} = through its inbound sidecar)", ""]
        rows = []
        for caller in hosts:
            row = [caller]
            for callee in hosts:
                pair = [call for call in self.mesh_calls if call["caller"] == caller and call["to"] == callee]
                if not pair:
                    row.append("-")
                    continue
                answered = [call for call in pair if call["ok"] and call["host"] == callee]
                peers = sorted({call.get("peer", "error") for call in pair})
                row.append(f"{len(answered)}/{len(pair)} from {','.join(peers)}")
            rows.append(row)
        out.append(render_table(["from \\ to"] + hosts, rows))
        out += ["", f"Calls to the excluded port :{excluded} (past both sidecars: the workload sees the caller's own address)",
                ""]
        out.append(render_table(["from", "to", "answered by", "caller address the workload saw"],
                                [[call["caller"], call["to"], call.get("host", "error: " + call.get("error", "?")),
                                  call.get("peer", "-")] for call in self.excluded_calls]))
        out.append("")
        out += [f"  {'ok  ' if passed else 'FAIL'} {text}" for text, passed in self.checks()]
        return "\n".join(out)

    def checks(self) -> list:
        """(what, passed) for each property the demo shows."""
        port, excluded, hosts = self.port, self.excluded, self.hosts
        expected = self.peers_in * self.calls_per_pair
        inbound = f"tcp.inbound_{port}.downstream_cx_total"
        return [
            ("every call was answered by the host it was sent to",
             all(call["ok"] and call["host"] == call["to"] for call in self.all_calls)),
            (f":{port} calls reached the workload from {INBOUND_SOURCE} (through the callee's inbound sidecar)",
             all(call.get("peer") == INBOUND_SOURCE for call in self.mesh_calls)),
            (f"each caller's outbound sidecar counted each of its :{port} calls once (no loop, "
             f":{excluded} not counted)",
             all(self.delta(host, OUT) == self.delta(host, UP_OUT) == expected for host in hosts)),
            (f"each callee's inbound sidecar counted each :{port} call to it once",
             all(self.delta(host, inbound) == expected and self.delta(host, IN_OTHER) == 0
                 and self.delta(host, UP_IN) == expected for host in hosts)),
            ("each caller's /clusters page counted its calls per destination",
             all(self.destinations(host) == {f"{self.address[callee]}:{port}": self.calls_per_pair
                                             for callee in hosts if callee != host} for host in hosts)),
            (f":{excluded} calls went past both sidecars (the workload saw the caller's address)",
             all(call.get("peer") == self.address[call["caller"]] for call in self.excluded_calls)),
        ]


def remote_job(calls: list, admin_socket: str = ADMIN_SOCKET) -> str:
    """The argument of REMOTE: the calls to make, and where and what to read from the admin interface."""
    return json.dumps({"calls": calls, "stats_filter": STATS_FILTER, "admin_socket": admin_socket})


def on_host(state: dict, host: str, calls: list) -> dict:
    """Run the calls on the host over SSH and read its Envoy's admin interface right after them."""
    argv = [state["ssh_wrappers"]["ssh"], "-i", state["key"], "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{state['hosts'][host]['address']}",
            "python3 - " + shlex.quote(remote_job(calls))]
    proc = subprocess.run(argv, input=REMOTE, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        sys.exit(f"[demo] {host}: the request run failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def main(argv: list[str]) -> int:
    state_path, port, excluded, calls_per_pair, bypass_text = argv
    port, excluded, calls_per_pair = int(port), int(excluded), int(calls_per_pair)
    bypass = dict(item.split("=") for item in bypass_text.split())
    state = json.loads(Path(state_path).read_text(encoding="utf-8"))
    hosts = list(state["hosts"])
    address = {host: state["hosts"][host]["address"] for host in hosts}
    stats_delta = envoy_stats_filters()[1]

    before = {host: on_host(state, host, []) for host in hosts}
    runs = {caller: on_host(state, caller, calls)
            for caller, calls in plan_calls(hosts, address, port, excluded, calls_per_pair).items()}
    after = {host: on_host(state, host, []) for host in hosts}
    report = Report(hosts, address, bypass, port, excluded, calls_per_pair, before, runs, after, stats_delta)
    print(report.text())
    return 0 if all(passed for _text, passed in report.checks()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
