#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Mesh data-plane benchmark: mTLS between two members' sidecars, versus direct and plaintext sidecars.

Two network namespaces play the members alpha (caller) and bravo (callee) of test_mesh_dataplane
(MeshHosts: the envoy_sidecar role rendered from one mesh inventory, mesh_pki certificates, the
role's supervisor running Envoy 1.40 as the proxy uid, redirect rules of the uid bypass mode,
access logs on). The inventory declares --members members (the others never run) and --services
services, as issue 6's memory target asks. bravo runs bench_dataplane's asyncio echo workload on:

  8080  a strict mesh port: alpha's sidecar calls it over mTLS 1.3 (the "mtls" path)
  8081  a server-first port: both sidecars pass it in plaintext, no TLS inspector ("plaintext")
  22    not captured on bravo; the client runs as the proxy uid so alpha does not capture it ("direct")

The figures (each repetition on a fresh pair of Envoys; medians over --repeat repetitions):
  - added p90 latency of the mtls path over direct at --rate keep-alive requests/s (target <= 1.0 ms);
  - CPU of each Envoy (caller, callee) per 1000 requests: utime+stime from /proc/<pid>/stat over the run;
  - new mTLS connections per second through the pair: a connection per request, closed loop, at full load;
  - each idle Envoy's anonymous memory (smaps_rollup Anonymous; not VmRSS, mostly the binary's
    clean file pages) with the declared services (target <= 25 MiB).
Not a timed test; run as root: .venv/bin/python bench/bench_mesh.py
Exit status: 0 when every target is met, 3 when one is missed, 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_dataplane as dataplane  # noqa: E402  pylint: disable=wrong-import-position
import test_envoy_config as lab  # noqa: E402  pylint: disable=wrong-import-position
import test_mesh_dataplane as meshlab  # noqa: E402  pylint: disable=wrong-import-position

MTLS_PORT = 8080
PLAINTEXT_PORT = 8081
PATHS = {  # path: (bravo's port, client as the proxy uid)
    "direct": (dataplane.DIRECT_PORT, True),
    "plaintext": (PLAINTEXT_PORT, False),
    "mtls": (MTLS_PORT, False),
}
BENCH_PORTS = [{"port": MTLS_PORT, "mesh_mode": "strict"}, {"port": PLAINTEXT_PORT, "server_first": True}]
# Hot-restart ids of the two Envoys: their shared memory is named after them in /dev/shm, which
# all namespaces share; the integration tests use 200-201 and 230-231.
BASE_ID = 260
LATENCY_TARGET_MS = 1.0
MEMORY_TARGET_MIB = 25.0


class BenchMeshHosts(meshlab.MeshHosts):
    """MeshHosts with the benchmark's mesh: more members and services, the echo workload, tuned hosts."""

    def __init__(self, netns_factory, workdir, members, services, role_vars=None):
        super().__init__(netns_factory, workdir)
        self.role_vars = role_vars or {}
        extra = ["m%02d" % index for index in range(4, members + 1)]
        path = meshlab.inventory(workdir, self.roots, self.admin_sockets, extra_hosts=extra, bravo_ports=BENCH_PORTS)
        data = json.loads(path.read_text())
        group = data["all"]["children"]["mesh"]
        names = sorted(group["hosts"])
        # test_mesh_dataplane's service "echo" (bravo, charlie) and services-1 more, two members
        # each, port 8080 (every member's mesh port), VIPs from the default range.
        group["vars"]["hostmesh_mesh_services"] += [
            {"name": "svc%03d" % index, "port": MTLS_PORT, "hosts": [names[index % len(names)], names[(index + 1) % len(names)]]}
            for index in range(1, services)]
        path.write_text(json.dumps(data))
        self.inventory = path

    def start(self):
        result = meshlab.render(self.inventory, **self.role_vars)
        if result.rc != 0:
            raise RuntimeError("rendering the role failed:\n%s" % result.output)
        for index, (name, namespace) in enumerate(self.ns.items()):
            namespace.run(["iptables-restore", "--noflush"], input=lab.nat_rules("uid"))
            dataplane.tune_for_short_connections(namespace)
            self.sidecars[name] = lab.Sidecar(namespace, self.roots[name], self.workdir, "uid", base_id=BASE_ID + index)
        self.workload = self.ns["bravo"].popen(["/usr/bin/python3", "-c", dataplane.ECHO_SERVER] +
                                               [str(port) for port, _bypass in PATHS.values()])
        for port, _bypass in PATHS.values():
            lab.wait_listening(self.ns["bravo"], port)
        self.wait_warm("alpha")
        self.wait_warm("bravo")

    def pids(self):
        return [dataplane.envoy_pid(self.sidecars[name]) for name in ("alpha", "bravo")]

    def clusters(self):
        """How many clusters alpha's Envoy serves: the declared mesh is there."""
        return self.sidecars["alpha"].stats().get("cluster_manager.active_clusters", 0)


