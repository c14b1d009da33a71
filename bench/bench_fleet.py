#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet benchmark: a no-op run of playbooks/site.yml over the lab versus a playbook that only pings.

Boots a lab of four hosts (tests/lab, one per bypass mode: uid, mark, net_cls, cgroup_path, with
the demo workload, as scripts/demo.sh deploys them), converges it once with demo_workload.yml and
site.yml, then times --runs no-op runs of site.yml and as many runs of a one-task playbook that
pings the same hosts (same inventory, same Ansible settings, SSH pipelining on; the two
alternate, so a change in the machine's load hits both). Every timed site.yml run must report
changed=0 on every host. Target: a no-op site.yml takes at most 3 times the ping run.

Then one more no-op run of each with the callback bench/callback_plugins/hostmesh_task_profile.py
shows where the time goes: Ansible's start-up, each role, each task (wall time from its start to
the next task's start, and the slowest host), and each kind of task.

The lab is removed at the end (also on failure or Ctrl-C) unless --keep is given. Not a timed
test; run as root after ./scripts/setup.sh --lab:
  .venv/bin/python bench/bench_fleet.py [--runs 3] [--lab bench] [--subnet 10.78.0.0/24] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "lab"))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import hostmesh_lab  # noqa: E402  pylint: disable=wrong-import-position
from collections_path import link_checkout  # noqa: E402  pylint: disable=wrong-import-position,import-error

