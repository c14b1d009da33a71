#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: proxy_user
short_description: Manage the system user and group the sidecar proxy runs as
version_added: 0.1.0
description:
  - Creates, updates or removes the system account the proxy (Envoy) runs as, and its primary group.
  - The traffic redirect rules recognise the proxy's own connections by this UID (or GID), so the IDs are
    fixed and configurable rather than picked by C(useradd). The defaults match Istio's sidecar, V(1337).
  - The account gets a login-denying shell (the first of C(/usr/sbin/nologin), C(/sbin/nologin),
    C(/usr/bin/nologin), C(/bin/nologin), C(/usr/bin/false), C(/bin/false) that exists; an existing account
    that already has a C(nologin) or C(false) shell keeps it) and the home directory C(/nonexistent), which is
    never created.
  - The module never takes over IDs of other accounts. It fails, having changed nothing, when O(uid) belongs to
    another user or O(gid) to another group, and when the user (group) exists with another UID (GID) unless
    O(allow_uid_change) (O(allow_gid_change)) is set.
  - Every option is validated and every conflict is found before the first command runs.
  - Uses C(groupadd), C(groupmod), C(useradd), C(usermod), C(userdel) and C(groupdel) from shadow-utils, so
    the accounts are written to the local files (C(/etc/passwd), C(/etc/group), ...). The result is read back
    through NSS and the task fails if NSS resolves the names differently (for example an LDAP account of the
    same name).
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
      - The diff shows the user and the group before and after, as dictionaries.
options:
  name:
    description:
      - Name of the user account.
      - 1 to 32 characters of letters, digits, V(_), V(.) and V(-), starting with a letter or V(_).
    type: str
    default: hostmesh-proxy
  uid:
    description:
      - UID of the user. The traffic redirect rules must use the same number (O(hostmesh.sidecar.traffic_redirect#module:proxy_uid)).
      - V(0) (root) and V(65535) are refused.
    type: int
    default: 1337
  group:
    description:
      - Name of the user's primary group.
      - Defaults to O(name).
    type: str
  gid:
    description:
      - GID of the primary group.
    type: int
    default: 1337
  comment:
    description:
      - The account's GECOS field.
      - When omitted, a new account gets V(hostmesh sidecar proxy) and an existing account keeps its comment.
    type: str
  state:
    description:
      - V(present) creates or updates the user and the group.
      - V(absent) removes the user (by name, whatever its UID) and then the group. It refuses while any process
        runs as the user (real, effective, saved or filesystem UID, from C(/proc/*/status)) and refuses to remove
        the group while it is another user's primary group.
    type: str
    choices: [present, absent]
    default: present
  allow_uid_change:
    description:
      - Allow changing the UID of an existing user called O(name) to O(uid).
      - Files the user owns outside its (nonexistent) home keep the old UID; fix them yourself.
      - Refused while processes run as the user.
    type: bool
    default: false
  allow_gid_change:
    description:
      - Allow changing the GID of an existing group called O(group) to O(gid).
      - Accounts with this primary group follow it; files keep the old GID.
    type: bool
    default: false
notes:
  - Supplementary group memberships and the password field are not managed. C(useradd --system) leaves the
    password locked.
  - Removing the user does not touch files it owns anywhere.
seealso:
  - module: hostmesh.sidecar.traffic_redirect
  - module: hostmesh.sidecar.net_cls
  - module: ansible.builtin.user
"""

EXAMPLES = r"""
- name: Create the proxy user and group with UID/GID 1337
  hostmesh.sidecar.proxy_user:

- name: Use the UID of an existing Istio VM installation
  hostmesh.sidecar.proxy_user:
    name: istio-proxy
    uid: 983
    gid: 980

- name: Move an existing proxy account to new IDs (nothing may run as it)
  hostmesh.sidecar.proxy_user:
    uid: 1500
    gid: 1500
    allow_uid_change: true
    allow_gid_change: true

- name: Remove the proxy user and its group (stop Envoy first)
  hostmesh.sidecar.proxy_user:
    state: absent
"""

RETURN = r"""
name:
  description: Name of the user.
  returned: always
  type: str
  sample: hostmesh-proxy
uid:
  description:
    - UID of the user after the run.
    - With O(state=absent), the UID the removed user had, or V(null) if there was no such user.
  returned: always
  type: int
  sample: 1337
group:
  description: Name of the primary group.
  returned: always
  type: str
  sample: hostmesh-proxy
gid:
  description:
    - GID of the group after the run.
    - With O(state=absent), the GID the removed group had, or V(null) if there was no such group or user.
  returned: always
  type: int
  sample: 1337
shell:
  description: Login shell of the user (V(null) with O(state=absent) if there was no user).
  returned: always
  type: str
  sample: /usr/sbin/nologin
home:
  description: Home directory field of the user; it does not exist on disk.
  returned: always
  type: str
  sample: /nonexistent
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import LC_ENV, HostmeshError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._proxy_user import (
    DEFAULT_ID,
    DEFAULT_NAME,
    ProxyUserManager,
    validate_params,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", default=DEFAULT_NAME),
            uid=dict(type="int", default=DEFAULT_ID),
            group=dict(type="str"),
            gid=dict(type="int", default=DEFAULT_ID),
            comment=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            allow_uid_change=dict(type="bool", default=False),
            allow_gid_change=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )

    def run_command(argv):
        return module.run_command(argv, environ_update=LC_ENV)

    try:
        spec = validate_params(module.params)
        result, diff = ProxyUserManager(spec, run_command, check_mode=module.check_mode,
                                        get_bin_path=module.get_bin_path, warn=module.warn).run()
    except HostmeshError as exc:
        module.fail_json(**exc.fail_json_args())
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
