# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The mesh_identity role against this machine as both controller and host.

The CA directory and the host's mesh and xDS directories are temporary directories (the role's
mesh_identity_ca_dir, mesh_identity_dir and mesh_identity_xds_dir), the proxy group is the
system's `nogroup` (its member `nobody` stands for the proxy user), so nothing of the machine
changes. The rotation test runs the real Envoy in a network namespace of its own, with a
bootstrap whose mTLS listener takes its certificate and trust bundle from the role's SDS files.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import harness

ENVOY = harness.REPO_ROOT / ".cache" / "envoy" / "envoy"
PASSPHRASE = "correct horse battery staple"
ID = "spiffe://hostmesh.local/host/localhost"
GROUP = "nogroup"
ROLE_PLAY = [{"name": "mesh identity", "hosts": "localhost", "gather_facts": False,
              "roles": [{"role": "hostmesh.sidecar.mesh_identity"}]}]
# The probe as site.yml runs it, then the role's verify entry point (its failure rescued, to be read).
PROBE_PLAY = [{"name": "probe", "hosts": "localhost", "gather_facts": False, "tasks": [
    {"name": "Make the manifest visible",
     "ansible.builtin.include_role": {"name": "hostmesh.sidecar.mesh_identity", "tasks_from": "probe",
                                      "public": True, "rolespec_validate": False}},
    {"name": "Probe", "hostmesh.sidecar.sidecar_probe": {"manifests": ["{{ __mesh_identity_probe }}"]}},
    {"block": [{"name": "Verify",
                "ansible.builtin.include_role": {"name": "hostmesh.sidecar.mesh_identity", "tasks_from": "verify"}}],
     "rescue": [{"name": "Verify failed", "ansible.builtin.debug": {"msg": "rescued"}}]}]}]


