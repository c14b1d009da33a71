# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""verify.yml's mesh part with the real Envoy: each member proves each peer and service over mTLS.

test_mesh_dataplane's two namespaces (alpha and bravo, real sidecars, redirect rules, mesh
certificates). verify.yml itself runs inside each member's namespace (ansible_connection local),
limited to that member, with the tags sidecar and mesh: the redirect's check needs the role's
systemd unit and rules file, which these hosts do not have (the sidecar runs under the role's
supervisor, not systemd). Envoy's access log is its output file here
(hostmesh_verify_access_log_file) instead of the unit's journal. The workloads are not the demo
server: bravo runs a line echo, alpha a plain ``python3 -m http.server``.

- a healthy mesh passes, with one line per peer and service naming the identity verified, the
  certificate's days left and Envoy's server.days_until_first_cert_expiring;
- bravo presenting charlie's identity fails on both: bravo's own certificate and sidecar name it,
  alpha names it for the service (whose members include charlie) and fails bravo's handshake;
  the dead member charlie is named as unreachable;
- under a steady stream of other connections through the same sidecars, it still passes.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import harness
import mesh_pki
from test_mesh_dataplane import ADDR, SERVICE_VIP, TRUST_DOMAIN, MeshHosts
from test_mesh_dataplane import workdir  # noqa: F401  pylint: disable=unused-import

VERIFY = "playbooks/verify.yml"
PASSPHRASE = "not needed by verify, checked by the role's validation"

# Connections through the sidecars for as long as it runs (stdin closed: it stops).
TRAFFIC = r'''
import socket, sys, threading, time
targets = [(host, int(port)) for host, port in (item.rsplit(":", 1) for item in sys.argv[1:])]
done = []
def stop():
    sys.stdin.read()
    done.append(1)
threading.Thread(target=stop, daemon=True).start()
count = 0
while not done:
    for target in targets:
        try:
            with socket.create_connection(target, timeout=5) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n" if target[1] == 8080 else b"traffic\n")
                conn.recv(100)
            count += 1
        except OSError:
            pass
print(count, flush=True)
'''


def identity(name):
    return mesh_pki.spiffe_id(TRUST_DOMAIN, name)


