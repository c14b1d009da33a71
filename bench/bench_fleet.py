#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet benchmark: a no-op playbooks/site.yml against a playbook that only pings, at 4, 16 and 64 hosts.

Boots a lab of four real hosts (tests/lab, one per bypass mode: uid, mark, net_cls, cgroup_path,
with the demo workload, as scripts/demo.sh deploys them), raises sshd's MaxSessions and
MaxStartups on them (many SSH connections to one host arrive at once), and converges them once
with demo_workload.yml and site.yml.

Then, for each host count N (--hosts, default 4,16,64), an inventory of N aliases of the four real
hosts (alpha-01, bravo-01, ..., round robin): each alias has its real host's address and variables
(bypass mode, Envoy node id: nothing depends on the alias's name), so the aliases are converged
already, and its own SSH ControlPath directory, so each alias is a separate SSH master and
connection, as a separate host would be. Both playbooks run with that inventory and the same
settings: forks fixed for the whole benchmark and at least the largest N (--forks), SSH pipelining
on, the lab's interpreter (/usr/bin/python3), gather_facts false, the default stdout callback,
ControlPersist long enough that no master expires during the benchmark. One untimed ping run opens
every alias's master first (--masters warm, the default), or every master is closed before every
timed run of either playbook (--masters cold). Then --runs pairs alternate (ping, site.yml, ping,
site.yml, ...), so a change in the machine's load hits both; every timed site.yml run must report
changed=0 on every host. The figures are medians.

SSH executions are counted by a wrapper set as ansible_ssh_executable (and the sftp/scp ones) in
front of the lab's own wrapper (which enters the lab network namespace): it logs each exec with its
ControlPath, which names the alias. Targets (issue 7): a no-op site.yml takes at most 1.5 times the
ping run at every N, the ratio stays flat as N grows, and a no-op site.yml makes at most 2 SSH
executions per host. The result is a Markdown table ready for the README, with the machine's load.

Then (unless --no-profile) one more no-op run of each at the largest N with the callback
bench/callback_plugins/hostmesh_task_profile.py shows where the time goes: Ansible's start-up,
each role, each task (wall time from its start to the next task's start, and the slowest host),
and each kind of task.

The lab is removed at the end (also on failure or Ctrl-C) unless --keep is given. Not a timed
test; run as root after ./scripts/setup.sh --lab:
  .venv/bin/python bench/bench_fleet.py [--hosts 4,16,64] [--runs 3] [--quick] [--masters warm|cold]
      [--forks N] [--no-profile] [--lab bench] [--subnet 10.78.0.0/24] [--keep]
--quick is --hosts 4,16 --runs 2 --no-profile (a few minutes once the probe is in).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "lab"))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import hostmesh_lab  # noqa: E402  pylint: disable=wrong-import-position
from collections_path import link_checkout  # noqa: E402  pylint: disable=wrong-import-position,import-error

HOSTS = {"alpha": "uid", "bravo": "mark", "charlie": "net_cls", "delta": "cgroup_path"}
ENVOY_BIN = REPO_ROOT / ".cache" / "envoy" / "envoy"
ANSIBLE_PLAYBOOK = pathlib.Path(sys.executable).parent / "ansible-playbook"
TARGET_RATIO = 1.5
TARGET_SSH_EXECS = 2
# "Flat as N grows": the script's reading of it, the largest N's ratio at most this much above the smallest N's
FLAT_TOLERANCE = 1.25
# The default callback's line for an include: which hosts went through the converge tasks
CONVERGE_INCLUDED = re.compile(r"^included: \S*/tasks/converge\.yml for (.+)$", re.MULTILINE)
RECAP_LINE = re.compile(r"^(\S+)\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
SSH_LOG_ENV = "HOSTMESH_BENCH_SSH_LOG"
CONTROL_DIRS = "cp"  # controller/cp/<alias>/: one ControlPath directory per alias
LOGGED_CONTROL_PATH = re.compile(r"/" + CONTROL_DIRS + r"/([^/\s\"]+)/")
# Same for every run of both playbooks: ControlPersist outlives the longest gap between two uses
SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=30m"
# Many aliases of one host connect at once: sshd's defaults (MaxStartups 10:30:100) would drop some
SSHD_LIMITS = "MaxSessions 256\nMaxStartups 512:30:1024\n"

PING_PLAYBOOK = """---
# The fleet benchmark's baseline: one module run on every host of the same inventory.
- name: Ping every host
  hosts: "{{ hostmesh_hosts | default('all') }}"
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""

SSHD_PLAYBOOK = f"""---
# The fleet benchmark's lab set-up: sshd accepts as many connections and sessions as the aliases need.
- name: Raise sshd's connection limits
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the limits
      ansible.builtin.copy:
        dest: /etc/ssh/sshd_config.d/hostmesh-bench.conf
        content: {json.dumps(SSHD_LIMITS)}
        owner: root
        group: root
        mode: "0644"
    - name: Reload sshd
      ansible.builtin.systemd_service:
        name: ssh.service
        state: reloaded
"""

# In front of the lab's wrapper: one line per exec, the tool and the ControlPath (which names the alias)
COUNTING_WRAPPER = """#!/bin/sh
# fleet benchmark: log this {tool} exec to ${env} (if set), then run the lab's {tool} wrapper
if [ -n "${{{env}:-}}" ]; then
    logged=-
    for arg in "$@"; do
        case $arg in ControlPath=*) logged=$arg; break ;; esac
    done
    printf '{tool} %s\\n' "$logged" >> "${env}"
