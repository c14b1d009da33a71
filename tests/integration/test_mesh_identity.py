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
from cryptography.hazmat.primitives import serialization

import harness

ENVOY = harness.REPO_ROOT / ".cache" / "envoy" / "envoy"
PASSPHRASE = "correct horse battery staple"
ID = "spiffe://hostmesh.local/host/localhost"
GROUP = "nogroup"
ROLE_PLAY = [{"name": "mesh identity", "hosts": "localhost", "gather_facts": False,
              "roles": [{"role": "hostmesh.sidecar.mesh_identity"}]}]
PROBE_PLAY = [{"name": "probe", "hosts": "localhost", "gather_facts": False, "tasks": [
    {"name": "Make the manifest visible",
     "ansible.builtin.include_role": {"name": "hostmesh.sidecar.mesh_identity", "tasks_from": "probe",
                                      "public": True, "rolespec_validate": False}},
    {"name": "Probe", "hostmesh.sidecar.sidecar_probe": {"manifests": ["{{ __mesh_identity_probe }}"]}}]}]


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
    """The first run on a fresh controller and host, and a second one."""
    host = tmp_dir("hmid-host-")
    first = converge(controller, host)
    second = converge(controller, host)
    yield {"host": host, "first": first, "second": second}
    shutil.rmtree(host, ignore_errors=True)


def test_ca_made_once_and_identity_issued_idempotently(controller, issued):
    first, second, host = issued["first"], issued["second"], issued["host"]
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
    # Inside the renewal window (the 7 days left, of a window of 8 days), and a key made world-readable.
    os.chmod(host_dirs / "mesh" / "certs" / "current" / "key.pem", 0o444)
    result = converge(controller, host_dirs, playbook=PROBE_PLAY, hostmesh_mesh_cert_lifetime="9d",
                      hostmesh_mesh_cert_renew_before="8d")
    probe = result.task("Probe")
    assert not probe["converged"]
    msgs = [item["msg"] for item in probe["drift"]]
    assert any(re.search(r"certificates? .*/certs/current/cert.pem: renewal due: 7\.0 days left, renewed with less than 8\.0$", msg) for msg in msgs), msgs
    assert f"file {host_dirs}/mesh/certs/current/key.pem: mode 0444 (want 0440)" in msgs, msgs


def test_renewal_inside_the_window_only(controller, host_dirs):
    # A one-hour certificate: outside a 30 minutes window it stays.
    result = converge(controller, host_dirs, hostmesh_mesh_cert_lifetime="1h", hostmesh_mesh_cert_renew_before="30m")
    assert result.rc == 0, result.output
    first = current_dir(host_dirs)
    result = converge(controller, host_dirs, hostmesh_mesh_cert_lifetime="1h", hostmesh_mesh_cert_renew_before="30m")
    assert result.changed_tasks() == [], result.output
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


def test_bad_input_fails_clearly_and_changes_nothing(controller, issued, host_dirs, tmp_path):
    issue(controller, host_dirs)
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


def test_rotation_is_served_by_a_running_envoy_without_restart(controller, issued, host_dirs, netns_factory, tmp_path):
    if not ENVOY.is_file():
        pytest.fail(f"{ENVOY} missing: run ./scripts/setup.sh")
    issue(controller, host_dirs)
    netns = netns_factory()
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(BOOTSTRAP.format(xds=host_dirs / "xds"))
    log = open(tmp_path / "envoy.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
    envoy = netns.popen([ENVOY, "-c", bootstrap, "--base-id", str(os.getpid() % 60000 + 1000), "-l", "info"],
                        stdout=log, stderr=subprocess.STDOUT)
    try:
        old_serial = wait_for_serial(netns, host_dirs, lambda serial: serial is not None, tmp_path / "envoy.log")
        assert old_serial == cert_of(host_dirs).serial_number
        link = host_dirs / "mesh" / "certs" / "current"
        old_inode, old_dir = os.lstat(link).st_ino, current_dir(host_dirs)

        result = converge(controller, host_dirs, playbook="playbooks/rotate.yml", hostmesh_mesh=True,
                          hostmesh_hosts="localhost")
        assert result.rc == 0, result.output
        assert os.lstat(link).st_ino != old_inode, "certs/current was not replaced by a rename"
        assert current_dir(host_dirs) != old_dir and (link.parent / old_dir / "key.pem").is_file()
        new_serial = cert_of(host_dirs).serial_number
        assert wait_for_serial(netns, host_dirs, lambda serial: serial == new_serial, tmp_path / "envoy.log") == new_serial
        assert envoy.poll() is None, "Envoy exited"
        # A second rotation prunes the oldest directory, keeping the one before the current.
        result = converge(controller, host_dirs, playbook="playbooks/rotate.yml", hostmesh_mesh=True,
                          hostmesh_hosts="localhost")
        assert result.rc == 0, result.output
        assert sorted(os.listdir(link.parent)) == sorted(["current", current_dir(host_dirs), result_previous(host_dirs, old_dir)])
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()


def result_previous(host_dirs, oldest):
    dirs = sorted(name for name in os.listdir(host_dirs / "mesh" / "certs") if name != "current")
    assert oldest not in dirs
    return [name for name in dirs if name != current_dir(host_dirs)][0]


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


def test_absent_removes_the_identity_and_keeps_the_ca(controller, issued, host_dirs):
    issue(controller, host_dirs)
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
