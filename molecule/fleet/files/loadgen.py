# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Load generator of the fleet's rollout test (molecule/fleet/rollout.yml), stdlib only.

Runs on a fleet host until SIGTERM: one thread per target sends HTTP GETs to the target's
workload, each on a new TCP connection (so every request goes through the listeners a hot restart
hands over, through this host's outbound and the target's inbound sidecar), one after the other
with --interval seconds between them. A request succeeds when the demo server answers 200 with
its own host name. On SIGTERM it writes, atomically, to --out:

    {"targets": {NAME: {"ok": N, "failed": N, "errors": [first few failures, with times]}},
     "started": epoch seconds, "stopped": epoch seconds}

    loadgen.py --out FILE [--interval S] [--timeout S] NAME=URL [NAME=URL ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import urllib.request

KEEP_ERRORS = 10


class Target:
    def __init__(self, name, url):
        self.name = name
        self.url = url
        self.ok = 0
        self.failed = 0
        self.errors = []

    def record_failure(self, reason):
        self.failed += 1
        if len(self.errors) < KEEP_ERRORS:
            self.errors.append("%.3f %s" % (time.time(), reason))

    def request(self, timeout):
        request = urllib.request.Request(self.url, headers={"Connection": "close"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # nosec - lab URL
                status = response.status
                body = response.read()
        # Every failure counts, whatever it is.
        except Exception as exc:  # pylint: disable=broad-except
            self.record_failure("%s: %s" % (type(exc).__name__, exc))
            return
        try:
            host = json.loads(body.decode("utf-8")).get("host")
        except ValueError:
            host = None
        if status == 200 and host == self.name:
            self.ok += 1
        else:
            self.record_failure("HTTP %s from %s" % (status, host))


def run(target, stop, interval, timeout):
    while not stop.is_set():
        target.request(timeout)
        stop.wait(interval)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("targets", nargs="+", help="NAME=URL")
    args = parser.parse_args()

    targets = [Target(*spec.split("=", 1)) for spec in args.targets]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.time()
    threads = [threading.Thread(target=run, args=(target, stop, args.interval, args.timeout)) for target in targets]
    for thread in threads:
        thread.start()
    while not stop.is_set():
        stop.wait(1.0)
    for thread in threads:
        thread.join()
    result = {"started": started, "stopped": time.time(),
              "targets": dict((t.name, {"ok": t.ok, "failed": t.failed, "errors": t.errors}) for t in targets)}
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle, sort_keys=True)
    os.rename(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
