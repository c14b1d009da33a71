#!/usr/bin/env bash
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Run every test suite of the collection (as root, on Debian 12):
#   unit, integration, sanity, lint, molecule (the fleet, then each role alone), changelog.
# All suites run even when one fails; a summary follows and the exit status is
# non-zero if any suite failed. Extra arguments are passed to both pytest runs
# (for example: ./scripts/test.sh -x).
set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT" || exit 1

echo "=== setup ==="
if ! ./scripts/setup.sh --lab; then
    echo "setup failed: no test was run" >&2
    exit 1
fi

export PATH="$REPO_ROOT/.venv/bin:$PATH"
logdir=$(mktemp -d /tmp/hm-test-logs.XXXXXX)
trap 'rm -rf "$logdir"' EXIT

names=()
results=()
durations=()
notes=()
overall=0

# run_suite NAME COMMAND...: runs the command with its output on the terminal
# (and in a log, to quote pytest's closing line in the summary).
run_suite() {
    local name=$1
    shift
    echo
    echo "=== $name: $* ==="
    local start=$SECONDS status
    "$@" 2>&1 | tee "$logdir/$name.log"
    status=${PIPESTATUS[0]}
    names+=("$name")
    durations+=("$((SECONDS - start))s")
    notes+=("$(grep -E '^=+ .* in [0-9.]+s' "$logdir/$name.log" | tail -n1 | tr -d '=' | sed 's/^ *//; s/ *$//')")
    if [ "$status" -eq 0 ]; then
        results+=("PASS")
    else
        results+=("FAIL ($status)")
        overall=1
    fi
}

# fail_suite NAME REASON: a suite that cannot run counts as failed.
fail_suite() {
    echo
    echo "=== $1: FAILED: $2 ==="
    names+=("$1")
    results+=("FAIL")
    durations+=("0s")
    notes+=("$2")
    overall=1
}

run_suite unit pytest tests/unit "$@"
run_suite integration pytest tests/integration tests/lab "$@"
run_suite sanity ./scripts/sanity.sh
run_suite lint ./scripts/lint.sh
# Molecule: the collection's fleet scenario from the root, then each role's
# one-host scenario from the role's directory, as a role's user runs it.
molecule_suite() {  # molecule_suite NAME DIRECTORY [ARGS...]: `molecule test ARGS` in DIRECTORY
    local name=$1 directory=$2
    shift 2
    # shellcheck disable=SC2016  # "$1" and "$@" are the inner shell's: its directory and molecule's arguments
    run_suite "$name" env NO_COLOR=1 sh -c 'cd "$1" && shift && exec molecule test "$@"' sh "$directory" "$@"
}
if [ -f molecule/fleet/molecule.yml ]; then
    molecule_suite molecule-fleet . -s fleet
else
    fail_suite molecule-fleet "molecule/fleet/molecule.yml does not exist"
fi
for role in roles/*/; do
    role=${role%/}
    if [ -f "$role/molecule/default/molecule.yml" ]; then
        molecule_suite "molecule-${role#roles/}" "$role"
    else
        fail_suite "molecule-${role#roles/}" "$role/molecule/default/molecule.yml does not exist"
    fi
done
run_suite changelog antsibull-changelog lint

echo
echo "=== summary ==="
for i in "${!names[@]}"; do
    printf '%-26s %-10s %7s  %s\n' "${names[$i]}" "${results[$i]}" "${durations[$i]}" "${notes[$i]}"
done
if [ "$overall" -eq 0 ]; then
    echo "ALL SUITES PASSED"
else
    echo "SOME SUITES FAILED"
fi
exit "$overall"