@pytest.fixture(scope="module")
def controller():
    """The controller's CA directory (shared by the module's tests: made once)."""
    base = Path(tempfile.mkdtemp(prefix="hmid-controller-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def host_dirs():
    base = tmp_dir("hmid-host-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def settings(controller, host_dirs, **more):
    values = {"hostmesh_mesh_ca_dir": str(controller / "ca"), "hostmesh_mesh_ca_passphrase": PASSPHRASE,
              "mesh_identity_group": GROUP, "mesh_identity_dir": str(host_dirs / "mesh"),
              "mesh_identity_xds_dir": str(host_dirs / "xds")}
    values.update(more)
    return values


def converge(controller, host_dirs, *, playbook=None, check=False, diff=False, **more):
    return harness.run_playbook(playbook or ROLE_PLAY, extra_vars=settings(controller, host_dirs, **more),
                                check=check, diff=diff, timeout=120)


def snapshot(*roots):
    """Every path below the roots with its type, mode, owner, link target and content digest."""
    state = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames + [""]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_ino)
                if stat.S_ISLNK(st.st_mode):
                    entry += (os.readlink(path),)
                elif stat.S_ISREG(st.st_mode):
                    entry += (hashlib.sha256(Path(path).read_bytes()).hexdigest(),)
                state[path] = entry
    return state


def cert_of(host_dirs, name="current"):
    return x509.load_pem_x509_certificate((host_dirs / "mesh" / "certs" / name / "cert.pem").read_bytes())


def current_dir(host_dirs):
    return os.readlink(host_dirs / "mesh" / "certs" / "current")


def as_user(user, group, argv):
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", "--"] + argv,
                          capture_output=True, text=True, check=False)


def tmp_dir(prefix):
    """A temporary directory others may traverse (the proxy user reads below it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def issue(controller, host_dirs):
    """A host of its own with an identity from the module's CA."""
    result = converge(controller, host_dirs)
    assert result.rc == 0, result.output


@pytest.fixture(scope="module")
def issued(controller):
    """A preview (check mode), the first run on a fresh controller and host, and a second one."""
    host = tmp_dir("hmid-host-")
    preview = converge(controller, host, check=True, diff=True)
    previewed = {"controller": sorted(os.listdir(controller)), "host": sorted(os.listdir(host))}
    first = converge(controller, host)
    second = converge(controller, host)
    yield {"host": host, "preview": preview, "previewed": previewed, "first": first, "second": second}
    shutil.rmtree(host, ignore_errors=True)


def test_ca_made_once_and_identity_issued_idempotently(controller, issued):
    first, second, host = issued["first"], issued["second"], issued["host"]
    # The preview on a fresh controller and host changed nothing and said what would come.
    preview = issued["preview"]
    assert preview.rc == 0, preview.output
    assert issued["previewed"] == {"controller": [], "host": []}
    assert preview.task("Preview the new mesh CA")["msg"].startswith(
        f"would make the mesh CA for hostmesh.local in {controller}/ca: an ECDSA P-256 key")
    assert preview.task("Preview the new certificate")["msg"] == (
        f"would issue a new certificate for {ID} (valid 7d): no certificate yet")
    assert first.rc == 0, first.output
    assert second.rc == 0, second.output
    assert second.changed_tasks() == [], second.output
    assert first.task("Generate the CA key (ECDSA P-256, encrypted with the passphrase)")["changed"]
    # The CA: a key that needs the passphrase, a name-constrained self-signed certificate.
    ca_dir = controller / "ca"
    assert sorted(os.listdir(ca_dir)) == ["ca.key", "ca.pem"]
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    ca_key_pem = (ca_dir / "ca.key").read_bytes()
    assert b"ENCRYPTED" in ca_key_pem
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(ca_key_pem, password=None)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=PASSPHRASE.encode())
    assert ca_key.curve.name == "secp256r1"
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.UniformResourceIdentifier("hostmesh.local")]
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3649
    # The host: one URI SAN, exactly the identity; EKU both ways; signed by the CA; 7 days.
    cert = cert_of(host)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(ID)]
    assert cert.subject == x509.Name([])
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)
    assert round((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()) == 7 * 86400
    # The key: root, the proxy group, 0440, in a 0750 directory; the proxy user reads it, others do not.
    key_path = host / "mesh" / "certs" / "current" / "key.pem"
    st = os.stat(key_path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o440, 0, grp.getgrnam(GROUP).gr_gid)
    host_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert host_key.public_key() == cert.public_key()
    assert as_user("nobody", GROUP, ["cat", str(key_path)]).returncode == 0
    assert as_user("daemon", "daemon", ["cat", str(key_path)]).returncode != 0
    assert as_user("nobody", GROUP, ["cat", str(host / "xds" / "sds_cert.yaml")]).returncode == 0
    # The key never reached the controller: no file under the controller's directories holds it.
    key_der = host_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    for path in controller.rglob("*"):
        if path.is_file():
            assert key_path.read_bytes() not in path.read_bytes() and key_der not in path.read_bytes(), path
    # The trust bundle and the SDS files Envoy's bootstrap names.
    assert (host / "mesh" / "bundle" / "current" / "ca.pem").read_bytes().strip() == (ca_dir / "ca.pem").read_bytes().strip()
    sds_cert = (host / "xds" / "sds_cert.yaml").read_text()
    assert "name: mesh_cert" in sds_cert and f"filename: {host}/mesh/certs/current/key.pem" in sds_cert
    assert "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret" in sds_cert
    assert f"path: {host}/mesh/bundle" in (host / "xds" / "sds_ca.yaml").read_text()


def test_probe_sees_a_converged_identity_and_its_drift(controller, issued, host_dirs):
    issue(controller, host_dirs)
    result = converge(controller, host_dirs, playbook=PROBE_PLAY)
    assert result.rc == 0, result.output
    assert result.task("Probe")["converged"], result.task("Probe")["drift"]
    verified = result.task("Judge the certificate")
    assert verified["hostmesh_status"] == "ok" and f"mesh certificate {ID} valid, 7.0 days left" in verified["msg"], verified
    # Inside the renewal window (the 7 days left, of a window of 8 days), a key made world-readable, and then
    # replaced by one that is not the certificate's: each is drift, and verify fails on the key.
    key_path = host_dirs / "mesh" / "certs" / "current" / "key.pem"
    key_path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(key_path, 0o444)
    result = converge(controller, host_dirs, playbook=PROBE_PLAY, hostmesh_mesh_cert_lifetime="9d",
                      hostmesh_mesh_cert_renew_before="8d")
    probe = result.task("Probe")
    assert not probe["converged"]
    where = f"certificate {host_dirs}/mesh/certs/current/cert.pem"
    msgs = [item["msg"] for item in probe["drift"]]
    assert sorted(msgs) == sorted([f"{where}: does not belong to the key {key_path}",
                                   f"{where}: renewal due: 7.0 days left, renewed with less than 8.0",
                                   f"file {key_path}: mode 0444 (want 0440)"]), msgs
    verified = result.task("Judge the certificate")
    assert verified["hostmesh_status"] == "failed", verified
    assert verified["msg"] == "mesh certificate of localhost: the key in certs/current does not belong to the certificate"


def test_renewal_inside_the_window_only(controller, host_dirs):
    # A one-hour certificate (outside the window, a certificate stays: the module's second run).
    result = converge(controller, host_dirs, hostmesh_mesh_cert_lifetime="1h", hostmesh_mesh_cert_renew_before="30m")
    assert result.rc == 0, result.output
    first = current_dir(host_dirs)
    # With a 2 hours window it is due: check mode previews it and changes nothing ...
    before = snapshot(host_dirs)
    preview = converge(controller, host_dirs, check=True, diff=True, hostmesh_mesh_cert_renew_before="2h")
    assert preview.rc == 0, preview.output
    assert preview.changed_tasks() == ["hostmesh.sidecar.mesh_identity : Preview the new certificate"], preview.output
    msg = preview.task("Preview the new certificate")["msg"]
    assert msg.startswith(f"would issue a new certificate for {ID} (valid 7d): it expires ") and "within the renewal window of 2h" in msg
    assert snapshot(host_dirs) == before
    # ... and the real run renews it: a new key in a new directory, the old one kept.
    result = converge(controller, host_dirs, hostmesh_mesh_cert_renew_before="2h")
    assert result.rc == 0, result.output
    second = current_dir(host_dirs)
    assert second != first and (host_dirs / "mesh" / "certs" / first).is_dir()
    assert round((cert_of(host_dirs).not_valid_after_utc - cert_of(host_dirs).not_valid_before_utc).total_seconds()) == 7 * 86400
    assert cert_of(host_dirs).public_key() != cert_of(host_dirs, first).public_key()
    # rotate.yml issues anew whatever is left, and prunes the oldest directory, keeping the previous one.
    result = converge(controller, host_dirs, playbook="playbooks/rotate.yml", hostmesh_mesh=True, hostmesh_hosts="localhost")
    assert result.rc == 0, result.output
    third = current_dir(host_dirs)
    assert sorted(os.listdir(host_dirs / "mesh" / "certs")) == sorted(["current", second, third]) and third != second


def test_bad_input_fails_clearly_and_changes_nothing(controller, issued, tmp_path):
    host_dirs = issued["host"]
    unreadable = tmp_path / "ca.pem"
    cases = [
        ({"hostmesh_mesh_ca_passphrase": "wrong"}, "cannot be read with the given hostmesh_mesh_ca_passphrase"),
        ({"hostmesh_mesh_ca_passphrase": ""}, "hostmesh_mesh_ca_passphrase is required"),
        ({"hostmesh_mesh_ca_cert": str(unreadable), "hostmesh_mesh_ca_key": str(controller / "ca" / "ca.key")},
         f"hostmesh_mesh_ca_cert {unreadable} does not exist on the controller"),
        ({"hostmesh_mesh_cert_lifetime": "2h", "hostmesh_mesh_cert_renew_before": "3h"},
         "hostmesh_mesh_cert_renew_before (3h) must be shorter than hostmesh_mesh_cert_lifetime (2h)"),
        ({"hostmesh_trust_domain": "Bad Domain"}, "hostmesh_trust_domain 'Bad Domain'"),
    ]
    before = snapshot(host_dirs, controller)
    for extra, message in cases:
        result = converge(controller, host_dirs, **extra)
        assert result.rc != 0, (extra, result.output)
        assert message in " ".join(result.output.split()), (extra, result.output)
        assert snapshot(host_dirs, controller) == before, extra


@contextlib.contextmanager
def running_envoy(netns, host_dirs, tmp_path):
    """The real Envoy in the namespace, with an mTLS listener on 127.0.0.1:15443 fed by the role's SDS files
    (behind it, the admin interface), until the block ends."""
    if not ENVOY.is_file():
        pytest.fail(f"{ENVOY} missing: run ./scripts/setup.sh")
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(BOOTSTRAP.format(xds=host_dirs / "xds"))
    with open(tmp_path / "envoy.log", "w", encoding="utf-8") as log:
        envoy = netns.popen([ENVOY, "-c", bootstrap, "--base-id", str(os.getpid() % 60000 + 1000), "-l", "info"],
                            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_serial(netns, host_dirs, lambda serial: serial is not None, tmp_path / "envoy.log")
            yield envoy
        finally:
            envoy.terminate()
            envoy.wait(timeout=10)


def client_cert(tmp_path, ca_dir, name):
    """A member certificate for spiffe://hostmesh.local/host/<name> signed by the CA in ca_dir, as files."""
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=PASSPHRASE.encode())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                f"spiffe://hostmesh.local/host/{name}")]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def admitted(netns, client):
    """Whether the mTLS listener takes a request from this client certificate (Envoy's admin answers behind it)."""
    proc = netns.run(["openssl", "s_client", "-quiet", "-connect", "127.0.0.1:15443", "-alpn", "hostmesh-mtls",
                      "-cert", client[0], "-key", client[1]], check=False, input="GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n", timeout=10)
    return "LIVE" in proc.stdout


