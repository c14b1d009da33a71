#!/bin/sh
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# The `dependency` step of the Molecule scenarios (molecule/fleet and each
# role's molecule/default):
#  - a collections path in which hostmesh.sidecar is this checkout, so the
#    scenario always tests the working tree, whichever directory Molecule is
#    started from (molecule.yml points ANSIBLE_COLLECTIONS_PATH at it);
#  - the lab's host image (debootstrapped once, then cached: a no-op).
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
python3 "$repo/scripts/collections_path.py" "$repo/.cache/molecule/collections" > /dev/null
exec python3 "$repo/tests/lab/hostmesh_lab.py" build-image
