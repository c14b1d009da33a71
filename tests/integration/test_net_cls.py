# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""hostmesh.sidecar.net_cls through ansible-playbook, on the real kernel.

Isolation: every playbook runs inside a ``MountSandbox``, a private mount
namespace held open by a sleeping process, with its own tmpfs on /run (the
module's marker and /run/hostmesh live there) and on /sys/fs/cgroup (an empty
v1/hybrid layout, or a cgroup2 mount for a v2 host). Mounts made inside vanish
with the namespace. Cgroups do not: the net_cls hierarchy is one kernel object
for all namespaces and lives on while it has child cgroups, so every cgroup a
test makes has a per-test name prefix and the sandbox's teardown moves its
processes out and removes it, also when the test failed, then checks that the
kernel's net_cls hierarchy is back to how the test found it.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import time

import pytest

import harness

from ansible_collections.hostmesh.sidecar.plugins.module_utils._net_cls import (
    mount_controllers,
    net_cls_mounts,
    parse_mountinfo,
    parse_proc_cgroups,
)

MODULE = "hostmesh.sidecar.net_cls"
CLASSID = 0x100001
PROXY_UID = 1337

# Run inside the sandbox by the teardown: move the processes of every cgroup
# whose name starts with the prefix to the hierarchy root, then remove it.
REAPER = r"""
import os, sys
prefix = sys.argv[1]
mounts = []
for line in open("/proc/self/mountinfo"):
    left, right = line.split(" - ", 1)
    fstype, _source, options = right.split()[:3]
    if fstype == "cgroup" and "net_cls" in options.split(","):
        mounts.append(left.split()[4].encode().decode("unicode_escape"))
for mount in mounts:
    if not os.path.isfile(os.path.join(mount, "cgroup.procs")):
        continue  # covered by a later mount
    for top in os.listdir(mount):
        if not top.startswith(prefix) or not os.path.isdir(os.path.join(mount, top)):
            continue
        for dirpath, _dirs, _files in os.walk(os.path.join(mount, top), topdown=False):
            for _round in range(20):
                pids = open(os.path.join(dirpath, "cgroup.procs")).read().split()
                if not pids:
                    break
                for pid in pids:
                    try:
                        with open(os.path.join(mount, "cgroup.procs"), "w") as handle:
                            handle.write(pid)
                    except ProcessLookupError:
                        pass
            os.rmdir(dirpath)
            print("removed", dirpath)
"""


def net_cls_controller():
    return parse_proc_cgroups(pathlib.Path("/proc/cgroups").read_text())["net_cls"]


def wait_for_unregistered(timeout=5.0):
    """Wait until the kernel has destroyed the net_cls v1 hierarchy (hierarchy id 0)."""
    deadline = time.monotonic() + timeout
    while net_cls_controller().hierarchy != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class MountSandbox:
    """A private mount namespace kept open by a holder process (see the module docstring).

    It has the ``command(argv)`` wrapper of harness.EtcOverlay, so it is passed
    to ``harness.run_playbook`` as ``etc_overlay`` to run ansible-playbook inside.
    """

    def __init__(self, layout, prefix):
        self.layout = layout
        self.prefix = prefix
        # Mounts of the net_cls hierarchy inherited from the root namespace
        # (other tools, other tests) are hidden, so the module's choice of a
        # mount point is tested as on a host where none is mounted.
        script = ("set -e; for m in $(awk '/ - cgroup / && /[ ,]net_cls[, ]/ {print $5}' /proc/self/mountinfo"
                  " | sort -r); do umount -l \"$m\"; done; mount -t tmpfs -o mode=755 hmt-run /run; ")
        if layout == "hybrid":
            script += "mount -t tmpfs -o mode=755 hmt-cgroup /sys/fs/cgroup; "
        elif layout == "v2":
            script += "mount -t cgroup2 cgroup2 /sys/fs/cgroup; "
        script += "echo ready; exec sleep 3600"
        self.holder = subprocess.Popen(  # pylint: disable=consider-using-with
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            self.holder.kill()
            raise RuntimeError("mount sandbox did not start: %r" % line)
        self.ns_path = "/proc/%d/ns/mnt" % self.holder.pid

    def command(self, argv):
        return ["nsenter", "--mount=" + self.ns_path, "--"] + [str(arg) for arg in argv]

    def run(self, argv, check=True):
        proc = subprocess.run(self.command(argv), capture_output=True, text=True, check=False, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError("%s failed (%d): %s %s" % (argv, proc.returncode, proc.stdout, proc.stderr))
        return proc

    def read(self, path):
        return self.run(["cat", path]).stdout

    def exists(self, path):
        return self.run(["test", "-e", path], check=False).returncode == 0

    def net_cls_mountpoints(self):
        # A mount that a later one covers shows no cgroup.procs.
        return [m.mountpoint for m in net_cls_mounts(parse_mountinfo(self.read("/proc/self/mountinfo")))
                if self.exists(m.mountpoint + "/cgroup.procs")]

    def foreign_cgroups(self, mountpoint):
        """Child cgroups of the hierarchy that this test did not make (other users of the kernel's net_cls)."""
        listing = self.run(["find", mountpoint, "-mindepth", "1", "-maxdepth", "1", "-type", "d"]).stdout.split()
        return sorted(os.path.basename(path) for path in listing if not os.path.basename(path).startswith(self.prefix))

    def close(self):
        try:
            if self.holder.poll() is None:
                self.run([harness.TARGET_PYTHON, "-c", REAPER, self.prefix])
        finally:
            if self.holder.poll() is None:
                os.killpg(self.holder.pid, signal.SIGKILL)
            self.holder.wait(timeout=10)


def reap_outside(prefix):
    """Remove cgroups of ``prefix`` from a hierarchy that no mount shows any more."""
    controllers = parse_proc_cgroups(pathlib.Path("/proc/cgroups").read_text())
    script = ('set -e; d=$(mktemp -d); mount -t cgroup -o %s hmt-reap "$d"; %s -c "$1" "$2" || true; '
              'sleep 0.2; umount "$d"; rmdir "$d"'
              % (",".join(mount_controllers(controllers)), harness.TARGET_PYTHON))
    subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                    REAPER, prefix], check=True, capture_output=True, text=True, timeout=60)


