# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Certificates for the data-plane tests, in the shapes the mesh_identity role issues.

The data-plane tests exercise Envoy, not the CA: they need a mesh CA name-constrained to the
trust domain, SPIFFE X.509-SVIDs for the hosts, and the certificates an attacker would bring (a
rogue CA's, another trust domain's under the mesh CA). The files go where the role puts them
(``<root>/etc/hostmesh/mesh/...``) and the two SDS files where Envoy reads them; a rotation is
the rename of ``certs/current`` the role does.
"""

from __future__ import annotations

import datetime
import os
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    """A CA name-constrained to one trust domain (URI:<trust domain>, as the role makes it)."""

    def __init__(self, trust_domain, name="hostmesh test CA"):
        self.trust_domain = trust_domain
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.NameConstraints([x509.UniformResourceIdentifier(trust_domain)], None), critical=True)
            .sign(self.key, hashes.SHA256()))

    @property
    def pem(self):
        return _pem(self.cert)

    def issue(self, uri, days=7):
        """(cert PEM, key PEM) of an X.509-SVID: one URI SAN, CA:false, server and client auth."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .sign(self.key, hashes.SHA256()))
        return _pem(cert), _key_pem(key)


def spiffe_id(trust_domain, host):
    return "spiffe://%s/host/%s" % (trust_domain, host)


class HostIdentity:
    """One host's mesh files below ``root``, owned like the role owns them (key: the proxy uid)."""

    def __init__(self, root, uid, gid):
        self.root = pathlib.Path(root)
        self.uid, self.gid = uid, gid
        self.mesh_dir = self.root / "etc" / "hostmesh" / "mesh"
        self.xds_dir = self.root / "etc" / "hostmesh" / "xds"
        self.serial = 0

    def _write(self, path, data, mode):
        path.write_bytes(data)
        os.chown(path, self.uid, self.gid)
        path.chmod(mode)

    def _swap(self, link, target_name):
        """Point ``link`` at ``target_name`` by a rename, as the role does: Envoy sees the move."""
        staging = link.with_name(link.name + ".new")
        if staging.is_symlink():
            staging.unlink()
        staging.symlink_to(target_name)
        os.replace(staging, link)

    def install(self, cert_pem, key_pem, bundle_pem):
        """A new certificate directory and trust bundle, then the SDS files if missing."""
        self.serial += 1
        name = "%04d" % self.serial
        for sub in ("certs", "bundle"):
            (self.mesh_dir / sub / name).mkdir(parents=True)
        self._write(self.mesh_dir / "certs" / name / "cert.pem", cert_pem, 0o444)
        self._write(self.mesh_dir / "certs" / name / "key.pem", key_pem, 0o400)
        self._write(self.mesh_dir / "bundle" / name / "ca.pem", bundle_pem, 0o444)
        self._swap(self.mesh_dir / "certs" / "current", name)
        self._swap(self.mesh_dir / "bundle" / "current", name)
        self.xds_dir.mkdir(parents=True, exist_ok=True)
        sds_cert = self.xds_dir / "sds_cert.yaml"
        if not sds_cert.exists():
            certs, bundle = self.mesh_dir / "certs", self.mesh_dir / "bundle"
            sds_cert.write_text(
                "resources:\n"
                "- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n"
                "  name: mesh_cert\n"
                "  tls_certificate:\n"
                "    certificate_chain: {filename: %s/current/cert.pem}\n"
                "    private_key: {filename: %s/current/key.pem}\n"
                "    watched_directory: {path: %s}\n" % (certs, certs, certs))
            (self.xds_dir / "sds_ca.yaml").write_text(
                "resources:\n"
                "- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n"
                "  name: mesh_ca\n"
                "  validation_context:\n"
                "    trusted_ca: {filename: %s/current/ca.pem}\n"
                "    watched_directory: {path: %s}\n" % (bundle, bundle))
