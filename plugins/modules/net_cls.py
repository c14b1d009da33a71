#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: net_cls
short_description: Manage the net_cls cgroup whose class id lets the proxy's traffic bypass redirection
version_added: 0.1.0
description:
  - Creates or removes a cgroup of the cgroup v1 C(net_cls) controller and sets its class id. Every socket
    opened by a process in that cgroup carries the class id, which C(iptables -m cgroup --cgroup CLASSID) matches;
    M(hostmesh.sidecar.traffic_redirect) with O(hostmesh.sidecar.traffic_redirect#module:bypass=net_cls) uses that
    to let the proxy's own connections escape redirection.
  - Mounts the net_cls hierarchy when none is mounted. An existing net_cls mount, also one co-mounted with other
    controllers (C(net_cls,net_prio)), is reused. On cgroup v1 and hybrid hosts a new mount goes to
    C(/sys/fs/cgroup/net_cls). net_cls has no cgroup v2 form, so on hosts where C(/sys/fs/cgroup) is a cgroup2
    mount (and where C(/sys/fs/cgroup/net_cls) cannot be created) it goes to C(/run/hostmesh/cgroup/net_cls).
    Mounts made by the module are recorded in C(/run/hostmesh/net_cls-mounts.json).
  - Optionally moves processes into the cgroup (O(pids)) and hands the files that move processes in to the proxy
    user (O(owner)), so an unprivileged proxy can move itself in on every start.
  - Every option is validated (including that each of O(pids) is a running process) before anything is changed.
  - Cgroups and mounts do not survive a reboot. Re-create them before the proxy starts, in a privileged step
    that runs in the host's mount namespace (the transparent_proxy role's boot-time unit does that; a hardened
    proxy unit's own C(ExecStartPre) may run in a private mount namespace the proxy cannot see).
author:
  - hostmesh.sidecar contributors (@hostmesh)
extends_documentation_fragment:
  - hostmesh.sidecar._attributes
  - hostmesh.sidecar._attributes.LINUX
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows mount point, cgroup, class id, ownership of the control files and the processes concerned,
        before and after.
options:
  name:
    description:
      - Name of the cgroup, a directory directly below the root of the net_cls hierarchy.
      - Letters, digits and V(_), V(.), V(@), V(:), V(+), V(-); no V(/), not V(.) or V(..), and not a name of a
        cgroup control file (V(tasks), V(cgroup.*), V(net_cls.*), ...).
    type: str
    default: hostmesh-proxy
  classid:
    description:
      - The class id, C(0xMMMMmmmm) (16-bit major and minor, as tc's C(MMMM:mmmm)).
      - A hex string (V(0x100001)), a decimal string or an integer. V(0) (no class) and values above
        V(0xffffffff) are refused.
      - The traffic redirect rules must use the same value
        (O(hostmesh.sidecar.traffic_redirect#module:proxy_classid)).
      - The kernel shows it in decimal (C(net_cls.classid), C(iptables-save)); the module returns both forms.
    type: raw
    default: "0x100001"
  mountpoint:
    description:
      - Where the net_cls hierarchy must be mounted. When given, the hierarchy is mounted there (with the same
        controllers as an existing mount of it) unless it already is.
      - When omitted, an existing net_cls mount is used, else the default place described above.
      - Must be an absolute, normalised path. The module refuses to mount over a non-empty directory or over
        another mount.
    type: path
  pids:
    description:
      - Processes (process ids, not thread ids) to move into the cgroup, with all their threads.
      - Each must be running when the task starts. Processes already inside are left alone.
      - Only with O(state=present).
    type: list
    elements: int
    default: []
  owner:
    description:
      - User (name or UID) to own the cgroup's C(cgroup.procs) and C(tasks) files.
      - Why this exists - in net_cls mode the proxy must be in the cgroup on every (re)start. systemd starts it
        as the unprivileged proxy user, and only the process itself knows its PID early enough, so the proxy's
        start command writes its own PID to C(cgroup.procs) before it C(exec)s the proxy. The kernel lets a
        process move a process of its own UID into a v1 cgroup when it may write that cgroup's C(cgroup.procs);
        owning the file gives exactly that permission, and nothing more (the cgroup directory, its class id
        and all other cgroups stay root's). A process of another UID still cannot be moved in by the proxy user.
      - When omitted, the files keep their current owner (root for a new cgroup).
    type: raw
  group:
    description:
      - Group (name or GID) to own C(cgroup.procs) and C(tasks). The files are also made group-writable, so that
        members of the group whose UID matches the process may move it in.
      - When omitted, the files keep their current group and mode.
    type: raw
  state:
    description:
      - V(present) mounts the hierarchy if needed, creates the cgroup and sets class id, ownership and members.
      - V(absent) removes the cgroup. Processes still in it are first moved to the root of the hierarchy (class id 0,
        as if they had never been moved in; they keep running and the proxy's traffic is then captured like any
        other) and are listed in RV(pids_moved). It fails if the cgroup has child cgroups. If the module mounted the
        hierarchy and no other cgroup remains in it, the hierarchy is unmounted and the directories the module
        created for it are removed.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Requires a kernel with the net_cls controller (C(CONFIG_CGROUP_NET_CLASSID)) that allows cgroup v1 mounts
    (not booted with C(cgroup_no_v1=net_cls) or C(cgroup_no_v1=all)).
  - On old kernels (before 5.x) activating net_cls disabled cgroup v2 path matching of sockets (C(-m cgroup --path));
    current kernels keep both.
seealso:
  - module: hostmesh.sidecar.traffic_redirect
  - module: hostmesh.sidecar.proxy_user
  - name: net_cls in the kernel documentation
    description: Network classifier cgroup.
    link: https://docs.kernel.org/admin-guide/cgroup-v1/net_cls.html
"""

EXAMPLES = r"""
- name: Create the proxy's net_cls cgroup with class id 0x100001 (10:1)
  hostmesh.sidecar.net_cls:
  register: proxy_cgroup

- name: Let the unprivileged proxy user move itself in on every start
  hostmesh.sidecar.net_cls:
    classid: "0x100001"
    owner: hostmesh-proxy
    group: hostmesh-proxy

- name: Move running processes in
  hostmesh.sidecar.net_cls:
    pids:
      - "{{ envoy_pid | int }}"

- name: Use a mount point of your own
  hostmesh.sidecar.net_cls:
    name: proxy
    classid: 1048578
    mountpoint: /run/mesh/net_cls

- name: Remove the cgroup (and the mount, if this module made it)
  hostmesh.sidecar.net_cls:
    state: absent
"""

RETURN = r"""
path:
  description: The cgroup's directory.
  returned: always
  type: str
  sample: /sys/fs/cgroup/net_cls/hostmesh-proxy
mountpoint:
  description: Where the net_cls hierarchy is (or, in check mode, would be) mounted.
  returned: always
  type: str
  sample: /sys/fs/cgroup/net_cls
classid:
  description: The class id as a hex string.
  returned: always
  type: str
  sample: "0x100001"
classid_decimal:
  description: The class id as an integer, the form C(net_cls.classid) and C(iptables-save) show.
  returned: always
  type: int
  sample: 1048577
classid_tc:
  description: The class id in tc's C(MAJOR:MINOR) notation (hex).
  returned: always
  type: str
  sample: "10:1"
pids_moved:
  description:
    - With O(state=present), the processes of O(pids) that were (or would be) moved in.
    - With O(state=absent), the processes that were (or would be) moved out to the hierarchy's root.
  returned: always
  type: list
  elements: int
  sample: [4242]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import LC_ENV, HostmeshError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._net_cls import (
    DEFAULT_CLASSID,
    DEFAULT_NAME,
    NetClsManager,
    validate_params,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", default=DEFAULT_NAME),
            classid=dict(type="raw", default=DEFAULT_CLASSID),
            mountpoint=dict(type="path"),
            pids=dict(type="list", elements="int", default=[]),
            owner=dict(type="raw"),
            group=dict(type="raw"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        supports_check_mode=True,
    )

    def run_command(argv):
        return module.run_command([module.get_bin_path(argv[0], required=True)] + argv[1:], environ_update=LC_ENV)

    try:
        spec = validate_params(module.params)
        result, diff = NetClsManager(spec, run_command, check_mode=module.check_mode, warn=module.warn).run()
    except HostmeshError as exc:
        module.fail_json(**exc.fail_json_args())
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
