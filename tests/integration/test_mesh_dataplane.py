# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The mesh data plane with the real Envoy: mTLS, identities, policy, services, file-based xDS.

Two network namespaces play the members alpha and bravo (test_envoy_config's hosts A and B:
redirect rules of the design, the role's supervisor running Envoy as the proxy uid). The
envoy_sidecar role renders both from one inventory in which charlie is a third member that
never runs (a dead member of a service). The certificates are the shapes mesh_identity issues
(mesh_pki), so these tests are about what Envoy does with them:

- between members everything goes over TLS 1.3 with the mesh ALPN (a capture on the wire),
  each end verifying the other's SPIFFE ID; plaintext is refused on a strict port and accepted
  on a permissive one; no certificate, a rogue CA's, another trust domain's, or a member the
  port's policy leaves out are all refused, and counted;
- a server-first port does not wait behind the TLS inspector;
- a service VIP reaches a live member and skips the dead one;
- a certificate rotation is taken up without a restart; a sidecar presenting another host's
  identity is refused by its caller;
- policy and membership changes reach the running Envoy through LDS/CDS without a restart, and
  an update Envoy refuses fails the play with Envoy's reason and leaves the old one serving.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

import harness
import mesh_pki
from test_envoy_config import ENVOY, PROXY_GID, PROXY_UID, ROLE, Sidecar, admin_socket_of, nat_rules, wait_listening

TRUST_DOMAIN = "mesh.test"
ADDR = {"alpha": "10.78.0.1", "bravo": "10.78.0.2", "charlie": "10.78.0.3"}
SERVICE_VIP = "240.240.7.7"
MARKER = b"HOSTMESH-SECRET-PAYLOAD-7c1f"
# bravo's workload ports: 8080 permissive (default), 9090 strict, 9091 only bravo may call,
# 2525 server-first (an SMTP-like banner): no TLS inspector there.
BRAVO_PORTS = [{"port": 8080}, {"port": 9090, "mesh_mode": "strict"}, {"port": 9091, "allow": ["bravo"]},
               {"port": 2525, "server_first": True}]

ECHO = r'''
import socketserver, sys, threading
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        if self.server.server_address[1] == 2525:
            self.wfile.write(b"220 banner\n"); self.wfile.flush()
        line = self.rfile.readline()
        self.wfile.write(b"%s:%d " % (sys.argv[1].encode(), self.server.server_address[1]) + line)
        self.wfile.flush()
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
servers = [Server(("0.0.0.0", int(port)), Echo) for port in sys.argv[2:]]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
'''

# One request line per connection; prints {"ok": n, "failed": n, "replies": {...}, "errors": [...]}.
CLIENT = r'''
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = sys.argv[4].encode()
ok, failed, replies, errors = 0, 0, {}, []
for index in range(count):
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(payload + b" %d\n" % index)
            reply = conn.makefile("rb").readline().decode()
        if not reply.strip().endswith("%d" % index):
            raise ValueError("unexpected reply %r" % reply)
        who = reply.split()[0]
        replies[who] = replies.get(who, 0) + 1
        ok += 1
    except (OSError, ValueError) as exc:
        failed += 1
        errors.append("%d: %s" % (index, exc))
print(json.dumps({"ok": ok, "failed": failed, "replies": replies, "errors": errors[:10]}))
'''

# A TLS 1.3 client with the mesh ALPN, optionally presenting a certificate: what an attacker (or
# a misconfigured peer) can do when talking to a sidecar directly. Run as the proxy uid, which
# the caller's own redirect lets through.
TLS_CLIENT = r'''
import json, socket, ssl, sys
host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.minimum_version = ssl.TLSVersion.TLSv1_3
context.set_alpn_protocols(["hostmesh-mtls"])
if cert:
    context.load_cert_chain(cert, key)
try:
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw) as conn:
            conn.sendall(b"tls-probe 0\n")
            reply = conn.makefile("rb").readline().decode()
    print(json.dumps({"reply": reply, "error": None}))
except (OSError, ssl.SSLError) as exc:
    print(json.dumps({"reply": "", "error": str(exc)}))
'''

# Every byte that crosses an interface for a while (AF_PACKET: no capture tool needed).
SNIFFER = r'''
import socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((sys.argv[1], 0))
sock.settimeout(0.2)
deadline = time.monotonic() + float(sys.argv[3])
with open(sys.argv[2], "wb") as out:
    print("ready", flush=True)
    while time.monotonic() < deadline:
        try:
            out.write(sock.recv(65535))
        except socket.timeout:
            pass
'''


def inventory(workdir, roots, admin_sockets, extra_hosts=(), bravo_ports=None):
    """The mesh's registry: alpha and bravo (run here), charlie (never runs), and extra_hosts."""
    hosts = {}
    for name in ["alpha", "bravo", "charlie"] + list(extra_hosts):
        root = roots.get(name, workdir / ("root-" + name))
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "/usr/bin/python3",
            "hostmesh_mesh_address": ADDR.get(name, "10.78.0.%d" % (10 + len(hosts))),
            "envoy_sidecar_config_dir": str(root / "etc" / "hostmesh" / "envoy"),
            "envoy_sidecar_xds_dir": str(root / "etc" / "hostmesh" / "xds"),
            "envoy_sidecar_libexec_dir": str(root / "usr" / "local" / "libexec" / "hostmesh"),
            "envoy_sidecar_systemd_unit_dir": str(root / "etc" / "systemd" / "system"),
            "envoy_sidecar_hosts_file": str(root / "etc" / "hosts"),
            "envoy_sidecar_admin_socket": str(admin_sockets.get(name, root / "admin.sock")),
            "hostmesh_workload_ports": [{"port": 8080}],
        }
    hosts["bravo"]["hostmesh_workload_ports"] = bravo_ports or BRAVO_PORTS
    # A group of their own: the harness's inventory adds localhost, which is no member.
    data = {"all": {"children": {"mesh": {"hosts": hosts, "vars": {
        "hostmesh_mesh": True,
        "hostmesh_trust_domain": TRUST_DOMAIN,
        "hostmesh_mesh_services": [{"name": "echo", "port": 8080, "hosts": ["bravo", "charlie"], "vip": SERVICE_VIP}],
        "envoy_sidecar_install_method": "path",
        "envoy_sidecar_binary_path": str(ENVOY),
        "envoy_sidecar_version": "1.40.0",
        "envoy_sidecar_user": "nobody",
        "envoy_sidecar_group": "nogroup",
        "envoy_sidecar_manage_service": False,
        "envoy_sidecar_bypass": "uid",
        "envoy_sidecar_prometheus_port": 15090,
    }}}}}
    path = workdir / "mesh-inventory.json"
    path.write_text(json.dumps(data))
    return path


