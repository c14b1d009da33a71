# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of verify.yml's mesh check (playbooks/files/hostmesh_mesh_check.py): its pure part.

The script ships to hosts on its own, so it is imported by path. The access-log lines are the
shapes Envoy 1.40 wrote in tests/integration/test_mesh_verify.py (nulls for empty strings, "-" for
no response flags, spaces of a failure reason as underscores); the real connections, journal-less
log file and admin socket are exercised there.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import socket
import threading

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "playbooks" / "files" / "hostmesh_mesh_check.py"

BRAVO = "spiffe://mesh.test/host/bravo"
CHARLIE = "spiffe://mesh.test/host/charlie"
MODEL = {
    "peers": [
        {"name": "bravo", "identity": BRAVO, "address": "10.78.0.2", "ports": [9090, 8080]},
        {"name": "mailer", "identity": "spiffe://mesh.test/host/mailer", "address": "10.78.0.9", "ports": []},
    ],
    "services": [
        {"name": "echo", "fqdn": "echo.mesh", "vip": "240.240.7.7", "port": 8080,
         "members": [{"name": "bravo", "identity": BRAVO, "address": "10.78.0.2"},
                     {"name": "charlie", "identity": CHARLIE, "address": "10.78.0.3"}]},
    ],
}


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("hostmesh_mesh_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(**fields):
    """An access-log entry as Envoy writes one for a connection that got through."""
    base = {"bytes_received": 0, "bytes_sent": 0, "cluster": "mesh_bravo", "direction": "outbound_mesh_bravo",
            "downstream": "10.78.0.1:43198", "downstream_peer": None, "duration_ms": 500,
            "original_destination": "10.78.0.2:8080", "response_flags": "-", "start_time": "2026-01-01T00:00:00.000Z",
            "termination": None, "upstream": "10.78.0.2:8080", "upstream_failure": None, "upstream_peer": BRAVO}
    base.update(fields)
    return base


def test_plan_checks_each_peer_on_its_first_mesh_port_and_each_service(check):
    plan = check.plan_checks(MODEL)

    assert [(item["kind"], item["target"], item["address"], item["port"], item["direction"]) for item in plan] == [
        ("member", "bravo", "10.78.0.2", 8080, "outbound_mesh_bravo"),
        ("member", "mailer", "10.78.0.9", None, "outbound_mesh_mailer"),
        ("service", "echo", "240.240.7.7", 8080, "outbound_service_echo"),
    ]
    assert plan[0]["expected"] == {BRAVO: {"name": "bravo", "address": "10.78.0.2"}}
    assert sorted(plan[2]["expected"]) == [BRAVO, CHARLIE]


def test_endpoint_and_host_of_speak_envoys_address_format(check):
    assert check.endpoint("10.0.0.1", 80) == "10.0.0.1:80"
    assert check.endpoint("fd00::1", 80) == "[fd00::1]:80"
    assert check.host_of("[fd00::1]:80") == "fd00::1"
    assert check.host_of("10.0.0.1:80") == "10.0.0.1"
    assert check.same_address("fd00:0::0001", "fd00::1")
    assert not check.same_address("10.0.0.1", "10.0.0.2")


def test_parse_access_log_keeps_json_objects_only(check):
    text = "\n".join([
        "[2026-01-01 00:00:00.000][1][warning][main] some Envoy message",
        json.dumps(entry()),
        "{not json",
        "[1, 2]",
        "",
    ])
    assert check.parse_access_log(text) == [entry()]


def test_find_entry_is_the_connection_of_that_client_and_chain(check):
    plan = check.plan_checks(MODEL)
    ours = entry(downstream="10.78.0.1:50000")
    # Live traffic: the same chain from other client ports, another chain from our port.
    others = [entry(downstream="10.78.0.1:%d" % port) for port in range(49990, 50010) if port != 50000]
    others.append(entry(direction="outbound_service_echo", downstream="10.78.0.1:50000", original_destination="240.240.7.7:8080"))
    # Same client port, another destination (a reused port): not ours.
    others.append(entry(downstream="10.78.0.1:50000", original_destination="10.78.0.2:9090"))

    assert check.find_entry(others[:10] + [ours] + others[10:], plan[0], "10.78.0.1:50000") is ours
    assert check.find_entry(others, plan[0], "10.78.0.1:50000") is None


def judged(check, index, log_entry, connection=None):
    plan = check.plan_checks(MODEL)
    return check.judge(plan[index], connection or {"client": "10.78.0.1:43198", "held": 0.5}, log_entry)


def test_judge_a_verified_peer_and_a_service_member(check):
    result = judged(check, 0, entry())
    assert result["ok"] and result["final"]
    assert result["message"] == "member bravo (10.78.0.2:8080): %s verified at 10.78.0.2:8080" % BRAVO

    result = judged(check, 2, entry(direction="outbound_service_echo", cluster="service_echo",
                                    original_destination="240.240.7.7:8080"))
    assert result["ok"]
    assert result["message"] == "service echo (240.240.7.7:8080): %s verified at 10.78.0.2:8080 (member bravo)" % BRAVO


def test_judge_a_service_reached_after_a_dead_member(check):
    """The first attempt failed (its reason stays in the entry); the last one verified bravo."""
    result = judged(check, 2, entry(direction="outbound_service_echo", response_flags="UF",
                                    upstream_failure="delayed_connect_error:_No_route_to_host"))
    assert result["ok"], result


def test_judge_names_a_wrong_identity(check):
    # Another member's identity from bravo's address: the service would accept it, verify does not.
    result = judged(check, 2, entry(direction="outbound_service_echo", upstream_peer=CHARLIE))
    assert not result["ok"] and result["final"]
    assert result["message"] == ("service echo (240.240.7.7:8080): 10.78.0.2:8080 presented %s, the identity of "
                                 "charlie at 10.78.0.3" % CHARLIE)
    # An identity that is no member's of the service at all.
    result = judged(check, 0, entry(upstream_peer="spiffe://evil.test/host/bravo"))
    assert result["message"] == ("member bravo (10.78.0.2:8080): 10.78.0.2:8080 presented spiffe://evil.test/host/bravo, "
                                 "expected %s" % BRAVO)


def test_judge_names_the_identity_the_sidecar_refused(check):
    reason = ("TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:"
              "_SAN_matcher,_certificate_SANs_are_[%s]:TLS_error_end" % CHARLIE)
    result = judged(check, 0, entry(upstream_peer=None, upstream_failure=reason, response_flags="UF,URX"))
    assert not result["ok"] and result["final"]
    assert result["identity"] == CHARLIE
    assert result["message"] == ("member bravo (10.78.0.2:8080): 10.78.0.2:8080 presented %s, expected %s: "
                                 "the sidecar refused the handshake" % (CHARLIE, BRAVO))


def test_judge_failures_that_a_longer_try_may_change(check):
    unreachable = judged(check, 0, entry(upstream_peer=None, upstream_failure="delayed_connect_error:_No_route_to_host",
                                         response_flags="UF,URX"))
    assert not unreachable["ok"] and not unreachable["final"]
    assert unreachable["message"] == ("member bravo (10.78.0.2:8080): the mTLS connection to 10.78.0.2:8080 failed: "
                                      "delayed_connect_error:_No_route_to_host (flags UF,URX)")

    closed_early = judged(check, 0, entry(upstream_peer=None, upstream=None))
    assert not closed_early["final"]
    assert closed_early["message"] == "member bravo (10.78.0.2:8080): no mTLS connection to any upstream within 0.5 s"

    unlogged = judged(check, 0, None)
    assert not unlogged["ok"] and "logged no connection from 10.78.0.1:43198 on filter chain outbound_mesh_bravo" in unlogged["message"]

    refused_locally = judged(check, 0, None, {"error": "[Errno 111] Connection refused", "held": 0.5})
    assert refused_locally["message"] == ("member bravo (10.78.0.2:8080): could not connect through the local sidecar: "
                                          "[Errno 111] Connection refused")


def test_judge_a_log_format_without_the_keys(check):
    custom = {key: value for key, value in entry().items() if key != "upstream_failure"}
    result = judged(check, 0, custom)
    assert not result["ok"] and result["final"]
    assert "lacks the keys upstream_failure (envoy_sidecar_access_log_format)" in result["message"]


def test_judge_a_peer_without_mesh_ports(check):
    result = judged(check, 1, None, {})
    assert result["ok"] and result.get("skipped")
    assert "no mesh port" in result["message"]


def certs_answer(*sans, days="6"):
    """The admin /certs shape: one context per listener/cluster using the secret."""
    return {"certificates": [
        {"ca_cert": [{"path": "ca.pem", "days_until_expiration": "3650", "subject_alt_names": []}],
         "cert_chain": [{"path": "cert.pem", "days_until_expiration": days,
                         "subject_alt_names": [{"uri": san}]}]} for san in sans]}


def test_own_certificates(check):
    good = check.own_certificates(certs_answer(BRAVO, BRAVO, days="5"), BRAVO)
    assert good == {"identities": [BRAVO], "days_until_expiration": 5, "problems": []}

    wrong = check.own_certificates(certs_answer(CHARLIE), BRAVO)
    assert wrong["problems"] == ["the sidecar presents %s, expected exactly %s" % (CHARLIE, BRAVO)]

    # During a rotation two contexts may briefly differ: both are named.
    mixed = check.own_certificates(certs_answer(BRAVO, CHARLIE), BRAVO)
    assert mixed["problems"] == ["the sidecar presents %s, %s, expected exactly %s" % (BRAVO, CHARLIE, BRAVO)]

    assert check.own_certificates({"certificates": []}, BRAVO)["problems"] == ["the sidecar presents no certificate"]


def test_parse_stat(check):
    text = "server.days_until_first_cert_expiring: 6\nserver.days_until_first_cert_expiring_x: 9\n"
    assert check.parse_stat(text, "server.days_until_first_cert_expiring") == 6
    assert check.parse_stat(text, "server.uptime") is None


def test_connect_and_hold_reports_the_clients_address_as_the_server_sees_it(check):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen = []

    def accept():
        conn, peer = server.accept()
        seen.append("%s:%d" % peer)
        seen.append(conn.recv(1))  # b"" once the client closes, without having written anything
        conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        plan = {"address": "127.0.0.1", "port": server.getsockname()[1]}
        connection = check.connect_and_hold(plan, 0.1, 5)
        thread.join(5)
    finally:
        server.close()
    assert connection == {"client": seen[0], "held": 0.1}
    assert seen[1] == b""


def test_connect_and_hold_reports_a_refused_connection(check):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    connection = check.connect_and_hold({"address": "127.0.0.1", "port": port}, 0.1, 5)
    assert "refused" in connection["error"].lower()


def test_access_log_file_reads_only_what_was_written_after_it_started(check, tmp_path):
    path = tmp_path / "envoy.log"
    path.write_text(json.dumps(entry(downstream="10.78.0.1:1")) + "\n")
    log = check.AccessLog(path=str(path))
    with path.open("a") as stream:
        stream.write("[warning] not json\n" + json.dumps(entry(downstream="10.78.0.1:2")) + "\n")
    assert [item["downstream"] for item in log.read()] == ["10.78.0.1:2"]


def test_connect_all_gives_each_connection_its_own_client_port(check):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        plan = [{"address": "127.0.0.1", "port": server.getsockname()[1]}] * 5
        connections = check.connect_all(plan, 0.05, 5, parallel=2)
    finally:
        server.close()
    clients = [connection["client"] for connection in connections]
    assert len(set(clients)) == 5 and all(client.startswith("127.0.0.1:") for client in clients)


def test_an_unreadable_journal_is_an_error_not_a_missing_entry(check, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no journalctl to run
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    model = {"peers": [{"name": "bravo", "identity": BRAVO, "address": "127.0.0.1", "ports": [server.getsockname()[1]]}]}
    try:
        status = check.main(["--model-file", str(write_json(tmp_path / "model.json", model)), "--identity", BRAVO,
                             "--admin-socket", str(tmp_path / "admin.sock"), "--journal-unit", "hostmesh-envoy.service",
                             "--hold", "0.01"])
    finally:
        server.close()
    assert status == 2
    assert "cannot run journalctl" in capsys.readouterr().err


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_main_prints_one_verdict_per_check_and_the_sidecars_state(check, tmp_path, capsys):
    """No sidecar here: the connection is made but nothing logs it, and the admin socket is absent."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    model = {"peers": [{"name": "bravo", "identity": BRAVO, "address": "127.0.0.1", "ports": [port]}],
             "services": []}
    log = tmp_path / "envoy.log"
    log.write_text("")
    try:
        status = check.main(["--model-file", str(write_json(tmp_path / "model.json", model)), "--identity", BRAVO,
                             "--admin-socket", str(tmp_path / "admin.sock"), "--access-log-file", str(log),
                             "--hold", "0.01", "--retry-hold", "0.01", "--log-wait", "0.2"])
    finally:
        server.close()
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert [item["target"] for item in out["checks"]] == ["bravo"]
    assert "the sidecar logged no connection from 127.0.0.1:" in out["checks"][0]["message"]
    assert out["own"]["problems"][0].startswith("cannot ask the sidecar on %s" % (tmp_path / "admin.sock"))
