# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The command line of tests/lab/hostmesh_lab.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .common import BOOT_TIMEOUT, DEFAULT_CACHE, DEFAULT_SUBNET, LabError, STOP_TIMEOUT, log
from .image import build_image
from .supervisor import supervise
from .lifecycle import down, exec_in_lab, reboot, shell_argv, start, status, stop, up


# The first paragraph of the package docstring, as the entry point showed its own.
LAB_SUMMARY = (sys.modules[__package__].__doc__ or "").split("\n\n", maxsplit=1)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostmesh_lab.py", description=LAB_SUMMARY,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-image", help="debootstrap the cached host image (once per recipe)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--mirror", help="Debian mirror (default: from /etc/apt sources)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")

    p = sub.add_parser("up", help="boot a lab")
    p.add_argument("--lab", required=True)
    p.add_argument("--hosts", required=True, help="comma-separated host names")
    p.add_argument("--subnet", default=DEFAULT_SUBNET)
    p.add_argument("--subnet6", help="also give each host an IPv6 address from this prefix")
    p.add_argument("--cgroup", choices=("unified", "hybrid"), default="unified",
                   help="cgroup layout inside hosts (default unified, as on Debian 12)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    p.add_argument("--json", action="store_true", help="print the state as JSON")

    p = sub.add_parser("down", help="remove a lab and everything it made")
    p.add_argument("--lab", required=True)
    p.add_argument("--timeout", type=float, default=STOP_TIMEOUT)

    p = sub.add_parser("exec", help="run a command inside the lab network namespace")
    p.add_argument("--lab", required=True)
    p.add_argument("--subnet", default=DEFAULT_SUBNET, help="when the lab network does not exist yet")
    p.add_argument("cmd", nargs=argparse.REMAINDER)

    for name, text in (("reboot", "reboot a host (fresh network stack, same disk)"),
                       ("stop", "power a host off"), ("start", "boot a powered-off host")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--lab", required=True)
        p.add_argument("host")
        p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT if name != "stop" else STOP_TIMEOUT)
        if name == "reboot":
            p.add_argument("--force", action="store_true", help="kill the host's init instead of a clean reboot")

    p = sub.add_parser("status", help="show a lab")
    p.add_argument("--lab", required=True)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("shell", help="a shell (or CMD) inside a host, via nsenter")
    p.add_argument("--lab", required=True)
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)

    p = sub.add_parser("_supervise", help=argparse.SUPPRESS)
    p.add_argument("--lab", required=True)
    p.add_argument("host")

    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("must run as root")
    cmd = getattr(args, "cmd", None) or []
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        if args.command == "build-image":
            print(build_image(args.cache, args.mirror, args.force))
        elif args.command == "up":
            state = up(args.lab, [h.strip() for h in args.hosts.split(",") if h.strip()], args.subnet,
                       args.cache, args.cgroup, args.subnet6, args.timeout)
            print(json.dumps(state, indent=2) if args.json else state["inventory"])
        elif args.command == "down":
            started = time.monotonic()
            if down(args.lab, args.timeout):
                print(f"lab {args.lab}: removed in {time.monotonic() - started:.1f}s")
            else:
                print(f"lab {args.lab}: nothing to remove")
        elif args.command == "exec":
            return exec_in_lab(args.lab, cmd, args.subnet)
        elif args.command == "reboot":
            started = time.monotonic()
            runtime = reboot(args.lab, args.host, args.force, args.timeout)
            log(f"{args.host} rebooted in {time.monotonic() - started:.1f}s (leader pid {runtime['leader_pid']})")
        elif args.command == "stop":
            stop(args.lab, args.host, args.timeout)
        elif args.command == "start":
            start(args.lab, args.host, args.timeout)
        elif args.command == "status":
            info = status(args.lab)
            if args.json:
                print(json.dumps(info, indent=2))
            elif not info["exists"]:
                print(f"lab {args.lab}: not up" + (" (network namespace present)" if info["netns"] else ""))
            else:
                print(f"lab {args.lab}: {info['subnet']} controller {info['controller_address']}"
                      f" inventory {info['inventory']}")
                for host, hinfo in info["hosts"].items():
                    print(f"  {host:<12} {hinfo['address']:<15} "
                          f"{'running' if hinfo['running'] else 'stopped':<8} leader {hinfo['leader_pid']}"
                          f" boots {hinfo['boot_count']}")
        elif args.command == "shell":
            shell = shell_argv(args.lab, args.host, cmd)
            os.execvp(shell[0], shell)
        elif args.command == "_supervise":
            return supervise(args.lab, args.host)
    except LabError as exc:
        log(f"error: {exc}")
        return 1
    return 0