def leftover_cgroups(prefix):
    """Cgroups named ``prefix*`` anywhere in the kernel's net_cls hierarchy."""
    if net_cls_controller().hierarchy == 0:
        return []
    controllers = parse_proc_cgroups(pathlib.Path("/proc/cgroups").read_text())
    script = ('set -e; d=$(mktemp -d); mount -t cgroup -o %s hmt-check "$d"; '
              'find "$d" -mindepth 1 -type d -name "$1*" -printf "%%P\\n"; umount "$d"; rmdir "$d"'
              % ",".join(mount_controllers(controllers)))
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", prefix],
                          check=True, capture_output=True, text=True, timeout=60)
    return proc.stdout.split()


@pytest.fixture
def prefix():
    return "hmt-" + secrets.token_hex(3)


@pytest.fixture
def sandbox_factory(prefix):
    """Make MountSandbox(layout); at teardown remove their cgroups and check the kernel state."""
    baseline = net_cls_controller()
    root_mounts = pathlib.Path("/proc/self/mountinfo").read_text()
    made = []

    def make(layout="hybrid"):
        box = MountSandbox(layout, prefix)
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()
    if net_cls_controller().hierarchy != 0:
        # Removes what is left of ours; and a hierarchy unmounted while a
        # removed child was still being freed stays registered (empty) until
        # one more mount and unmount lets it go.
        reap_outside(prefix)
        assert leftover_cgroups(prefix) == []
    if baseline.hierarchy == 0 and not wait_for_unregistered():
        # Only fail when nobody else can be holding it: no other cgroup in it
        # and no mount of it in the root namespace.
        assert net_cls_controller().num_cgroups > 1 or " net_cls" in pathlib.Path("/proc/self/mountinfo").read_text(), \
            "the empty net_cls hierarchy outlived the test: %r" % (net_cls_controller(),)
    assert pathlib.Path("/proc/self/mountinfo").read_text().count(" - cgroup ") == \
        root_mounts.count(" - cgroup "), "a cgroup mount leaked into the root mount namespace"
    assert not os.path.exists("/run/hostmesh/net_cls-mounts.json")


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory("hybrid")


def task(title, /, **args):
    """A task named ``title`` calling the module with ``args``."""
    return {"name": title, MODULE: args}


def play(box, *tasks, netns=None, **kw):
    return harness.run_playbook(list(tasks), etc_overlay=box, netns=netns, **kw)


def in_net_cls(pid):
    """The net_cls cgroup of ``pid`` from /proc/PID/cgroup ("/" is the root)."""
    for line in pathlib.Path("/proc/%d/cgroup" % pid).read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        if "net_cls" in controllers.split(","):
            return path
    return None


