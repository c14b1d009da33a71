# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the pure parts of scripts/demo_report.py and scripts/collections_path.py."""

from __future__ import annotations

import copy
import datetime
import http.server
import json
import os
import re
import socket
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
TRUST_DOMAIN = "demo.local"
VIP = "240.240.7.7"
DENIED_TERMINATION = "rbac_access_denied_matched_policy[none]"
# charlie's :8080 lets only alpha call it: bravo's calls to charlie are denied. charlie calls hello by name.
SETUP = {"hosts": HOSTS, "address": ADDRESS, "bypass": {"alpha": "uid"}, "port": PORT, "excluded": EXCLUDED,
         "calls_per_pair": PER_PAIR, "trust_domain": TRUST_DOMAIN, "service": "hello",
         "service_members": ["alpha", "bravo"], "service_caller": "charlie", "policy_host": "charlie",
         "policy_allow": ["alpha"]}


def ident(host):
    return demo_report.spiffe_id(TRUST_DOMAIN, host)


def test_plan_calls_every_peer_then_the_next_hosts_excluded_port():
    plan = demo_report.plan_calls(HOSTS, ADDRESS, PORT, EXCLUDED, PER_PAIR)
    assert [call["to"] for call in plan["alpha"]] == ["bravo", "bravo", "charlie", "charlie", "bravo"]
    assert plan["alpha"][-1] == {"to": "bravo", "port": EXCLUDED, "url": "http://10.0.0.12:9999/"}
    assert plan["charlie"][-1]["to"] == "alpha"
    assert all(call["url"] == f"http://{ADDRESS[call['to']]}:{PORT}/" for call in plan["bravo"][:-1])


def test_plan_service_calls_by_name_under_the_mesh_domain():
    assert demo_report.plan_service_calls("hello", PORT, 2) == [
        {"service": "hello", "port": PORT, "url": "http://hello.mesh:8080/"}] * 2


def test_spiffe_id_is_the_members_identity():
    assert ident("bravo") == "spiffe://demo.local/host/bravo"


def test_cluster_destinations_reads_only_cx_total_of_the_named_clusters():
    text = ("mesh_bravo::10.0.0.12:8080::cx_total::4\n"
            "mesh_bravo::10.0.0.12:8080::rq_total::9\n"
            "mesh_charlie::10.0.0.13:8080::cx_total::2\n"
            "outbound_passthrough::10.0.0.12:9999::cx_total::7\n"
            "mesh_bravo::default_priority::max_connections::100000\n")
    assert demo_report.cluster_destinations(text, "mesh_") == {
        "mesh_bravo": {"10.0.0.12:8080": 4}, "mesh_charlie": {"10.0.0.13:8080": 2}}
    assert demo_report.cluster_destinations(text, "outbound_") == {"outbound_passthrough": {"10.0.0.12:9999": 7}}


def test_destination_deltas_counts_a_dropped_and_recreated_entry_whole():
    before = {"a:1": 5, "b:1": 3, "c:1": 2}
    after = {"a:1": 7, "b:1": 1, "c:1": 2, "d:1": 4}
    assert demo_report.destination_deltas(before, after) == {"a:1": 2, "b:1": 1, "d:1": 4}


def test_render_table_pads_columns_and_underlines_the_header():
    assert demo_report.render_table(["h", "value"], [["alpha", 1]]).splitlines() == [
        "  h      value", "  -----  -----", "  alpha  1"]


def test_parse_access_log_keeps_only_the_json_entries():
    text = ("[2026-12-03 06:40:00.000][1][info][main] starting main dispatch loop\n"
            '{"direction":"outbound_mesh_bravo","downstream":"10.0.0.11:40000"}\n'
            "{not json\n"
            '{"some":"other json"}\n'
            '  {"direction":"inbound_8080_mtls","downstream_peer":"spiffe://demo.local/host/alpha"}  \n')
    assert demo_report.parse_access_log(text) == [
        {"direction": "outbound_mesh_bravo", "downstream": "10.0.0.11:40000"},
        {"direction": "inbound_8080_mtls", "downstream_peer": "spiffe://demo.local/host/alpha"}]


def test_ip_of_an_endpoint():
    assert demo_report.ip_of("10.0.0.1:8080") == "10.0.0.1"
    assert demo_report.ip_of("[fd00::1]:8080") == "fd00::1"
    assert demo_report.ip_of("") == ""


# --- a synthetic run: what each sidecar would log and count when everything works -----------

T0 = datetime.datetime(2026, 12, 3, 6, 40, 0)


