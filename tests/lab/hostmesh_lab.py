# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""hostmesh lab: a small fleet of real systemd hosts, booted with systemd-nspawn.

The entry point of the package hmlab beside this file, whose docstring and
tests/lab/README.md describe the lab and its commands:

    python3 tests/lab/hostmesh_lab.py --help
    python3 tests/lab/hostmesh_lab.py up --lab NAME --hosts alpha,bravo [--subnet 10.77.0.0/24]
    python3 tests/lab/hostmesh_lab.py down --lab NAME

`import hostmesh_lab` gives what `import hmlab` gives: up(), down(), reboot(),
exec_argv(), load_state(), build_image() and friends. The supervisors run
`hostmesh_lab.py _supervise` (hmlab.common.LAB_CLI names this file).
"""

from __future__ import annotations

import sys

from hmlab import *  # noqa: F401,F403  pylint: disable=wildcard-import,unused-wildcard-import
from hmlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