def test_first_run_changes_second_does_not_then_absent(sandbox, prefix):
    first = play(sandbox, task("Cgroup", name=prefix), diff=True)
    assert first.rc == 0, first.output
    result = first.task("Cgroup")
    path = "/sys/fs/cgroup/net_cls/" + prefix
    assert result["changed"] is True
    assert {key: result[key] for key in ("path", "mountpoint", "classid", "classid_decimal", "classid_tc",
                                         "pids_moved")} == {
        "path": path, "mountpoint": "/sys/fs/cgroup/net_cls", "classid": "0x100001", "classid_decimal": 1048577,
        "classid_tc": "10:1", "pids_moved": []}
    assert result["diff"]["before"]["mounted"] is False and result["diff"]["after"]["cgroup"] == "present"
    # The kernel reads the class id back in decimal.
    assert sandbox.read(path + "/net_cls.classid").strip() == "1048577"
    assert sandbox.net_cls_mountpoints() == ["/sys/fs/cgroup/net_cls"]
    assert '"/sys/fs/cgroup/net_cls"' in sandbox.read("/run/hostmesh/net_cls-mounts.json")

    second = play(sandbox, task("Cgroup", name=prefix), diff=True)
    assert second.rc == 0, second.output
    assert second.task("Cgroup")["changed"] is False
    assert second.task("Cgroup")["diff"]["before"] == second.task("Cgroup")["diff"]["after"]

    check_absent = play(sandbox, task("Absent", name=prefix, state="absent"), check=True)
    assert check_absent.task("Absent")["changed"] is True
    assert sandbox.exists(path)

    foreign = sandbox.foreign_cgroups("/sys/fs/cgroup/net_cls")
    absent = play(sandbox, task("Absent", name=prefix, state="absent"), diff=True)
    assert absent.rc == 0, absent.output
    assert absent.task("Absent")["changed"] is True
    assert not sandbox.exists(path)
    if foreign:
        # The kernel has one net_cls hierarchy: cgroups of others live in it
        # too, so the module keeps its mount.
        assert absent.task("Absent")["diff"]["after"]["mounted"] is True
        assert sandbox.net_cls_mountpoints() == ["/sys/fs/cgroup/net_cls"]
    else:
        # The module mounted the hierarchy and nothing else lives in it:
        # unmounted, and the directory it made is gone.
        assert absent.task("Absent")["diff"]["after"]["mounted"] is False
        assert sandbox.net_cls_mountpoints() == []
        assert not sandbox.exists("/sys/fs/cgroup/net_cls")
        assert not sandbox.exists("/run/hostmesh/net_cls-mounts.json")

    again = play(sandbox, task("Absent", name=prefix, state="absent"))
    assert again.rc == 0 and again.task("Absent")["changed"] is False, again.output


def test_cgroup2_host_mounts_in_a_place_of_its_own(sandbox_factory, prefix):
    box = sandbox_factory("v2")
    created = play(box, task("Cgroup", name=prefix, classid=1048578))
    assert created.rc == 0, created.output
    result = created.task("Cgroup")
    assert result["mountpoint"] == "/run/hostmesh/cgroup/net_cls"
    assert result["classid"] == "0x100002" and result["classid_decimal"] == 1048578
    assert box.net_cls_mountpoints() == ["/run/hostmesh/cgroup/net_cls"]
    assert box.read("/run/hostmesh/cgroup/net_cls/%s/net_cls.classid" % prefix).strip() == "1048578"
    # /sys/fs/cgroup (cgroup2) was left alone.
    assert not box.exists("/sys/fs/cgroup/net_cls")

    foreign = box.foreign_cgroups("/run/hostmesh/cgroup/net_cls")
    removed = play(box, task("Absent", name=prefix, state="absent"))
    assert removed.rc == 0, removed.output
    assert not box.exists("/run/hostmesh/cgroup/net_cls/" + prefix)
    if not foreign:
        assert box.net_cls_mountpoints() == []
        assert not box.exists("/run/hostmesh")