HOSTS = {"alpha": "uid", "bravo": "mark", "charlie": "net_cls", "delta": "cgroup_path"}
ENVOY_BIN = REPO_ROOT / ".cache" / "envoy" / "envoy"
ANSIBLE_PLAYBOOK = pathlib.Path(sys.executable).parent / "ansible-playbook"
TARGET_RATIO = 3.0
RECAP_LINE = re.compile(r"^(\S+)\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)

PING_PLAYBOOK = """---
# The fleet benchmark's baseline: one module run on every host of the same inventory.
- name: Ping every host
  hosts: "{{ hostmesh_hosts | default('all') }}"
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


class BenchError(Exception):
    pass


def envoy_version() -> str:
    out = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"version: [0-9a-f]+/(\d+\.\d+\.\d+)/", out)
    if not match:
        raise BenchError(f"cannot read the version from `{ENVOY_BIN} --version`: {out.strip()}")
    return match.group(1)


def ansible_version() -> str:
    out = subprocess.run([str(ANSIBLE_PLAYBOOK), "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"core ([0-9][^\]\s]*)", out)
    return match.group(1) if match else "?"


def write_controller(lab_state: dict) -> tuple[pathlib.Path, dict]:
    """Inventory directory, collections path and Ansible settings, inside the lab directory."""
    controller = pathlib.Path(lab_state["dir"]) / "controller"
    inventory = controller / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "host_vars").mkdir()
    (inventory / "hosts.yml").symlink_to(lab_state["inventory"])
    (inventory / "group_vars" / "all.yml").write_text(
        "---\n"
        "envoy_sidecar_install_method: file\n"
        f"envoy_sidecar_src: {json.dumps(str(ENVOY_BIN))}\n"
        f"envoy_sidecar_version: {envoy_version()}\n"
        "hostmesh_workload_ports: [{port: 8080}]\n"
        "hostmesh_workload_units: [hostmesh-demo.service]\n"
        "transparent_proxy_inbound_exclude_ports: [22, 9999]\n"
        "transparent_proxy_outbound_exclude_ports: [9999]\n", encoding="utf-8")
    for host, bypass in HOSTS.items():
        (inventory / "host_vars" / f"{host}.yml").write_text(f"---\nhostmesh_bypass: {bypass}\n", encoding="utf-8")
    link_checkout(controller / "collections", REPO_ROOT)
    (controller / "ping.yml").write_text(PING_PLAYBOOK, encoding="utf-8")
    (controller / "ansible-home" / "tmp").mkdir(parents=True)
    (controller / "logs").mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update({
        "ANSIBLE_INVENTORY": str(inventory),
        "ANSIBLE_COLLECTIONS_PATH": str(controller / "collections"),
        "ANSIBLE_HOME": str(controller / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(controller / "ansible-home" / "tmp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_NOCOLOR": "True",
    })
    (controller / "ansible.env").write_text(
        f"# Ansible settings of the fleet benchmark's lab: . {controller / 'ansible.env'}\n" + "".join(
            f"export {key}={value}\n" for key, value in sorted(env.items()) if key.startswith("ANSIBLE_")),
        encoding="utf-8")
    return controller, env


def run_playbook(controller: pathlib.Path, env: dict, playbook: pathlib.Path, label: str,
                 profile: pathlib.Path | None = None) -> dict:
    """One ansible-playbook run: wall seconds and the recap; raises if it failed."""
    run_env = dict(env)
    if profile is not None:
        run_env.update({
            "ANSIBLE_CALLBACK_PLUGINS": str(REPO_ROOT / "bench" / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "hostmesh_task_profile",
            "HOSTMESH_TASK_PROFILE": str(profile),
        })
    log = controller / "logs" / f"{label}.log"
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.run([str(ANSIBLE_PLAYBOOK), str(playbook)], env=run_env, cwd=REPO_ROOT,
                              stdout=handle, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ansible-playbook and the workers it forked and reaped (not the hosts' side, not ssh masters)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    output = log.read_text(encoding="utf-8")
    recap = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "unreachable": int(m.group(4)),
                          "failed": int(m.group(5))} for m in RECAP_LINE.finditer(output)}
    if proc.returncode != 0 or set(recap) != set(HOSTS):
        tail = "\n".join(output.splitlines()[-40:])
        raise BenchError(f"{label}: ansible-playbook {playbook.name} failed (exit {proc.returncode}):\n{tail}")
    print(f"  {label:<22} {seconds:6.1f}s  controller CPU {cpu:5.1f}s  changed={sum(r['changed'] for r in recap.values())}"
          f"  load {os.getloadavg()[0]:.1f}", flush=True)
    return {"seconds": seconds, "cpu": cpu, "recap": recap}


def table(header: list[str], rows: list[list], right: set[int] = frozenset()) -> None:
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]

    def fmt(row):
        return "  ".join(str(cell).rjust(width) if i in right else str(cell).ljust(width)
                         for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
    print("  " + fmt(header))
    print("  " + fmt(["-" * width for width in widths]))
    for row in rows:
        print("  " + fmt(row))


def status_summary(hosts: dict) -> str:
    counts = collections.Counter(result["status"] for result in hosts.values())
    return " ".join(f"{status}x{count}" for status, count in sorted(counts.items())) or "-"


def print_profile(site_profile: dict, site_wall: float, ping_profile: dict, ping_wall: float, top: int) -> None:
    tasks = site_profile["tasks"]
    in_tasks = sum(task["wall"] for task in tasks)
    startup = site_wall - site_profile["seconds_since_callback_load"]
    ping_task = sum(task["wall"] for task in ping_profile["tasks"])
    ping_startup = ping_wall - ping_profile["seconds_since_callback_load"]
    executed = [task for task in tasks if any(r["status"] != "skipped" for r in task["hosts"].values())]
    skipped_everywhere = [task for task in tasks if task["hosts"]
                          and all(r["status"] == "skipped" for r in task["hosts"].values())]
    dynamic = [task for task in tasks if task["action"] in
               ("ansible.builtin.include_tasks", "include_tasks", "ansible.builtin.include_role", "include_role")]

    print(f"\nWhere a no-op site.yml run spends its time (one profiled run: {site_wall:.1f}s wall;"
          f" ping run {ping_wall:.1f}s)\n")
    table(["part", "seconds", "share", "note"], [
        ["start-up (CLI, inventory, playbook parse)", f"{startup:.1f}", f"{startup / site_wall:.0%}",
         f"ping run: {ping_startup:.1f}s"],
        ["tasks", f"{in_tasks:.1f}", f"{in_tasks / site_wall:.0%}",
         f"{len(tasks)} started, {len(executed)} ran a module/include on some host; ping: 1 task {ping_task:.1f}s"],
        ["  of which skipped on every host", f"{sum(t['wall'] for t in skipped_everywhere):.1f}",
         f"{sum(t['wall'] for t in skipped_everywhere) / site_wall:.0%}", f"{len(skipped_everywhere)} tasks"],
        ["  of which include_tasks/include_role", f"{sum(t['wall'] for t in dynamic):.1f}",
         f"{sum(t['wall'] for t in dynamic) / site_wall:.0%}", f"{len(dynamic)} includes"],
        ["end (stats, exit)", f"{site_wall - startup - in_tasks:.1f}", "", ""],
    ], right={1, 2})

    print("\nPer role (tasks of the role, including the ones its includes load)\n")
    by_role = collections.OrderedDict()
    for task in tasks:
        entry = by_role.setdefault(task["role"] or "(play: site.yml)", {"wall": 0.0, "tasks": 0, "ran": 0})
        entry["wall"] += task["wall"]
        entry["tasks"] += 1
        entry["ran"] += task in executed
    table(["role", "tasks", "ran", "seconds", "share"],
          [[role, e["tasks"], e["ran"], f"{e['wall']:.1f}", f"{e['wall'] / site_wall:.0%}"]
           for role, e in sorted(by_role.items(), key=lambda item: -item[1]["wall"])], right={1, 2, 3, 4})

    print("\nPer kind of task (module)\n")
    by_action = collections.defaultdict(lambda: {"wall": 0.0, "tasks": 0})
    for task in tasks:
        by_action[task["action"]]["wall"] += task["wall"]
        by_action[task["action"]]["tasks"] += 1
    table(["action", "tasks", "seconds", "per task"],
          [[short_action({"action": action}), e["tasks"], f"{e['wall']:.1f}", f"{e['wall'] / e['tasks']:.2f}"]
           for action, e in sorted(by_action.items(), key=lambda item: -item[1]["wall"])], right={1, 2, 3})

    print(f"\nThe {top} slowest tasks (wall: start to next task's start; host: slowest host's result)\n")
    rows = []
    for task in sorted(tasks, key=lambda t: -t["wall"])[:top]:
        slowest = max((r["seconds"] for r in task["hosts"].values()), default=0.0)
        rows.append([f"{task['wall']:.2f}", f"{slowest:.2f}", short_name(task)[:64], short_action(task),
                     status_summary(task["hosts"]), short_path(task)])
    table(["wall", "host", "task", "action", "results", "where"], rows, right={0, 1})

    repeated = collections.defaultdict(list)
    for task in tasks:
        # meta tasks start once per host; argument checks carry the path of the include_role
        if task["path"] and not task["action"].endswith(("meta", "validate_argument_spec")):
            repeated[task["path"]].append(task)
    repeated = {path: runs for path, runs in repeated.items() if len(runs) > 1}
    if repeated:
        total = sum(sum(t["wall"] for t in runs[1:]) for runs in repeated.values())
        print(f"\nTasks started more than once in this run ({len(repeated)}; the repeats took {total:.1f}s)\n")
        table(["times", "seconds", "task", "action", "where"],
              [[len(runs), f"{sum(t['wall'] for t in runs):.2f}", short_name(runs[0])[:64], short_action(runs[0]),
                short_path(runs[0])] for runs in repeated.values()], right={0, 1})


def short_name(task: dict) -> str:
    """The task's name without the `role : ` prefix Ansible adds (the `where` column names the role)."""
    prefix = f"{task['role']} : "
    return task["name"][len(prefix):] if task["role"] and task["name"].startswith(prefix) else task["name"]


def short_action(task: dict) -> str:
    return task["action"].replace("ansible.builtin.", "").replace("hostmesh.sidecar.", "")


def short_path(task: dict) -> str:
    """file:line of the task, relative to the collection (roles/x/tasks/y.yml -> x/y.yml)."""
    path, line = task["path"].rsplit(":", 1) if ":" in task["path"] else (task["path"], "")
    parts = pathlib.Path(path).parts
    if "roles" in parts:
        index = len(parts) - 1 - parts[::-1].index("roles")
        parts = tuple(part for part in parts[index + 1:] if part != "tasks")
    else:
        parts = parts[-1:]
    return f"{'/'.join(parts)}:{line}" if parts else ""


def summary_row(name: str, runs: list[dict]) -> list:
    seconds = [run["seconds"] for run in runs]
    changed = sum(sum(r["changed"] for r in run["recap"].values()) for run in runs)
    return [name, len(runs), f"{statistics.median(seconds):.1f}", f"{min(seconds):.1f}", f"{max(seconds):.1f}",
            f"{statistics.median(run['cpu'] for run in runs):.1f}", changed]


def bench(args: argparse.Namespace) -> int:
    print(f"Booting lab {args.lab!r}: {', '.join(f'{h} ({b})' for h, b in HOSTS.items())}", flush=True)
    boot_started = time.monotonic()
    lab_state = hostmesh_lab.up(args.lab, list(HOSTS), subnet=args.subnet)
    boot_seconds = time.monotonic() - boot_started
    controller, env = write_controller(lab_state)
    playbooks = REPO_ROOT / "playbooks"
    ping = controller / "ping.yml"

    print("Converging (demo_workload.yml, site.yml):", flush=True)
    workload = run_playbook(controller, env, playbooks / "demo_workload.yml", "converge-workload")
    converge = run_playbook(controller, env, playbooks / "site.yml", "converge-site")

    print(f"Timing {args.runs} no-op site.yml runs and {args.runs} ping runs, alternating:", flush=True)
    site_runs, ping_runs = [], []
    for index in range(1, args.runs + 1):
        ping_runs.append(run_playbook(controller, env, ping, f"ping-{index}"))
        site_runs.append(run_playbook(controller, env, playbooks / "site.yml", f"site-noop-{index}"))
        changed = {host: r["changed"] for host, r in site_runs[-1]["recap"].items() if r["changed"]}
        if changed:
            raise BenchError(f"site-noop-{index} is not a no-op: changed tasks per host {changed}"
                             f" (log: {controller / 'logs' / f'site-noop-{index}.log'})")

    print("Profiling one more run of each:", flush=True)
    site_profile_path = controller / "logs" / "site-profile.json"
    ping_profile_path = controller / "logs" / "ping-profile.json"
    site_profiled = run_playbook(controller, env, playbooks / "site.yml", "site-noop-profiled", site_profile_path)
    ping_profiled = run_playbook(controller, env, ping, "ping-profiled", ping_profile_path)

    print(f"\nFleet benchmark: {len(HOSTS)} lab hosts, ansible-core {ansible_version()} (pipelining on, forks 10),"
          f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; boot {boot_seconds:.1f}s,"
          f" first converge: workload {workload['seconds']:.1f}s, site.yml {converge['seconds']:.1f}s\n")
    table(["playbook", "runs", "median s", "min s", "max s", "controller CPU s (median)", "changed"],
          [summary_row("ping (1 task)", ping_runs), summary_row("site.yml, no-op", site_runs)],
          right={1, 2, 3, 4, 5, 6})
    ratio = statistics.median(r["seconds"] for r in site_runs) / statistics.median(r["seconds"] for r in ping_runs)
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"\n  ratio no-op site.yml / ping (medians): {ratio:.1f}x   target <= {TARGET_RATIO:.0f}x: {verdict}")

    print_profile(json.loads(site_profile_path.read_text(encoding="utf-8")), site_profiled["seconds"],
                  json.loads(ping_profile_path.read_text(encoding="utf-8")), ping_profiled["seconds"], args.top)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each playbook (default 3)")
    parser.add_argument("--lab", default="bench", help="lab name (default bench)")
    parser.add_argument("--subnet", default="10.78.0.0/24", help="lab subnet (default 10.78.0.0/24)")
    parser.add_argument("--top", type=int, default=20, help="slowest tasks to list (default 20)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running (remove: hostmesh_lab.py down)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        parser.error("run as root (the lab creates network namespaces, mounts and containers)")
    for needed in (ENVOY_BIN, ANSIBLE_PLAYBOOK):
        if not os.access(needed, os.X_OK):
            parser.error(f"{needed} is missing: run ./scripts/setup.sh --lab (and this script with .venv/bin/python)")
    if hostmesh_lab.lab_leftovers(args.lab):
        parser.error(f"lab {args.lab!r} exists: remove it with python3 tests/lab/hostmesh_lab.py down --lab {args.lab}")
    status = 1
    try:
        with hostmesh_lab.signals_as_exceptions():
            status = bench(args)
    except (BenchError, hostmesh_lab.LabError) as exc:
        print(f"bench_fleet: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench_fleet: interrupted", file=sys.stderr)
        status = 130
    finally:
        if args.keep:
            controller = hostmesh_lab.lab_dir(args.lab) / "controller"
            print(f"\nThe lab keeps running (--keep). Ansible settings: . {controller / 'ansible.env'};"
                  f" logs: {controller / 'logs'}; remove it: python3 tests/lab/hostmesh_lab.py down --lab {args.lab}")
        else:
            hostmesh_lab.down(args.lab)
    return status


if __name__ == "__main__":
    sys.exit(main())
