# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""hostmesh-net-cls: ensure, remove or check the proxy's net_cls cgroup on a host.

Installed by the transparent_proxy role in /usr/local/libexec/hostmesh next to
hostmesh_net_cls.py (a copy of the collection's plugins/module_utils/_net_cls.py,
the engine the net_cls module runs) and hostmesh_host.py (_host.py). The boot
unit re-creates the cgroup with it after a reboot, without Ansible:

    python3 hostmesh-net-cls.py ensure --name NAME --classid 0x100001 --owner UID
    python3 hostmesh-net-cls.py check|remove --name NAME ...

Exit code 0: done (check: in sync), 1: check found a difference, 2: error.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from hostmesh_host import cli_main  # noqa: E402  pylint: disable=wrong-import-position,import-error
from hostmesh_net_cls import run_cli  # noqa: E402  pylint: disable=wrong-import-position,import-error

if __name__ == "__main__":
    sys.exit(cli_main(run_cli))
