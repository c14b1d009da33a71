# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The probe behind hostmesh.sidecar.sidecar_probe: is a host what the roles would make it?

* pure part: the drift items (``drift``) and one comparison per concept, each
  turning what is wanted and what was found into a list of drift items:
  ``file_drift`` (type, sha1, mode, owner, group), ``unit_drift`` (one
  ``systemctl show`` block, ``parse_systemctl_show``), ``binary_drift`` (the
  install record's quick check: size, mtime and inode, never a digest of the
  binary), ``served_config_drift`` (the hot-restart supervisor's state file),
  and the engines' check-mode diffs: ``user_drift``, ``net_cls_drift``,
  ``redirect_drift``, and ``certificate_drift`` (the mesh identity's
  certificate: its key, its one URI SAN, its issuer, the time it has left,
  from what ``read_certificate`` found). The action plugin runs the comparisons that need
  controller-side data (rendered templates, the Envoy source's stat); the
  module those that need the host's engines.
* reader: ``read_path`` (lstat, and a sha1 only of files that are wanted with
  one), ``read_json``, ``read_units`` (one ``systemctl show`` for every unit)
  and ``read_certificate`` (with the host's cryptography library, when it has
  one).

Nothing here changes anything: the engines run in check mode.
"""

from __future__ import annotations

import datetime
import grp
import hashlib
import json
import os
import pwd
import stat

# systemctl show properties read for every unit (one command for all units).
UNIT_PROPERTIES = ("Id", "LoadState", "UnitFileState", "ActiveState", "NeedDaemonReload")
# Install-record fields compared with the binary's lstat (rsync's quick check).
BINARY_STAT_FIELDS = ("size", "mtime", "inode")
# ... and with the controller's source file (install method file).
SOURCE_STAT_FIELDS = ("src_size", "src_mtime")


def drift(kind: str, what: str, detail: str, expected=None, found=None) -> dict:
    """One drift item; ``msg`` is the readable form: '<kind> <what>: <detail>'."""
    return {"kind": kind, "what": what, "expected": expected, "found": found,
            "msg": f"{kind} {what}: {detail}" if what else f"{kind}: {detail}"}


def messages(items) -> list:
    return [item["msg"] for item in items]


# ---------------------------------------------------------------------------
# Files and directories
# ---------------------------------------------------------------------------

def _id_matches(wanted, name, number) -> bool:
    """An owner or group given by name or number matches the found one."""
    if wanted is None:
        return True
    text = str(wanted)
    return text == name or (text.isdigit() and int(text) == number)


def file_drift(want: dict, found: dict) -> list:
    """Drift of one managed path.

    ``want``: path, state (file, directory or absent), and optionally sha1
    (None: content not compared), mode ('0644'), owner, group (names or ids).
    ``found``: what ``read_path`` returned.
    """
    path, state = want["path"], want.get("state", "file")
    kind = "directory" if state == "directory" else "file"
    if state == "absent":
        return [drift("path", path, f"present (want absent), a {found['type']}", "absent", found["type"])] \
            if found["exists"] else []
    if not found["exists"]:
        return [drift(kind, path, "missing", state, "absent")]
    if found["type"] != state:
        return [drift(kind, path, f"is a {found['type']} (want a {state})", state, found["type"])]
    items = []
    if state == "file" and want.get("sha1") is not None and found.get("sha1") != want["sha1"]:
        items.append(drift(kind, path, "content differs", want["sha1"], found.get("sha1")))
    if want.get("mode") is not None and int(str(want["mode"]), 8) != int(found["mode"], 8):
        items.append(drift(kind, path, f"mode {found['mode']} (want {want['mode']})", want["mode"], found["mode"]))
    if not _id_matches(want.get("owner"), found.get("owner"), found["uid"]):
        items.append(drift(kind, path, f"owner {found.get('owner') or found['uid']} (want {want['owner']})",
                           want["owner"], found.get("owner") or found["uid"]))
    if not _id_matches(want.get("group"), found.get("group"), found["gid"]):
        items.append(drift(kind, path, f"group {found.get('group') or found['gid']} (want {want['group']})",
                           want["group"], found.get("group") or found["gid"]))
    return items


def sha1_of(data: bytes) -> str:
    # The checksum ansible.builtin.copy/template/stat use: not for security.
    return hashlib.sha1(data).hexdigest()  # nosec


# ---------------------------------------------------------------------------
# systemd units
# ---------------------------------------------------------------------------

def parse_systemctl_show(text: str) -> dict:
    """``systemctl show -p Id,... A B`` output as {Id: {property: value}} (blocks split by blank lines)."""
    units, block = {}, {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if block.get("Id"):
                units[block["Id"]] = block
            block = {}
            continue
        key, _sep, value = line.partition("=")
        block[key] = value
    return units


def unit_drift(name: str, found, enabled: bool = True, active: bool = True) -> list:
    """Drift of a unit from its ``systemctl show`` properties (None: systemctl said nothing of it)."""
    found = found or {}
    if found.get("LoadState", "not-found") == "not-found":
        return [drift("unit", name, "not loaded (unit file missing or not known to systemd)", "loaded",
                      found.get("LoadState", "not-found"))]
    items = []
    state = found.get("UnitFileState", "")
    if enabled and state != "enabled":
        items.append(drift("unit", name, f"{state or 'not enabled'} (want enabled)", "enabled", state))
    active_state = found.get("ActiveState", "")
    if active and active_state != "active":
        items.append(drift("unit", name, f"{active_state or 'not active'} (want active)", "active", active_state))
    if found.get("NeedDaemonReload") == "yes":
        items.append(drift("unit", name, "changed on disk since systemd read it (daemon-reload needed)",
                           "no", "yes"))
    return items


# ---------------------------------------------------------------------------
# The Envoy binary and the served configuration
# ---------------------------------------------------------------------------

def binary_drift(want: dict, found_stat, record, source_stat=None) -> list:
    """Drift of the Envoy binary, without reading it.

    ``want``: path, method (url, file, package, path), mode, owner, group, and
    sha256 (url). ``found_stat``: ``read_path(path, digest=False)`` of the
    binary. ``record``: the parsed install record (None when missing).
    ``source_stat``: {size, mtime} of the controller's source (method file).

    url and file: the record names the method and path, and the binary's
    size, mtime and inode are the recorded ones (a binary replaced or touched
    since the role installed it is drift), and url: the recorded sha256 is the
    wanted one; file: the controller's source has the recorded size and mtime
    (a new source is drift). package and path: the binary is there and
    executable (the package manager owns it; no record is kept).
    """
    path, method = want["path"], want["method"]
    if not found_stat["exists"]:
        return [drift("binary", path, "missing", "file", "absent")]
    items = file_drift({"path": path, "state": "file", "mode": want.get("mode"), "owner": want.get("owner"),
                        "group": want.get("group")}, found_stat)
    items = [dict(item, kind="binary", msg="binary" + item["msg"][len("file"):]) for item in items]
    if method in ("package", "path"):
        if found_stat["type"] == "file" and not int(found_stat["mode"], 8) & 0o111:
            items.append(drift("binary", path, "not executable", "executable", found_stat["mode"]))
        return items
    if not isinstance(record, dict):
        return items + [drift("binary", path, "no install record (not installed by this role)", "record", None)]
    if record.get("install_method") != method or record.get("binary_path") != path:
        items.append(drift("binary", path, f"installed by method {record.get('install_method')} to "
                           f"{record.get('binary_path')} (want {method})", method, record.get("install_method")))
        return items
    fields = {"size": found_stat.get("size"), "mtime": found_stat.get("mtime"), "inode": found_stat.get("inode")}
    changed = [name for name in BINARY_STAT_FIELDS if record.get(name) is None or record[name] != fields[name]]
    if changed:
        why = "inode changed" if "inode" in changed else ", ".join(changed) + " changed"
        if all(record.get(name) is None for name in BINARY_STAT_FIELDS):
            why = "the install record holds no size, mtime and inode"
        items.append(drift("binary", path, f"not the installed one ({why})",
                           {name: record.get(name) for name in BINARY_STAT_FIELDS}, fields))
    if method == "url" and str(record.get("sha256", "")).lower() != str(want.get("sha256", "")).lower():
        items.append(drift("binary", path, "installed from another sha256", want.get("sha256"), record.get("sha256")))
    if method == "file":
        recorded = {name: record.get(name) for name in SOURCE_STAT_FIELDS}
        current = {"src_size": (source_stat or {}).get("size"), "src_mtime": (source_stat or {}).get("mtime")}
        # Another controller (an AWX execution node, a colleague's checkout) holds a copy of the same
        # source with its own mtime: the same bytes are not drift (the action digested it, see
        # source_needs_digest).
        same_bytes = (source_stat is not None and source_stat.get("sha1") is not None
                      and source_stat["sha1"] == record.get("checksum"))
        if source_stat is None or (recorded != current and not same_bytes):
            items.append(drift("binary", path, f"the source {want.get('src')} changed since it was installed",
                               recorded, current))
    return items


def source_needs_digest(record, source_stat) -> bool:
    """Whether the controller must digest the Envoy source (install method file) to judge it.

    Only when its size is the recorded one but its mtime is not: a copy of the same file on another
    controller. Any other case is decided by the quick check alone, so a converged fleet run from
    the controller that installed it never reads the 107 MB binary.
    """
    return (isinstance(record, dict) and source_stat is not None and record.get("checksum") is not None
            and record.get("src_size") == source_stat.get("size")
            and record.get("src_mtime") != source_stat.get("mtime"))


def served_config_sha1(state) -> str:
    """The sha1 of the bootstrap the supervisor's serving epoch started with ('' when unknown)."""
    if not isinstance(state, dict):
        return ""
    return str(state.get("serving_config_sha1") or "").strip()


def served_config_drift(config_path: str, rendered_sha1: str, state) -> list:
    served = served_config_sha1(state)
    if not served:
        return [drift("config", config_path, "no running Envoy serves a known configuration", rendered_sha1, None)]
    if served != rendered_sha1:
        return [drift("config", config_path, "the running Envoy serves another configuration (hot restart due)",
                      rendered_sha1, served)]
    return []


# ---------------------------------------------------------------------------
# The mesh identity's certificate
# ---------------------------------------------------------------------------

def certificate_drift(want: dict, found: dict, now: float) -> list:
    """Drift of a host certificate from what the mesh_identity role would keep.

    ``want``: cert, key (paths), uri_san (the identity), renew_before
    (seconds), issuer_pem (the signing CA's certificate; '' when unknown).
    ``found``: what ``read_certificate`` returned: exists, error, not_after
    (epoch seconds), uri_sans, key_matches, issued_by (True, False, or None
    when not checked). ``now``: epoch seconds. Any item means the role would
    issue a new certificate.
    """
    path = want["cert"]
    if not found.get("exists"):
        return [drift("certificate", path, "missing", want["uri_san"], None)]
    if found.get("error"):
        return [drift("certificate", path, f"cannot read: {found['error']}", want["uri_san"], found["error"])]
    items = []
    if not found.get("key_matches"):
        items.append(drift("certificate", path, f"does not belong to the key {want['key']}", True, False))
    sans = list(found.get("uri_sans") or [])
    if sans != [want["uri_san"]]:
        items.append(drift("certificate", path, f"URI SAN {', '.join(sans) or 'none'} (want exactly {want['uri_san']})",
                           [want["uri_san"]], sans))
    if not want.get("issuer_pem"):
        items.append(drift("certificate", path, "the signing CA is not on the controller yet", "CA", None))
    elif found.get("issued_by") is False:
        items.append(drift("certificate", path, "not issued by the signing CA", True, False))
    left = float(found["not_after"]) - now
    renew_before = int(want.get("renew_before") or 0)
    if left <= 0:
        items.append(drift("certificate", path, "expired", renew_before, int(left)))
    elif left < renew_before:
        items.append(drift("certificate", path, f"renewal due: {left / 86400:.1f} days left, renewed with less than "
                           f"{renew_before / 86400:.1f}", renew_before, int(left)))
    return items


def read_certificate(cert_path: str, key_path: str, issuer_pem: str = "") -> dict:
    """What the probe needs of a certificate and its key, read with the cryptography library.

    ``error`` says why they cannot be judged (no library, unreadable, not PEM);
    the caller turns it into drift, since the role would then issue anew.
    """
    if not os.path.exists(cert_path):
        return {"exists": False}
    try:
        # Imported here: the rest of the probe needs no third-party library on the host.
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        return {"exists": True, "error": "the host's Python has no cryptography library"}
    try:
        with open(cert_path, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
        with open(key_path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return {"exists": True, "error": str(exc) or type(exc).__name__}
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uri_sans = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uri_sans = []
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return {"exists": True, "error": None, "not_after": not_after.timestamp(), "uri_sans": list(uri_sans),
            "key_matches": key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki),
            "issued_by": _issued_by(cert, issuer_pem) if issuer_pem else None}


def _issued_by(cert, issuer_pem: str):
    """Whether the signing CA's key signed ``cert`` (False also for an unreadable CA)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    try:
        issuer = x509.load_pem_x509_certificate(issuer_pem.encode())
    except ValueError:
        return False
    if issuer.subject != cert.issuer:
        return False
    public_key = issuer.public_key()
    try:
        # cryptography 40 has verify_directly_issued_by; Debian 12 ships 38.
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        else:
            public_key.verify(cert.signature, cert.tbs_certificate_bytes)
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------
# The engines' check-mode results
# ---------------------------------------------------------------------------

def _account_drift(kind: str, before: dict, after: dict) -> list:
    name = after.get("name") or before.get("name")
    if before.get("state") != "present":
        return [drift(kind, name, "missing", after, before)]
    changed = [key for key in sorted(after) if key != "state" and before.get(key) != after.get(key)]
    return [drift(kind, name, ", ".join(f"{key} {before.get(key)} (want {after.get(key)})" for key in changed),
                  after, before)] if changed else []


def user_drift(diff: dict) -> list:
    """Drift from proxy_user's check-mode diff {before: {user, group}, after: {user, group}}."""
    before, after = diff.get("before", {}), diff.get("after", {})
    return (_account_drift("group", before.get("group", {}), after.get("group", {}))
            + _account_drift("user", before.get("user", {}), after.get("user", {})))


def net_cls_drift(result: dict, diff: dict) -> list:
    """Drift from net_cls's check-mode result and diff."""
    if not result.get("changed"):
        return []
    before, after = diff.get("before") or {}, diff.get("after") or {}
    changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
    if before.get("cgroup") == "absent":
        detail = "missing"
    else:
        detail = "differs: " + ", ".join(changed)
    return [drift("cgroup", result.get("path", ""), detail, after, before)]


def _lines(text: str) -> list:
    return [line for line in (text or "").splitlines() if line.strip()]


def redirect_drift(diff: list, rules_file) -> list:
    """Drift from traffic_redirect's check-mode diff (one entry per table, and the rules file)."""
    items = []
    to_add = to_delete = 0
    for entry in diff:
        before, after = entry.get("before", ""), entry.get("after", "")
        if before == after:
            continue
        if rules_file and entry.get("before_header") == rules_file:
            items.append(drift("file", rules_file, "content differs (the rules file)", None, None))
            continue
        before_lines, after_lines = _lines(before), _lines(after)
        to_add += len([line for line in after_lines if line not in before_lines])
        to_delete += len([line for line in before_lines if line not in after_lines])
    if to_add or to_delete:
        items.insert(0, drift("rules", "", f"{to_add} to add, {to_delete} to delete", to_add, to_delete))
    return items


def engine_error_drift(kind: str, what: str, message: str) -> dict:
    """An engine refused to plan (a taken id, a missing cgroup): the converge will say more."""
    return drift(kind, what, f"cannot be checked: {message}", None, message)


# ---------------------------------------------------------------------------
# Reader (host side)
# ---------------------------------------------------------------------------

def _type_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def _name(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return None


def read_path(path: str, digest: bool = True) -> dict:
    """lstat of ``path`` (no link followed), and the sha1 of a regular file when ``digest``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False, "type": "absent"}
    found = {"exists": True, "type": _type_of(st.st_mode), "mode": f"{stat.S_IMODE(st.st_mode):04o}",
             "uid": st.st_uid, "gid": st.st_gid, "owner": _name(pwd.getpwuid, st.st_uid),
             "group": _name(grp.getgrgid, st.st_gid), "size": st.st_size,
             # The float ansible.builtin.stat returns as mtime (the same double of the same st_mtim).
             "mtime": st.st_mtime, "inode": st.st_ino}
    if digest and found["type"] == "file":
        found["sha1"] = file_sha1(path)
    return found


def file_sha1(path: str) -> str:
    """sha1_of a file's contents, read in chunks (the Envoy binary is 107 MB)."""
    sha1 = hashlib.sha1()  # nosec - the checksum Ansible's copy/template compare
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha1.update(chunk)
    return sha1.hexdigest()


def read_json(path: str):
    """The parsed JSON file, or None when it is missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def read_units(run_command, units) -> dict:
    """{unit: properties} of every unit, with one ``systemctl show``."""
    if not units:
        return {}
    rc, out, err = run_command(["systemctl", "show", "-p", ",".join(UNIT_PROPERTIES), "--"] + list(units))
    if rc != 0:
        return {unit: {"Id": unit, "LoadState": "error: " + (err or out).strip()} for unit in units}
    return parse_systemctl_show(out)
