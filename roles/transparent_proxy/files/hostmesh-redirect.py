# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""hostmesh-redirect: apply, remove or check the redirect rules on a host.

Installed by the transparent_proxy role next to hostmesh_netfilter.py (a copy of
the collection's plugins/module_utils/_netfilter.py, the engine the
traffic_redirect module runs) and used by the boot-time one-shot unit:

    python3 hostmesh-redirect.py apply|remove|check --config /etc/hostmesh/redirect.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from hostmesh_netfilter import run_cli  # noqa: E402  pylint: disable=wrong-import-position,import-error


def main():
    code, out, err = run_cli(sys.argv[1:])
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main())
