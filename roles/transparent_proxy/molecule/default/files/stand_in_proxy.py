# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Stand-in for the Envoy sidecar in the transparent_proxy role's Molecule scenario.

Listens on each port given on the command line (IPv4) and answers every
connection with one JSON line: the port that took it, the original destination
the redirect rules recorded for it (SO_ORIGINAL_DST) and the peer address.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import sys
import threading

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def original_destination(sock: socket.socket) -> str:
    """ip:port the connection was addressed to before a REDIRECT rule changed it."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed_address = struct.unpack_from("!2xH4s", raw)
    return f"{socket.inet_ntoa(packed_address)}:{port}"


class Answer(socketserver.BaseRequestHandler):
    def handle(self):
        reply = {
            "listener": self.server.server_address[1],
            "original_dst": original_destination(self.request),
            "peer": self.client_address[0],
        }
        self.request.sendall(json.dumps(reply).encode() + b"\n")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main(ports: list[int]) -> None:
    servers = [Server(("0.0.0.0", port), Answer) for port in ports]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


main([int(port) for port in sys.argv[1:]])