def ssl_counts(stats):
    """Handshakes and resumed sessions, summed over every listener and cluster of one Envoy."""
    handshakes = sum(value for name, value in stats.items() if name.endswith(".ssl.handshake"))
    resumed = sum(value for name, value in stats.items() if name.endswith(".ssl.session_reused"))
    return handshakes, resumed


def run_interleaved(hosts, kind, rate, duration, concurrency, slices):
    """The three paths, ``duration`` seconds each, in ``slices`` interleaved slices (the order rotating).

    The machine's load moves within seconds (other jobs share it): slices of every path side by side
    see the same load, so the difference between paths is the proxies', not the neighbours'.
    Returns one row per path with its slices pooled.
    """
    names = list(PATHS)
    pooled = {path: [] for path in names}
    for index in range(slices):
        for path in names[index % len(names):] + names[:index % len(names)]:
            port, bypass = PATHS[path]
            before = [ssl_counts(hosts.sidecars[name].stats()) for name in ("alpha", "bravo")]
            part = dataplane.measure(hosts.ns["alpha"], meshlab.ADDR["bravo"], port, kind, rate, duration / slices,
                                     concurrency, bypass=bypass, pids=hosts.pids())
            after = [ssl_counts(hosts.sidecars[name].stats()) for name in ("alpha", "bravo")]
            part["handshakes"] = [b[0] - a[0] for a, b in zip(before, after)]
            part["resumed"] = [b[1] - a[1] for a, b in zip(before, after)]
            part["load_avg"] = os.getloadavg()[0]
            pooled[path].append(part)
    rows = []
    for path in names:
        parts = pooled[path]
        latencies = [value for part in parts for value in part["latencies"]]
        requests = max(len(latencies), 1)

        def total(key, parts=parts):
            return [sum(part[key][side] for part in parts) for side in (0, 1)]
        row = {
            "kind": kind, "load": parts[0]["load"], "path": path, "requests": len(latencies),
            "errors": sum(part["errors"] for part in parts),
            "rps": len(latencies) / sum(part["elapsed"] for part in parts),
            "p50": dataplane.percentile(latencies, 0.50) * 1000, "p90": dataplane.percentile(latencies, 0.90) * 1000,
            "p99": dataplane.percentile(latencies, 0.99) * 1000,
            "cpu_per_1000": [cpu / requests * 1000 for cpu in total("cpu_s")],
            "runqueue_wait_ms_per_req": [wait / requests * 1000 for wait in total("runqueue_wait_s")],
            "handshakes": total("handshakes"), "resumed": total("resumed"),
            "steal_s": sum(part["steal_s"] for part in parts), "load_avg": max(part["load_avg"] for part in parts),
        }
        rows.append(row)
        sys.stderr.write("%s\n" % json.dumps(row))
    return rows


def repetition(args, workdir, number):
    namespaces = dataplane.Namespaces()
    run_dir = workdir / ("run-%d" % number)
    run_dir.mkdir(mode=0o755)
    hosts = None
    try:
        hosts = BenchMeshHosts(namespaces, run_dir, args.members, args.services, args.role_vars)
        hosts.start()
        time.sleep(args.settle)
        clusters = hosts.clusters()
        idle = [dataplane.memory_mib(pid) for pid in hosts.pids()]
        for figures, name in zip(idle, ("alpha", "bravo")):
            # Envoy's own account (tcmalloc): allocated by the code, and the heap holding it.
            heap = json.loads(hosts.sidecars[name].admin("/memory"))
            figures.update({key: int(heap[key]) / 1048576.0 for key in ("allocated", "heap_size")})
        rows = []
        plan = [("keepalive", args.rate, args.duration), ("connection", args.connection_rate, args.duration),
                ("connection", 0, args.duration)]
        for kind, rate, duration in plan:
            if kind not in args.kinds:
                continue
            rows += run_interleaved(hosts, kind, rate, duration, args.concurrency, args.slices)
        profile = profile_envoys(hosts, run_dir, args) if args.profile and number == args.repeat - 1 else None
        return {"idle": idle, "clusters": clusters, "rows": rows, "errors": sum(row["errors"] for row in rows),
                "profile": profile}
    finally:
        if hosts is not None:
            hosts.close()
        namespaces.close()