class VerifiedMesh(MeshHosts):
    """MeshHosts whose inventory also has what verify.yml reads; alpha serves python3 -m http.server."""

    def __init__(self, netns_factory, workdir, charlie_member):  # noqa: F811  pylint: disable=redefined-outer-name
        super().__init__(netns_factory, workdir)
        data = json.loads(self.inventory.read_text())
        group = data["all"]["children"]["mesh"]
        group["vars"]["hostmesh_mesh_ca_passphrase"] = PASSPHRASE
        hosts = group["hosts"]
        for name, root in self.roots.items():
            hosts[name]["mesh_identity_dir"] = str(root / "etc" / "hostmesh" / "mesh")
            hosts[name]["mesh_identity_xds_dir"] = str(root / "etc" / "hostmesh" / "xds")
            # Where test_envoy_config.Sidecar writes Envoy's output.
            hosts[name]["hostmesh_verify_access_log_file"] = str(workdir / ("envoy-" + self.ns[name].name + ".log"))
        if not charlie_member:
            hosts["charlie"]["hostmesh_mesh"] = False
        self.inventory.write_text(json.dumps(data))
        self.http_server = None

    def start(self):
        super().start()
        site = self.workdir / "www-alpha"
        site.mkdir()
        (site / "index.html").write_text("alpha\n")
        self.http_server = self.ns["alpha"].popen(["python3", "-m", "http.server", "8080", "--directory", str(site)],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ns["alpha"].run(["ss", "-Hltn", "sport = :8080"]).stdout.strip():
            assert time.monotonic() < deadline, "python3 -m http.server never listened on alpha"
            time.sleep(0.1)

    def verify(self, name):
        """verify.yml's sidecar and mesh parts on one member, run in its namespace."""
        return harness.run_playbook(VERIFY, netns=self.ns[name], timeout=300,
                                    extra_args=("-i", str(self.inventory), "--limit", name, "--tags", "sidecar,mesh"))


def shown_lines(result, name):
    """The lines verify.yml showed for ``name``: one per check, then the certificate's."""
    return result.task("Show what this member's sidecar verified", host=name)["msg"]


def judgement(result, name):
    """The record of verify.yml's judging assertion on ``name``."""
    return result.task("Every peer and service answered with the expected identity", host=name)


def start(netns_factory, workdir, charlie_member):  # noqa: F811  pylint: disable=redefined-outer-name
    hosts = VerifiedMesh(netns_factory, workdir, charlie_member)
    try:
        hosts.start()
    except BaseException:
        hosts.close()
        raise
    return hosts


@pytest.fixture
def healthy_mesh(netns_factory, workdir):  # noqa: F811  pylint: disable=redefined-outer-name
    """alpha and bravo the only members; the service echo is bravo alone."""
    hosts = start(netns_factory, workdir, charlie_member=False)
    yield hosts
    hosts.close()


@pytest.fixture
def mesh_with_dead_member(netns_factory, workdir):  # noqa: F811  pylint: disable=redefined-outer-name
    """charlie a member that never runs, in the service echo with bravo."""
    hosts = start(netns_factory, workdir, charlie_member=True)
    yield hosts
    hosts.close()


def assert_healthy(mesh):
    alpha, bravo = mesh.verify("alpha"), mesh.verify("bravo")
    assert alpha.rc == 0, alpha.output
    assert bravo.rc == 0, bravo.output
    alpha_lines, bravo_lines = shown_lines(alpha, "alpha"), shown_lines(bravo, "bravo")
    assert "alpha -> member bravo (%s:8080): %s verified at %s:8080" % (ADDR["bravo"], identity("bravo"), ADDR["bravo"]) in alpha_lines
    assert "alpha -> service echo (%s:8080): %s verified at %s:8080 (member bravo)" % (
        SERVICE_VIP, identity("bravo"), ADDR["bravo"]) in alpha_lines
    assert "bravo -> member alpha (%s:8080): %s verified at %s:8080" % (ADDR["alpha"], identity("alpha"), ADDR["alpha"]) in bravo_lines
    # bravo's sidecar reaches the service on its own host too.
    assert "bravo -> service echo (%s:8080): %s verified at %s:8080 (member bravo)" % (
        SERVICE_VIP, identity("bravo"), ADDR["bravo"]) in bravo_lines
    # Certificate expiry: the role's check and Envoy's own gauge (mesh_pki issues for 7 days).
    for name, result, lines in (("alpha", alpha, alpha_lines), ("bravo", bravo, bravo_lines)):
        cert = result.task("Judge the certificate", host=name)
        assert "mesh certificate %s valid, 7.0 days left" % identity(name) in cert["msg"], cert
        assert lines[-1].startswith("own certificate: %s, 6 days left; " % identity(name)), lines
        assert lines[-1].endswith("Envoy server.days_until_first_cert_expiring: 6"), lines
    return alpha_lines, bravo_lines


def test_verify_proves_each_peer_and_service(healthy_mesh):
    alpha_lines, bravo_lines = assert_healthy(healthy_mesh)
    # One line per peer and service and one for the certificate, nothing about charlie (no member).
    assert len(alpha_lines) == 3 and len(bravo_lines) == 3, (alpha_lines, bravo_lines)
    assert not any("charlie" in line for line in alpha_lines + bravo_lines)


def test_verify_names_an_impostor_and_a_dead_member(mesh_with_dead_member):
    mesh = mesh_with_dead_member
    # bravo now presents charlie's identity (a certificate the mesh CA issued to charlie).
    mesh.identities["bravo"].install(*mesh.ca.issue(identity("charlie")), mesh.ca.pem)
    time.sleep(1.5)

    alpha, bravo = mesh.verify("alpha"), mesh.verify("bravo")

    assert bravo.rc != 0 and alpha.rc != 0
    judged = judgement(bravo, "bravo")
    assert judged["hostmesh_status"] == "failed"
    # bravo's certificate on disk and the one its sidecar serves both name charlie's identity.
    assert "SAN URI:%s is not exactly URI:%s" % (identity("charlie"), identity("bravo")) in judged["msg"], judged
    assert "the sidecar presents %s, expected exactly %s" % (identity("charlie"), identity("bravo")) in judged["msg"], judged

    alpha_lines, judged = shown_lines(alpha, "alpha"), judgement(alpha, "alpha")
    problems = judged["msg"]
    # The member bravo: alpha's sidecar refused the handshake, and Envoy's reason names the identity.
    assert "member bravo (%s:8080): %s:8080 presented %s, expected %s: the sidecar refused the handshake" % (
        ADDR["bravo"], ADDR["bravo"], identity("charlie"), identity("bravo")) in problems, problems
    # The service accepts charlie's identity, but not from bravo's address.
    assert "service echo (%s:8080): %s:8080 presented %s, the identity of charlie at %s" % (
        SERVICE_VIP, ADDR["bravo"], identity("charlie"), ADDR["charlie"]) in problems, problems
    # charlie never runs: named, not proven.
    assert "member charlie (%s:8080): " % ADDR["charlie"] in problems, problems
    assert not any(line.startswith("alpha -> member charlie") and "verified" in line for line in alpha_lines)


def test_verify_passes_under_live_traffic(healthy_mesh):
    mesh = healthy_mesh
    streams = {
        "alpha": mesh.ns["alpha"].popen(["python3", "-c", TRAFFIC, "%s:8080" % ADDR["bravo"], "%s:8080" % SERVICE_VIP],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True),
        "bravo": mesh.ns["bravo"].popen(["python3", "-c", TRAFFIC, "%s:8080" % ADDR["alpha"]],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True),
    }
    before = {name: sidecar.stats() for name, sidecar in mesh.sidecars.items()}

    assert_healthy(mesh)

    counted = {}
    for name, stream in streams.items():
        stream.stdin.close()
        counted[name] = int(stream.stdout.read().strip() or 0)
        stream.wait(timeout=30)
    # The traffic really ran through the sidecars while verify did.
    after = mesh.sidecars["alpha"].stats()
    assert after.get("tcp.outbound_mesh_bravo.downstream_cx_total", 0) - before["alpha"].get(
        "tcp.outbound_mesh_bravo.downstream_cx_total", 0) > 20
    assert counted["alpha"] > 20 and counted["bravo"] > 20, counted
