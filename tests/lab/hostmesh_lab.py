# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""hostmesh lab: a small fleet of real systemd hosts, booted with systemd-nspawn.

Each host is a Debian 12 system running its own systemd (PID 1 in its own PID
namespace), its own network namespace with one address on a shared bridge, and
an overlayfs root over one cached debootstrap image, so a host boots in about a
second and keeps its disk across reboots. Ansible reaches the hosts over SSH.

    python3 tests/lab/hostmesh_lab.py build-image [--cache DIR]
    python3 tests/lab/hostmesh_lab.py up --lab NAME --hosts alpha,bravo,charlie [--subnet 10.77.0.0/24]
    python3 tests/lab/hostmesh_lab.py exec --lab NAME -- CMD...   # CMD runs in the lab network
    python3 tests/lab/hostmesh_lab.py reboot --lab NAME HOST [--force]
    python3 tests/lab/hostmesh_lab.py stop|start --lab NAME HOST
    python3 tests/lab/hostmesh_lab.py status --lab NAME [--json]
    python3 tests/lab/hostmesh_lab.py shell --lab NAME HOST [-- CMD...]
    python3 tests/lab/hostmesh_lab.py down --lab NAME

Layout (see tests/lab/README.md for the details and the reasons):
  lab network namespace  hmlab-NAME        bridge br0 + controller address (.1)
  host network namespace hmlab-NAME-HOST   eth0 (.11, .12, ...), default route via .1
  /var/lib/hostmesh-lab/NAME/              state.json, inventory.yml, SSH key,
                                           HOST/{upper,work,root,console.log}
  /var/cache/hostmesh-lab/bookworm-STAMP/  the read-only image (overlay lowerdir)

Every host runs under a small supervisor process (this file, `_supervise`),
which (re)creates the host's network namespace before each boot and boots the
host again when it reboots itself (`systemctl reboot`, ansible.builtin.reboot):
a reboot starts with a fresh network stack (no iptables rules, no sockets),
like a real machine, while the disk (the overlay upper dir) is kept.

Stdlib only; runs as root. The code is the package hmlab beside this file
(image, network, cgroups, supervisor, lifecycle, cli, ...); this entry point
keeps the command line and `import hostmesh_lab` (up(), down(), reboot(),
exec_argv(), load_state(), build_image() and friends) as they were.
"""

from __future__ import annotations

import sys

from hmlab import *  # noqa: F401,F403  pylint: disable=wildcard-import,unused-wildcard-import
from hmlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
