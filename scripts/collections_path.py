# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A collections path in which hostmesh.sidecar is this checkout.

Ansible finds a collection by its name below a directory of
ANSIBLE_COLLECTIONS_PATH, so every tool that runs the working tree (tests, lint,
Molecule, the demo, the benchmark) links ``DIR/ansible_collections/hostmesh/sidecar``
to the checkout, here, instead of building and installing it.

    python3 scripts/collections_path.py DIR     links it, prints DIR (for ANSIBLE_COLLECTIONS_PATH)

Python callers import ``link_checkout``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def link_checkout(base: Path | str, checkout: Path = REPO_ROOT) -> Path:
    """Make base/ansible_collections/hostmesh/sidecar a link to the checkout; return base.

    An existing link is replaced in one rename, so a concurrent reader never
    finds the collection missing."""
    base = Path(base).absolute()
    namespace = base / "ansible_collections" / "hostmesh"
    namespace.mkdir(parents=True, exist_ok=True)
    link = namespace / "sidecar"
    if link.is_symlink() and os.readlink(link) == str(checkout):
        return base
    staging = namespace / f".sidecar.{os.getpid()}"
    if staging.is_symlink():
        staging.unlink()
    staging.symlink_to(checkout, target_is_directory=True)
    os.replace(staging, link)
    return base


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: collections_path.py DIR", file=sys.stderr)
        return 2
    print(link_checkout(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
