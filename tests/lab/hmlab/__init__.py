# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""hostmesh lab: a small fleet of real systemd hosts, booted with systemd-nspawn.

Each host is a Debian 12 system running its own systemd (PID 1 in its own PID
namespace), its own network namespace with one address on a shared bridge, and
an overlayfs root over one cached debootstrap image, so a host boots in about a
second and keeps its disk across reboots. Ansible reaches the hosts over SSH.

    python3 tests/lab/hostmesh_lab.py build-image [--cache DIR]
    python3 tests/lab/hostmesh_lab.py up --lab NAME --hosts alpha,bravo,charlie [--subnet 10.77.0.0/24]
    python3 tests/lab/hostmesh_lab.py exec --lab NAME -- CMD...   # CMD runs in the lab network
    python3 tests/lab/hostmesh_lab.py reboot --lab NAME HOST [--force]
    python3 tests/lab/hostmesh_lab.py stop|start --lab NAME HOST
    python3 tests/lab/hostmesh_lab.py status --lab NAME [--json]
    python3 tests/lab/hostmesh_lab.py shell --lab NAME HOST [-- CMD...]
    python3 tests/lab/hostmesh_lab.py down --lab NAME

Layout (see tests/lab/README.md for the details and the reasons):
  lab network namespace  hmlab-NAME        bridge br0 + controller address (.1)
  host network namespace hmlab-NAME-HOST   eth0 (.11, .12, ...), default route via .1
  /var/lib/hostmesh-lab/NAME/              state.json, inventory.yml, SSH key,
                                           HOST/{upper,work,root,console.log}
  /var/cache/hostmesh-lab/bookworm-STAMP/  the read-only image (overlay lowerdir)

Every host runs under a small supervisor process (`hostmesh_lab.py _supervise`),
which (re)creates the host's network namespace before each boot and boots the
host again when it reboots itself (`systemctl reboot`, ansible.builtin.reboot):
a reboot starts with a fresh network stack (no iptables rules, no sockets),
like a real machine, while the disk (the overlay upper dir) is kept.

The package's parts: common (constants, LabError, process/file/mount helpers),
image, state (names, paths, state file, inventory), network, cgroups,
supervisor (one host's boots), lifecycle (up, down, reboot, ...) and cli.
Stdlib only; runs as root. `import hmlab` (or `import hostmesh_lab`, its entry
point) gives up(), down(), reboot(), exec_argv(), load_state(), build_image()
and friends.
"""

from .common import (  # noqa: F401
    BOOT_TIMEOUT,
    CGROUP_PARENT,
    DEFAULT_CACHE,
    DEFAULT_SUBNET,
    LAB_CLI,
    LabError,
    NAME_RE,
    REBOOT_EXIT_STATUS,
    STATE_ROOT,
    STOP_TIMEOUT,
    all_pids,
    ancestors,
    atomic_write,
    file_lock,
    kill_and_reap,
    log,
    mounts_below,
    pid_alive,
    proc_cmdline,
    proc_ppid,
    remove_tree,
    run,
    unmount_below,
    validate_name,
)
from .image import (  # noqa: F401
    IMAGE_FILES,
    IMAGE_LAYOUT,
    IMAGE_MASKED_UNITS,
    IMAGE_PACKAGES,
    SSH_KEYGEN_UNIT,
    SUITE,
    build_image,
    configure_image,
    find_debian_mirror,
    image_path,
    image_stamp,
    images_in_use,
    parse_apt_sources,
    prune_images,
)
from .state import (  # noqa: F401
    host_dir,
    host_netns,
    host_runtime,
    inventory_file,
    key_file,
    lab_dir,
    lab_lock,
    lab_netns,
    load_state,
    mac_address,
    machine_name,
    netns_path,
    refresh_inventory,
    render_inventory,
    state_file,
    state_with_runtime,
    write_host_runtime,
    yaml_scalar,
)
from .network import (  # noqa: F401
    caller_netns,
    ensure_lab_network,
    ip,
    netns_exists,
    netns_inode,
    pids_in_netns,
    reset_host_network,
)
from .cgroups import (  # noqa: F401
    cgroup_members,
    host_cgroup,
    host_cgroup_dirs,
    join_cgroups_preexec,
    join_net_cls_cgroup,
    lab_cgroup_bases,
    net_cls_run,
    remove_cgroups,
    reset_net_cls_cgroup,
    v1_mounts,
)
from .supervisor import (  # noqa: F401
    console_tail,
    current_leader,
    find_leader,
    lab_ssh_argv,
    nspawn_argv,
    start_supervisor,
    supervise,
    wait_all,
    wait_ready,
)
from .lifecycle import (  # noqa: F401
    check_host,
    down,
    exec_argv,
    exec_in_lab,
    host_names,
    lab_leftovers,
    lab_processes,
    nspawn_lock_file,
    poweroff_host,
    reboot,
    seed_host,
    shell_argv,
    signals_as_exceptions,
    start,
    status,
    stop,
    up,
    write_ssh_wrappers,
)
from .cli import (  # noqa: F401
    main,
)

__all__ = [
    "BOOT_TIMEOUT",
    "CGROUP_PARENT",
    "DEFAULT_CACHE",
    "DEFAULT_SUBNET",
    "IMAGE_FILES",
    "IMAGE_LAYOUT",
    "IMAGE_MASKED_UNITS",
    "IMAGE_PACKAGES",
    "LAB_CLI",
    "LabError",
    "NAME_RE",
    "REBOOT_EXIT_STATUS",
    "SSH_KEYGEN_UNIT",
    "STATE_ROOT",
    "STOP_TIMEOUT",
    "SUITE",
    "all_pids",
    "ancestors",
    "atomic_write",
    "build_image",
    "caller_netns",
    "cgroup_members",
    "check_host",
    "configure_image",
    "console_tail",
    "current_leader",
    "down",
    "ensure_lab_network",
    "exec_argv",
    "exec_in_lab",
    "file_lock",
    "find_debian_mirror",
    "find_leader",
    "host_cgroup",
    "host_cgroup_dirs",
    "host_dir",
    "host_names",
    "host_netns",
    "host_runtime",
    "image_path",
    "image_stamp",
    "images_in_use",
    "inventory_file",
    "ip",
    "join_cgroups_preexec",
    "join_net_cls_cgroup",
    "key_file",
    "kill_and_reap",
    "lab_cgroup_bases",
    "lab_dir",
    "lab_leftovers",
    "lab_lock",
    "lab_netns",
    "lab_processes",
    "lab_ssh_argv",
    "load_state",
    "log",
    "mac_address",
    "machine_name",
    "main",
    "mounts_below",
    "net_cls_run",
    "netns_exists",
    "netns_inode",
    "netns_path",
    "nspawn_argv",
    "nspawn_lock_file",
    "parse_apt_sources",
    "pid_alive",
    "pids_in_netns",
    "poweroff_host",
    "proc_cmdline",
    "proc_ppid",
    "prune_images",
    "reboot",
    "refresh_inventory",
    "remove_cgroups",
    "remove_tree",
    "render_inventory",
    "reset_host_network",
    "reset_net_cls_cgroup",
    "run",
    "seed_host",
    "shell_argv",
    "signals_as_exceptions",
    "start",
    "start_supervisor",
    "state_file",
    "state_with_runtime",
    "status",
    "stop",
    "supervise",
    "unmount_below",
    "up",
    "v1_mounts",
    "validate_name",
    "wait_all",
    "wait_ready",
    "write_host_runtime",
    "write_ssh_wrappers",
    "yaml_scalar",
]