fi
exec {lab_wrapper} "$@"
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


def group_vars() -> str:
    return ("---\n"
            "envoy_sidecar_install_method: file\n"
            f"envoy_sidecar_src: {json.dumps(str(ENVOY_BIN))}\n"
            f"envoy_sidecar_version: {envoy_version()}\n"
            "hostmesh_workload_ports: [{port: 8080}]\n"
            "hostmesh_workload_units: [hostmesh-demo.service]\n"
            "transparent_proxy_inbound_exclude_ports: [22, 9999]\n"
            "transparent_proxy_outbound_exclude_ports: [9999]\n")


def host_specific_vars(real_host: str) -> dict:
    """What makes a host's converged state its own: the same for every alias of it."""
    # envoy_sidecar_node_id defaults to inventory_hostname: pinned, so an alias renders its real host's bootstrap
    return {"hostmesh_bypass": HOSTS[real_host], "envoy_sidecar_node_id": real_host}


def write_controller(lab_state: dict, forks: int) -> tuple[pathlib.Path, dict]:
    """Real hosts' inventory, collections path, playbooks and Ansible settings, inside the lab directory."""
    controller = pathlib.Path(lab_state["dir"]) / "controller"
    inventory = controller / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "host_vars").mkdir()
    (inventory / "hosts.yml").symlink_to(lab_state["inventory"])
    (inventory / "group_vars" / "all.yml").write_text(group_vars(), encoding="utf-8")
    for host in HOSTS:
        (inventory / "host_vars" / f"{host}.yml").write_text(
            "---\n" + "".join(f"{key}: {value}\n" for key, value in host_specific_vars(host).items()),
            encoding="utf-8")
    link_checkout(controller / "collections", REPO_ROOT)
    (controller / "ping.yml").write_text(PING_PLAYBOOK, encoding="utf-8")
    (controller / "sshd_limits.yml").write_text(SSHD_PLAYBOOK, encoding="utf-8")
    (controller / "ansible-home" / "tmp").mkdir(parents=True)
    (controller / "logs").mkdir()
    (controller / CONTROL_DIRS).mkdir()
    (controller / "bin").mkdir()
    for tool, lab_wrapper in lab_state["ssh_wrappers"].items():
        wrapper = controller / "bin" / tool
        wrapper.write_text(COUNTING_WRAPPER.format(tool=tool, env=SSH_LOG_ENV, lab_wrapper=lab_wrapper),
                           encoding="utf-8")
        wrapper.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.pop(SSH_LOG_ENV, None)
    env.update({
        "ANSIBLE_INVENTORY": str(inventory),
        "ANSIBLE_COLLECTIONS_PATH": str(controller / "collections"),
        "ANSIBLE_HOME": str(controller / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(controller / "ansible-home" / "tmp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_SSH_ARGS": SSH_ARGS,
        "ANSIBLE_NOCOLOR": "True",
    })
    (controller / "ansible.env").write_text(
        f"# Ansible settings of the fleet benchmark's lab: . {controller / 'ansible.env'}\n"
        f"# (the real hosts; ANSIBLE_INVENTORY={controller}/inventory-N for N aliases)\n" + "".join(
            f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items()) if key.startswith("ANSIBLE_")),
        encoding="utf-8")
    return controller, env


def alias_names(count: int) -> dict:
    """count aliases, round robin over the real hosts: {alias: real host}."""
    real = list(HOSTS)
    return {f"{real[index % len(real)]}-{index // len(real) + 1:02d}": real[index % len(real)] for index in range(count)}


def write_alias_inventory(controller: pathlib.Path, lab_state: dict, count: int) -> tuple[pathlib.Path, dict]:
    """inventory-N/: N aliases of the real hosts, each with its own ControlPath directory and the counting wrappers."""
    lab_inventory = yaml.safe_load(pathlib.Path(lab_state["inventory"]).read_text(encoding="utf-8"))["all"]
    aliases = alias_names(count)
    hosts = {}
    for alias, real in aliases.items():
        variables = dict(lab_inventory["hosts"][real])
        variables.update(host_specific_vars(real))
        variables.update({
            "ansible_control_path_dir": str(controller / CONTROL_DIRS / alias),
            "ansible_ssh_executable": str(controller / "bin" / "ssh"),
            "ansible_sftp_executable": str(controller / "bin" / "sftp"),
            "ansible_scp_executable": str(controller / "bin" / "scp"),
        })
        (controller / CONTROL_DIRS / alias).mkdir(exist_ok=True)
        hosts[alias] = variables
    inventory = controller / f"inventory-{count}"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "group_vars" / "all.yml").write_text(group_vars(), encoding="utf-8")
    (inventory / "hosts.yml").write_text(
        f"# fleet benchmark: {count} aliases of the lab hosts {', '.join(HOSTS)}\n"
        + yaml.safe_dump({"all": {"vars": lab_inventory.get("vars", {}), "hosts": hosts}}, sort_keys=False),
        encoding="utf-8")
    return inventory, aliases


