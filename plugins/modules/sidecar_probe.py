#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: sidecar_probe
short_description: Tell in one round trip whether a host is what the mesh roles would make it
version_added: 0.3.0
description:
  - Reads everything the M(hostmesh.sidecar.transparent_proxy) and M(hostmesh.sidecar.envoy_sidecar) roles manage on a
    host in one module run, and changes nothing.
  - The proxy user and group (M(hostmesh.sidecar.proxy_user)'s engine), the net_cls cgroup (M(hostmesh.sidecar.net_cls)'s
    engine) and the redirect rules with their rules file (M(hostmesh.sidecar.traffic_redirect)'s engine) are planned by the
    same engines in check mode; their differences are returned in RV(drift).
  - Paths are returned as they are found (type, mode, owner, group, and the sha1 of regular files that are asked with
    O(paths[].digest)); units with one C(systemctl show); the Envoy binary by C(lstat) only (never hashed) with its install
    record; the hot-restart supervisor's state file.
  - The action plugin of the same name (used by the site playbook) renders the roles' templates on the controller, runs this
    module once and compares its result with the rendered files; see the collection's C(docs/probe.md).
author:
  - hostmesh.sidecar contributors (@hostmesh)
extends_documentation_fragment:
  - hostmesh.sidecar._attributes
  - hostmesh.sidecar._attributes.LINUX
attributes:
  check_mode:
    support: full
    details: The module never changes anything; it runs the same way in check mode.
  diff_mode:
    support: none
options:
  manifests:
    description:
      - The roles' probe manifests (the variables C(__transparent_proxy_probe) and C(__envoy_sidecar_probe) of the roles'
        C(vars/main.yml), visible after including their C(probe) entry points with C(public=true)). Template and source
        paths in them are relative to the collection's root. Read by the action plugin on the controller, which derives
        every other option from them and compares the result with the rendered templates; cannot be combined with the
        other options.
      - Without it, the other options are passed to the module as they are and only RV(drift) of the engines is computed.
    type: list
    elements: dict
  paths:
    description: Paths to read (never followed when they are links).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      digest:
        description: Return the sha1 of the content when it is a regular file.
        type: bool
        default: true
  units:
    description: systemd units whose C(LoadState), C(UnitFileState), C(ActiveState) and C(NeedDaemonReload) are read.
    type: list
    elements: str
    default: []
  user:
    description:
      - The proxy's identity. With O(user.manage=true), planned by M(hostmesh.sidecar.proxy_user)'s engine in check mode;
        otherwise only looked up (its ids complete O(redirect) and O(net_cls)).
    type: dict
    suboptions:
      name:
        description: User name.
        type: str
        required: true
      group:
        description: Group name.
        type: str
        required: true
      uid:
        description: Wanted UID (O(user.manage=true)).
        type: int
      gid:
        description: Wanted GID (O(user.manage=true)).
        type: int
      manage:
        description: Whether the role creates the user (else another tool did, and it is only looked up).
        type: bool
        default: true
  net_cls:
    description:
      - The net_cls cgroup, planned by M(hostmesh.sidecar.net_cls)'s engine in check mode (its options C(name), C(classid),
        C(owner)). Without C(owner) the cgroup's files belong to O(user)'s UID.
    type: dict
  redirect:
    description:
      - The options of M(hostmesh.sidecar.traffic_redirect) (state present), planned by its engine in check mode.
      - Without C(proxy_uid) and C(proxy_gid), O(user)'s ids are used.
    type: dict
  binary:
    description: Path of the Envoy binary (only C(lstat) is read, the file is never hashed).
    type: path
  install_record:
    description: Path of the envoy_sidecar role's install record (JSON), returned parsed.
    type: path
  supervisor_state:
    description: Path of the hot-restart supervisor's state file (JSON), returned parsed.
    type: path
  certificates:
    description:
      - Mesh identity certificates (the M(hostmesh.sidecar.mesh_identity) role's), read with the host's C(cryptography)
        library. Drift when one is missing or unreadable (also when the library is missing), does not belong to its key,
        does not carry exactly O(certificates[].uri_san) as its URI SAN, was not signed by O(certificates[].issuer_pem),
        or has less than O(certificates[].renew_before) seconds left.
    type: list
    elements: dict
    default: []
    suboptions:
      cert:
        description: Path of the certificate (PEM).
        type: path
        required: true
      key:
        description: Path of its private key (PEM, unencrypted); only its public half is compared.
        type: path
        required: true
      uri_san:
        description: The one URI SAN the certificate must carry (the host's SPIFFE ID).
        type: str
        required: true
      renew_before:
        description: Seconds; a certificate with less left is drift (the role renews it).
        type: int
        default: 0
      issuer_pem:
        description: The signing CA's certificate (PEM); empty when the controller has none yet (drift).
        type: str
        default: ""
notes:
  - C(changed) is always false.
seealso:
  - module: hostmesh.sidecar.traffic_redirect
  - module: hostmesh.sidecar.net_cls
  - module: hostmesh.sidecar.proxy_user
"""

EXAMPLES = r"""
- name: Probe a host (the action plugin fills these options from the roles' probe entry points)
  hostmesh.sidecar.sidecar_probe:
    manifests:
      - "{{ __transparent_proxy_probe }}"
      - "{{ __envoy_sidecar_probe }}"
  register: probe

- name: Read one file and one unit directly
  hostmesh.sidecar.sidecar_probe:
    paths:
      - path: /etc/hostmesh/envoy/envoy.yaml
    units: [hostmesh-envoy.service]
"""

RETURN = r"""
converged:
  description: True when nothing drifted (the action plugin also compares files, units, the binary and the served config).
  returned: always
  type: bool
drift:
  description: What differs, one item per difference, with C(kind), C(what), C(expected), C(found) and C(msg) (readable).
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "user", "what": "hostmesh-proxy", "msg": "user hostmesh-proxy: missing", "expected": {}, "found": {}}]
observed:
  description: What was read, for comparisons on the controller.
  returned: always
  type: dict
  contains:
    paths:
      description: "Per path: exists, type, mode, uid, gid, owner, group, size, mtime, inode, sha1 (files with digest)."
      type: dict
    units:
      description: Per unit, its C(systemctl show) properties.
      type: dict
    binary:
      description: The binary's lstat (no sha1).
      type: dict
    install_record:
      description: The parsed install record, or null.
      type: dict
    supervisor_state:
      description: The parsed supervisor state file, or null.
      type: dict
    user:
      description: uid and gid of the proxy user as found (null when missing).
      type: dict
    certificates:
      description: Per certificate path, exists, error, not_after (epoch seconds), uri_sans, key_matches, issued_by.
      type: dict
net_cls_path:
  description: The net_cls cgroup's directory (where it is, or would be created); the roles' C(transparent_proxy_net_cls_path).
  returned: when O(net_cls) is given and its engine could plan
  type: str
  sample: /run/hostmesh/cgroup/net_cls/hostmesh-proxy
"""

import pwd
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostmesh.sidecar.plugins.module_utils._host import LC_ENV, HostmeshError
from ansible_collections.hostmesh.sidecar.plugins.module_utils._probe import (
    certificate_drift,
    engine_error_drift,
    net_cls_drift,
    read_json,
    read_certificate,
    read_path,
    read_units,
    redirect_drift,
    user_drift,
)


def probe_user(module, user):
    """(drift, {uid, gid}) of the proxy's identity."""
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._proxy_user import (
        ProxyUserManager, validate_params)
    try:
        entry = pwd.getpwnam(user["name"])
        found = {"uid": entry.pw_uid, "gid": entry.pw_gid}
    except KeyError:
        found = {"uid": None, "gid": None}
    if not user["manage"]:
        if found["uid"] is None:
            return [engine_error_drift("user", user["name"], "missing (created by another tool)")], found
        return [], found
    params = {"name": user["name"], "group": user["group"], "uid": user["uid"], "gid": user["gid"], "state": "present"}
    try:
        _result, diff = ProxyUserManager(validate_params(params), lambda argv: (0, "", ""), check_mode=True,
                                         get_bin_path=module.get_bin_path).run()
    except HostmeshError as exc:
        return [engine_error_drift("user", user["name"], str(exc))], found
    return user_drift(diff), found


def probe_net_cls(module, net_cls, owner):
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._net_cls import NetClsManager, validate_params
    params = dict(net_cls)
    params.setdefault("owner", owner)
    try:
        result, diff = NetClsManager(validate_params(params), lambda argv: (0, "", ""), check_mode=True).run()
    except HostmeshError as exc:
        return [engine_error_drift("cgroup", params.get("name", ""), str(exc))], None
    return net_cls_drift(result, diff), result["path"]


def probe_redirect(module, redirect, ids):
    from ansible_collections.hostmesh.sidecar.plugins.module_utils._netfilter import (
        RedirectManager, config_from_params)
    params = dict(redirect, state="present")
    for option, found in (("proxy_uid", ids.get("uid")), ("proxy_gid", ids.get("gid"))):
        if params.get(option) is None and found is not None:
            params[option] = found

    def run(argv, data=None):
        return module.run_command(argv, data=data, binary_data=data is not None, environ_update=LC_ENV)

    try:
        _summary, diff = RedirectManager(config_from_params(params), run, check_mode=True).run()
    except HostmeshError as exc:
        return [engine_error_drift("rules", "", str(exc))]
    return redirect_drift(diff, params.get("rules_file"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                digest=dict(type="bool", default=True),
            )),
            units=dict(type="list", elements="str", default=[]),
            manifests=dict(type="list", elements="dict"),
            user=dict(type="dict", options=dict(
                name=dict(type="str", required=True),
                group=dict(type="str", required=True),
                uid=dict(type="int"),
                gid=dict(type="int"),
                manage=dict(type="bool", default=True),
            )),
            net_cls=dict(type="dict"),
            redirect=dict(type="dict"),
            binary=dict(type="path"),
            install_record=dict(type="path"),
            supervisor_state=dict(type="path"),
            certificates=dict(type="list", elements="dict", default=[], options=dict(
                cert=dict(type="path", required=True),
                key=dict(type="path", required=True),
                uri_san=dict(type="str", required=True),
                renew_before=dict(type="int", default=0),
                issuer_pem=dict(type="str", default=""),
            )),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["manifests"] is not None:
        module.fail_json(msg="manifests is read by the sidecar_probe action plugin on the controller and never "
                             "reaches the host; run the module through its action (hostmesh.sidecar.sidecar_probe)")
    bad = [entry["path"] for entry in params["paths"] if not entry["path"].startswith("/")]
    if bad:
        module.fail_json(msg=f"paths: every path must be absolute, got {bad}")

    def run_command(argv):
        return module.run_command([module.get_bin_path(argv[0], required=True)] + argv[1:], environ_update=LC_ENV)

    drift, ids = [], {}
    if params["user"]:
        found_drift, ids = probe_user(module, params["user"])
        drift += found_drift
        if params["user"]["manage"]:
            # The ids the role deploys, whether or not the user exists yet.
            ids = {"uid": params["user"]["uid"], "gid": params["user"]["gid"]}
    result = {"changed": False}
    if params["net_cls"]:
        found_drift, path = probe_net_cls(module, params["net_cls"], ids.get("uid"))
        drift += found_drift
        if path:
            result["net_cls_path"] = path
    if params["redirect"]:
        drift += probe_redirect(module, params["redirect"], ids)
    observed = {
        "paths": {entry["path"]: read_path(entry["path"], entry["digest"]) for entry in params["paths"]},
        "units": read_units(run_command, params["units"]),
        "binary": read_path(params["binary"], digest=False) if params["binary"] else None,
        "install_record": read_json(params["install_record"]) if params["install_record"] else None,
        "supervisor_state": read_json(params["supervisor_state"]) if params["supervisor_state"] else None,
        "user": ids,
        "certificates": {},
    }
    now = time.time()
    for want in params["certificates"]:
        found = read_certificate(want["cert"], want["key"], want["issuer_pem"])
        observed["certificates"][want["cert"]] = found
        drift += certificate_drift(want, found, now)
    result.update(converged=not drift, drift=drift, observed=observed)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