def wait_until(predicate, what, log_path, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout}s: {what}\n{log_path.read_text()[-3000:]}")


def test_rotation_and_ca_rollover_under_a_running_envoy(controller, host_dirs, netns_factory, tmp_path):
    issue(controller, host_dirs)
    old_ca, new_ca = controller / "ca", controller / "ca-next"
    made = converge(controller, host_dirs, playbook=[{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"ansible.builtin.include_role": {"name": "hostmesh.sidecar.mesh_identity", "tasks_from": "controller_ca"}}]}],
        hostmesh_mesh_ca_dir=str(new_ca))
    assert made.rc == 0, made.output
    old_client, new_client = client_cert(tmp_path, old_ca, "old-client"), client_cert(tmp_path, new_ca, "new-client")
    netns = netns_factory()
    with running_envoy(netns, host_dirs, tmp_path) as envoy:
        assert admitted(netns, old_client) and not admitted(netns, new_client)
        # 1. The new CA joins the bundle everywhere; the old one still signs.
        result = converge(controller, host_dirs, hostmesh_mesh_ca_bundle_extra=[str(new_ca / "ca.pem")])
        assert result.rc == 0, result.output
        assert "Issue a new key and certificate" not in " ".join(result.changed_tasks())
        wait_until(lambda: admitted(netns, new_client), "a client of the new CA is admitted", tmp_path / "envoy.log")
        assert admitted(netns, old_client)
        # 2. The new CA signs: rotate.yml re-issues the certificate, switching certs/current by a rename that
        # Envoy serves without a restart; both CAs are still trusted.
        link = host_dirs / "mesh" / "certs" / "current"
        old_inode, old_dir = os.lstat(link).st_ino, current_dir(host_dirs)
        assert served_serial(netns, host_dirs) == cert_of(host_dirs).serial_number
        result = converge(controller, host_dirs, playbook="playbooks/rotate.yml", hostmesh_mesh=True,
                          hostmesh_hosts="localhost", hostmesh_mesh_ca_dir=str(new_ca),
                          hostmesh_mesh_ca_bundle_extra=[str(old_ca / "ca.pem")])
        assert result.rc == 0, result.output
        new_ca_cert = x509.load_pem_x509_certificate((new_ca / "ca.pem").read_bytes())
        assert new_ca_cert.subject != x509.load_pem_x509_certificate((old_ca / "ca.pem").read_bytes()).subject
        cert_of(host_dirs).verify_directly_issued_by(new_ca_cert)
        assert os.lstat(link).st_ino != old_inode, "certs/current was not replaced by a rename"
        assert current_dir(host_dirs) != old_dir and (link.parent / old_dir / "key.pem").is_file()
        serial = cert_of(host_dirs).serial_number
        wait_for_serial(netns, host_dirs, lambda found: found == serial, tmp_path / "envoy.log")
        assert envoy.poll() is None, "Envoy exited"
        assert admitted(netns, old_client) and admitted(netns, new_client)
        # 3. The old CA leaves the bundle: its certificates are refused from then on.
        result = converge(controller, host_dirs, hostmesh_mesh_ca_dir=str(new_ca))
        assert result.rc == 0, result.output
        wait_until(lambda: not admitted(netns, old_client), "a client of the old CA is refused", tmp_path / "envoy.log")
        assert admitted(netns, new_client)
        assert (host_dirs / "mesh" / "bundle" / "current" / "ca.pem").read_bytes().strip() == \
            (new_ca / "ca.pem").read_bytes().strip()
        assert envoy.poll() is None, "Envoy exited"


