# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A collections path in which hostmesh.sidecar is this checkout.

Ansible finds a collection by its name below a directory of
ANSIBLE_COLLECTIONS_PATH, so every tool that runs the working tree (tests, lint,
Molecule, the demo, the benchmark) links ``DIR/ansible_collections/hostmesh/sidecar``
to the checkout, here, instead of building and installing it. The collection's
dependency community.crypto, which ./scripts/setup.sh extracts into
``.cache/collections`` (Galaxy is not reachable everywhere; PyPI's ``ansible``
package bundles it), is linked next to it the same way.

    python3 scripts/collections_path.py DIR     links it, prints DIR (for ANSIBLE_COLLECTIONS_PATH)

Python callers import ``link_checkout``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Collections the checkout depends on (galaxy.yml), as scripts/setup.sh caches them.
CACHED_COLLECTIONS = REPO_ROOT / ".cache" / "collections" / "ansible_collections"
DEPENDENCIES = (("community", "crypto"),)


def link_checkout(base: Path | str, checkout: Path = REPO_ROOT, cached: Path = CACHED_COLLECTIONS) -> Path:
    """Make base/ansible_collections/hostmesh/sidecar a link to the checkout, and
    base/ansible_collections/community/crypto one to the cached copy when there is one; return base."""
    base = Path(base).absolute()
    _link(base / "ansible_collections" / "hostmesh" / "sidecar", checkout)
    for namespace, name in DEPENDENCIES:
        if (cached / namespace / name / "MANIFEST.json").is_file():
            _link(base / "ansible_collections" / namespace / name, cached / namespace / name)
    return base


def _link(link: Path, target: Path) -> None:
    """Point link at target. An existing link is replaced in one rename, so a concurrent
    reader never finds the collection missing."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    staging = link.parent / f".{link.name}.{os.getpid()}"
    if staging.is_symlink():
        staging.unlink()
    staging.symlink_to(target, target_is_directory=True)
    os.replace(staging, link)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: collections_path.py DIR", file=sys.stderr)
        return 2
    print(link_checkout(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