def test_existing_comount_is_reused_and_kept(sandbox, prefix):
    controller = net_cls_controller()
    controllers = parse_proc_cgroups(pathlib.Path("/proc/cgroups").read_text())
    if controller.hierarchy and mount_controllers(controllers) != ["net_cls", "net_prio"]:
        pytest.skip("net_cls is bound to a hierarchy without net_prio on this machine")
    comount = "/sys/fs/cgroup/net_cls,net_prio"
    sandbox.run(["mkdir", comount])
    sandbox.run(["mount", "-t", "cgroup", "-o", "net_cls,net_prio", "hmt-admin", comount])

    created = play(sandbox, task("Cgroup", name=prefix))
    assert created.rc == 0, created.output
    assert created.task("Cgroup")["mountpoint"] == comount
    assert sandbox.net_cls_mountpoints() == [comount]
    assert not sandbox.exists("/run/hostmesh/net_cls-mounts.json")

    removed = play(sandbox, task("Absent", name=prefix, state="absent"))
    assert removed.rc == 0 and removed.task("Absent")["changed"] is True, removed.output
    assert not sandbox.exists(comount + "/" + prefix)
    # Not ours: still mounted.
    assert sandbox.net_cls_mountpoints() == [comount]
    sandbox.run(["umount", comount])


def test_check_mode_on_drift_reports_and_changes_nothing(sandbox, prefix):
    args = {"name": prefix, "owner": PROXY_UID}
    converge = play(sandbox, task("Converge", **args))
    assert converge.rc == 0, converge.output
    path = converge.task("Converge")["path"]
    # Drift: another class id, and the control file handed back to root.
    sandbox.run(["sh", "-c", "echo 0x100002 > %s/net_cls.classid && chown 0:0 %s/cgroup.procs" % (path, path)])

    check = play(sandbox, task("Check", **args), check=True, diff=True)
    assert check.rc == 0, check.output
    result = check.task("Check")
    assert result["changed"] is True
    before, after = result["diff"]["before"], result["diff"]["after"]
    assert (before["classid"], after["classid"]) == ("0x100002", "0x100001")
    assert (before["cgroup.procs"]["owner"], after["cgroup.procs"]["owner"]) == (0, PROXY_UID)
    assert before["tasks"] == after["tasks"]
    assert sandbox.read(path + "/net_cls.classid").strip() == str(0x100002)
    assert sandbox.run(["stat", "-c", "%u", path + "/cgroup.procs"]).stdout.strip() == "0"

    repair = play(sandbox, task("Repair", **args))
    assert repair.rc == 0 and repair.task("Repair")["changed"] is True, repair.output
    assert sandbox.read(path + "/net_cls.classid").strip() == str(CLASSID)
    assert sandbox.run(["stat", "-c", "%u", path + "/cgroup.procs"]).stdout.strip() == str(PROXY_UID)


# Sends N datagrams from a new socket each time a line arrives on stdin (the
# socket takes the class id of the sender's cgroup when it is created).
SENDER = r"""
import socket, sys
for _line in sys.stdin:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _packet in range(int(sys.argv[1])):
        sock.sendto(b"x", ("127.0.0.1", 9999))
    sock.close()
    print("sent", flush=True)
"""


def _send(*procs):
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "sent"


def _counters(netns, variant):
    counts = {}
    for line in netns.run(["iptables-%s-save" % variant, "-c", "-t", "filter"]).stdout.splitlines():
        for tag in ("hmt-in-cgroup", "hmt-everyone-else"):
            if tag in line and line.startswith("["):
                counts[tag] = int(line[1:].split(":", 1)[0])
    return counts


