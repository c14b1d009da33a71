# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Prove from a mesh member that its sidecar reaches each peer and each service over mTLS.

verify.yml runs this once per member (ansible.builtin.script; Python 3 standard library only).
For each check of the plan it opens a plain TCP connection to the peer's mesh port or the
service's VIP, as any workload would: the host's redirect hands it to the local sidecar, which
goes on over mTLS. It sends nothing (the workload may be HTTP, a database, anything), holds the
connection open long enough for the sidecar's upstream handshake, and closes it. Then it finds
the sidecar's access-log entry of exactly that connection (its filter chain and the client's
address and port, which no other connection has at that moment) and reads the identity the
sidecar verified upstream. No shared counter is compared, so live traffic does not disturb it.

It also asks the local Envoy (admin socket) which identity its own certificate carries and when
the first certificate expires.

Prints one JSON object: {"ok", "checks": [...], "own": {...}}. Exit status 0 whenever it could run
the checks (the playbook judges the result), 2 on bad arguments or an unreadable journal.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

# In Envoy's UPSTREAM_TRANSPORT_FAILURE_REASON of a SAN mismatch (spaces written as underscores).
REFUSED_SANS = re.compile(r"certificate_SANs_are_\[([^\]]*)\]")
# The keys of envoy_sidecar_access_log_format that verify reads ("direction" is always added).
LOG_KEYS = ("direction", "downstream", "original_destination", "upstream", "upstream_peer",
            "upstream_failure", "response_flags")


# --- pure part (unit-tested) ----------------------------------------------------------------------

def endpoint(address, port):
    """address:port as Envoy writes it (IPv6 in brackets)."""
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def plan_checks(model):
    """The connections to make, from the mesh model's peers and services (verify.yml passes them).

    One per peer (its first mesh port: enough to prove its identity, and one RBAC decision on its
    side at most) and one per service. A peer without a mesh port (only server_first ports, called
    in plaintext) cannot be proven and is listed as such.
    """
    checks = []
    for peer in model.get("peers", []):
        ports = sorted(int(port) for port in peer.get("ports", []))
        checks.append({
            "kind": "member",
            "target": peer["name"],
            "address": peer["address"],
            "port": ports[0] if ports else None,
            "direction": "outbound_mesh_" + peer["name"],
            "expected": {peer["identity"]: {"name": peer["name"], "address": peer["address"]}},
        })
    for service in model.get("services", []):
        checks.append({
            "kind": "service",
            "target": service["name"],
            "address": service["vip"],
            "port": int(service["port"]),
            "direction": "outbound_service_" + service["name"],
            "expected": {member["identity"]: {"name": member["name"], "address": member["address"]}
                         for member in service.get("members", [])},
        })
    return checks


def parse_access_log(text):
    """The JSON objects among the lines of ``text`` (Envoy's other output is skipped)."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def find_entry(entries, check, client):
    """The access-log entry of the connection made from ``client`` (address:port) for ``check``."""
    target = endpoint(check["address"], check["port"])
    found = None
    for entry in entries:
        if entry.get("direction") == check["direction"] and entry.get("downstream") == client:
            if entry.get("original_destination") in (None, target):
                found = entry
    return found


def host_of(address_port):
    """The address part of Envoy's address:port ('[v6]:port' too)."""
    host = address_port.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def same_address(left, right):
    """Two IP addresses as equal, however they are spelled (IPv6 zeros)."""
    try:
        return ipaddress.ip_address(left) == ipaddress.ip_address(right)
    except ValueError:
        return left == right


def _value(entry, key):
    """An access-log field, '' when Envoy had nothing for it (it writes '-' or null then)."""
    value = entry.get(key)
    if value is None or value == "-":
        return ""
    return str(value)


