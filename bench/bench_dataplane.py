#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Data-plane benchmark: requests through A's and B's Envoy sidecars versus direct.

Two network namespaces play hosts A and B (veth between them), each with redirect rules of the
uid bypass mode and a real Envoy 1.40 run by the envoy_sidecar role's supervisor with the
bootstrap the role renders (access log on, as deployed). B runs an asyncio echo workload on
port 8080 (reached through both sidecars) and on port 22 (excluded from capture on B; the
client then runs as the proxy uid so A does not capture it either: the direct path).

Each request is one line sent and echoed back. Two request kinds:
  connection  a new TCP connection per request (what the sidecars pay most for)
  keepalive   requests over a pool of persistent connections (like HTTP keep-alive)
and two loads: a fixed rate (open loop; latency is measured from the moment a request was due,
so a stalled client does not hide queueing; default 1000 requests/s for keepalive and 250 new
connections/s, since 1000 new connections/s saturate a 2-core machine that also runs the client
and the workload) and full load (closed loop, N concurrent requesters). Reported: p50/p90/p99 latency, the p90 the sidecars add, the
CPU both Envoys use per 1000 requests (= vCPU at 1000 requests/s), and each Envoy's resident
memory when idle. Not a timed test; run as root: python bench/bench_dataplane.py
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import secrets
import shutil
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))

import harness  # noqa: E402  pylint: disable=wrong-import-position
import test_envoy_config as lab  # noqa: E402  pylint: disable=wrong-import-position

DIRECT_PORT = 22

ECHO_SERVER = r'''
import asyncio, sys
async def handle(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
async def main():
    servers = [await asyncio.start_server(handle, "0.0.0.0", int(port), backlog=4096) for port in sys.argv[1:]]
    await asyncio.gather(*(server.serve_forever() for server in servers))
asyncio.run(main())
'''

LOAD = r'''
import asyncio, json, sys, time
host, port, kind, rate, duration, concurrency = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
latencies, errors = [], 0
PAYLOAD = b"x" * 64 + b"\n"

async def one_connection():
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(PAYLOAD)
    await writer.drain()
    if await reader.readline() != PAYLOAD:
        raise ValueError("bad reply")
    writer.close()

class Pool:
    def __init__(self):
        self.free = asyncio.Queue()
    async def fill(self, size):
        for _ in range(size):
            self.free.put_nowait(await asyncio.open_connection(host, port))
    async def request(self):
        reader, writer = await self.free.get()
        writer.write(PAYLOAD)
        await writer.drain()
        reply = await reader.readline()
        self.free.put_nowait((reader, writer))
        if reply != PAYLOAD:
            raise ValueError("bad reply")

async def timed(call, due):
    global errors
    try:
        await asyncio.wait_for(call(), 5)
        latencies.append(time.perf_counter() - due)
    except (OSError, ValueError, asyncio.TimeoutError):
        errors += 1

async def main():
    pool = Pool()
    if kind == "keepalive":
        await pool.fill(max(concurrency, 32))
    call = one_connection if kind == "connection" else pool.request
    start = time.perf_counter()
    if rate > 0:
        tasks, index = [], 0
        while True:
            due = start + index / rate
            if due - start >= duration:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(timed(call, due)))
            index += 1
        await asyncio.gather(*tasks)
    else:
        async def worker():
            while time.perf_counter() - start < duration:
                await timed(call, time.perf_counter())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    print(json.dumps({"latencies": latencies, "errors": errors, "elapsed": elapsed}))

asyncio.run(main())
'''


class BenchNetNS(harness.NetNS):
    """A harness namespace named ``hmbench-<hex>``: told apart from the tests' ``hm-*`` ones on a shared machine.

    The name stays short enough for the harness's veth names (``v-`` + name[3:], at most 15 bytes).
    """

    def __init__(self):  # pylint: disable=super-init-not-called
        self.name = "hmbench-" + secrets.token_hex(3)
        self.path = os.path.join(harness.NETNS_DIR, self.name)
        self._processes = []
        self._closed = False
        harness._run(["ip", "netns", "add", self.name])  # pylint: disable=protected-access
        harness._live_namespaces[self.name] = self  # pylint: disable=protected-access
        try:
            harness._run(["ip", "-n", self.name, "link", "set", "lo", "up"])  # pylint: disable=protected-access
        except Exception:
            self.close()
            raise