def render(inventory_path, limit="alpha,bravo", **extra_vars):
    play = [{"hosts": limit, "gather_facts": False, "roles": [{"role": ROLE}]}]
    return harness.run_playbook(play, extra_args=("-i", str(inventory_path)), extra_vars=extra_vars or None,
                                timeout=300)


class MeshHosts:
    """alpha and bravo: namespaces, identities, rules, sidecars; bravo runs the echo workload."""

    def __init__(self, netns_factory, workdir):
        self.workdir = workdir
        self.ca = mesh_pki.CA(TRUST_DOMAIN)
        self.roots = {name: workdir / ("root-" + name) for name in ("alpha", "bravo")}
        self.ns = {"alpha": netns_factory(), "bravo": netns_factory()}
        self.ns["alpha"].add_veth_peer(self.ns["bravo"], ADDR["alpha"] + "/24", ADDR["bravo"] + "/24")
        # Like any destination, the VIP range needs a route (on a real host, the default route).
        for name, peer in (("alpha", "bravo"), ("bravo", "alpha")):
            self.ns[name].run(["ip", "route", "add", "240.240.0.0/16", "via", ADDR[peer]])
        self.identities = {}
        for name, root in self.roots.items():
            (root / "etc" / "systemd" / "system").mkdir(parents=True)
            (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
            identity = mesh_pki.HostIdentity(root, PROXY_UID, PROXY_GID)
            identity.install(*self.ca.issue(mesh_pki.spiffe_id(TRUST_DOMAIN, name)), self.ca.pem)
            self.identities[name] = identity
        self.admin_sockets = {name: admin_socket_of(workdir, namespace) for name, namespace in self.ns.items()}
        self.inventory = inventory(workdir, self.roots, self.admin_sockets)
        self.sidecars = {}
        self.workload = None

    def start(self):
        result = render(self.inventory)
        assert result.rc == 0, result.output
        for index, (name, namespace) in enumerate(self.ns.items()):
            namespace.run(["iptables-restore", "--noflush"], input=nat_rules("uid"))
            self.sidecars[name] = Sidecar(namespace, self.roots[name], self.workdir, "uid", base_id=230 + index)
        self.workload = self.ns["bravo"].popen(["python3", "-c", ECHO, "bravo", "8080", "9090", "9091", "2525"])
        for port in (8080, 9090, 9091, 2525):
            wait_listening(self.ns["bravo"], port)
        self.wait_warm("alpha")
        self.wait_warm("bravo")

    def wait_warm(self, name, timeout=20):
        """Until the LDS listeners are active (they warm until their SDS secrets are read)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.sidecars[name].stats()
            if stats.get("listener_manager.total_listeners_active", 0) >= 2 and not stats.get("listener_manager.total_listeners_warming"):
                return stats
            time.sleep(0.2)
        raise AssertionError("%s's listeners never became active: %s" % (name, self.sidecars[name].admin("/listeners")))

    def call(self, target, port, count=1, caller="alpha", payload=b"hello"):
        proc = self.ns[caller].run(["python3", "-c", CLIENT, target, str(port), str(count), payload.decode()], timeout=300)
        return json.loads(proc.stdout)

    def tls_probe(self, port, cert_pem=None, key_pem=None):
        """A raw TLS client from alpha's namespace straight at bravo's sidecar (as the proxy uid)."""
        cert_path = key_path = ""
        if cert_pem:
            probe_dir = pathlib.Path(tempfile.mkdtemp(dir=self.workdir))
            cert_path, key_path = probe_dir / "cert.pem", probe_dir / "key.pem"
            cert_path.write_bytes(cert_pem)
            key_path.write_bytes(key_pem)
            for path in (probe_dir, cert_path, key_path):
                os.chown(path, PROXY_UID, PROXY_GID)
        argv = ["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_GID), "--clear-groups",
                "/usr/bin/python3", "-c", TLS_CLIENT, ADDR["bravo"], str(port), str(cert_path), str(key_path)]
        return json.loads(self.ns["alpha"].run(argv).stdout)

    def journal(self, name):
        return self.sidecars[name].log_path.read_text(errors="replace")

    def access_log(self, name):
        entries = []
        for line in self.journal(name).splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    pass
        return entries

    def close(self):
        for sidecar in self.sidecars.values():
            sidecar.stop()
        if self.workload and self.workload.poll() is None:
            self.workload.kill()
            self.workload.wait()
        for namespace in self.ns.values():
            namespace.close()


@pytest.fixture
def workdir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="hm-mesh-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mesh(netns_factory, workdir):
    hosts = MeshHosts(netns_factory, workdir)
    try:
        hosts.start()
        yield hosts
    finally:
        hosts.close()


def delta(after, before, name):
    return after.get(name, 0) - before.get(name, 0)


# --- tests --------------------------------------------------------------------------------------

def test_members_talk_mtls_with_verified_identities(mesh):
    """alpha -> bravo:8080 goes over TLS 1.3 with the mesh ALPN, never in plaintext on the wire."""
    veth = mesh.ns["bravo"].run(["ip", "-o", "link", "show", "type", "veth"]).stdout.split(":")[1].strip().split("@")[0]
    capture = mesh.workdir / "wire.bin"
    sniffer = mesh.ns["bravo"].popen(["python3", "-c", SNIFFER, veth, str(capture), "6"],
                                     stdout=subprocess.PIPE, text=True)
    assert sniffer.stdout.readline().strip() == "ready"
    before_a, before_b = mesh.sidecars["alpha"].stats(), mesh.sidecars["bravo"].stats()

    result = mesh.call(ADDR["bravo"], 8080, count=20, payload=MARKER)
    sniffer.wait(timeout=30)

    assert result["failed"] == 0 and result["replies"] == {"bravo:8080": 20}, result
    wire = capture.read_bytes()
    assert len(wire) > 20 * 200, "the capture saw almost nothing: %d bytes" % len(wire)
    assert MARKER not in wire, "the payload crossed the wire in plaintext"
    assert b"hostmesh-mtls" in wire, "no ClientHello with the mesh ALPN on the wire"
    after_a, after_b = mesh.sidecars["alpha"].stats(), mesh.sidecars["bravo"].stats()
    assert delta(after_a, before_a, "tcp.outbound_mesh_bravo.downstream_cx_total") == 20
    assert delta(after_a, before_a, "cluster.mesh_bravo.ssl.handshake") == 20
    assert delta(after_a, before_a, "cluster.mesh_bravo.ssl.versions.TLSv1.3") == 20
    assert delta(after_b, before_b, "tcp.inbound_8080_mtls.downstream_cx_total") == 20
    assert delta(after_b, before_b, "inbound_8080.rbac.allowed") == 20
    assert delta(after_b, before_b, "tcp.inbound_8080.downstream_cx_total") == 0
    # The access logs name the peer each side verified, and the original destination.
    # Access log lines reach the journal within Envoy's flush interval (1 s, the unit's option).
    deadline = time.monotonic() + 10
    while True:
        sent = [e for e in mesh.access_log("alpha") if e.get("direction") == "outbound_mesh_bravo"]
        received = [e for e in mesh.access_log("bravo") if e.get("direction") == "inbound_8080_mtls"]
        if (len(sent), len(received)) == (20, 20) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(sent) == 20 and len(received) == 20, (mesh.journal("alpha")[-2000:], mesh.journal("bravo")[-2000:])
    assert {e["upstream_peer"] for e in sent} == {mesh_pki.spiffe_id(TRUST_DOMAIN, "bravo")}
    assert {e["downstream_peer"] for e in received} == {mesh_pki.spiffe_id(TRUST_DOMAIN, "alpha")}
    assert {e["original_destination"] for e in sent} == {"%s:8080" % ADDR["bravo"]}


def test_plaintext_strict_and_permissive(mesh):
    """A non-mesh client (the proxy uid: alpha's redirect lets it through) in plaintext."""
    as_proxy = ["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_GID), "--clear-groups"]
    before = mesh.sidecars["bravo"].stats()

    permissive = json.loads(mesh.ns["alpha"].run(as_proxy + ["/usr/bin/python3", "-c", CLIENT, ADDR["bravo"], "8080", "2", "plain"]).stdout)
    strict = json.loads(mesh.ns["alpha"].run(as_proxy + ["/usr/bin/python3", "-c", CLIENT, ADDR["bravo"], "9090", "2", "plain"]).stdout)

    assert permissive["ok"] == 2, permissive
    assert strict["ok"] == 0 and strict["failed"] == 2, strict
    after = mesh.sidecars["bravo"].stats()
    assert delta(after, before, "tcp.inbound_8080.downstream_cx_total") == 2
    assert delta(after, before, "tcp.inbound_9090_refused.downstream_cx_no_route") == 2
    # A member still reaches the strict port, over mTLS.
    assert mesh.call(ADDR["bravo"], 9090, count=2)["ok"] == 2


@pytest.mark.parametrize("who", ["no certificate", "rogue CA", "other trust domain"])
def test_untrusted_clients_are_refused(mesh, who):
    rogue = mesh_pki.CA(TRUST_DOMAIN, name="rogue")
    cert, key = {
        "no certificate": (None, None),
        "rogue CA": rogue.issue(mesh_pki.spiffe_id(TRUST_DOMAIN, "alpha")),
        # Signed by the mesh CA itself: its name constraint makes the certificate invalid.
        "other trust domain": mesh.ca.issue(mesh_pki.spiffe_id("evil.test", "alpha")),
    }[who]
    before = mesh.sidecars["bravo"].stats()

    result = mesh.tls_probe(8080, cert, key)

    assert result["reply"] == "", result
    after = mesh.sidecars["bravo"].stats()
    failed = {name: delta(after, before, name) for name in after if ".ssl.fail_verify" in name or ".ssl.connection_error" in name}
    expected = "listener.inbound.ssl.%s" % ("fail_verify_no_cert" if who == "no certificate" else "fail_verify_error")
    assert failed.get(expected) == 1, failed
    # No byte of the client's reached the workload, and the policy never saw an identity.
    assert delta(after, before, "inbound_8080.rbac.allowed") == 0
    assert delta(after, before, "tcp.inbound_8080_mtls.upstream_flush_total") == 0
    assert delta(after, before, "cluster.inbound_passthrough.upstream_cx_tx_bytes_total") == 0


def test_policy_denies_a_member_and_counts_it(mesh):
    before = mesh.sidecars["bravo"].stats()

    result = mesh.call(ADDR["bravo"], 9091, count=3)

    assert result["ok"] == 0 and result["failed"] == 3, result
    after = mesh.sidecars["bravo"].stats()
    assert delta(after, before, "inbound_9091.rbac.denied") == 3
    assert delta(after, before, "inbound_9091.rbac.allowed") == 0
    # The handshake itself succeeded: it is the policy, not the identity, that refused alpha.
    assert delta(after, before, "listener.inbound.ssl.handshake") >= 3


def test_server_first_port_does_not_wait_for_the_inspector(mesh):
    started = time.monotonic()
    banner = mesh.ns["alpha"].run(["python3", "-c",
                                   "import socket,sys; c=socket.create_connection((sys.argv[1],2525),timeout=5);"
                                   "print(c.makefile('rb').readline().decode().strip())", ADDR["bravo"]]).stdout.strip()
    assert banner == "220 banner"
    assert time.monotonic() - started < 2.0


def test_service_vip_reaches_a_live_member_and_skips_a_dead_one(mesh):
    """echo = bravo (up) and charlie (never up): every call lands on bravo, over mTLS."""
    before = mesh.sidecars["alpha"].stats()

    result = mesh.call(SERVICE_VIP, 8080, count=20)

    assert result["failed"] == 0 and result["replies"] == {"bravo:8080": 20}, result
    after = mesh.sidecars["alpha"].stats()
    assert delta(after, before, "tcp.outbound_service_echo.downstream_cx_total") == 20
    assert delta(after, before, "cluster.service_echo.ssl.handshake") == 20
    assert delta(after, before, "cluster.service_echo.upstream_cx_connect_fail") >= 1
    assert after.get("cluster.service_echo.outlier_detection.ejections_total", 0) >= 1


def test_rotation_without_restart_and_impersonation_refused(mesh):
    bravo = mesh.sidecars["bravo"]
    updates = "listener.inbound.server_ssl_socket_factory.ssl_context_update_by_sds"
    epoch = bravo.stats()["server.hot_restart_epoch"]
    before = bravo.stats()[updates]

    # A renewal: a new key and certificate for the same identity, swapped in by a rename.
    mesh.identities["bravo"].install(*mesh.ca.issue(mesh_pki.spiffe_id(TRUST_DOMAIN, "bravo")), mesh.ca.pem)
    deadline = time.monotonic() + 10
    while bravo.stats()[updates] <= before:
        assert time.monotonic() < deadline, bravo.admin("/certs")
        time.sleep(0.2)
    assert mesh.call(ADDR["bravo"], 8080, count=5)["ok"] == 5

    # bravo now presents charlie's identity: alpha, expecting bravo, refuses it.
    mesh.identities["bravo"].install(*mesh.ca.issue(mesh_pki.spiffe_id(TRUST_DOMAIN, "charlie")), mesh.ca.pem)
    time.sleep(1.5)
    before = mesh.sidecars["alpha"].stats()
    result = mesh.call(ADDR["bravo"], 8080, count=3)
    after = mesh.sidecars["alpha"].stats()
    assert result["ok"] == 0, result
    assert delta(after, before, "cluster.mesh_bravo.ssl.fail_verify_san") >= 3
    assert bravo.stats()["server.hot_restart_epoch"] == epoch


def test_policy_and_membership_changes_apply_without_restart(mesh):
    alpha, bravo = mesh.sidecars["alpha"], mesh.sidecars["bravo"]
    before_a, before_b = alpha.stats(), bravo.stats()
    assert mesh.call(ADDR["bravo"], 9091)["ok"] == 0

    # Policy: alpha may now call 9091. Membership: delta joins the inventory.
    ports = [dict(port) for port in BRAVO_PORTS]
    ports[2]["allow"] = ["alpha", "bravo"]
    changed = inventory(mesh.workdir, mesh.roots, mesh.admin_sockets, extra_hosts=["delta"], bravo_ports=ports)
    result = render(changed)
    assert result.rc == 0, result.output

    deadline = time.monotonic() + 15
    while mesh.call(ADDR["bravo"], 9091)["ok"] != 1:
        assert time.monotonic() < deadline, bravo.admin("/listeners")
        time.sleep(0.3)
    after_a, after_b = alpha.stats(), bravo.stats()
    assert delta(after_b, before_b, "listener_manager.lds.update_success") >= 1
    assert delta(after_b, before_b, "listener_manager.listener_in_place_updated") >= 1
    assert delta(after_a, before_a, "cluster_manager.cds.update_success") >= 1
    assert "mesh_delta::" in alpha.admin("/clusters")
    assert after_a["server.hot_restart_epoch"] == 0 and after_b["server.hot_restart_epoch"] == 0

    # An update Envoy refuses (two filter chains for one port): the play fails with Envoy's reason,
    # the file stays as it was, and traffic keeps flowing.
    lds = (mesh.roots["bravo"] / "etc" / "hostmesh" / "xds" / "lds.json")
    served = lds.read_bytes()
    bad = render(changed, limit="bravo", envoy_sidecar_inbound_extra_filter_chains=[
        {"name": "broken", "filter_chain_match": {"destination_port": 8080}, "filters": [
            {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "broken", "cluster": "inbound_passthrough"}}]}])
    assert bad.rc != 0
    assert "lds.json" in bad.stdout and "has the same matching rules defined as" in bad.stdout, bad.stdout
    assert lds.read_bytes() == served
    assert mesh.call(ADDR["bravo"], 8080, count=3)["ok"] == 3


def test_xds_status_reports_an_update_the_running_envoy_refused(mesh):
    """A file Envoy validates but the running server refuses: the old version serves, xds-status says why."""
    bravo = mesh.sidecars["bravo"]
    xds = mesh.roots["bravo"] / "etc" / "hostmesh" / "xds"
    restarter = mesh.roots["bravo"] / "usr" / "local" / "libexec" / "hostmesh" / "hostmesh_envoy_restarter.py"
    status = ["/usr/bin/python3", str(restarter), "xds-status", "--admin-socket", str(mesh.admin_sockets["bravo"]),
              "--lds", str(xds / "lds.json"), "--cds", str(xds / "cds.json"), "--timeout", "3"]
    assert harness._run(status, check=False).returncode == 0

    # The inbound listener moved to a port another process holds: Envoy's validation (which binds
    # nothing) accepts it, the running server cannot bind it and refuses the update.
    holder = mesh.ns["bravo"].popen(["python3", "-c", "import socket,time; s=socket.socket(); "
                                     "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                     "s.bind(('0.0.0.0', 15099)); s.listen(); time.sleep(600)"])
    wait_listening(mesh.ns["bravo"], 15099)
    served = json.loads((xds / "lds.json").read_text())
    moved = json.loads(json.dumps(served))
    inbound = [listener for listener in moved["resources"] if listener["name"] == "inbound"][0]
    inbound["address"]["socket_address"]["port_value"] = 15099
    moved["version_info"] = "moved-inbound"
    staging = xds / ".lds.json.new"
    staging.write_text(json.dumps(moved))
    os.replace(staging, xds / "lds.json")
    validate = harness._run(["/usr/bin/python3", str(restarter), "validate-xds", "--envoy", str(ENVOY),
                             "--lds", str(xds / "lds.json")], check=False)
    refused = harness._run(status, check=False)

    assert validate.returncode == 0, validate.stderr
    assert refused.returncode == 1
    assert "moved-inbound" in refused.stderr and served["version_info"] in refused.stderr, refused.stderr
    assert "update_rejected=1" in refused.stderr, refused.stderr
    # The old listeners still serve.
    assert mesh.call(ADDR["bravo"], 8080, count=3)["ok"] == 3
    assert bravo.stats()["server.hot_restart_epoch"] == 0
    holder.kill()
    holder.wait()


def test_a_broken_certificate_key_pair_keeps_the_old_certificate_and_is_reported(mesh):
    bravo = mesh.sidecars["bravo"]
    xds = mesh.roots["bravo"] / "etc" / "hostmesh" / "xds"
    certificate = mesh.roots["bravo"] / "etc" / "hostmesh" / "mesh" / "certs" / "current" / "cert.pem"
    restarter = mesh.roots["bravo"] / "usr" / "local" / "libexec" / "hostmesh" / "hostmesh_envoy_restarter.py"
    status = ["/usr/bin/python3", str(restarter), "xds-status", "--admin-socket", str(mesh.admin_sockets["bravo"]),
              "--lds", str(xds / "lds.json"), "--cds", str(xds / "cds.json"), "--cert", str(certificate), "--timeout", "3"]
    assert harness._run(status, check=False).returncode == 0
    identity = mesh_pki.spiffe_id(TRUST_DOMAIN, "bravo")
    old_serial = json.loads(bravo.admin("/certs"))["certificates"][0]["cert_chain"][0]["serial_number"]

    # A certificate with another key's private half: Envoy refuses the rotation.
    cert_pem, _key = mesh.ca.issue(identity)
    _cert, other_key = mesh.ca.issue(identity)
    mesh.identities["bravo"].install(cert_pem, other_key, mesh.ca.pem)
    deadline = time.monotonic() + 10
    while not bravo.stats().get("sds.mesh_cert.key_rotation_failed"):
        assert time.monotonic() < deadline, bravo.stats()
        time.sleep(0.2)
    refused = harness._run(status, check=False)

    assert refused.returncode == 1
    assert "does not serve the certificate" in refused.stderr and "key_rotation_failed=1" in refused.stderr, refused.stderr
    served = {c["serial_number"] for ctx in json.loads(bravo.admin("/certs"))["certificates"] for c in ctx["cert_chain"]}
    assert served == {old_serial}
    # The old certificate keeps serving the mesh.
    assert mesh.call(ADDR["bravo"], 8080, count=3)["ok"] == 3


def test_rotation_and_ca_rollover_under_load_drop_nothing(mesh):
    """Both members renew, then the CA rolls over in three phases, while traffic flows both ways."""
    echo_alpha = mesh.ns["alpha"].popen(["python3", "-c", ECHO, "alpha", "8080"])
    wait_listening(mesh.ns["alpha"], 8080)
    loads = [mesh.ns[caller].popen(["python3", "-c", CLIENT, ADDR[target], "8080", "4000", "load"],
                                   stdout=subprocess.PIPE, text=True)
             for caller, target in (("alpha", "bravo"), ("bravo", "alpha"))]
    new_ca = mesh_pki.CA(TRUST_DOMAIN, name="hostmesh test CA 2")
    updates = "listener.inbound.server_ssl_socket_factory.ssl_context_update_by_sds"

    def install_everywhere(ca, bundle_pem):
        for name in ("alpha", "bravo"):
            before = mesh.sidecars[name].stats()[updates]
            mesh.identities[name].install(*ca.issue(mesh_pki.spiffe_id(TRUST_DOMAIN, name)), bundle_pem)
            deadline = time.monotonic() + 10
            while mesh.sidecars[name].stats()[updates] <= before:
                assert time.monotonic() < deadline, "%s did not take up the new files" % name
                time.sleep(0.1)
        time.sleep(1)

    time.sleep(1)
    install_everywhere(mesh.ca, mesh.ca.pem)                      # rotation
    install_everywhere(mesh.ca, mesh.ca.pem + new_ca.pem)         # rollover 1: trust both CAs
    install_everywhere(new_ca, mesh.ca.pem + new_ca.pem)          # rollover 2: certificates of the new CA
    install_everywhere(new_ca, new_ca.pem)                        # rollover 3: drop the old CA
    # The load spanned every step.
    assert [load.poll() for load in loads] == [None, None], "the load ended before the rollover did"
    results = [json.loads(load.communicate(timeout=600)[0]) for load in loads]
    echo_alpha.kill()
    echo_alpha.wait()

    assert sum(result["ok"] for result in results) >= 2000, results
    assert [result["failed"] for result in results] == [0, 0], results
    # After the drop, a certificate of the old CA is refused.
    before = mesh.sidecars["bravo"].stats()
    old = mesh.tls_probe(8080, *mesh.ca.issue(mesh_pki.spiffe_id(TRUST_DOMAIN, "alpha")))
    assert old["reply"] == "", old
    assert delta(mesh.sidecars["bravo"].stats(), before, "listener.inbound.ssl.fail_verify_error") == 1
    assert mesh.sidecars["bravo"].stats()["server.hot_restart_epoch"] == 0


def test_prometheus_names_peers_services_and_certificate_expiry(mesh):
    assert mesh.call(ADDR["bravo"], 8080, count=2)["ok"] == 2
    assert mesh.call(SERVICE_VIP, 8080, count=2)["ok"] == 2
    text = mesh.ns["alpha"].run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15090/stats/prometheus"]).stdout
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    # Per peer and per service: the cluster and the filter chain's stat prefix become labels.
    assert samples['envoy_cluster_ssl_handshake{envoy_cluster_name="mesh_bravo"}'] >= 2
    assert samples['envoy_cluster_ssl_handshake{envoy_cluster_name="service_echo"}'] >= 2
    assert samples['envoy_tcp_downstream_cx_total{envoy_tcp_prefix="outbound_mesh_bravo"}'] >= 2
    assert samples['envoy_tcp_downstream_cx_total{envoy_tcp_prefix="outbound_service_echo"}'] >= 2
    # Certificate expiry: the host's certificate expires in about 7 days (mesh_pki's lifetime).
    expiry = samples['envoy_cluster_ssl_certificate_expiration_unix_time_seconds{envoy_tls_certificate="mesh_cert",'
                     'envoy_cluster_name="mesh_bravo"}']
    assert 6 * 86400 < expiry - time.time() <= 7 * 86400
    assert 5 <= samples["envoy_server_days_until_first_cert_expiring{}"] <= 7