def profile_envoys(hosts, run_dir, args):
    """Where both Envoys' CPU goes under --profile (keepalive or connection) load on the mtls path: perf's top symbols."""
    kind = args.profile
    rate = args.rate if kind == "keepalive" else 0
    data = run_dir / "perf.data"
    recorder = subprocess.Popen(  # pylint: disable=consider-using-with
        ["perf", "record", "-q", "-F", "999", "-g", "-o", str(data), "-p", ",".join(str(pid) for pid in hosts.pids())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        row = dataplane.measure(hosts.ns["alpha"], meshlab.ADDR["bravo"], MTLS_PORT, kind, rate, args.duration / 2,
                                args.concurrency, pids=hosts.pids())
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=120)
    # The Envoy release binary is stripped: its own time shows as one shared object (BoringSSL is
    # linked in), so split by shared object, then the kernel's part by symbol.
    top = []
    for sort, extra in (("dso", []), ("symbol", ["--dsos", "[kernel.kallsyms]"])):
        report_text = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort, "-g", "none",
             "--percent-limit", "1"] + extra, capture_output=True, text=True, check=False, timeout=600).stdout
        top += [line.rstrip() for line in report_text.splitlines() if line.strip() and not line.startswith("#")][:15]
    return {"kind": kind, "rps": row["requests"] / row["elapsed"], "top": top}


def median(values):
    return statistics.median(values) if values else float("nan")


def spread(values, fmt="%.3f"):
    """'median (min to max)' of the repetitions."""
    if len(values) == 1:
        return fmt % values[0]
    return (fmt + " (" + fmt + " to " + fmt + ")") % (median(values), min(values), max(values))


