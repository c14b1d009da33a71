# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Test helper: tells apart redirected and direct TCP connections.

listen PORT...          accept on each port (IPv4 and IPv6) and answer
                        "proxy <port> <original destination>", read with
                        SO_ORIGINAL_DST: what a transparent proxy sees.
serve ADDR PORT NAME    answer "direct NAME": the real destination.
echo ADDR PORT          answer every line with "echo <line>" on a kept-open connection.
hold ADDR PORT          connect once, print "connected", then send each stdin line and
                        print the answer: an existing connection, across rule changes.
connect ADDR PORT       print the answer; --mark sets SO_MARK, --bind a source
                        address, --join-cgroup writes our pid into a cgroup.procs
                        file first (net_cls or cgroup v2) before connecting.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80  # netfilter's getsockopt, same number for SOL_IP and SOL_IPV6
SO_MARK = 36


def original_destination(conn: socket.socket) -> str:
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack("!2xH4s8x", raw)
        return f"{socket.inet_ntop(socket.AF_INET, addr)}:{port}"
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port, addr = struct.unpack("!2xH4x16s4x", raw)
    return f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"


def answer_forever(sock: socket.socket, make_reply) -> None:
    while True:
        conn = sock.accept()[0]
        try:
            conn.sendall((make_reply(conn) + "\n").encode())
        except OSError as exc:
            conn.sendall(f"error {exc}\n".encode())
        finally:
            conn.close()


def echo_lines(conn: socket.socket) -> None:
    with conn, conn.makefile() as reader:
        for line in reader:
            conn.sendall(f"echo {line.strip()}\n".encode())


def bound(family, addr, port) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((addr, port))
    sock.listen(64)
    return sock


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    listen = sub.add_parser("listen")
    listen.add_argument("ports", type=int, nargs="+")
    serve = sub.add_parser("serve")
    serve.add_argument("addr")
    serve.add_argument("port", type=int)
    serve.add_argument("name")
    for name in ("echo", "hold"):
        kept = sub.add_parser(name)
        kept.add_argument("addr")
        kept.add_argument("port", type=int)
    connect = sub.add_parser("connect")
    connect.add_argument("addr")
    connect.add_argument("port", type=int)
    connect.add_argument("--mark", type=lambda v: int(v, 0))
    connect.add_argument("--bind")
    connect.add_argument("--join-cgroup")
    args = parser.parse_args()

    if args.cmd == "listen":
        sockets = []
        for port in args.ports:
            sockets.append((bound(socket.AF_INET, "0.0.0.0", port), port))
            sockets.append((bound(socket.AF_INET6, "::", port), port))
        for sock, port in sockets:
            threading.Thread(target=answer_forever, daemon=True,
                             args=(sock, lambda c, p=port: f"proxy {p} {original_destination(c)}")).start()
        print("ready", flush=True)
        threading.Event().wait()
    if args.cmd == "serve":
        family = socket.AF_INET6 if ipaddress.ip_address(args.addr).version == 6 else socket.AF_INET
        sock = bound(family, args.addr, args.port)
        print("ready", flush=True)
        answer_forever(sock, lambda c: f"direct {args.name}")
    if args.cmd == "echo":
        family = socket.AF_INET6 if ipaddress.ip_address(args.addr).version == 6 else socket.AF_INET
        sock = bound(family, args.addr, args.port)
        print("ready", flush=True)
        while True:
            conn = sock.accept()[0]
            threading.Thread(target=echo_lines, args=(conn,), daemon=True).start()
    if args.cmd == "hold":
        family = socket.AF_INET6 if ipaddress.ip_address(args.addr).version == 6 else socket.AF_INET
        sock = socket.create_connection((args.addr, args.port), timeout=5)
        reader = sock.makefile()
        print("connected", flush=True)
        for line in sys.stdin:
            try:
                sock.sendall(line.encode())
                print(reader.readline().strip() or "closed", flush=True)
            except OSError as exc:
                print(f"failed {exc}", flush=True)
        return 0
    if args.cmd == "connect":
        if args.join_cgroup:
            with open(args.join_cgroup, "w", encoding="ascii") as handle:
                handle.write(str(os.getpid()))
        family = socket.AF_INET6 if ipaddress.ip_address(args.addr).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(5)
        if args.mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, args.mark)
        if args.bind:
            sock.bind((args.bind, 0))
        try:
            sock.connect((args.addr, args.port))
            print(sock.makefile().readline().strip())
        except OSError as exc:
            print(f"failed {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