def close_masters(controller: pathlib.Path, aliases: dict) -> None:
    """Ask every alias's SSH master to exit (a socket with no master left is just removed)."""
    for alias in aliases:
        for socket in (controller / CONTROL_DIRS / alias).iterdir():
            proc = subprocess.run(["/usr/bin/ssh", "-o", f"ControlPath={socket}", "-O", "exit", alias],
                                  capture_output=True, check=False)
            if proc.returncode != 0 and socket.exists():
                socket.unlink()


def count_ssh_execs(log: pathlib.Path, aliases: dict) -> dict:
    """Per alias, the ssh/sftp/scp executions the counting wrapper logged."""
    counts = dict.fromkeys(aliases, 0)
    unknown = 0
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            match = LOGGED_CONTROL_PATH.search(line)
            if match and match.group(1) in counts:
                counts[match.group(1)] += 1
            else:
                unknown += 1
    if unknown:
        raise BenchError(f"{log}: {unknown} SSH executions without an alias's ControlPath (is ControlPersist off?)")
    return counts


def run_playbook(controller: pathlib.Path, env: dict, playbook: pathlib.Path, label: str, hosts,
                 inventory: pathlib.Path | None = None, profile: pathlib.Path | None = None) -> dict:
    """One ansible-playbook run: wall seconds, the recap and SSH executions per host; raises if it failed."""
    run_env = dict(env)
    ssh_log = controller / "logs" / f"{label}.ssh.log"
    run_env[SSH_LOG_ENV] = str(ssh_log)
    if inventory is not None:
        run_env["ANSIBLE_INVENTORY"] = str(inventory)
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
    if proc.returncode != 0 or set(recap) != set(hosts):
        tail = "\n".join(output.splitlines()[-40:])
        raise BenchError(f"{label}: ansible-playbook {playbook.name} failed (exit {proc.returncode}; log {log}):\n{tail}")
    load = os.getloadavg()[0]
    execs = count_ssh_execs(ssh_log, hosts) if inventory is not None else {}
    exec_note = f"  SSH execs/host {min(execs.values())}-{max(execs.values())}" if execs else ""
    converging = {host.strip() for match in CONVERGE_INCLUDED.finditer(output) for host in match.group(1).split(",")}
    converge_note = f"  converge.yml on {len(converging)} hosts" if playbook.name == "site.yml" else ""
    print(f"  {label:<24} {seconds:6.1f}s  controller CPU {cpu:5.1f}s  changed={sum(r['changed'] for r in recap.values())}"
          f"{exec_note}{converge_note}  load {load:.1f}", flush=True)
    return {"seconds": seconds, "cpu": cpu, "recap": recap, "execs": execs, "load": load, "converging": converging}


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


def median(values) -> float:
    return statistics.median(list(values))


def sweep_row(count: int, ping_runs: list[dict], site_runs: list[dict]) -> dict:
    ping = median(run["seconds"] for run in ping_runs)
    site = median(run["seconds"] for run in site_runs)
    # per run, the busiest host's executions; the median of those over the runs
    return {
        "hosts": count, "runs": len(site_runs), "ping": ping, "site": site, "ratio": site / ping,
        "site_range": (min(run["seconds"] for run in site_runs), max(run["seconds"] for run in site_runs)),
        "site_execs": median(max(run["execs"].values()) for run in site_runs),
        "site_execs_min": min(min(run["execs"].values()) for run in site_runs),
        "ping_execs": median(max(run["execs"].values()) for run in ping_runs),
        "ping_cpu": median(run["cpu"] for run in ping_runs), "site_cpu": median(run["cpu"] for run in site_runs),
        "load": (min(run["load"] for run in ping_runs + site_runs), max(run["load"] for run in ping_runs + site_runs)),
        "converging": sum(len(run["converging"]) for run in site_runs), "host_runs": count * len(site_runs),
    }


