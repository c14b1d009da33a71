# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hot-restart supervisor for the hostmesh Envoy sidecar (Python standard library only).

Installed on the managed host by the hostmesh.sidecar.envoy_sidecar role and run by
hostmesh-envoy.service as its main process (``run``), by its ExecReload= (``reload``) and by
the role's template validation (``validate``; ``validate-xds`` and ``xds-status`` for a mesh
member's file-based LDS and CDS).

``run`` starts Envoy with ``--restart-epoch 0``. On SIGHUP it starts the next epoch, which takes
the listening sockets over from the running Envoy through Envoy's hot restart protocol, so a
configuration change drops no connection; the old epoch drains and exits by itself. If the new
epoch fails, the old one keeps serving. If the serving Envoy dies (crash, ``kill -9``), the
supervisor stops everything and exits non-zero so that systemd's ``Restart=always`` starts a clean
epoch 0. It tells systemd (``Type=notify``) that the service is ready only once Envoy's admin
interface reports the serving epoch LIVE, and records its state in a small JSON file that
``reload`` waits on. The admin interface is a Unix socket (``run --admin-socket PATH``, the
bootstrap's ``admin.address.pipe``) that only root and the proxy user can connect to; the
supervisor runs as the proxy user and speaks HTTP/1.1 over it.

Before starting Envoy, ``run --join-cgroup DIR`` moves the supervisor itself into the net_cls
cgroup DIR (so every Envoy epoch it forks is in it) and refuses to start if that fails: Envoy
outside the cgroup would have its own upstream connections redirected back into itself.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PROG = "hostmesh-envoy-restarter"


def log(message):
    sys.stderr.write("%s: %s\n" % (PROG, message))
    sys.stderr.flush()


def sd_notify(message):
    """Send a notification to systemd when run as a Type=notify service; no-op otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(address)
        sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log("cannot notify systemd: %s" % exc)
    finally:
        sock.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to a server on a Unix stream socket, such as Envoy's admin interface."""

    def __init__(self, socket_path, timeout):
        # The host only fills the Host header; Envoy's admin interface ignores it.
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_get(admin_socket, path, timeout=1.0):
    """GET ``path`` from Envoy's admin interface on the Unix socket ``admin_socket``: (status, body bytes)."""
    connection = UnixHTTPConnection(admin_socket, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def admin_server_info(admin_socket, timeout=1.0):
    """Return Envoy's /server_info as a dict, or None while the admin interface does not answer."""
    try:
        status, body = admin_get(admin_socket, "/server_info", timeout)
        if status != 200:
            return None
        return json.loads(body.decode("utf-8"))
    except (OSError, ValueError, http.client.HTTPException):
        return None


def server_epoch_live(info):
    """Return the restart epoch of a LIVE Envoy from its /server_info, else None."""
    if not info or info.get("state") != "LIVE":
        return None
    try:
        return int(info["command_line_options"]["restart_epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def read_state(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_state(path, state):
    if not path:
        return
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".restarter-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, sort_keys=True)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def config_path_of(envoy_argv):
    """Return the bootstrap file given to Envoy with -c/--config-path, if any."""
    for index, arg in enumerate(envoy_argv):
        if arg in ("-c", "--config-path") and index + 1 < len(envoy_argv):
            return envoy_argv[index + 1]
        if arg.startswith("--config-path="):
            return arg.split("=", 1)[1]
    return None


def file_sha1(path):
    """SHA-1 of a file (the checksum Ansible reports for files), or None if it cannot be read."""
    if not path:
        return None
    digest = hashlib.sha1()  # nosec - same checksum as ansible.builtin.stat/template, not security
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(65536), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


# -- decisions (pure: no clock, no signals, no processes; unit-tested) ----------------------------

def envoy_command(remainder):
    """The Envoy command line given after ``--``; ValueError(reason) when it cannot be run as is."""
    envoy_argv = list(remainder)
    if envoy_argv and envoy_argv[0] == "--":
        envoy_argv = envoy_argv[1:]
    if not envoy_argv:
        raise ValueError("no Envoy command line given after --")
    if "--restart-epoch" in envoy_argv:
        raise ValueError("--restart-epoch is set by the supervisor, do not pass it")
    return envoy_argv


def epoch_argv(envoy_argv, epoch):
    """The command line of one epoch: Envoy's own, plus the epoch."""
    return list(envoy_argv) + ["--restart-epoch", str(epoch)]


def state_record(pid, serving, pending, last_failed, reloads, config_sha1, envoy_pids):
    """The content of the state file that ``reload`` and the role read.

    ``config_sha1`` maps each epoch to the checksum of the bootstrap it started with; the role
    compares the serving epoch's with the file on disk to know whether a hot restart is due.
    """
    return {
        "pid": pid,
        "serving_epoch": serving,
        "serving_config_sha1": config_sha1.get(serving),
        "pending_epoch": pending,
        "last_failed_epoch": last_failed,
        "reloads": reloads,
        "envoy_pids": dict((str(epoch), child_pid) for epoch, child_pid in envoy_pids.items()),
    }


def exit_outcome(epoch, serving, pending):
    """What the exit of Envoy ``epoch`` means.

    ``start_failed``: the starting epoch died before it was live (the serving one, if any, stays).
    ``serving_died``: the serving epoch died with no successor starting: the sidecar is down.
    ``handed_over``: an older epoch finished draining (the new one told it to exit), or the
    serving one exited while its successor was starting and took its sockets over.
    """
    if epoch == pending:
        return "start_failed"
    if epoch == serving and pending is None:
        return "serving_died"
    return "handed_over"


def signal_requests(received):
    """The (request, signal) pairs in the signal numbers read from the wakeup pipe, in order.

    SIGTERM and SIGINT request a stop, SIGHUP a reload; SIGCHLD only wakes the loop up.
    """
    requests = []
    for signum in bytearray(received):
        if signum in (signal.SIGTERM, signal.SIGINT):
            requests.append(("stop", signal.Signals(signum)))
        elif signum == signal.SIGHUP:
            requests.append(("reload", signal.Signals(signum)))
    return requests


def reload_target(state, pid):
    """The epoch a reload of supervisor ``pid`` waits for; ValueError(reason) when there is none."""
    if not state or state.get("serving_epoch") is None:
        raise ValueError("the sidecar has no serving epoch")
    if state.get("pid") != pid:
        raise ValueError("the state file belongs to pid %s, not %d" % (state.get("pid"), pid))
    return state["serving_epoch"] + 1


def reload_progress(state, target, pid):
    """Where a reload to epoch ``target`` stands in ``state``: live, failed, supervisor_gone or None (starting)."""
    state = state or {}
    serving = state.get("serving_epoch")
    if serving is not None and serving >= target:
        return "live"
    if state.get("last_failed_epoch", -1) >= target:
        return "failed"
    if state.get("pid") != pid:
        return "supervisor_gone"
    return None


# -- side effects ---------------------------------------------------------------------------------

def join_cgroup(directory):
    """Move this process into the cgroup DIRECTORY and check that it is there."""
    procs = os.path.join(directory, "cgroup.procs")
    pid = os.getpid()
    with open(procs, "w", encoding="ascii") as handle:
        handle.write("%d\n" % pid)
    with open(procs, "r", encoding="ascii") as handle:
        members = set(int(line) for line in handle if line.strip())
    if pid not in members:
        raise OSError("process %d is not listed in %s after joining" % (pid, procs))


class Supervisor:
    """Runs Envoy epochs, one serving, at most one starting, any number draining."""

    def __init__(self, envoy_argv, admin_socket, state_file, ready_timeout, stop_timeout):
        self.envoy_argv = envoy_argv
        self.admin_socket = admin_socket
        self.state_file = state_file
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.children = {}  # epoch -> Popen
        self.config_sha1 = {}  # epoch -> checksum of the bootstrap file it started with
        self.serving = None
        self.pending = None
        self.pending_deadline = 0.0
        self.reload_queued = False
        self.last_failed_epoch = -1
        self.reloads = 0

    # -- state ------------------------------------------------------------------------------
    def save_state(self):
        state = state_record(os.getpid(), self.serving, self.pending, self.last_failed_epoch, self.reloads,
                             self.config_sha1, dict((epoch, child.pid) for epoch, child in self.children.items()))
        try:
            write_state(self.state_file, state)
        except OSError as exc:
            log("cannot write state file %s: %s" % (self.state_file, exc))

    # -- epochs -----------------------------------------------------------------------------
    def start_epoch(self, epoch):
        argv = epoch_argv(self.envoy_argv, epoch)
        log("starting Envoy epoch %d" % epoch)
        self.config_sha1[epoch] = file_sha1(config_path_of(self.envoy_argv))
        child = subprocess.Popen(argv, close_fds=True)  # pylint: disable=consider-using-with
        self.children[epoch] = child
        self.pending = epoch
        self.pending_deadline = time.monotonic() + self.ready_timeout
        self.save_state()

    def request_reload(self):
        if self.pending is not None:
            log("reload requested while epoch %d is starting: queued" % self.pending)
            self.reload_queued = True
            return
        sd_notify("RELOADING=1\nSTATUS=starting Envoy epoch %d" % (self.serving + 1))
        self.reloads += 1
        self.start_epoch(self.serving + 1)

    def check_pending(self):
        if self.pending is None:
            return
        if server_epoch_live(admin_server_info(self.admin_socket)) == self.pending:
            self.serving = self.pending
            self.pending = None
            log("Envoy epoch %d is live" % self.serving)
            sd_notify("READY=1\nSTATUS=Envoy epoch %d serving" % self.serving)
            self.save_state()
            if self.reload_queued:
                self.reload_queued = False
                self.request_reload()
            return
        if time.monotonic() > self.pending_deadline:
            log("Envoy epoch %d not live after %.0f s: stopping it" % (self.pending, self.ready_timeout))
            child = self.children.get(self.pending)
            if child is not None and child.poll() is None:
                child.terminate()
            self.fail_pending()

    def fail_pending(self):
        epoch = self.pending
        self.pending = None
        self.last_failed_epoch = epoch
        self.reload_queued = False
        if self.serving is None or self.serving not in self.children:
            # Nothing is left serving (first start, or the old epoch died meanwhile).
            self.save_state()
            raise SystemExit(self.shutdown(signal.SIGTERM, exit_code=1))
        log("reload to epoch %d failed: epoch %d keeps serving" % (epoch, self.serving))
        sd_notify("READY=1\nSTATUS=reload to epoch %d failed, epoch %d serving" % (epoch, self.serving))
        self.save_state()

    def reap(self):
        for epoch, child in sorted(self.children.items()):
            code = child.poll()
            if code is None:
                continue
            del self.children[epoch]
            outcome = exit_outcome(epoch, self.serving, self.pending)
            if outcome == "start_failed":
                log("Envoy epoch %d exited with %s before it was live" % (epoch, code))
                self.fail_pending()
            elif outcome == "serving_died":
                log("serving Envoy epoch %d exited with %s: stopping so that systemd restarts the sidecar" % (epoch, code))
                self.serving = None
                self.save_state()
                raise SystemExit(self.shutdown(signal.SIGTERM, exit_code=1))
            else:
                log("Envoy epoch %d exited with %s after handing over" % (epoch, code))
            self.save_state()

    def shutdown(self, signum, exit_code=0):
        sd_notify("STOPPING=1")
        for child in self.children.values():
            if child.poll() is None:
                try:
                    child.send_signal(signum)
                except OSError:
                    pass
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()
        self.serving = None
        self.pending = None
        self.save_state()
        return exit_code

    # -- main loop --------------------------------------------------------------------------
    def run(self):
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, lambda *_: None)

        sd_notify("STATUS=starting Envoy epoch 0")
        self.start_epoch(0)
        while True:
            timeout = 0.1 if self.pending is not None else 5.0
            ready = select.select([read_fd], [], [], timeout)[0]
            received = b""
            if ready:
                try:
                    received = os.read(read_fd, 512)
                except BlockingIOError:
                    received = b""
            for request, signum in signal_requests(received):
                if request == "stop":
                    log("received %s: stopping Envoy" % signum.name)
                    return self.shutdown(signal.SIGTERM)
                if request == "reload":
                    if self.serving is None:
                        log("reload requested before the first epoch is live: queued")
                        self.reload_queued = True
                    else:
                        self.request_reload()
            self.reap()
            self.check_pending()


def command_run(args):
    try:
        envoy_argv = envoy_command(args.envoy_argv)
    except ValueError as exc:
        log(str(exc))
        return 2
    if args.join_cgroup:
        try:
            join_cgroup(args.join_cgroup)
        except OSError as exc:
            log("cannot join cgroup %s: %s; refusing to start Envoy outside it" % (args.join_cgroup, exc))
            return 1
        log("joined cgroup %s" % args.join_cgroup)
    supervisor = Supervisor(envoy_argv, args.admin_socket, args.state_file, args.ready_timeout, args.stop_timeout)
    try:
        return supervisor.run()
    except SystemExit as exc:
        return exc.code


def command_reload(args):
    """Signal the supervisor and wait until the next epoch is live, or report why it is not."""
    try:
        target = reload_target(read_state(args.state_file), args.pid)
    except ValueError as exc:
        log("%s (state file %s); cannot hot restart" % (exc, args.state_file))
        return 1
    os.kill(args.pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state = read_state(args.state_file) or {}
        progress = reload_progress(state, target, args.pid)
        if progress == "live":
            log("Envoy epoch %d is live" % state["serving_epoch"])
            return 0
        if progress == "failed":
            log("Envoy epoch %d failed to start; epoch %s keeps serving" % (target, state.get("serving_epoch")))
            return 1
        if progress == "supervisor_gone":
            log("the supervisor exited during the reload")
            return 1
        time.sleep(0.1)
    log("Envoy epoch %d not live after %.0f s" % (target, args.timeout))
    return 1


def envoy_validate(envoy, name, content):
    """``envoy --mode validate`` on ``content`` (bytes) written to a throwaway file ``name``: its
    extension tells Envoy how to parse it. Envoy's exit status."""
    workdir = tempfile.mkdtemp(prefix="hostmesh-envoy-validate-")
    try:
        target = os.path.join(workdir, name)
        with open(target, "wb") as handle:
            handle.write(content)
        return subprocess.call([envoy, "--mode", "validate", "--log-level", "error", "-c", target])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def command_validate(args):
    """Run ``envoy --mode validate`` on CONFIG, whatever its file name.

    Ansible validates a template on a temporary file without an extension, which Envoy would parse
    as JSON; a copy with the .yaml extension is validated instead.
    """
    with open(args.config, "rb") as handle:
        return envoy_validate(args.envoy, "bootstrap.yaml", handle.read())


def xds_resources(path):
    """The resources of a file-based xDS file (DiscoveryResponse JSON), each without its @type."""
    with open(path, "rb") as handle:
        response = json.load(handle)
    if not isinstance(response, dict) or not isinstance(response.get("resources"), list):
        raise ValueError("%s is not a DiscoveryResponse (an object with a resources list)" % path)
    resources = []
    for resource in response["resources"]:
        if not isinstance(resource, dict):
            raise ValueError("%s: a resource is not an object" % path)
        resource = dict(resource)
        resource.pop("@type", None)
        resources.append(resource)
    return resources


def xds_validation_bootstrap(listeners, clusters):
    """A throwaway bootstrap that serves the given LDS and CDS resources statically."""
    return {"node": {"id": "hostmesh-validate", "cluster": "hostmesh-validate"},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


def command_validate_xds(args):
    """Validate file-based LDS and CDS resources with ``envoy --mode validate``.

    Envoy's validate mode does not read file-based LDS or CDS (it calls a bad file OK): the same
    resources go into a throwaway bootstrap's static_resources, which is validated instead. The
    file being installed (Ansible's temporary copy) is validated with the installed one of the
    other type, so listeners are checked beside the clusters they will be served with.
    """
    try:
        listeners = xds_resources(args.lds) if args.lds else []
        clusters = xds_resources(args.cds) if args.cds and os.path.exists(args.cds) else []
    except (OSError, ValueError) as exc:
        print("hostmesh: %s" % exc, file=sys.stderr)
        return 1
    return envoy_validate(args.envoy, "validate.json",
                          json.dumps(xds_validation_bootstrap(listeners, clusters)).encode("utf-8"))


def xds_file_version(path):
    with open(path, "rb") as handle:
        return str(json.load(handle).get("version_info", ""))


def parse_xds_stats(text):
    """{stat: value} of Envoy's /stats lines for LDS and CDS (text readouts lose their quotes)."""
    stats = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            stats[name.strip()] = value.strip().strip('"')
    return stats


def xds_serving(stats, wanted):
    """The (type, served version, wanted version) pairs that Envoy does not serve yet."""
    prefixes = {"lds": "listener_manager.lds", "cds": "cluster_manager.cds"}
    return [(kind, stats.get(prefixes[kind] + ".version_text", ""), version)
            for kind, version in sorted(wanted.items()) if stats.get(prefixes[kind] + ".version_text", "") != version]


def der_element(data, offset):
    """(tag, start of content, end of content) of the DER element at ``offset``."""
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[offset:offset + size], "big")
        offset += size
    return tag, offset, offset + length


def pem_serial(path):
    """The serial number of the first certificate in a PEM file, as Envoy's /certs writes it (hex)."""
    import base64  # pylint: disable=import-outside-toplevel
    with open(path, encoding="ascii") as handle:
        text = handle.read()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise ValueError("%s holds no PEM certificate" % path)
    der = base64.b64decode(text.split(begin, 1)[1].split(end, 1)[0])
    # Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, ...
    _tag, certificate, _end = der_element(der, 0)
    _tag, position, _end = der_element(der, certificate)
    tag, start, stop = der_element(der, position)
    if tag == 0xA0:
        tag, start, stop = der_element(der, stop)
    if tag != 0x02:
        raise ValueError("%s: no serial number where the certificate should have one" % path)
    return "%x" % int.from_bytes(der[start:stop], "big")


def served_certificate_serials(certs_json):
    """The serial numbers of the certificates (not CAs) Envoy's /certs lists."""
    serials = set()
    for context in json.loads(certs_json).get("certificates") or []:
        for certificate in context.get("cert_chain") or []:
            serials.add(str(certificate.get("serial_number", "")).lower().lstrip("0"))
    return serials


def command_xds_status(args):
    """Wait until the running Envoy serves the LDS and CDS files' versions (and the certificate); else say why not.

    Envoy takes a renamed file up by itself. An update it rejects (a conflict only the running
    server sees) keeps the old version serving and counts update_rejected; its reason is in the
    journal, quoted here so the play fails with it.
    """
    wanted = {}
    for kind, path in (("lds", args.lds), ("cds", args.cds)):
        if path:
            wanted[kind] = xds_file_version(path)
    want_serial = pem_serial(args.cert).lstrip("0") if args.cert else None
    served_serials = set()
    deadline = time.monotonic() + args.timeout
    stats = {}
    while True:
        try:
            status, body = admin_get(args.admin_socket, "/stats?filter=^(listener_manager%5C.lds%5C.|cluster_manager%5C.cds%5C.|sds%5C.)", 2.0)
            if status == 200:
                stats = parse_xds_stats(body.decode("utf-8", "replace"))
        except (OSError, http.client.HTTPException):
            pass
        if want_serial:
            try:
                status, body = admin_get(args.admin_socket, "/certs", 2.0)
                if status == 200:
                    served_serials = served_certificate_serials(body.decode("utf-8", "replace"))
            except (OSError, ValueError, http.client.HTTPException):
                pass
        missing = xds_serving(stats, wanted)
        certificate_pending = bool(want_serial) and served_serials != {want_serial}
        if not missing and not certificate_pending:
            print(json.dumps({"serving": wanted, "certificate_serial": want_serial}))
            return 0
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    reasons = ""
    if args.unit:
        journal = subprocess.run(["journalctl", "--no-pager", "-o", "cat", "-u", args.unit, "--since", "-10min"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False).stdout
        reasons = "\n".join([line for line in journal.splitlines() if "rejected" in line][-3:])
    for kind, served, version in missing:
        prefix = "listener_manager.lds" if kind == "lds" else "cluster_manager.cds"
        print("Envoy does not serve the %s file's version %s (serving %r; %s.update_rejected=%s, update_failure=%s)"
              % (kind.upper(), version, served, prefix, stats.get(prefix + ".update_rejected", "?"),
                 stats.get(prefix + ".update_failure", "?")), file=sys.stderr)
    if certificate_pending:
        rotation_failed = {name: value for name, value in stats.items() if name.endswith("key_rotation_failed")}
        print("Envoy does not serve the certificate %s (serial %s) but %s; it keeps the old one when the new "
              "certificate and key do not belong together (%s)"
              % (args.cert, want_serial, ", ".join(sorted(served_serials)) or "none",
                 ", ".join("%s=%s" % item for item in sorted(rotation_failed.items())) or "no key_rotation_failed stat"),
              file=sys.stderr)
    if reasons:
        print("Envoy said:\n" + reasons, file=sys.stderr)
    return 1


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command")
    commands.required = True

    run = commands.add_parser("run", help="supervise Envoy with hot restart on SIGHUP")
    run.add_argument("--admin-socket", required=True,
                     help="Unix socket of Envoy's admin interface (the bootstrap's admin.address.pipe.path)")
    run.add_argument("--state-file", required=True, help="JSON state file read by the reload command")
    run.add_argument("--join-cgroup", help="cgroup directory (net_cls) to join before starting Envoy")
    run.add_argument("--ready-timeout", type=float, default=60.0, help="seconds a new epoch may take to be LIVE")
    run.add_argument("--stop-timeout", type=float, default=20.0, help="seconds to wait for Envoy to stop")
    run.add_argument("envoy_argv", nargs=argparse.REMAINDER, help="-- ENVOY [ARGS...] (without --restart-epoch)")
    run.set_defaults(func=command_run)

    reload_cmd = commands.add_parser("reload", help="hot restart a running supervisor and wait for the result")
    reload_cmd.add_argument("--pid", type=int, required=True, help="pid of the supervisor (systemd's $MAINPID)")
    reload_cmd.add_argument("--state-file", required=True)
    reload_cmd.add_argument("--timeout", type=float, default=90.0)
    reload_cmd.set_defaults(func=command_reload)

    validate = commands.add_parser("validate", help="validate an Envoy bootstrap file")
    validate.add_argument("--envoy", required=True, help="path of the Envoy binary")
    validate.add_argument("config", help="bootstrap file (YAML)")
    validate.set_defaults(func=command_validate)

    validate_xds = commands.add_parser("validate-xds", help="validate file-based LDS/CDS resources (JSON)")
    validate_xds.add_argument("--envoy", required=True, help="path of the Envoy binary")
    validate_xds.add_argument("--lds", help="LDS file (DiscoveryResponse JSON)")
    validate_xds.add_argument("--cds", help="CDS file (DiscoveryResponse JSON); ignored while it does not exist")
    validate_xds.set_defaults(func=command_validate_xds)

    xds_status = commands.add_parser("xds-status", help="wait until Envoy serves the LDS/CDS files' versions")
    xds_status.add_argument("--admin-socket", required=True, help="Unix socket of Envoy's admin interface")
    xds_status.add_argument("--lds", help="LDS file whose version_info Envoy must serve")
    xds_status.add_argument("--cds", help="CDS file whose version_info Envoy must serve")
    xds_status.add_argument("--cert", help="certificate (PEM) whose serial Envoy must serve (file-based SDS)")
    xds_status.add_argument("--unit", help="systemd unit whose journal holds Envoy's reasons")
    xds_status.add_argument("--timeout", type=float, default=15.0)
    xds_status.set_defaults(func=command_xds_status)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