def served_serial(netns, host_dirs):
    """The serial of the certificate the mTLS listener presents to a client with the host's own identity."""
    mesh = host_dirs / "mesh"
    proc = netns.run(["openssl", "s_client", "-connect", "127.0.0.1:15443", "-alpn", "hostmesh-mtls",
                      "-cert", mesh / "certs" / "current" / "cert.pem", "-key", mesh / "certs" / "current" / "key.pem",
                      "-CAfile", mesh / "bundle" / "current" / "ca.pem", "-verify_return_error"],
                     check=False, input="", timeout=10)
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", proc.stdout, re.S)
    if not match or "Verify return code: 0 (ok)" not in proc.stdout:
        return None
    return x509.load_pem_x509_certificate(match.group(0).encode()).serial_number


def wait_for_serial(netns, host_dirs, accept, log_path, timeout=20):
    deadline = time.monotonic() + timeout
    serial = None
    while time.monotonic() < deadline:
        serial = served_serial(netns, host_dirs)
        if accept(serial):
            return serial
        time.sleep(0.3)
    raise AssertionError(f"Envoy served serial {serial}\n{log_path.read_text()[-3000:]}")


def test_absent_removes_the_identity_and_keeps_the_ca(controller, issued):
    host_dirs = issued["host"]  # the module's last test: the host may go
    ca_before = snapshot(controller)
    result = converge(controller, host_dirs, mesh_identity_state="absent", hostmesh_mesh_ca_passphrase="")
    assert result.rc == 0, result.output
    assert not (host_dirs / "mesh").exists()
    assert sorted(os.listdir(host_dirs / "xds")) == []
    assert snapshot(controller) == ca_before


# File-based SDS needs the node's id and cluster.
BOOTSTRAP = """
node: {{id: localhost, cluster: hostmesh}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
static_resources:
  listeners:
    - name: mesh_mtls
      address: {{socket_address: {{address: 127.0.0.1, port_value: 15443}}}}
      filter_chains:
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: true
              common_tls_context:
                alpn_protocols: [hostmesh-mtls]
                tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
                tls_certificate_sds_secret_configs:
                  - name: mesh_cert
                    sds_config: {{resource_api_version: V3, path_config_source: {{path: {xds}/sds_cert.yaml}}}}
                validation_context_sds_secret_config:
                  name: mesh_ca
                  sds_config: {{resource_api_version: V3, path_config_source: {{path: {xds}/sds_ca.yaml}}}}
          filters:
            - name: envoy.filters.network.tcp_proxy
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
                stat_prefix: mesh_mtls
                cluster: admin
  clusters:
    - name: admin
      type: STATIC
      load_assignment:
        cluster_name: admin
        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}}}}}]}}]
"""