def judge(check, connection, entry):
    """The verdict on one check: ok, the identity seen, and a line saying so."""
    label = "%s %s (%s)" % (check["kind"], check["target"],
                            endpoint(check["address"], check["port"]) if check["port"] else check["address"])
    result = {"kind": check["kind"], "target": check["target"], "address": check["address"], "port": check["port"],
              "ok": False, "final": False, "identity": "", "upstream": "", "expected": sorted(check["expected"])}
    if check["port"] is None:
        result["message"] = "%s: no mesh port (only server_first ports, called in plaintext): nothing to prove" % label
        result.update({"ok": True, "skipped": True, "final": True})
        return result
    if connection.get("error"):
        result["message"] = "%s: could not connect through the local sidecar: %s" % (label, connection["error"])
        return result
    if entry is None:
        result["message"] = ("%s: the sidecar logged no connection from %s on filter chain %s (is the access log on, "
                             "as JSON with the keys %s?)" % (label, connection.get("client"), check["direction"],
                                                             ", ".join(LOG_KEYS)))
        return result
    missing = [key for key in LOG_KEYS if key not in entry]
    identity = _value(entry, "upstream_peer")
    upstream = _value(entry, "upstream")
    failure = _value(entry, "upstream_failure")
    flags = _value(entry, "response_flags")
    result.update({"identity": identity, "upstream": upstream, "response_flags": flags, "upstream_failure": failure})
    expected = check["expected"]
    # An identity means the last connection attempt got through the handshake; a failure reason
    # next to it is an earlier attempt's (a service's dead member, skipped).
    refused = REFUSED_SANS.search(failure)
    if missing:
        result["message"] = "%s: the access log lacks the keys %s (envoy_sidecar_access_log_format)" % (label, ", ".join(missing))
        result["final"] = True
    elif identity and identity not in expected:
        result["message"] = "%s: %s presented %s, expected %s" % (
            label, upstream or "the upstream", identity, " or ".join(sorted(expected)))
        result["final"] = True
    elif identity and not same_address(host_of(upstream), expected[identity]["address"]):
        # A service accepts each of its members' identities: each must come from its own member.
        result["message"] = "%s: %s presented %s, the identity of %s at %s" % (
            label, upstream, identity, expected[identity]["name"], expected[identity]["address"])
        result["final"] = True
    elif identity:
        result["ok"] = True
        result["final"] = True
        result["message"] = "%s: %s verified at %s%s" % (
            label, identity, upstream, "" if check["kind"] == "member" else " (member %s)" % expected[identity]["name"])
    elif refused:
        # Envoy names the SANs of a certificate it refused.
        result["identity"] = refused.group(1)
        result["message"] = "%s: %s presented %s, expected %s: the sidecar refused the handshake" % (
            label, upstream or "the upstream", refused.group(1), " or ".join(sorted(expected)))
        result["final"] = True
    elif failure:
        result["message"] = "%s: the mTLS connection to %s failed: %s%s" % (
            label, upstream or "the upstream", failure, " (flags %s)" % flags if flags else "")
        result["final"] = failure.startswith("TLS_error")
    else:
        result["message"] = "%s: no mTLS connection to %s within %.1f s%s" % (
            label, upstream or "any upstream", connection.get("held", 0.0),
            " (flags %s)" % flags if flags else "")
    return result


def own_certificates(certs, identity):
    """From the admin /certs answer: the identities this sidecar presents, days left, problems."""
    identities, days = set(), []
    for context in certs.get("certificates", []):
        for cert in context.get("cert_chain", []) or []:
            for san in cert.get("subject_alt_names", []) or []:
                if "uri" in san:
                    identities.add(san["uri"])
            if cert.get("days_until_expiration") not in (None, ""):
                days.append(int(cert["days_until_expiration"]))
    problems = []
    if not identities:
        problems.append("the sidecar presents no certificate")
    elif identities != {identity}:
        problems.append("the sidecar presents %s, expected exactly %s" % (", ".join(sorted(identities)), identity))
    return {"identities": sorted(identities), "days_until_expiration": min(days) if days else None, "problems": problems}


def parse_stat(text, name):
    """One counter or gauge of the admin /stats text format, None when absent."""
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.strip() == name:
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


# --- side effects ---------------------------------------------------------------------------------

