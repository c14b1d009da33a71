# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the pure parts of scripts/demo_report.py and scripts/collections_path.py."""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import collections_path  # noqa: E402  pylint: disable=wrong-import-position,import-error
import demo_report  # noqa: E402  pylint: disable=wrong-import-position,import-error

HOSTS = ["alpha", "bravo", "charlie"]
ADDRESS = {"alpha": "10.0.0.11", "bravo": "10.0.0.12", "charlie": "10.0.0.13"}
PORT, EXCLUDED, PER_PAIR = 8080, 9999, 2


def test_plan_calls_every_peer_then_the_next_hosts_excluded_port():
    plan = demo_report.plan_calls(HOSTS, ADDRESS, PORT, EXCLUDED, PER_PAIR)
    assert [call["to"] for call in plan["alpha"]] == ["bravo", "bravo", "charlie", "charlie", "bravo"]
    assert plan["alpha"][-1] == {"to": "bravo", "port": EXCLUDED, "url": "http://10.0.0.12:9999/"}
    assert plan["charlie"][-1]["to"] == "alpha"
    assert all(call["url"] == f"http://{ADDRESS[call['to']]}:{PORT}/" for call in plan["bravo"][:-1])


def test_passthrough_destinations_reads_only_outbound_cx_total():
    text = ("outbound_passthrough::10.0.0.12:8080::cx_total::4\n"
            "outbound_passthrough::10.0.0.12:8080::rq_total::9\n"
            "inbound_passthrough::127.0.0.1:8080::cx_total::7\n"
            "outbound_passthrough::default_priority::max_connections::100000\n")
    assert demo_report.passthrough_destinations(text) == {"10.0.0.12:8080": 4}


def test_destination_deltas_counts_a_dropped_and_recreated_entry_whole():
    before = {"a:1": 5, "b:1": 3, "c:1": 2}
    after = {"a:1": 7, "b:1": 1, "c:1": 2, "d:1": 4}
    assert demo_report.destination_deltas(before, after) == {"a:1": 2, "b:1": 1, "d:1": 4}


def test_render_table_pads_columns_and_underlines_the_header():
    assert demo_report.render_table(["h", "value"], [["alpha", 1]]).splitlines() == [
        "  h      value", "  -----  -----", "  alpha  1"]


def _readings(outbound=4, inbound=4, peer="127.0.0.6", answered_by=None):
    """A run of the plan above in which every sidecar counted as told."""
    parse, delta = demo_report.envoy_stats_filters()
    assert parse("tcp.x: 1\n") == {"tcp.x": 1}
    plan = demo_report.plan_calls(HOSTS, ADDRESS, PORT, EXCLUDED, PER_PAIR)
    empty = {"ready": "LIVE", "stats": "", "clusters": ""}
    counted = (f"{demo_report.OUT}: {outbound}\n{demo_report.UP_OUT}: {outbound}\n"
               f"tcp.inbound_{PORT}.downstream_cx_total: {inbound}\n{demo_report.UP_IN}: {inbound}\n")
    runs = {}
    for caller, calls in plan.items():
        results = []
        for call in calls:
            seen_peer = peer if call["port"] == PORT else ADDRESS[caller]
            results.append(dict(call, ok=True, host=answered_by or call["to"], peer=seen_peer))
        clusters = "".join(f"outbound_passthrough::{ADDRESS[other]}:{PORT}::cx_total::{PER_PAIR}\n"
                           for other in HOSTS if other != caller)
        runs[caller] = {"calls": results, "clusters": clusters}
    after = {host: dict(empty, stats=counted) for host in HOSTS}
    before = {host: dict(empty) for host in HOSTS}
    return demo_report.Report(HOSTS, ADDRESS, {"alpha": "uid"}, PORT, EXCLUDED, PER_PAIR, before, runs, after, delta)


def test_report_passes_when_every_sidecar_counted_each_call_once():
    report = _readings()
    assert [passed for _text, passed in report.checks()] == [True] * 6
    assert "FAIL" not in report.text()


def test_report_names_what_failed():
    assert [passed for _text, passed in _readings(outbound=5).checks()] == [True, True, False, True, True, True]
    assert [passed for _text, passed in _readings(peer="10.0.0.11").checks()][1] is False
    assert "FAIL every call was answered" in _readings(answered_by="alpha").text()


class FakeAdmin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Envoy's admin interface on a Unix socket, as far as the demo reads it; records the paths asked."""

    daemon_threads = True
    pages = {"/ready": "LIVE\n", "/clusters": f"outbound_passthrough::10.0.0.12:{PORT}::cx_total::2\n"}

    def __init__(self, path):
        self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                self.server.paths.append(self.path)
                body = FakeAdmin.pages.get(self.path.split("?")[0], "tcp.outbound_passthrough.downstream_cx_total: 7\n")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):  # a Unix peer has no address to log
                pass

        super().__init__(str(path), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_remote_reads_the_admin_interface_on_its_unix_socket(tmp_path):
    """The script each host runs, against an admin socket: no TCP admin is asked."""
    admin = FakeAdmin(tmp_path / "admin.sock")
    try:
        proc = subprocess.run([sys.executable, "-", demo_report.remote_job([], str(tmp_path / "admin.sock"))],
                              input=demo_report.REMOTE, capture_output=True, text=True, timeout=60, check=False)
    finally:
        admin.shutdown()
        admin.server_close()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ready"] == "LIVE" and out["calls"] == []
    assert out["stats"] == "tcp.outbound_passthrough.downstream_cx_total: 7\n"
    assert demo_report.passthrough_destinations(out["clusters"]) == {f"10.0.0.12:{PORT}": 2}
    assert admin.paths[0] == "/ready" and admin.paths[2] == "/clusters"
    assert admin.paths[1].startswith("/stats?filter=%5E%28tcp")
    assert json.loads(demo_report.remote_job([]))["admin_socket"] == "/run/hostmesh-envoy/admin.sock"


def test_link_checkout_links_and_relinks(tmp_path):
    base = collections_path.link_checkout(tmp_path / "c", REPO_ROOT)
    link = base / "ansible_collections" / "hostmesh" / "sidecar"
    assert os.readlink(link) == str(REPO_ROOT)
    os.replace(link, link.with_name("old"))
    link.symlink_to(tmp_path)
    assert collections_path.link_checkout(base, REPO_ROOT) == base
    assert os.readlink(link) == str(REPO_ROOT)
    assert sorted(path.name for path in link.parent.iterdir()) == ["old", "sidecar"]