class Namespaces:
    """A netns factory for the test classes; close() removes every namespace it made."""

    def __init__(self):
        self.made = []

    def __call__(self):
        namespace = BenchNetNS()
        self.made.append(namespace)
        return namespace

    def close(self):
        for namespace in reversed(self.made):
            namespace.close()


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


def cpu_seconds(pids):
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def runqueue_wait_seconds(pid):
    """Time the threads of ``pid`` spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat).

    On a shared 2-vCPU machine this, not the work the proxy does, is where most added latency goes.
    """
    total = 0
    for stat in pathlib.Path("/proc/%d/task" % pid).glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return total / 1e9


def steal_seconds():
    """CPU time the hypervisor gave to other guests (/proc/stat steal), all CPUs."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = handle.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid):
    """VmRSS, its parts (RssAnon, RssFile) and smaps_rollup's Anonymous, in MiB.

    Most of Envoy's VmRSS is file-backed: the pages of its ~100 MiB binary that it touched,
    shared by all epochs and processes running the binary, and reclaimable page cache.
    Anonymous (heap, stacks, private copies) is what each Envoy really costs the host.
    """
    values = {}
    with open("/proc/%d/status" % pid, encoding="ascii") as handle:
        for line in handle:
            key, rest = (line.split(":", 1) + [""])[:2]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024.0
    with open("/proc/%d/smaps_rollup" % pid, encoding="ascii") as handle:
        for line in handle:
            key, rest = (line.split(":", 1) + [""])[:2]
            if key == "Anonymous":
                values[key] = int(rest.split()[0]) / 1024.0
    return values


def envoy_pid(sidecar):
    """The pid of the Envoy epoch that serves under ``sidecar``'s supervisor."""
    state = sidecar.state()
    return state["envoy_pids"][str(state["serving_epoch"])]


def envoy_pids(mesh):
    return [envoy_pid(sidecar) for sidecar in mesh.sidecars]


def as_proxy_uid(argv):
    """``argv`` run as the proxy uid: the caller's redirect lets its connections pass."""
    return ["setpriv", "--reuid", str(lab.PROXY_UID), "--regid", str(lab.PROXY_GID), "--clear-groups"] + list(argv)


def measure(namespace, address, port, kind, rate, duration, concurrency, bypass=False, pids=()):
    """One load run from ``namespace`` to ``address:port``, and the CPU each of ``pids`` used meanwhile.

    ``bypass``: the client runs as the proxy uid, so the caller's sidecar does not capture it.
    Returns the row's figures; ``cpu_s`` and ``runqueue_wait_s`` list, for each pid in order, the CPU
    seconds it used and the seconds its threads waited for a CPU; ``steal_s`` is the machine's steal time;
    ``latencies`` (seconds) and ``elapsed`` are the raw figures, to pool runs.
    """
    argv = ["/usr/bin/python3", "-c", LOAD, address, str(port), kind, str(rate), str(duration), str(concurrency)]
    if bypass:
        argv = as_proxy_uid(argv)
    cpu_before = [cpu_seconds([pid]) for pid in pids]
    wait_before = [runqueue_wait_seconds(pid) for pid in pids]
    steal_before = steal_seconds()
    proc = namespace.run(argv, timeout=duration * 4 + 120)
    cpu_used = [cpu_seconds([pid]) - before for pid, before in zip(pids, cpu_before)]
    waited = [runqueue_wait_seconds(pid) - before for pid, before in zip(pids, wait_before)]
    steal = steal_seconds() - steal_before
    result = json.loads(proc.stdout)
    latencies = result["latencies"]
    return {
        "kind": kind, "load": ("%d/s" % rate) if rate > 0 else "full x%d" % concurrency,
        "requests": len(latencies), "errors": result["errors"], "rps": len(latencies) / result["elapsed"],
        "p50": percentile(latencies, 0.50) * 1000, "p90": percentile(latencies, 0.90) * 1000,
        "p99": percentile(latencies, 0.99) * 1000, "cpu_s": cpu_used, "runqueue_wait_s": waited, "steal_s": steal,
        "latencies": latencies, "elapsed": result["elapsed"],
    }


