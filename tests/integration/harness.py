# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Integration-test harness for hostmesh.sidecar.

Runs ansible-playbook the way users do, but inside throw-away network
namespaces (and optionally over a private overlay of /etc), so the machine's
own firewall rules, users and groups are never touched.

Namespaces are entered with ``nsenter --net=/run/netns/NAME`` rather than
``ip netns exec``: the latter remounts /sys in a new mount namespace, which
hides the cgroup mounts that the net_cls and cgroup_path bypass modes need.

Everything created here is registered and removed at teardown, also when a
test fails, and once more at interpreter exit as a last resort.
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
TARGET_PYTHON = "/usr/bin/python3"
CALLBACK_DIR = pathlib.Path(__file__).resolve().parent / "callback_plugins"
NETNS_DIR = "/run/netns"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from collections_path import link_checkout  # noqa: E402  pylint: disable=wrong-import-position,import-error

_collections_dir = None
_live_namespaces = {}
_live_overlays = {}


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the captured output."""

    def __str__(self):
        return "%s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            super().__str__(), self.stdout or "", self.stderr or "")


def _run(argv, *, check=True, input=None, env=None, timeout=60):
    argv = [str(arg) for arg in argv]
    proc = subprocess.run(argv, input=input, env=env, timeout=timeout, text=True,
                          capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def collections_path():
    """Session directory holding ansible_collections/hostmesh/sidecar -> REPO_ROOT."""
    global _collections_dir  # pylint: disable=global-statement
    if _collections_dir is None:
        base = link_checkout(tempfile.mkdtemp(prefix="hm-collections-"), REPO_ROOT)
        _collections_dir = base
        atexit.register(shutil.rmtree, str(base), True)
    return _collections_dir


class NetNS:
    """A fresh named network namespace ``hm-<random>`` with lo up."""

    def __init__(self):
        self.name = "hm-" + secrets.token_hex(4)
        self.path = os.path.join(NETNS_DIR, self.name)
        self._processes = []
        self._closed = False
        _run(["ip", "netns", "add", self.name])
        _live_namespaces[self.name] = self
        try:
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        except Exception:
            self.close()
            raise

    def __repr__(self):
        return "NetNS(%r)" % self.name

    def command(self, argv):
        """The argv that runs ``argv`` inside this namespace."""
        return ["nsenter", "--net=" + self.path, "--"] + [str(arg) for arg in argv]

    def run(self, argv, *, check=True, input=None, env=None, timeout=60):
        return _run(self.command(argv), check=check, input=input, env=env, timeout=timeout)

    def popen(self, argv, **kw):
        """Start a process inside the namespace; close() kills its process group."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(argv), **kw)  # pylint: disable=consider-using-with
        self._processes.append(proc)
        return proc

    def add_veth_peer(self, other, addr_self, addr_other):
        """Connect this namespace to ``other`` with a veth pair.

        The pair is created directly inside the two namespaces (never in the
        root namespace). Returns the interface names (in self, in other).
        """
        if_self = "v-" + other.name[3:]
        if_other = "v-" + self.name[3:]
        _run(["ip", "-n", self.name, "link", "add", if_self, "type", "veth",
              "peer", "name", if_other, "netns", other.name])
        _run(["ip", "-n", self.name, "addr", "add", addr_self, "dev", if_self])
        _run(["ip", "-n", other.name, "addr", "add", addr_other, "dev", if_other])
        _run(["ip", "-n", self.name, "link", "set", if_self, "up"])
        _run(["ip", "-n", other.name, "link", "set", if_other, "up"])
        return if_self, if_other

    def add_dummy(self, ifname, addr):
        """Give the namespace an extra local address on interface ``ifname``.

        Uses a dummy link; kernels built without the dummy driver (like this
        CI machine's) get a port-less bridge instead, which holds a local
        address just the same. Returns the link type used.
        """
        kind = "dummy"
        proc = _run(["ip", "-n", self.name, "link", "add", ifname, "type", kind], check=False)
        if proc.returncode != 0:
            kind = "bridge"
            _run(["ip", "-n", self.name, "link", "add", ifname, "type", kind])
        _run(["ip", "-n", self.name, "addr", "add", addr, "dev", ifname])
        _run(["ip", "-n", self.name, "link", "set", ifname, "up"])
        return kind

    def pids(self):
        proc = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(pid) for pid in proc.stdout.split() if pid.isdigit()]

    def close(self):
        """Kill everything running in the namespace and delete it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in self._processes:
            # The whole group: children may outlive the process popen() started.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                if proc.poll() is None:
                    proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if os.path.exists(self.path):
            for _attempt in range(50):
                pids = self.pids()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            _live_namespaces.pop(self.name, None)
            _run(["ip", "netns", "del", self.name])
        _live_namespaces.pop(self.name, None)


class EtcOverlay:
    """A persistent overlayfs upper/work pair over /etc.

    Commands wrapped with :meth:`command` see /etc through the overlay in a
    private mount namespace; writes (useradd, groupadd, ...) land in ``upper``
    and persist between runs, while the real /etc stays unchanged.
    """

    def __init__(self):
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="hm-etc-overlay-"))
        self.upper = self.base / "upper"
        self.work = self.base / "work"
        self.upper.mkdir()
        self.work.mkdir()
        _live_overlays[str(self.base)] = self

    def __repr__(self):
        return "EtcOverlay(%r)" % str(self.base)

    def command(self, argv):
        """The argv that runs ``argv`` with /etc overlaid (private mount namespace)."""
        script = ('mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc'
                  ' && shift 2 && exec "$@"')
        return (["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                 str(self.upper), str(self.work)] + [str(arg) for arg in argv])

    def run(self, argv, *, netns=None, check=True, input=None, env=None, timeout=60):
        argv = self.command(argv)
        if netns is not None:
            argv = netns.command(argv)
        return _run(argv, check=check, input=input, env=env, timeout=timeout)

    def cleanup(self):
        shutil.rmtree(self.base, ignore_errors=True)
        _live_overlays.pop(str(self.base), None)


@dataclass
class PlaybookResult:
    rc: int
    stdout: str
    stderr: str
    plays: list
    stats: dict = field(default_factory=dict)
    command: list = field(default_factory=list)

    def _records(self):
        for play in self.plays:
            yield from play.get("tasks", [])

    def task(self, name, host="localhost"):
        """Result dict of the task called ``name`` on ``host``.

        ``name`` matches the task's full name (``role : task`` for role
        tasks) or its plain name. The dict is the module's raw result plus
        ``hostmesh_status`` (ok, failed, ignored, skipped, unreachable).
        """
        matches = [record for record in self._records()
                   if name in (record["task"]["name"], record["task"]["plain_name"])
                   and host in record["hosts"]]
        if not matches:
            raise AssertionError("task %r did not run on %s. Tasks run: %r\n%s" % (
                name, host, [r["task"]["name"] for r in self._records()], self.output))
        if len(matches) > 1:
            raise AssertionError("task name %r is ambiguous: it ran %d times" % (name, len(matches)))
        return matches[0]["hosts"][host]

    def changed_tasks(self):
        return [record["task"]["name"] for record in self._records()
                if any(result.get("changed") for result in record["hosts"].values())]

    @property
    def output(self):
        """stdout and stderr together, for assertion messages."""
        return "--- ansible-playbook rc=%s ---\n%s\n--- stderr ---\n%s" % (self.rc, self.stdout, self.stderr)

    def __str__(self):
        return self.output


def _write_playbook(playbook, workdir):
    if isinstance(playbook, pathlib.Path) or (isinstance(playbook, str) and "\n" not in playbook):
        path = pathlib.Path(playbook)
        if not path.is_absolute():
            path = REPO_ROOT / path
        if not path.is_file():
            raise FileNotFoundError("playbook not found: %s" % path)
        return path
    if isinstance(playbook, str):
        text = playbook
    else:
        plays = list(playbook)
        if not (plays and all(isinstance(item, dict) and "hosts" in item for item in plays)):
            plays = [{"name": "hostmesh integration test", "hosts": "localhost",
                      "connection": "local", "gather_facts": False, "tasks": plays}]
        # JSON is valid YAML, and needs no YAML library here.
        text = json.dumps(plays, indent=1)
    path = workdir / "playbook.yml"
    path.write_text(text, encoding="utf-8")
    return path


def venv_tool(name):
    """Path of a command of the environment running pytest (the project's .venv), else from PATH."""
    candidate = pathlib.Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise AssertionError("%s not found next to %s or on PATH (run ./scripts/setup.sh)" % (name, sys.executable))
    return found


def run_playbook(playbook, *, netns=None, check=False, diff=False, extra_vars=None,
                 etc_overlay=None, env=None, timeout=300, extra_args=()):
    """Run ansible-playbook against localhost and collect every task result.

    ``playbook`` is a list of task dicts (wrapped into one local play), a list
    of play dicts, YAML text, or a path (relative paths are from REPO_ROOT).
    Modules run with the system interpreter /usr/bin/python3, as on a host.
    A non-zero rc is returned, never raised: tests assert on it.
    """
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="hm-playbook-"))
    try:
        playbook_path = _write_playbook(playbook, workdir)
        inventory = workdir / "inventory.ini"
        inventory.write_text(
            "localhost ansible_connection=local ansible_python_interpreter=%s\n" % TARGET_PYTHON,
            encoding="utf-8")
        results_file = workdir / "results.json"

        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook_path)]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if extra_vars:
            vars_file = workdir / "vars.json"
            vars_file.write_text(json.dumps(extra_vars), encoding="utf-8")
            argv += ["-e", "@" + str(vars_file)]
        argv += [str(arg) for arg in extra_args]
        if etc_overlay is not None:
            argv = etc_overlay.command(argv)
        if netns is not None:
            argv = netns.command(argv)

        # No ansible.cfg applies: the cwd is a fresh temp dir and ANSIBLE_CONFIG is dropped.
        run_env = {key: value for key, value in os.environ.items() if key != "ANSIBLE_CONFIG"}
        run_env.update({
            "PATH": "%s:%s" % (VENV_BIN, SYSTEM_PATH),
            "LC_ALL": "C.UTF-8",
            "ANSIBLE_COLLECTIONS_PATH": str(collections_path()),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
            "ANSIBLE_CALLBACKS_ENABLED": "hostmesh_results",
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "0",
            "ANSIBLE_LOCAL_TEMP": str(workdir / "local-tmp"),
            "HOSTMESH_RESULTS_FILE": str(results_file),
        })
        if env:
            run_env.update(env)

        proc = subprocess.Popen(argv, cwd=workdir, env=run_env, text=True,  # pylint: disable=consider-using-with
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise AssertionError("ansible-playbook timed out after %ss\n%s\n%s" % (timeout, stdout, stderr))

        plays, stats = [], {}
        if results_file.exists():
            data = json.loads(results_file.read_text(encoding="utf-8"))
            plays, stats = data["plays"], data["stats"]
        return PlaybookResult(rc=proc.returncode, stdout=stdout, stderr=stderr, plays=plays,
                              stats=stats, command=argv)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _cleanup_everything():
    for namespace in list(_live_namespaces.values()):
        namespace.close()
    for overlay in list(_live_overlays.values()):
        overlay.cleanup()


atexit.register(_cleanup_everything)
