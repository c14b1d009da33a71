#!/usr/bin/env bash
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# ansible-lint (profile "production", from .ansible-lint) and yamllint (from
# .yamllint) over the whole collection. Both run even if the first fails.
set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT" || exit 1
export PATH="$REPO_ROOT/.venv/bin:$PATH"
# ansible-lint must resolve hostmesh.sidecar.* to this checkout (offline: it
# installs nothing): a collections path whose hostmesh/sidecar links here.
ANSIBLE_COLLECTIONS_PATH=$(python3 "$REPO_ROOT/scripts/collections_path.py" "$REPO_ROOT/.cache/lint-collections")
export ANSIBLE_COLLECTIONS_PATH

status=0
echo "[lint] ansible-lint"
ansible-lint --nocolor || status=1
echo "[lint] yamllint"
yamllint --strict . || status=1
exit "$status"
