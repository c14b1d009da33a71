# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The probe's `certificates` kind: read_certificate on real certificates, certificate_drift on what it read,
and the action's plan of it (merge_manifests, module_args)."""

from __future__ import annotations

import builtins
import datetime

import pytest
from ansible.errors import AnsibleActionFail
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.hostmesh.sidecar.plugins.action.sidecar_probe import merge_manifests, module_args
from ansible_collections.hostmesh.sidecar.plugins.module_utils._probe import certificate_drift, read_certificate

ID = "spiffe://hostmesh.local/host/alpha"
DAY = 86400
NOW = datetime.datetime.now(datetime.timezone.utc)


def make_ca(name="mesh CA", key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_leaf(ca, ca_key, uris=(ID,), days_left=7.0, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=days_left))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri) for uri in uris]), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write(tmp_path, cert, key):
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def want(cert_path, key_path, issuer_pem, renew_days=3):
    return {"cert": cert_path, "key": key_path, "uri_san": ID, "renew_before": renew_days * DAY, "issuer_pem": issuer_pem}


def probe(tmp_path, ca, cert, key, renew_days=3):
    paths = write(tmp_path, cert, key)
    wanted = want(*paths, pem(ca), renew_days)
    found = read_certificate(wanted["cert"], wanted["key"], wanted["issuer_pem"])
    return found, [item["msg"] for item in certificate_drift(wanted, found, NOW.timestamp())]


@pytest.fixture(scope="module")
def ca():
    return make_ca()


def test_fresh_certificate_of_the_signing_ca_is_no_drift(tmp_path, ca):
    cert, key = make_leaf(*ca)
    found, msgs = probe(tmp_path, ca[0], cert, key)
    assert msgs == []
    assert found["uri_sans"] == [ID] and found["key_matches"] and found["issued_by"] is True
    assert found["not_after"] == pytest.approx((NOW + datetime.timedelta(days=7)).timestamp(), abs=1)


def test_inside_the_renewal_window_and_expired(tmp_path, ca):
    cert, key = make_leaf(*ca, days_left=2.5)
    _found, msgs = probe(tmp_path, ca[0], cert, key)
    assert msgs == [f"certificate {tmp_path}/cert.pem: renewal due: 2.5 days left, renewed with less than 3.0"]
    cert, key = make_leaf(*ca, days_left=-0.5)
    _found, msgs = probe(tmp_path, ca[0], cert, key)
    assert msgs == [f"certificate {tmp_path}/cert.pem: expired"]
    # Just outside the window: kept.
    cert, key = make_leaf(*ca, days_left=3.1)
    assert probe(tmp_path, ca[0], cert, key)[1] == []


def test_wrong_san_key_and_issuer_each_reported(tmp_path, ca):
    rogue = make_ca("rogue CA")
    cert, _key = make_leaf(*rogue, uris=(ID, "spiffe://hostmesh.local/host/beta"))
    _found, msgs = probe(tmp_path, ca[0], cert, ec.generate_private_key(ec.SECP256R1()))
    where = f"certificate {tmp_path}/cert.pem"
    assert msgs == [f"{where}: does not belong to the key {tmp_path}/key.pem",
                    f"{where}: URI SAN {ID}, spiffe://hostmesh.local/host/beta (want exactly {ID})",
                    f"{where}: not issued by the signing CA"]


def test_same_ca_name_other_key_is_another_issuer(tmp_path, ca):
    impostor = make_ca("mesh CA")  # same subject as the signing CA, another key
    cert, key = make_leaf(*impostor)
    found, msgs = probe(tmp_path, ca[0], cert, key)
    assert found["issued_by"] is False and msgs == [f"certificate {tmp_path}/cert.pem: not issued by the signing CA"]


def test_rsa_signing_ca_is_checked_too(tmp_path):
    rsa_ca = make_ca("rsa CA", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    cert, key = make_leaf(*rsa_ca)
    found, msgs = probe(tmp_path, rsa_ca[0], cert, key)
    assert found["issued_by"] is True and msgs == []


def test_missing_unreadable_and_unknown_ca(tmp_path, ca):
    wanted = want(str(tmp_path / "none.pem"), str(tmp_path / "none.key"), pem(ca[0]))
    found = read_certificate(wanted["cert"], wanted["key"])
    assert [i["msg"] for i in certificate_drift(wanted, found, NOW.timestamp())] == [
        f"certificate {tmp_path}/none.pem: missing"]
    (tmp_path / "bad.pem").write_text("not a certificate")
    wanted = want(str(tmp_path / "bad.pem"), str(tmp_path / "none.key"), pem(ca[0]))
    items = certificate_drift(wanted, read_certificate(wanted["cert"], wanted["key"]), NOW.timestamp())
    assert len(items) == 1 and items[0]["msg"].startswith(f"certificate {tmp_path}/bad.pem: cannot read: ")
    cert, key = make_leaf(*ca)
    paths = write(tmp_path, cert, key)
    wanted = want(*paths, "")
    assert [i["msg"] for i in certificate_drift(wanted, read_certificate(*paths), NOW.timestamp())] == [
        f"certificate {paths[0]}: the signing CA is not on the controller yet"]


def test_host_without_cryptography_is_drift(tmp_path, ca, monkeypatch):
    cert, key = make_leaf(*ca)
    paths = write(tmp_path, cert, key)
    real_import = builtins.__import__

    def no_cryptography(name, *args, **kwargs):
        if name.startswith("cryptography"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cryptography)
    found = read_certificate(*paths, pem(ca[0]))
    monkeypatch.undo()
    assert found == {"exists": True, "error": "the host's Python has no cryptography library"}
    assert [i["msg"] for i in certificate_drift(want(*paths, pem(ca[0])), found, NOW.timestamp())] == [
        f"certificate {paths[0]}: cannot read: the host's Python has no cryptography library"]


MI = {"role": "mesh_identity", "state": "present",
      "certificates": [{"cert": "/m/current/cert.pem", "key": "/m/current/key.pem", "uri_san": ID,
                        "renew_before": "259200", "issuer_pem": "PEM"}],
      "files": [{"path": "/m", "state": "directory", "mode": "0750"}]}


def test_plan_passes_certificates_to_the_module():
    args = module_args(merge_manifests([MI]))
    assert args["certificates"] == [{"cert": "/m/current/cert.pem", "key": "/m/current/key.pem", "uri_san": ID,
                                     "renew_before": 259200, "issuer_pem": "PEM"}]
    assert "certificates" not in module_args(merge_manifests([dict(MI, certificates=[])]))
    with pytest.raises(AnsibleActionFail, match="a certificate needs cert, key and uri_san"):
        merge_manifests([dict(MI, certificates=[{"cert": "/m/c.pem"}])])
    # A role being removed is not probed: its certificate neither.
    assert "certificates" not in module_args(merge_manifests([dict(MI, state="absent")]))
