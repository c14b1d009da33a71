# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""hostmesh-redirect: apply, remove or check the redirect rules on a host.

Installed by the transparent_proxy role in the helper directory, beside
hostmesh_netfilter.py and hostmesh_host.py (copies of the collection's
plugins/module_utils/_netfilter.py and _host.py: the engine the traffic_redirect
module runs), and used by the boot-time one-shot unit:

    python3 hostmesh-redirect.py apply|remove|check --config /etc/hostmesh/redirect.json
    python3 hostmesh-redirect.py remove --config FILE --keep-if-restarting UNIT

With --keep-if-restarting, remove does nothing while systemd runs a restart job
on UNIT (the unit's own ExecStop=): the unit is PartOf= the proxy unit, and
systemd restarts it whenever it restarts the proxy, also the automatic restart
after a crash, so only a stop job (a deliberate stop) takes the rules away.
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

# pylint: disable=wrong-import-position,import-error
from hostmesh_host import LC_ENV, cli_main  # noqa: E402
from hostmesh_netfilter import run_cli  # noqa: E402

KEEP_OPTION = "--keep-if-restarting"
RESTART_JOB_TYPES = ("restart", "try-restart", "reload-or-restart", "try-reload-or-restart")


def split_keep_option(argv):
    """Take --keep-if-restarting UNIT out of argv (the rules engine does not know it)."""
    rest = []
    unit = None
    args = iter(argv)
    for arg in args:
        if arg == KEEP_OPTION:
            unit = next(args, "")
        elif arg.startswith(KEEP_OPTION + "="):
            unit = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, unit


def job_type(unit):
    """Type of the job systemd is running on UNIT ("stop", "restart", ...), or None."""
    try:
        listing = subprocess.run(
            ["systemctl", "list-jobs", "--no-legend", "--no-pager", "--", unit],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
            env=dict(os.environ, **LC_ENV), timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.stdout.splitlines():
        fields = line.split()
        # JOB UNIT TYPE STATE
        if len(fields) >= 3 and fields[1] == unit:
            return fields[2]
    return None


def run_keeping_rules_on_restart(argv):
    """run_cli, except that a remove during a restart job of the given unit does nothing."""
    argv, keep_unit = split_keep_option(argv)
    if keep_unit is not None:
        if not keep_unit:
            return 2, "", f"hostmesh-redirect: {KEEP_OPTION} needs a unit name\n"
        job = job_type(keep_unit) if argv[:1] == ["remove"] else None
        if job in RESTART_JOB_TYPES:
            return 0, "", f"hostmesh-redirect: {keep_unit} is restarting ({job} job): the rules stay\n"
    return run_cli(argv)


sys.exit(cli_main(run_keeping_rules_on_restart))