def stamp(step):
    return (T0 + datetime.timedelta(milliseconds=10 * step)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def stats_text(counters):
    return "".join(f"{name}: {value}\n" for name, value in sorted(counters.items()))


def _fleet():
    """The readings of a demo run in which every sidecar did as told: (before, runs, after, service_run, final)."""
    plan = demo_report.plan_calls(HOSTS, ADDRESS, PORT, EXCLUDED, PER_PAIR)
    logs = {host: [] for host in HOSTS}
    counters = {host: {} for host in HOSTS}

    def count(host, name, by=1):
        counters[host][name] = counters[host].get(name, 0) + by

    def connect(caller, callee, local, step, direction, cluster, denied=False):
        """Both sidecars' log lines of one mesh connection."""
        logs[caller].append({"direction": direction, "start_time": stamp(step), "downstream": local,
                             "original_destination": f"{ADDRESS[callee]}:{PORT}" if cluster.startswith("mesh_") else f"{VIP}:{PORT}",
                             "upstream": f"{ADDRESS[callee]}:{PORT}", "upstream_peer": ident(callee), "cluster": cluster,
                             "downstream_peer": "", "response_flags": "-", "termination": ""})
        logs[callee].append({"direction": f"inbound_{PORT}_mtls", "start_time": stamp(step) if step % 2 else stamp(step + 0.5),
                             "downstream": f"{ADDRESS[caller]}:{50000 + step}", "original_destination": f"{ADDRESS[callee]}:{PORT}",
                             "downstream_peer": ident(caller), "upstream_peer": "", "cluster": "inbound_passthrough",
                             "bytes_sent": 0 if denied else 120, "response_flags": "-",
                             "termination": DENIED_TERMINATION if denied else ""})

    runs, step = {}, 0
    for caller, calls in plan.items():
        results = []
        for call in calls:
            step += 1
            if call["port"] == EXCLUDED:
                results.append(dict(call, ok=True, host=call["to"], peer=ADDRESS[caller]))
                continue
            callee, local = call["to"], f"{ADDRESS[caller]}:{40000 + step}"
            denied = callee == "charlie" and caller == "bravo"
            connect(caller, callee, local, step, f"outbound_mesh_{callee}", f"mesh_{callee}", denied)
            for name in (f"tcp.outbound_mesh_{callee}.downstream_cx_total", f"cluster.mesh_{callee}.upstream_cx_total",
                         f"cluster.mesh_{callee}.ssl.handshake"):
                count(caller, name)
            count(callee, f"tcp.inbound_{PORT}_mtls.downstream_cx_total")
            # The inbound sidecar connects to the workload before its policy has seen the caller's first
            # bytes, allowed or not (Envoy 1.40 counts denied calls in cluster.inbound_passthrough too).
            count(callee, "cluster.inbound_passthrough.upstream_cx_total")
            if denied:
                count(callee, f"inbound_{PORT}.rbac.denied")
                results.append(dict(call, ok=False, local=local, remote=f"{ADDRESS[callee]}:{PORT}",
                                    error="RemoteDisconnected: Remote end closed connection without response"))
            else:
                count(callee, f"inbound_{PORT}.rbac.allowed")
                results.append(dict(call, ok=True, local=local, remote=f"{ADDRESS[callee]}:{PORT}", host=callee,
                                    peer=demo_report.INBOUND_SOURCE))
        clusters = "".join(f"mesh_{other}::{ADDRESS[other]}:{PORT}::cx_total::{PER_PAIR}\n" for other in HOSTS if other != caller)
        runs[caller] = {"calls": results, "clusters": clusters, "ready": "LIVE", "stats": ""}
    after = {host: {"ready": "LIVE", "stats": stats_text(counters[host]), "clusters": ""} for host in HOSTS}

    service_calls = []
    for member in ["alpha", "bravo"]:
        step += 1
        local = f"{ADDRESS['charlie']}:{40000 + step}"
        connect("charlie", member, local, step, "outbound_service_hello", "service_hello")
        count("charlie", "tcp.outbound_service_hello.downstream_cx_total")
        count("charlie", "cluster.service_hello.ssl.handshake")
        service_calls.append({"service": "hello", "port": PORT, "url": "http://hello.mesh:8080/", "ok": True, "host": member,
                              "peer": demo_report.INBOUND_SOURCE, "local": local, "remote": f"{VIP}:{PORT}"})
    service_run = {"calls": service_calls, "ready": "LIVE", "stats": stats_text(counters["charlie"]), "clusters": ""}
    before = {host: {"ready": "LIVE", "stats": "", "clusters": ""} for host in HOSTS}
    # The journal as the hosts return it: Envoy's own lines among the entries, callee lines out of order.
    final = {host: {"log": "[info] starting\n" + "".join(json.dumps(entry) + "\n" for entry in reversed(logs[host]))}
             for host in HOSTS}
    return before, runs, after, service_run, final


def _report(readings):
    return demo_report.Report(SETUP, *readings, demo_report.envoy_stats_filters()[1])


def _passed(readings):
    return [passed for _text, passed in _report(readings).checks()]


def test_report_passes_when_every_sidecar_did_as_told():
    parse, _delta = demo_report.envoy_stats_filters()
    assert parse("tcp.x: 1\n") == {"tcp.x": 1}
    report = _report(_fleet())
    assert [passed for _text, passed in report.checks()] == [True] * 9
    text = report.text()
    assert "FAIL" not in text
    # Each call's row names the peer both sidecars verified; the denied call, the policy's counter and log line.
    rows = [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]
    assert ["alpha", "bravo", "bravo", ident("bravo"), ident("alpha"), "-"] in rows
    assert rows.count(["bravo", "charlie", "refused", ident("charlie"), ident("bravo"), DENIED_TERMINATION]) == PER_PAIR
    assert f"inbound_{PORT}.rbac.denied +{PER_PAIR} on charlie" in text
    assert DENIED_TERMINATION in text
    assert f"hello.mesh is {VIP} in charlie's /etc/hosts" in text
    assert ["hello.mesh", "alpha", "service_hello", f"{ADDRESS['alpha']}:{PORT}", ident("alpha"), ident("charlie")] in rows


def test_match_calls_pairs_each_call_with_both_sidecars_lines():
    _before, runs, _after, _service_run, final = _fleet()
    logs = {host: demo_report.parse_access_log(final[host]["log"]) for host in HOSTS}
    calls = [dict(call, caller="alpha") for call in runs["alpha"]["calls"] if call["port"] == PORT]
    matched = demo_report.match_calls(calls, logs, ADDRESS)
    assert [call["callee"] for call in matched] == ["bravo", "bravo", "charlie", "charlie"]
    assert [call["sent"]["downstream"] for call in matched] == [call["local"] for call in calls]
    # The two calls to bravo got bravo's two lines from alpha, in the order they started (the log is reversed).
    received = [call["received"] for call in matched[:2]]
    assert received[0]["start_time"] < received[1]["start_time"] and received[0] is not received[1]
    assert all(call["received"]["downstream_peer"] == ident("alpha") for call in matched)


def test_callee_entry_takes_the_first_line_at_or_after_the_callers_and_each_line_once():
    sent = {"start_time": stamp(5), "upstream": "10.0.0.12:8080"}
    line = {"direction": "inbound_8080_mtls", "downstream": "10.0.0.11:5", "original_destination": "10.0.0.12:8080"}
    log = [dict(line, start_time=stamp(4)), dict(line, start_time=stamp(7)), dict(line, start_time=stamp(5)),
           dict(line, start_time=stamp(6), downstream="10.0.0.13:6"),
           dict(line, start_time=stamp(5), original_destination="10.0.0.12:9090"),
           dict(line, start_time=stamp(5), direction="outbound_mesh_alpha")]
    taken = set()
    assert demo_report.callee_entry(log, sent, "10.0.0.11", taken) is log[2]
    assert demo_report.callee_entry(log, sent, "10.0.0.11", taken) is log[1]
    assert demo_report.callee_entry(log, sent, "10.0.0.11", taken) is None
    assert demo_report.callee_entry(log, None, "10.0.0.11", set()) is None


def test_a_call_without_a_local_address_matches_no_line():
    assert demo_report.caller_entry([{"downstream": ""}], {"ok": False, "error": "refused"}) is None
    matched = demo_report.match_calls([{"caller": "alpha", "to": "bravo", "ok": False}], {host: [] for host in HOSTS}, ADDRESS)
    assert matched[0]["sent"] is None and matched[0]["callee"] is None and matched[0]["received"] is None


def test_report_fails_when_a_sidecar_saw_another_identity():
    readings = _fleet()
    readings[4]["bravo"]["log"] = readings[4]["bravo"]["log"].replace(ident("alpha"), ident("charlie"))
    # bravo's lines of alpha's calls (inbound) and of its own calls to alpha (outbound) name charlie.
    assert _passed(readings) == [True, True, False] + [True] * 6
    readings = _fleet()
    readings[4]["charlie"]["log"] = readings[4]["charlie"]["log"].replace(
        '"upstream_peer": "%s", "cluster": "service_hello"' % ident("bravo"),
        '"upstream_peer": "%s", "cluster": "service_hello"' % ident("alpha"))
    assert _passed(readings) == [True] * 8 + [False]


def test_report_fails_when_the_policy_let_a_denied_caller_through():
    readings = _fleet()
    runs = readings[1]
    for call in runs["bravo"]["calls"]:
        if call["to"] == "charlie" and call["port"] == PORT:
            call.update(ok=True, host="charlie", peer=demo_report.INBOUND_SOURCE)
    after = readings[2]
    after["charlie"]["stats"] = after["charlie"]["stats"].replace(f"inbound_{PORT}.rbac.denied: {PER_PAIR}",
                                                                  f"inbound_{PORT}.rbac.denied: 0")
    passed = _passed(readings)
    assert passed[0] is False and passed[5] is False
    assert "FAIL charlie's policy denied bravo's calls" in _report(readings).text()


def test_report_fails_on_plaintext_or_a_missing_handshake():
    readings = _fleet()
    readings[2]["alpha"]["stats"] += f"{demo_report.PLAIN_OUT}: 1\n"
    assert _passed(readings)[3] is False
    readings = _fleet()
    readings[2]["bravo"]["stats"] = readings[2]["bravo"]["stats"].replace("cluster.mesh_alpha.ssl.handshake: 2",
                                                                          "cluster.mesh_alpha.ssl.handshake: 1")
    assert _passed(readings)[3] is False
    readings = _fleet()
    readings[2]["alpha"]["stats"] += f"tcp.inbound_{PORT}.downstream_cx_total: 1\n"
    assert _passed(readings)[4] is False


def test_report_fails_when_a_denial_left_no_log_line():
    readings = _fleet()
    readings[4]["charlie"]["log"] = "".join(line + "\n" for line in readings[4]["charlie"]["log"].splitlines()
                                            if DENIED_TERMINATION not in line)
    passed = _passed(readings)
    assert passed[2] is False and passed[5] is False


def test_report_fails_when_a_non_member_answered_the_service():
    readings = _fleet()
    readings[3]["calls"][0]["host"] = "charlie"
    assert _passed(readings) == [True] * 8 + [False]
    readings = _fleet()
    readings[3]["stats"] = readings[3]["stats"].replace("cluster.service_hello.ssl.handshake: 2", "")
    assert _passed(readings)[8] is False


def test_report_fails_when_an_excluded_call_went_through_a_sidecar():
    readings = _fleet()
    readings[1]["alpha"]["calls"][-1]["peer"] = demo_report.INBOUND_SOURCE
    assert _passed(readings)[7] is False
    readings = _fleet()
    readings[1]["alpha"]["clusters"] += f"mesh_bravo::{ADDRESS['bravo']}:{EXCLUDED}::cx_total::1\n"
    assert _passed(readings)[6] is False


def test_report_clusters_check_wants_each_peer_under_its_own_cluster():
    readings = _fleet()
    # Two workers may each make an ORIGINAL_DST host for one destination: /clusters then shows one of them.
    readings[1]["alpha"]["clusters"] = readings[1]["alpha"]["clusters"].replace("cx_total::2", "cx_total::1", 1)
    assert _passed(readings)[6] is True
    readings = _fleet()
    readings[1]["alpha"]["clusters"] = readings[1]["alpha"]["clusters"].replace("mesh_charlie::", "mesh_bravo::")
    assert _passed(readings)[6] is False
    readings = _fleet()
    readings[1]["alpha"]["clusters"] = readings[1]["alpha"]["clusters"].split("\n", 1)[1]
    assert _passed(readings)[6] is False


def test_report_readings_are_not_changed():
    readings = _fleet()
    kept = copy.deepcopy(readings)
    _report(readings).text()
    assert readings == kept


# --- the script each host runs ---------------------------------------------------------------

class FakeAdmin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Envoy's admin interface on a Unix socket, as far as the demo reads it; records the paths asked."""

    daemon_threads = True
    pages = {"/ready": "LIVE\n", "/clusters": f"mesh_bravo::10.0.0.12:{PORT}::cx_total::2\n"}

    def __init__(self, path):
        self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                self.server.paths.append(self.path)
                body = FakeAdmin.pages.get(self.path.split("?")[0], "tcp.outbound_mesh_bravo.downstream_cx_total: 7\n")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):  # a Unix peer has no address to log
                pass

        super().__init__(str(path), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class DemoWorkload(http.server.ThreadingHTTPServer):
    """The demo server's answer on 127.0.0.1 (who answered, who called); /deny closes without an answer, like a
    sidecar whose policy refused the caller. Records the caller addresses it saw."""

    daemon_threads = True

    def __init__(self):
        self.callers = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                self.server.callers.append("%s:%d" % self.client_address)
                if self.path == "/deny":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                body = json.dumps({"host": "bravo", "peer": self.client_address[0]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def _run_remote(job):
    return subprocess.run([sys.executable, "-", job], input=demo_report.REMOTE, capture_output=True, text=True,
                          timeout=60, check=False)


def test_remote_calls_and_reads_the_admin_interface_on_its_unix_socket(tmp_path):
    """The script each host runs: its calls with their local addresses, then the admin socket (no TCP admin)."""
    admin = FakeAdmin(tmp_path / "admin.sock")
    workload = DemoWorkload()
    port = workload.server_address[1]
    calls = [{"to": "bravo", "url": f"http://127.0.0.1:{port}/"}, {"to": "bravo", "url": f"http://127.0.0.1:{port}/deny"},
             {"to": "nobody", "url": "http://127.0.0.1:1/"}]
    try:
        proc = _run_remote(demo_report.remote_job(calls, str(tmp_path / "admin.sock")))
    finally:
        for server in (admin, workload):
            server.shutdown()
            server.server_close()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    answered, denied, refused = out["calls"]
    assert answered["ok"] and answered["host"] == "bravo" and answered["peer"] == "127.0.0.1"
    # The local address of each connection is the one the server saw: the caller sidecar's log key.
    assert [answered["local"], denied["local"]] == workload.callers
    assert answered["remote"] == f"127.0.0.1:{port}"
    assert not denied["ok"] and "RemoteDisconnected" in denied["error"]
    assert not refused["ok"] and "ConnectionRefusedError" in refused["error"] and "local" not in refused
    assert out["ready"] == "LIVE" and "log" not in out
    assert out["stats"] == "tcp.outbound_mesh_bravo.downstream_cx_total: 7\n"
    assert demo_report.cluster_destinations(out["clusters"], "mesh_") == {"mesh_bravo": {f"10.0.0.12:{PORT}": 2}}
    assert admin.paths[0] == "/ready" and admin.paths[2] == "/clusters"
    assert admin.paths[1].startswith("/stats?filter=%5E%28tcp")
    job = json.loads(demo_report.remote_job([]))
    assert job["admin_socket"] == "/run/hostmesh-envoy/admin.sock" and job["log_since"] is None


def test_remote_reads_the_sidecars_journal_when_asked(tmp_path):
    """With log_since, the script runs journalctl for the Envoy unit from that second on (a stand-in on PATH)."""
    admin = FakeAdmin(tmp_path / "admin.sock")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    journalctl = bin_dir / "journalctl"
    journalctl.write_text('#!/bin/sh\necho "$@" > "%s"\necho \'{"direction": "inbound_8080_mtls"}\'\n' % (tmp_path / "argv"))
    journalctl.chmod(0o755)
    try:
        proc = subprocess.run([sys.executable, "-", demo_report.remote_job([], str(tmp_path / "admin.sock"), log_since=1700000000)],
                              input=demo_report.REMOTE, capture_output=True, text=True, timeout=60, check=False,
                              env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    finally:
        admin.shutdown()
        admin.server_close()
    assert proc.returncode == 0, proc.stderr
    assert demo_report.parse_access_log(json.loads(proc.stdout)["log"]) == [{"direction": "inbound_8080_mtls"}]
    assert (tmp_path / "argv").read_text().split() == [
        "--unit", "hostmesh-envoy.service", "--output", "cat", "--no-pager", "--since", "@1700000000"]


def test_parse_args_takes_the_demo_scripts_options():
    args = demo_report.parse_args(["--state", "s.json", "--port", "8080", "--excluded-port", "9999", "--calls-per-pair", "2",
                                   "--trust-domain", "demo.local", "--service", "hello=alpha,bravo", "--service-caller",
                                   "delta", "--policy", "delta=alpha,bravo"])
    assert (args.port, args.excluded_port, args.service_calls) == (8080, 9999, 2)
    assert demo_report.host_list("alpha,bravo,") == ["alpha", "bravo"]


def test_link_checkout_links_and_relinks(tmp_path):
    base = collections_path.link_checkout(tmp_path / "c", REPO_ROOT)
    link = base / "ansible_collections" / "hostmesh" / "sidecar"
    assert os.readlink(link) == str(REPO_ROOT)
    os.replace(link, link.with_name("old"))
    link.symlink_to(tmp_path)
    assert collections_path.link_checkout(base, REPO_ROOT) == base
    assert os.readlink(link) == str(REPO_ROOT)
    assert sorted(path.name for path in link.parent.iterdir()) == ["old", "sidecar"]