def report(runs, args, loads):
    """The per-path table and the targets, from every repetition; returns True when all targets are met."""
    print()
    print("| request kind | load | path | req/s | errors | p50 ms | p90 ms | p99 ms | added p90 ms vs direct |"
          " Envoy CPU s per 1000 req, caller + callee | Envoy wait for a CPU, ms per req, caller + callee |"
          " TLS handshakes (resumed) per 1000 req, caller / callee |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    keys = [(row["kind"], row["load"], row["path"]) for row in runs[0]["rows"]]
    by_key = {key: [next(r for r in run["rows"] if (r["kind"], r["load"], r["path"]) == key) for run in runs] for key in keys}
    added = {}
    for key in keys:
        rows = by_key[key]
        kind, load, path = key
        direct = by_key[(kind, load, "direct")]
        added[key] = [row["p90"] - base["p90"] for row, base in zip(rows, direct)]
        cpu = waits = handshakes = ""
        if path != "direct":
            cpu = "%.3f + %.3f" % (median([r["cpu_per_1000"][0] for r in rows]), median([r["cpu_per_1000"][1] for r in rows]))
            waits = "%.3f + %.3f" % (median([r["runqueue_wait_ms_per_req"][0] for r in rows]),
                                     median([r["runqueue_wait_ms_per_req"][1] for r in rows]))
            per_k = [[(r["handshakes"][side] / max(r["requests"], 1) * 1000, r["resumed"][side] / max(r["requests"], 1) * 1000)
                      for r in rows] for side in (0, 1)]
            handshakes = " / ".join("%.0f (%.0f)" % (median([full for full, _resumed in side]), median([resumed for _full, resumed in side]))
                                    for side in per_k)
        print("| %s | %s | %s | %s | %d | %.3f | %.3f | %.3f | %s | %s | %s | %s |" % (
            kind, load, path, spread([r["rps"] for r in rows], "%.0f"), sum(r["errors"] for r in rows),
            median([r["p50"] for r in rows]), median([r["p90"] for r in rows]), median([r["p99"] for r in rows]),
            "" if path == "direct" else spread(added[key]), cpu, waits, handshakes))

    keepalive = ("keepalive", "%d/s" % args.rate, "mtls")
    full = ("connection", "full x%d" % args.concurrency, "mtls")
    anon = [[run["idle"][side]["Anonymous"] for run in runs] for side in (0, 1)]
    verdict = {True: "met", False: "**missed**"}
    met = True
    print()
    print("| figure | target | measured: median (min to max) of %d | verdict |" % len(runs))
    print("|---|---|---|---|")
    if keepalive in by_key:
        latency_ok = median(added[keepalive]) <= LATENCY_TARGET_MS
        met = met and latency_ok
        print("| added p90 latency, mTLS vs direct, keep-alive at %d req/s | <= %.1f ms (Istio: +2.65 ms) | %s ms | %s |" % (
            args.rate, LATENCY_TARGET_MS, spread(added[keepalive]), verdict[latency_ok]))
        for side, name in enumerate(("caller (alpha)", "callee (bravo)")):
            print("| Envoy CPU per 1000 req/s, keep-alive mTLS, %s | report | %s vCPU | |" % (
                name, spread([r["cpu_per_1000"][side] for r in by_key[keepalive]])))
    if full in by_key:
        print("| new mTLS connections/s through the pair (closed loop x%d) | report | %s /s (direct: %s, plaintext: %s) | |" % (
            args.concurrency, spread([r["rps"] for r in by_key[full]], "%.0f"),
            spread([r["rps"] for r in by_key[full[:2] + ("direct",)]], "%.0f"),
            spread([r["rps"] for r in by_key[full[:2] + ("plaintext",)]], "%.0f")))
    for side, name in enumerate(("caller (alpha)", "callee (bravo)")):
        memory_ok = median(anon[side]) <= MEMORY_TARGET_MIB
        met = met and memory_ok
        print("| idle Envoy anonymous memory, %s, %d services, %d members (VmRSS) | <= %.0f MiB | %s MiB (VmRSS %s) | %s |" % (
            name, args.services, args.members, MEMORY_TARGET_MIB, spread(anon[side], "%.1f"),
            spread([run["idle"][side]["VmRSS"] for run in runs], "%.1f"), verdict[memory_ok]))
    print()
    during = [row["load_avg"] for run in runs for row in run["rows"]] or [float("nan")]
    print("Idle Envoy heap (admin /memory), caller / callee: allocated %s / %s MiB, tcmalloc heap %s / %s MiB." % tuple(
        spread([run["idle"][side][key] for run in runs], "%.1f") for key in ("allocated", "heap_size") for side in (0, 1)))
    for run in runs:
        if run.get("profile"):
            profile = run["profile"]
            print()
            print("perf profile of both Envoys, %s load on the mtls path (%.0f req/s): self time by shared object, then"
                  " the kernel's by symbol (share of all samples):" % (profile["kind"], profile["rps"]))
            print("\n".join(profile["top"]))
    print("Clusters in alpha's Envoy: %s. Load average (1 min) before each repetition: %s; during the runs: %.2f to %.2f;"
          " steal %.2f s." % (", ".join(str(run["clusters"]) for run in runs), ", ".join("%.2f" % load for load in loads),
                              min(during), max(during), sum(row["steal_s"] for run in runs for row in run["rows"])))
    return met


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate of keep-alive requests (requests/s)")
    parser.add_argument("--connection-rate", type=float, default=250.0, help="fixed rate of new connections (connections/s)")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per path and load")
    parser.add_argument("--slices", type=int, default=4, help="interleaved slices the duration is cut into")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent requesters at full load")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions, each on fresh Envoys (medians are reported)")
    parser.add_argument("--members", type=int, default=16, help="mesh members declared (alpha and bravo run)")
    parser.add_argument("--services", type=int, default=64, help="mesh services declared")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before the memory is read")
    parser.add_argument("--kinds", default="keepalive,connection", help="request kinds to measure ('' for memory only)")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=JSON",
                        help="a role variable for both sidecars, to find where time goes (envoy_sidecar_concurrency=1,"
                             " envoy_sidecar_access_log=false); repeatable")
    parser.add_argument("--profile", choices=("keepalive", "connection"),
                        help="after the last repetition, record both Envoys with perf under this load (full rate for"
                             " connection) on the mtls path and print the top symbols")
    parser.add_argument("--json", help="also write every repetition's figures to this file")
    args = parser.parse_args(argv)
    args.kinds = [kind for kind in args.kinds.split(",") if kind]
    args.role_vars = {}
    for setting in args.set:
        name, sep, value = setting.partition("=")
        if not sep:
            parser.error("--set %s: VAR=JSON" % setting)
        try:
            args.role_vars[name] = json.loads(value)
        except ValueError:
            args.role_vars[name] = value
    if os.geteuid() != 0:
        parser.error("run as root: the benchmark creates network namespaces")
    if not lab.ENVOY.is_file():
        parser.error("%s is missing: run scripts/setup.sh" % lab.ENVOY)
    if args.members < 3 or args.services < 1:
        parser.error("--members is at least 3 (alpha, bravo, charlie) and --services at least 1")

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="hmbench-mesh-"))
    workdir.chmod(0o755)
    runs, loads = [], []
    try:
        for number in range(args.repeat):
            loads.append(os.getloadavg()[0])
            runs.append(repetition(args, workdir, number))
        met = report(runs, args, loads)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "loads": loads, "runs": runs}, indent=1), encoding="utf-8")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if met else 3


if __name__ == "__main__":
    sys.exit(main())
