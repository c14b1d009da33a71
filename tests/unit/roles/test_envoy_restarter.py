# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the envoy_sidecar role's hot-restart supervisor (files/hostmesh_envoy_restarter.py).

The file is a standalone script installed on hosts, so it is imported by path. Its decisions are
pure functions; the Supervisor's bookkeeping is driven here with fake Envoy processes. Real Envoy
epochs, hot restarts and kill -9 are in tests/integration/test_envoy_config.py.
"""

import hashlib
import http.server
import importlib.util
import json
import pathlib
import signal
import socket
import socketserver
import threading

import pytest

RESTARTER_FILE = (pathlib.Path(__file__).resolve().parents[3]
                  / "roles" / "envoy_sidecar" / "files" / "hostmesh_envoy_restarter.py")


def _load():
    spec = importlib.util.spec_from_file_location("hostmesh_envoy_restarter", RESTARTER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


restarter = _load()

ENVOY = ["/usr/local/bin/envoy", "-c", "/etc/hostmesh/envoy/envoy.yaml", "--base-id", "1337"]


class FakeEnvoy:
    """Stands in for the Popen of one Envoy epoch."""

    def __init__(self, pid, code=None):
        self.pid = pid
        self.code = code
        self.signals = []

    def poll(self):
        return self.code

    def send_signal(self, signum):
        self.signals.append(signum)
        self.code = -signum

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout=None):
        return self.code

    def kill(self):
        self.code = -signal.SIGKILL


@pytest.fixture(autouse=True)
def _no_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


@pytest.fixture
def supervisor(tmp_path):
    return restarter.Supervisor(ENVOY, "/run/hostmesh-envoy/admin.sock", str(tmp_path / "restarter.json"),
                                ready_timeout=60.0, stop_timeout=1.0)


def saved(supervisor):
    return json.loads(pathlib.Path(supervisor.state_file).read_text())


# --- pure decisions ---------------------------------------------------------------------------

def test_envoy_command_after_the_separator():
    assert restarter.envoy_command(["--"] + ENVOY) == ENVOY
    assert restarter.envoy_command(ENVOY) == ENVOY
    with pytest.raises(ValueError, match="no Envoy command line"):
        restarter.envoy_command(["--"])
    with pytest.raises(ValueError, match="--restart-epoch is set by the supervisor"):
        restarter.envoy_command(["--"] + ENVOY + ["--restart-epoch", "3"])


def test_epoch_argv_appends_the_epoch():
    assert restarter.epoch_argv(ENVOY, 2) == ENVOY + ["--restart-epoch", "2"]


def test_config_path_of_each_spelling():
    assert restarter.config_path_of(ENVOY) == "/etc/hostmesh/envoy/envoy.yaml"
    assert restarter.config_path_of(["envoy", "--config-path", "/a.yaml"]) == "/a.yaml"
    assert restarter.config_path_of(["envoy", "--config-path=/b.yaml"]) == "/b.yaml"
    assert restarter.config_path_of(["envoy", "-c"]) is None


def test_server_epoch_live_only_when_live():
    live = {"state": "LIVE", "command_line_options": {"restart_epoch": 2}}
    assert restarter.server_epoch_live(live) == 2
    assert restarter.server_epoch_live(dict(live, state="PRE_INITIALIZING")) is None
    assert restarter.server_epoch_live({"state": "LIVE"}) is None
    assert restarter.server_epoch_live(None) is None


def test_state_record_names_the_serving_config():
    record = restarter.state_record(10, 1, None, 0, 1, {0: "old", 1: "new"}, {1: 101})
    assert record == {"pid": 10, "serving_epoch": 1, "serving_config_sha1": "new", "pending_epoch": None,
                      "last_failed_epoch": 0, "reloads": 1, "envoy_pids": {"1": 101}}
    assert restarter.state_record(10, None, 0, -1, 0, {0: "x"}, {0: 100})["serving_config_sha1"] is None


@pytest.mark.parametrize("epoch, serving, pending, outcome", [
    (1, 0, 1, "start_failed"),
    (0, None, 0, "start_failed"),
    (0, 0, None, "serving_died"),
    (0, 0, 1, "handed_over"),
    (0, 1, None, "handed_over"),
])
def test_exit_outcome(epoch, serving, pending, outcome):
    assert restarter.exit_outcome(epoch, serving, pending) == outcome


def test_signal_requests_in_order():
    received = bytes([signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM])
    assert restarter.signal_requests(received) == [("reload", signal.SIGHUP), ("stop", signal.SIGTERM)]
    assert restarter.signal_requests(bytes([signal.SIGINT])) == [("stop", signal.SIGINT)]
    assert restarter.signal_requests(b"") == []


def test_reload_target_needs_the_serving_supervisor():
    assert restarter.reload_target({"pid": 10, "serving_epoch": 3}, 10) == 4
    with pytest.raises(ValueError, match="no serving epoch"):
        restarter.reload_target({"pid": 10, "serving_epoch": None}, 10)
    with pytest.raises(ValueError, match="no serving epoch"):
        restarter.reload_target(None, 10)
    with pytest.raises(ValueError, match="belongs to pid 11, not 10"):
        restarter.reload_target({"pid": 11, "serving_epoch": 0}, 10)


@pytest.mark.parametrize("state, progress", [
    ({"pid": 10, "serving_epoch": 1, "last_failed_epoch": -1}, "live"),
    ({"pid": 10, "serving_epoch": 2}, "live"),
    ({"pid": 10, "serving_epoch": 0, "last_failed_epoch": 1}, "failed"),
    ({"pid": None, "serving_epoch": None}, "supervisor_gone"),
    ({}, "supervisor_gone"),
    ({"pid": 10, "serving_epoch": 0, "pending_epoch": 1, "last_failed_epoch": -1}, None),
])
def test_reload_progress(state, progress):
    assert restarter.reload_progress(state, 1, 10) == progress


def test_parser_keeps_the_command_lines():
    args = restarter.build_parser().parse_args(
        ["run", "--admin-socket", "/run/a.sock", "--state-file", "/run/x.json", "--join-cgroup", "/cg", "--"] + ENVOY)
    assert args.func is restarter.command_run
    assert args.admin_socket == "/run/a.sock"
    assert args.join_cgroup == "/cg" and args.ready_timeout == 60.0 and args.stop_timeout == 20.0
    assert restarter.envoy_command(args.envoy_argv) == ENVOY
    args = restarter.build_parser().parse_args(["reload", "--pid", "42", "--state-file", "/run/x.json"])
    assert (args.func, args.pid, args.timeout) == (restarter.command_reload, 42, 90.0)
    args = restarter.build_parser().parse_args(["validate", "--envoy", "/bin/envoy", "/tmp/cfg"])
    assert (args.func, args.envoy, args.config) == (restarter.command_validate, "/bin/envoy", "/tmp/cfg")
    with pytest.raises(SystemExit):
        restarter.build_parser().parse_args([])


def test_run_refuses_a_bad_envoy_command(tmp_path):
    assert restarter.main(["run", "--admin-socket", str(tmp_path / "a.sock"), "--state-file", str(tmp_path / "s"), "--"]) == 2
    assert not (tmp_path / "s").exists()


def test_reload_without_a_serving_supervisor_fails_before_signalling(tmp_path):
    state_file = tmp_path / "restarter.json"
    assert restarter.main(["reload", "--pid", "1", "--state-file", str(state_file)]) == 1
    state_file.write_text(json.dumps({"pid": 999999999, "serving_epoch": 0}))
    # Another supervisor's state: pid 1 is never signalled.
    assert restarter.main(["reload", "--pid", "1", "--state-file", str(state_file)]) == 1


# --- the admin interface on a Unix socket ----------------------------------------------------------

class FakeAdmin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An HTTP server on a Unix socket answering every GET with ``answer`` (status, body); records the paths."""

    daemon_threads = True

    def __init__(self, path, answer):
        self.answer = answer
        self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                server = self.server
                server.paths.append(self.path)
                status, body = server.answer
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # a Unix peer has no address to log
                pass

        super().__init__(str(path), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def fake_admin(tmp_path):
    servers = []

    def make(answer):
        server = FakeAdmin(tmp_path / "admin.sock", answer)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_admin_server_info_speaks_http_over_the_unix_socket(fake_admin, tmp_path):
    info = {"state": "LIVE", "command_line_options": {"restart_epoch": 3}}
    admin = fake_admin((200, json.dumps(info).encode()))
    assert restarter.admin_server_info(str(tmp_path / "admin.sock")) == info
    assert admin.paths == ["/server_info"]
    assert restarter.admin_get(str(tmp_path / "admin.sock"), "/ready") == (200, json.dumps(info).encode())


@pytest.mark.parametrize("answer", [(503, b'{"state": "LIVE"}'), (200, b"not json"), (200, b"")])
def test_admin_server_info_is_none_unless_a_json_200(fake_admin, tmp_path, answer):
    fake_admin(answer)
    assert restarter.admin_server_info(str(tmp_path / "admin.sock")) is None


def test_admin_server_info_is_none_without_a_listener(tmp_path):
    assert restarter.admin_server_info(str(tmp_path / "missing.sock")) is None
    # A socket file nobody listens on any more (an Envoy that exited): connection refused.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    assert restarter.admin_server_info(str(tmp_path / "stale.sock")) is None


# --- state file ---------------------------------------------------------------------------------

def test_state_file_is_replaced_whole(tmp_path):
    path = tmp_path / "restarter.json"
    restarter.write_state(str(path), {"serving_epoch": 0})
    restarter.write_state(str(path), {"serving_epoch": 1})
    assert restarter.read_state(str(path)) == {"serving_epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["restarter.json"]
    path.write_text("{half")
    assert restarter.read_state(str(path)) is None
    assert restarter.read_state(str(tmp_path / "missing")) is None


def test_file_sha1_is_ansibles_checksum(tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_bytes(b"admin: {}\n")
    assert restarter.file_sha1(str(path)) == hashlib.sha1(b"admin: {}\n").hexdigest()
    assert restarter.file_sha1(str(tmp_path / "missing")) is None
    assert restarter.file_sha1(None) is None


# --- the supervisor's bookkeeping, with fake Envoy processes -----------------------------------

def serve(supervisor, epoch, pid, sha1="a" * 40):
    supervisor.children[epoch] = FakeEnvoy(pid)
    supervisor.config_sha1[epoch] = sha1
    supervisor.serving = epoch


def test_new_epoch_goes_live(supervisor, monkeypatch):
    serve(supervisor, 0, 100)
    supervisor.children[1] = FakeEnvoy(101)
    supervisor.config_sha1[1] = "b" * 40
    supervisor.pending = 1
    supervisor.pending_deadline = float("inf")
    monkeypatch.setattr(restarter, "admin_server_info",
                        lambda address: {"state": "LIVE", "command_line_options": {"restart_epoch": 1}})
    supervisor.check_pending()
    assert (supervisor.serving, supervisor.pending) == (1, None)
    assert saved(supervisor)["serving_config_sha1"] == "b" * 40


def test_failed_start_keeps_the_serving_epoch(supervisor):
    serve(supervisor, 0, 100)
    supervisor.children[1] = FakeEnvoy(101, code=1)
    supervisor.pending = 1
    supervisor.reload_queued = True
    supervisor.reap()
    assert (supervisor.serving, supervisor.pending, supervisor.last_failed_epoch) == (0, None, 1)
    assert not supervisor.reload_queued
    assert saved(supervisor)["last_failed_epoch"] == 1 and saved(supervisor)["serving_epoch"] == 0


def test_drained_epoch_leaves_quietly(supervisor):
    serve(supervisor, 1, 101)
    supervisor.children[0] = FakeEnvoy(100, code=0)
    supervisor.reap()
    assert supervisor.serving == 1 and list(supervisor.children) == [1]
    assert saved(supervisor)["envoy_pids"] == {"1": 101}


def test_dead_serving_epoch_stops_the_supervisor(supervisor):
    serve(supervisor, 0, 100)
    supervisor.children[0].code = -signal.SIGKILL
    with pytest.raises(SystemExit) as stopped:
        supervisor.reap()
    assert stopped.value.code == 1
    assert saved(supervisor)["serving_epoch"] is None


def test_first_epoch_not_live_in_time_stops_the_supervisor(supervisor, monkeypatch):
    monkeypatch.setattr(restarter, "admin_server_info", lambda address: None)
    supervisor.children[0] = FakeEnvoy(100)
    supervisor.pending = 0
    supervisor.pending_deadline = 0.0
    with pytest.raises(SystemExit) as stopped:
        supervisor.check_pending()
    assert stopped.value.code == 1
    assert supervisor.children == {} and saved(supervisor)["last_failed_epoch"] == 0
    assert saved(supervisor)["pending_epoch"] is None


def test_shutdown_stops_every_epoch(supervisor):
    serve(supervisor, 0, 100)
    draining = supervisor.children[0]
    serve(supervisor, 1, 101)
    serving = supervisor.children[1]
    assert supervisor.shutdown(signal.SIGTERM) == 0
    assert draining.signals == [signal.SIGTERM] and serving.signals == [signal.SIGTERM]
    assert saved(supervisor)["serving_epoch"] is None and saved(supervisor)["envoy_pids"] == {}


def test_reload_while_starting_is_queued(supervisor):
    serve(supervisor, 0, 100)
    supervisor.pending = 1
    supervisor.request_reload()
    assert supervisor.reload_queued and supervisor.reloads == 0


# --- file-based LDS/CDS: validation bootstrap and served versions --------------------------------

def test_xds_resources_drop_the_type_urls_and_refuse_what_is_no_discovery_response(tmp_path):
    good = tmp_path / "lds.json"
    good.write_text(json.dumps({"version_info": "v1", "resources": [
        {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "inbound"}]}))
    assert restarter.xds_resources(str(good)) == [{"name": "inbound"}]
    assert restarter.xds_validation_bootstrap([{"name": "l"}], [{"name": "c"}])["static_resources"] == {
        "listeners": [{"name": "l"}], "clusters": [{"name": "c"}]}
    for text in ('{"resources": {}}', '[]', '{"version_info": "v1"}', '{"resources": ["x"]}'):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError):
            restarter.xds_resources(str(bad))


def test_xds_serving_lists_each_type_envoy_does_not_serve_yet():
    stats = restarter.parse_xds_stats(
        'listener_manager.lds.version_text: "abc"\n'
        'listener_manager.lds.update_rejected: 2\n'
        'cluster_manager.cds.version_text: "def"\n')
    assert stats["listener_manager.lds.version_text"] == "abc"
    assert stats["listener_manager.lds.update_rejected"] == "2"
    assert restarter.xds_serving(stats, {"lds": "abc", "cds": "def"}) == []
    assert restarter.xds_serving(stats, {"lds": "new", "cds": "def"}) == [("lds", "abc", "new")]
    assert restarter.xds_serving({}, {"cds": "def"}) == [("cds", "", "def")]


def test_validate_xds_reports_a_file_that_is_no_discovery_response(tmp_path, capsys):
    bad = tmp_path / "lds.json"
    bad.write_text("not json")
    assert restarter.main(["validate-xds", "--envoy", "/nonexistent/envoy", "--lds", str(bad)]) == 1
    assert "hostmesh:" in capsys.readouterr().err


def test_pem_serial_reads_the_serial_as_envoy_lists_it(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    import datetime
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    now = datetime.datetime.now(datetime.timezone.utc)
    for serial in (0x0A1B2C, 0x43B10AE4BEF4D9049D241987DFB260AF230AA1D0):
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(serial).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        path = tmp_path / "cert.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        assert restarter.pem_serial(str(path)) == "%x" % serial
    path.write_text("no certificate")
    with pytest.raises(ValueError):
        restarter.pem_serial(str(path))
    certs = {"certificates": [{"cert_chain": [{"serial_number": "0a1b2c"}], "ca_cert": [{"serial_number": "ff"}]},
                              {"cert_chain": [{"serial_number": "0A1B2C"}]}]}
    assert restarter.served_certificate_serials(json.dumps(certs)) == {"a1b2c"}
