# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Prints, as JSON, what the fleet's rollout test compares on a host (stdlib only): the sidecar
supervisor's pid, serving epoch, reload count and served bootstrap checksum, the bootstrap's and
the Envoy binary's checksums and the binary's inode, Envoy's /ready answer, and whether a rollout
snapshot directory is left."""

import hashlib
import http.client
import json
import os
import socket

BINARY = "/usr/local/bin/envoy"
BOOTSTRAP = "/etc/hostmesh/envoy/envoy.yaml"
SUPERVISOR_STATE = "/run/hostmesh-envoy/restarter.json"
SNAPSHOT_DIR = "/etc/hostmesh/envoy/.rollout-snapshot"
ADMIN_SOCKET = "/run/hostmesh-envoy/admin.sock"


def sha1(path):
    digest = hashlib.sha1()  # nosec - compared with the supervisor's record, not security
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class AdminConnection(http.client.HTTPConnection):
    """HTTP to Envoy's admin interface, a Unix socket (root and the proxy user only)."""

    def __init__(self):
        super().__init__("localhost", timeout=5)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(ADMIN_SOCKET)


def ready():
    connection = AdminConnection()
    try:
        connection.request("GET", "/ready")
        return connection.getresponse().read().decode().strip()
    except (OSError, http.client.HTTPException) as exc:
        return "no answer: %s" % exc
    finally:
        connection.close()


with open(SUPERVISOR_STATE, "r", encoding="utf-8") as handle:
    supervisor = json.load(handle)
print(json.dumps({
    "pid": supervisor["pid"],
    "epoch": supervisor["serving_epoch"],
    "reloads": supervisor["reloads"],
    "served_sha1": supervisor["serving_config_sha1"],
    "bootstrap_sha1": sha1(BOOTSTRAP),
    "binary_sha1": sha1(BINARY),
    "binary_inode": os.stat(BINARY).st_ino,
    "ready": ready(),
    "snapshot_left": os.path.lexists(SNAPSHOT_DIR),
}, sort_keys=True))