def test_moved_process_gets_the_classid_and_iptables_matches_it(sandbox, prefix, netns, iptables_variant):
    iptables = ["iptables-" + iptables_variant, "-w", "5"]
    netns.run(iptables + ["-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-m", "cgroup", "--cgroup",
                          str(CLASSID), "-m", "comment", "--comment", "hmt-in-cgroup", "-j", "ACCEPT"])
    netns.run(iptables + ["-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-m", "comment", "--comment",
                          "hmt-everyone-else", "-j", "ACCEPT"])
    inside = netns.popen([harness.TARGET_PYTHON, "-c", SENDER, "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    outside = netns.popen([harness.TARGET_PYTHON, "-c", SENDER, "5"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)

    moved = play(sandbox, task("Move", name=prefix, pids=[inside.pid]), netns=netns, diff=True)
    assert moved.rc == 0, moved.output
    assert moved.task("Move")["pids_moved"] == [inside.pid]
    assert moved.task("Move")["diff"]["before"]["pids"] == []
    assert moved.task("Move")["diff"]["after"]["pids"] == [inside.pid]
    assert in_net_cls(inside.pid) == "/" + prefix
    assert in_net_cls(outside.pid) == "/"
    again = play(sandbox, task("Move", name=prefix, pids=[inside.pid]), netns=netns)
    assert again.task("Move")["changed"] is False and again.task("Move")["pids_moved"] == [], again.output

    _send(inside, outside)
    assert _counters(netns, iptables_variant) == {"hmt-in-cgroup": 3, "hmt-everyone-else": 5}

    # absent moves the process back to the root (class id 0) and keeps it
    # running; the module also unmounts the hierarchy it mounted, so the
    # process ends up in no net_cls cgroup at all.
    removed = play(sandbox, task("Absent", name=prefix, state="absent"), netns=netns)
    assert removed.rc == 0, removed.output
    assert removed.task("Absent")["pids_moved"] == [inside.pid]
    assert in_net_cls(inside.pid) in ("/", None)
    assert inside.poll() is None
    _send(inside)
    assert _counters(netns, iptables_variant) == {"hmt-in-cgroup": 3, "hmt-everyone-else": 8}


def test_owner_lets_the_proxy_uid_move_itself_in(sandbox, prefix):
    owned = play(sandbox, task("Owned", name=prefix, owner=PROXY_UID, group=PROXY_UID),
                 task("Not owned", name=prefix + "-root"))
    assert owned.rc == 0, owned.output
    path = owned.task("Owned")["path"]
    assert sandbox.run(["stat", "-c", "%u:%g %a", path + "/cgroup.procs", path + "/tasks"]).stdout.split("\n")[:2] \
        == ["%d:%d 664" % (PROXY_UID, PROXY_UID)] * 2
    # What the proxy's unit does on every start: as the unprivileged user,
    # move itself in, then exec the proxy (here: print its own cgroups).
    as_proxy = ["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_UID), "--clear-groups", "--",
                "sh", "-c", 'echo $$ > "$1/cgroup.procs" && exec cat /proc/self/cgroup', "sh"]
    joined = sandbox.run(as_proxy + [path], check=False)
    assert joined.returncode == 0, joined.stderr
    assert any(line.split(":", 2)[1] == "net_cls" and line.split(":", 2)[2] == "/" + prefix
               for line in joined.stdout.splitlines()), joined.stdout
    # Without the option the same user cannot.
    refused = sandbox.run(as_proxy + [owned.task("Not owned")["path"]], check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    # Owning the file is no licence to move other users' processes in.
    sleeper = subprocess.Popen(["sleep", "300"])  # pylint: disable=consider-using-with
    try:
        other = sandbox.run(["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_UID), "--clear-groups",
                             "--", harness.TARGET_PYTHON, "-c",
                             "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nos.write(fd, sys.argv[2].encode())",
                             path + "/cgroup.procs", str(sleeper.pid)], check=False)
        assert other.returncode != 0 and "PermissionError" in other.stderr, other.stderr
        assert in_net_cls(sleeper.pid) == "/"
    finally:
        sleeper.kill()
        sleeper.wait()


def _sandbox_state(box):
    return {
        "mounts": box.net_cls_mountpoints(),
        "sys_fs_cgroup": box.run(["ls", "-A", "/sys/fs/cgroup"]).stdout,
        "run": box.run(["ls", "-A", "/run"]).stdout,
        "net_cls_controller": net_cls_controller(),
    }


def _a_kernel_thread():
    for entry in sorted((e for e in os.listdir("/proc") if e.isdigit()), key=int):
        try:
            status = pathlib.Path("/proc", entry, "status").read_text()
        except OSError:
            continue
        if "\nKthread:\t1\n" in status or "\nPPid:\t2\n" in status:
            return int(entry), status.split("\n", 1)[0].split("\t", 1)[1]
    pytest.skip("no kernel thread is visible")
    return None


def test_bad_input_fails_and_changes_nothing(sandbox, prefix, tmp_path):
    nonempty = tmp_path / "not-empty"
    nonempty.mkdir()
    (nonempty / "keep").write_text("x")
    thread_holder = subprocess.Popen(  # pylint: disable=consider-using-with
        [harness.TARGET_PYTHON, "-c", "import threading, time\n"
         "threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\ntime.sleep(300)\n"])
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir("/proc/%d/task" % thread_holder.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        thread_id = max(int(tid) for tid in os.listdir("/proc/%d/task" % thread_holder.pid))
        kthread_pid, kthread_name = _a_kernel_thread()
        cases = [
            ({"classid": "0xZZ"}, "classid='0xZZ' is neither a hex number (0x100001) nor a decimal integer"),
            ({"classid": 0}, "classid=0 is out of range"),
            ({"classid": "0x100000000"}, "classid='0x100000000' is out of range"),
            ({"classid": -5}, "classid=-5 is out of range"),
            ({"name": "../escape"}, "name='../escape' must be a single cgroup directory name"),
            ({"name": "tasks"}, "name='tasks' collides with the control files"),
            ({"pids": [999999999]}, "pids: process 999999999 does not exist"),
            ({"pids": [thread_id]}, "pids: %d is a thread of process %d" % (thread_id, thread_holder.pid)),
            ({"pids": [kthread_pid]}, "pids: %d (%s) is a kernel thread" % (kthread_pid, kthread_name)),
            ({"pids": [os.getpid()], "state": "absent"}, "can only be moved in with state=present"),
            ({"owner": "hmt-no-such-user"}, "owner='hmt-no-such-user': no such user"),
            ({"mountpoint": str(nonempty)}, "mountpoint %s is a non-empty directory" % nonempty),
            ({"mountpoint": "run/relative"}, "mountpoint='run/relative' must be an absolute path"),
        ]
        before = _sandbox_state(sandbox)
        tasks = []
        for index, (args, _message) in enumerate(cases):
            entry = task("Bad %d" % index, **dict({"name": prefix}, **args))
            entry["ignore_errors"] = True
            tasks.append(entry)
        result = play(sandbox, *tasks)
        assert result.rc == 0, result.output
        for index, (args, message) in enumerate(cases):
            failed = result.task("Bad %d" % index)
            assert failed["hostmesh_status"] == "ignored", (args, failed)
            assert message in failed["msg"], (args, failed["msg"])
        assert _sandbox_state(sandbox) == before
        assert os.listdir(nonempty) == ["keep"]
        assert not os.path.exists(tmp_path / "run")
    finally:
        thread_holder.kill()
        thread_holder.wait()


def install_helper_directory(directory):
    """The helper directory as the transparent_proxy role installs it: the engines under their host names."""
    directory.mkdir()
    module_utils = harness.REPO_ROOT / "plugins" / "module_utils"
    for source, target in ((module_utils / "_host.py", "hostmesh_host.py"),
                           (module_utils / "_net_cls.py", "hostmesh_net_cls.py"),
                           (harness.REPO_ROOT / "roles" / "transparent_proxy" / "files" / "hostmesh-net-cls.py",
                            "hostmesh-net-cls.py")):
        shutil.copyfile(source, directory / target)
    return directory / "hostmesh-net-cls.py"


def test_host_cli_ensure_check_remove(sandbox, prefix, tmp_path):
    """The boot-time path: the same engine as a plain script (no Ansible), as a privileged ExecStartPre runs it."""
    script = str(install_helper_directory(tmp_path / "libexec"))
    cli = [harness.TARGET_PYTHON, script]
    usage = sandbox.run(cli + ["--help"])
    assert "ensure" in usage.stdout and usage.stderr == ""
    unknown = sandbox.run(cli + ["mount"], check=False)
    assert unknown.returncode == 2 and "invalid choice: 'mount'" in unknown.stderr
    args = ["--name", prefix, "--classid", "0x100003", "--owner", str(PROXY_UID)]
    ensured = sandbox.run(cli + ["ensure"] + args)
    path = "/sys/fs/cgroup/net_cls/" + prefix
    assert '"changed": true' in ensured.stdout and '"path": "%s"' % path in ensured.stdout
    assert sandbox.read(path + "/net_cls.classid").strip() == str(0x100003)
    assert sandbox.run(["stat", "-c", "%u", path + "/cgroup.procs"]).stdout.strip() == str(PROXY_UID)
    assert sandbox.run(cli + ["check"] + args, check=False).returncode == 0
    sandbox.run(["sh", "-c", "echo 7 > %s/net_cls.classid" % path])
    assert sandbox.run(cli + ["check"] + args, check=False).returncode == 1
    assert sandbox.read(path + "/net_cls.classid").strip() == "7"
    bad = sandbox.run(cli + ["ensure", "--name", prefix, "--classid", "0x1ffffffff"], check=False)
    assert bad.returncode == 2 and "classid='0x1ffffffff' is out of range" in bad.stderr
    # The module sees what the CLI made as converged.
    converged = play(sandbox, task("Converge", name=prefix, classid="0x100003", owner=PROXY_UID))
    assert converged.task("Converge")["changed"] is True  # the drifted class id
    assert play(sandbox, task("Again", name=prefix, classid="0x100003", owner=PROXY_UID)).task("Again")["changed"] \
        is False
    removed = sandbox.run(cli + ["remove", "--name", prefix])
    assert '"changed": true' in removed.stdout
    assert not sandbox.exists(path)