def tune_for_short_connections(host):
    """A new connection per request to one destination uses two ports on the caller (the client's
    and Envoy's upstream one, same 4-tuple space) and leaves a TIME_WAIT behind: with the default
    28000-port range that caps the rate at a few hundred per second, for any REDIRECT sidecar.
    Hosts that make many short connections tune this anyway."""
    host.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])
    host.run(["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])


def run_load(mesh, path, kind, rate, duration, concurrency):
    # Direct: as the proxy uid, A's rules let the connection pass; B never captures port 22.
    direct = path == "direct"
    row = measure(mesh.host_a, lab.ADDR_B, DIRECT_PORT if direct else lab.WORKLOAD_PORT, kind, rate, duration,
                  concurrency, bypass=direct, pids=envoy_pids(mesh))
    del row["latencies"]
    row["path"] = path
    row["envoy_cpu_per_1000"] = (sum(row["cpu_s"]) / row["requests"] * 1000) if not direct and row["requests"] else None
    return row


def print_table(rows, idle_rss):
    print()
    print("| request kind | load | path | requests | errors | req/s | p50 ms | p90 ms | p99 ms | added p90 ms | Envoy CPU s per 1000 req (A+B) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    direct = dict(((row["kind"], row["load"]), row) for row in rows if row["path"] == "direct")
    for row in rows:
        added = ""
        if row["path"] == "sidecars" and (row["kind"], row["load"]) in direct:
            added = "%.3f" % (row["p90"] - direct[(row["kind"], row["load"])]["p90"])
        cpu = "" if row["envoy_cpu_per_1000"] is None else "%.3f" % row["envoy_cpu_per_1000"]
        print("| %s | %s | %s | %d | %d | %.0f | %.3f | %.3f | %.3f | %s | %s |" % (
            row["kind"], row["load"], row["path"], row["requests"], row["errors"], row["rps"],
            row["p50"], row["p90"], row["p99"], added, cpu))
    print()
    for name, memory in zip("AB", idle_rss):
        print("Envoy %s idle (concurrency 2, access log on): VmRSS %.1f MiB = anonymous %.1f MiB + file-backed %.1f MiB" % (
            name, memory["VmRSS"], memory["RssAnon"], memory["RssFile"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate of keepalive requests (requests/s)")
    parser.add_argument("--connection-rate", type=float, default=250.0,
                        help="fixed rate of new connections (connections/s); 1000/s saturates a 2-core machine"
                             " that runs the client, the workload and both sidecars")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent requesters at full load")
    parser.add_argument("--kinds", default="connection,keepalive", help="request kinds to measure")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the benchmark creates network namespaces")
    if not lab.ENVOY.is_file():
        parser.error("%s is missing: run scripts/setup.sh" % lab.ENVOY)

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="hm-bench-"))
    workdir.chmod(0o755)
    namespaces = Namespaces()
    mesh = lab.Mesh(namespaces, workdir, "uid")
    try:
        mesh.start()
        for host in (mesh.host_a, mesh.host_b):
            tune_for_short_connections(host)
        mesh.host_b.popen(["/usr/bin/python3", "-c", ECHO_SERVER, str(DIRECT_PORT)])
        lab.wait_listening(mesh.host_b, DIRECT_PORT)
        # The echo workload replaces the test workload on 8080 (same port, through the sidecars).
        mesh.workload.kill()
        mesh.workload.wait()
        mesh.host_b.popen(["/usr/bin/python3", "-c", ECHO_SERVER, str(lab.WORKLOAD_PORT)])
        lab.wait_listening(mesh.host_b, lab.WORKLOAD_PORT)
        time.sleep(3)
        idle_rss = [memory_mib(pid) for pid in envoy_pids(mesh)]
        rows = []
        for kind in args.kinds.split(","):
            for rate in (args.rate if kind == "keepalive" else args.connection_rate, 0):
                for path in ("direct", "sidecars"):
                    row = run_load(mesh, path, kind, rate, args.duration, args.concurrency)
                    rows.append(row)
                    sys.stderr.write("%s\n" % json.dumps(row))
        print_table(rows, idle_rss)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "idle_rss_mib": idle_rss}, indent=1), encoding="utf-8")
    finally:
        mesh.close()
        namespaces.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