def connect_and_hold(check, hold, timeout):
    """One plain TCP connection through the local sidecar, held ``hold`` seconds, then closed."""
    connection = {"held": hold}
    family = socket.AF_INET6 if ":" in check["address"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((check["address"], check["port"]))
        local = sock.getsockname()
        connection["client"] = endpoint(local[0], local[1])
        time.sleep(hold)
    except OSError as exc:
        connection["error"] = str(exc)
    finally:
        sock.close()
    return connection


def connect_all(checks, hold, timeout, parallel=64):
    """The connections, up to ``parallel`` at once (a fleet's worth costs a few holds, not one per peer)."""
    results = [None] * len(checks)
    slots = threading.BoundedSemaphore(parallel)

    def run(index):
        with slots:
            results[index] = connect_and_hold(checks[index], hold, timeout)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(checks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class LogUnreadable(Exception):
    """Envoy's access log cannot be read at all."""


class AccessLog:
    """Envoy's access log from now on: the unit's journal, or a file (a sidecar not run by systemd)."""

    def __init__(self, unit=None, path=None):
        self.unit, self.path = unit, path
        self.since = int(time.time()) - 1
        self.offset = os.path.getsize(path) if path and os.path.exists(path) else 0

    def read(self):
        if self.path:
            try:
                with open(self.path, "rb") as stream:
                    stream.seek(self.offset)
                    return parse_access_log(stream.read().decode("utf-8", "replace"))
            except OSError:
                return []
        argv = ["journalctl", "--no-pager", "-q", "-o", "cat", "-u", self.unit, "--since", "@%d" % self.since]
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        except OSError as exc:
            raise LogUnreadable("cannot run journalctl (%s): set hostmesh_verify_access_log_file to Envoy's log" % exc)
        if proc.returncode != 0:
            raise LogUnreadable("%s failed: %s" % (" ".join(argv), proc.stderr.decode("utf-8", "replace").strip()))
        return parse_access_log(proc.stdout.decode("utf-8", "replace"))


def run_round(checks, log, hold, timeout, wait):
    """Connect for every check, then wait up to ``wait`` s for each connection's log entry."""
    connections = connect_all(checks, hold, timeout)
    deadline = time.monotonic() + wait
    while True:
        entries = log.read()
        found = [find_entry(entries, check, conn["client"]) if conn.get("client") else None
                 for check, conn in zip(checks, connections)]
        pending = [1 for conn, entry in zip(connections, found) if conn.get("client") and entry is None]
        # Envoy writes an entry when the connection closes and flushes every second.
        if not pending or time.monotonic() > deadline:
            return [judge(check, conn, entry) for check, conn, entry in zip(checks, connections, found)]
        time.sleep(0.25)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over Envoy's admin Unix socket."""

    def __init__(self, path, timeout=5):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def admin_get(path, url):
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def own_state(admin_socket, identity):
    try:
        _status, certs = admin_get(admin_socket, "/certs")
        own = own_certificates(json.loads(certs), identity)
        _status, stats = admin_get(admin_socket, "/stats?filter=%5Eserver%5C.days_until_first_cert_expiring%24")
        own["days_until_first_cert_expiring"] = parse_stat(stats, "server.days_until_first_cert_expiring")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        own = {"identities": [], "days_until_expiration": None, "days_until_first_cert_expiring": None,
               "problems": ["cannot ask the sidecar on %s: %s" % (admin_socket, exc)]}
    return own


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    plan = parser.add_mutually_exclusive_group(required=True)
    plan.add_argument("--model-b64", help="base64 of the JSON {peers, services} of the mesh model")
    plan.add_argument("--model-file", help="a file holding that JSON")
    parser.add_argument("--identity", required=True, help="this member's SPIFFE ID")
    parser.add_argument("--admin-socket", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--journal-unit", help="read Envoy's access log from this unit's journal")
    source.add_argument("--access-log-file", help="read Envoy's access log from this file instead")
    parser.add_argument("--hold", type=float, default=0.5, help="seconds each connection stays open (first try)")
    parser.add_argument("--retry-hold", type=float, default=2.0, help="seconds for the second try of an unproven check")
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--log-wait", type=float, default=5.0, help="seconds to wait for the access-log entries")
    args = parser.parse_args(argv)

    try:
        if args.model_b64:
            model = json.loads(base64.b64decode(args.model_b64).decode("utf-8"))
        else:
            with open(args.model_file, encoding="utf-8") as stream:
                model = json.load(stream)
    except (OSError, ValueError) as exc:
        parser.error("cannot read the model: %s" % exc)
    checks = plan_checks(model)

    log = AccessLog(unit=args.journal_unit, path=args.access_log_file)
    results = [None] * len(checks)
    pending = [index for index, check in enumerate(checks) if check["port"] is not None]
    for index, check in enumerate(checks):
        if check["port"] is None:
            results[index] = judge(check, {}, None)
    # A second, longer try for what was not proven (a slow upstream handshake, a cold connection).
    for hold in (args.hold, args.retry_hold):
        if not pending:
            break
        try:
            round_results = run_round([checks[index] for index in pending], log, hold, args.connect_timeout, args.log_wait)
        except LogUnreadable as exc:
            print("hostmesh_mesh_check: %s" % exc, file=sys.stderr)
            return 2
        for index, result in zip(pending, round_results):
            results[index] = result
        # A verdict that a longer hold cannot change (an identity seen, a handshake refused) stands.
        pending = [index for index in pending if not results[index].get("final")]

    own = own_state(args.admin_socket, args.identity)
    print(json.dumps({"ok": all(result["ok"] for result in results) and not own["problems"],
                      "checks": results, "own": own}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