def fmt_count(value: float) -> str:
    return f"{value:g}"


def print_sweep(rows: list[dict], header: str) -> bool:
    """The Markdown table of the sweep and the verdicts; True when every target is met."""
    print(f"\n{header}\n")
    print("| hosts | ping, median | no-op `site.yml`, median (min to max) | ratio | SSH execs/host, site.yml | "
          "SSH execs/host, ping | controller CPU, site / ping | load (1 min) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        execs = fmt_count(row["site_execs"])
        if row["site_execs_min"] != row["site_execs"]:
            execs = f"{fmt_count(row['site_execs_min'])} to {execs}"
        print(f"| {row['hosts']} | {row['ping']:.1f} s | {row['site']:.1f} s ({row['site_range'][0]:.1f} to"
              f" {row['site_range'][1]:.1f}) | **{row['ratio']:.2f}x** | {execs} | {fmt_count(row['ping_execs'])} |"
              f" {row['site_cpu']:.1f} / {row['ping_cpu']:.1f} s | {row['load'][0]:.1f} to {row['load'][1]:.1f} |")
    ratio_met = all(row["ratio"] <= TARGET_RATIO for row in rows)
    execs_met = all(row["site_execs"] <= TARGET_SSH_EXECS for row in rows)
    growth = rows[-1]["ratio"] / rows[0]["ratio"]
    flat_met = growth <= FLAT_TOLERANCE
    ratios = ", ".join(f"{row['hosts']} hosts {row['ratio']:.2f}x" for row in rows)
    print(f"\n- ratio <= {TARGET_RATIO}x at every N: {'met' if ratio_met else 'MISSED'} ({ratios})")
    if len(rows) > 1:
        print(f"- flat as N grows (ratio at {rows[-1]['hosts']} hosts / ratio at {rows[0]['hosts']} hosts"
              f" <= {FLAT_TOLERANCE}): {growth:.2f}, {'met' if flat_met else 'MISSED'}")
    print(f"- at most {TARGET_SSH_EXECS} SSH execs per host on a no-op (the busiest host, median over runs):"
          f" {'met' if execs_met else 'MISSED'}")
    # Before the probe every host goes through converge.yml; after it, none on a converged fleet
    through = sum(row["converging"] for row in rows)
    print(f"- hosts that went through tasks/converge.yml in the timed site.yml runs: {through} of"
          f" {sum(row['host_runs'] for row in rows)} host runs")
    return ratio_met and execs_met and (flat_met or len(rows) == 1)


def sweep_point(controller: pathlib.Path, env: dict, lab_state: dict, count: int, args: argparse.Namespace) -> dict:
    """Ping and no-op site.yml over `count` aliases, alternating; the row of the table."""
    inventory, aliases = write_alias_inventory(controller, lab_state, count)
    ping, site = controller / "ping.yml", REPO_ROOT / "playbooks" / "site.yml"
    per_host = collections.Counter(aliases.values())
    spread = sorted(set(per_host.values()))
    print(f"\n{count} hosts ({' to '.join(map(str, spread))} aliases per lab host; inventory {inventory}):", flush=True)
    if args.masters == "warm":
        run_playbook(controller, env, ping, f"n{count}-warm-up", aliases, inventory)
    ping_runs, site_runs = [], []
    for index in range(1, args.runs + 1):
        for kind, playbook, runs in (("ping", ping, ping_runs), ("site-noop", site, site_runs)):
            if args.masters == "cold":
                close_masters(controller, aliases)
            label = f"n{count}-{kind}-{index}"
            runs.append(run_playbook(controller, env, playbook, label, aliases, inventory))
        changed = {host: r["changed"] for host, r in site_runs[-1]["recap"].items() if r["changed"]}
        if changed:
            raise BenchError(f"n{count}-site-noop-{index} is not a no-op: changed tasks per host {changed}"
                             f" (log: {controller / 'logs' / f'n{count}-site-noop-{index}.log'})")
    row = sweep_row(count, ping_runs, site_runs)
    print(f"  -> ping {row['ping']:.1f}s, site.yml {row['site']:.1f}s, ratio {row['ratio']:.2f}x,"
          f" SSH execs/host site {fmt_count(row['site_execs'])} ping {fmt_count(row['ping_execs'])}", flush=True)
    return {"row": row, "inventory": inventory, "aliases": aliases}


def bench(args: argparse.Namespace) -> int:
    print(f"Booting lab {args.lab!r}: {', '.join(f'{h} ({b})' for h, b in HOSTS.items())}", flush=True)
    boot_started = time.monotonic()
    lab_state = hostmesh_lab.up(args.lab, list(HOSTS), subnet=args.subnet)
    boot_seconds = time.monotonic() - boot_started
    controller, env = write_controller(lab_state, args.forks)
    playbooks = REPO_ROOT / "playbooks"

    print("Raising sshd's limits; converging the lab hosts (demo_workload.yml, site.yml):", flush=True)
    run_playbook(controller, env, controller / "sshd_limits.yml", "sshd-limits", HOSTS)
    workload = run_playbook(controller, env, playbooks / "demo_workload.yml", "converge-workload", HOSTS)
    converge = run_playbook(controller, env, playbooks / "site.yml", "converge-site", HOSTS)

    head = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h"],
                          capture_output=True, text=True, check=False).stdout.strip() or "no git"
    probe = "with" if (REPO_ROOT / "plugins" / "action" / "sidecar_probe.py").exists() else "without"
    head = f"{head}, {probe} the probe"
    print(f"Sweep over {', '.join(map(str, args.hosts))} hosts: {args.runs} ping and {args.runs} no-op site.yml runs"
          f" each, alternating, forks {args.forks}, SSH masters {args.masters}", flush=True)
    points, rows = [], []
    try:
        for count in args.hosts:
            points.append(sweep_point(controller, env, lab_state, count, args))
            rows.append(points[-1]["row"])
    finally:
        if rows:  # what was measured is worth printing also when a later N failed
            met = print_sweep(rows, f"Fleet benchmark ({time.strftime('%Y-%m-%d')}, {head}): {len(HOSTS)} lab hosts"
                                    f" x aliases, ansible-core {ansible_version()}, pipelining on, forks {args.forks},"
                                    f" SSH masters {args.masters}, {os.cpu_count()} CPUs; {args.runs} runs of each,"
                                    f" alternating; lab boot {boot_seconds:.1f}s, first converge: workload"
                                    f" {workload['seconds']:.1f}s, site.yml {converge['seconds']:.1f}s")

    if not args.no_profile:
        # At the largest N: the controller's per-host share of each task shows there, not at 4 hosts
        largest = points[-1]
        print(f"\nProfiling one more run of each at {rows[-1]['hosts']} hosts:", flush=True)
        site_profile_path = controller / "logs" / "site-profile.json"
        ping_profile_path = controller / "logs" / "ping-profile.json"
        site_profiled = run_playbook(controller, env, playbooks / "site.yml", "site-noop-profiled",
                                     largest["aliases"], largest["inventory"], site_profile_path)
        ping_profiled = run_playbook(controller, env, controller / "ping.yml", "ping-profiled",
                                     largest["aliases"], largest["inventory"], ping_profile_path)
        print_profile(json.loads(site_profile_path.read_text(encoding="utf-8")), site_profiled["seconds"],
                      json.loads(ping_profile_path.read_text(encoding="utf-8")), ping_profiled["seconds"], args.top)
    return 0 if met else 3


def host_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected host counts like 4,16,64, got {text!r}") from None
    if not counts or any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"host counts must be at least 1, got {text!r}")
    return sorted(set(counts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=host_counts, default=[4, 16, 64],
                        help="host counts to sweep, aliases of the 4 lab hosts (default 4,16,64)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each playbook per host count (default 3)")
    parser.add_argument("--quick", action="store_true", help="--hosts 4,16 --runs 2 --no-profile")
    parser.add_argument("--forks", type=int, help="forks for every run (default: the largest host count)")
    parser.add_argument("--masters", choices=("warm", "cold"), default="warm",
                        help="SSH masters open before every timed run (warm, default) or closed (cold)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-task profile")
    parser.add_argument("--lab", default="bench", help="lab name (default bench)")
    parser.add_argument("--subnet", default="10.78.0.0/24", help="lab subnet (default 10.78.0.0/24)")
    parser.add_argument("--top", type=int, default=20, help="slowest tasks to list (default 20)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running (remove: hostmesh_lab.py down)")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.runs, args.no_profile = [4, 16], 2, True
    args.forks = args.forks or max(args.hosts)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.forks < max(args.hosts):
        parser.error(f"--forks must be at least the largest host count ({max(args.hosts)})")
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
