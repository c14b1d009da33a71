# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Controller side of hostmesh.sidecar.sidecar_probe.

The roles' ``probe`` entry points describe what they manage (a manifest each:
files with their template or source on the controller, units, the proxy
identity, the net_cls cgroup, the redirect options, the Envoy binary and the
served configuration). This action runs the module once on the host (one
round trip), then renders the templates with the play's variables and the
cgroup path the host reported (the Envoy unit names it), digests the static
files, and compares everything with the pure functions of ``_probe``. It never
changes the host; it sets the fact ``transparent_proxy_net_cls_path`` as the
transparent_proxy role's prepare step does.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template

from ansible_collections.hostmesh.sidecar.plugins.module_utils._probe import (
    binary_drift,
    drift,
    file_drift,
    file_sha1,
    served_config_drift,
    sha1_of,
    source_needs_digest,
    unit_drift,
)

MODULE = "hostmesh.sidecar.sidecar_probe"
# The fact the Envoy unit template reads the cgroup's path from (see transparent_proxy's prepare.yml).
NET_CLS_FACT = "transparent_proxy_net_cls_path"
FILE_STATES = ("file", "directory", "absent")


# The roles' manifests name their templates and sources relative to the collection's root
# (roles/<role>/templates/..., plugins/module_utils/...): this file is plugins/action/ in it.
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def in_collection(path):
    """A manifest's template or source path: absolute as given, else below the collection's root."""
    return path if os.path.isabs(path) else os.path.join(COLLECTION_ROOT, path)


def merge_manifests(manifests) -> dict:
    """One probe plan from the roles' manifests; raises AnsibleActionFail on a malformed one."""
    plan = {"files": {}, "units": [], "certificates": [], "user": None, "net_cls": None, "redirect": None, "binary": None,
            "served_config": None, "unprobed": [], "id_vars": {}}
    for manifest in manifests:
        if not isinstance(manifest, dict) or not manifest.get("role"):
            raise AnsibleActionFail(f"manifests: every item must be a dict with a role, got {manifest!r}")
        role = manifest["role"]
        if manifest.get("state", "present") != "present":
            plan["unprobed"].append(role)
            continue
        for want in manifest.get("files") or []:
            if not isinstance(want, dict) or not str(want.get("path", "")).startswith("/") \
                    or want.get("state", "file") not in FILE_STATES:
                raise AnsibleActionFail(f"manifests ({role}): a file needs an absolute path and a state of "
                                        f"{', '.join(FILE_STATES)}, got {want!r}")
            # A path both roles manage (the shared helper directory) is read once, compared for each.
            plan["files"].setdefault(want["path"], []).append(dict(want, role=role))
        for unit in manifest.get("units") or []:
            if unit not in plan["units"]:
                plan["units"].append(unit)
        for certificate in manifest.get("certificates") or []:
            if not isinstance(certificate, dict) or not all(certificate.get(key) for key in ("cert", "key", "uri_san")):
                raise AnsibleActionFail(f"manifests ({role}): a certificate needs cert, key and uri_san, got {certificate!r}")
            plan["certificates"].append(certificate)
        # Variables the role's templates read the proxy's resolved ids from (user.yml sets them).
        plan["id_vars"].update(manifest.get("id_vars") or {})
        for key in ("user", "net_cls", "redirect", "binary", "served_config"):
            if manifest.get(key):
                plan[key] = manifest[key]
    return plan


def module_args(plan) -> dict:
    binary = plan["binary"] or {}
    served = plan["served_config"] or {}
    digest = {path: any(w.get("state", "file") == "file" and (w.get("template") or w.get("src") or "sha1" in w)
                        for w in wants) for path, wants in plan["files"].items()}
    args = {
        "paths": [{"path": path, "digest": digest[path]} for path in plan["files"]],
        "units": plan["units"],
        "user": plan["user"],
        "net_cls": plan["net_cls"],
        "redirect": plan["redirect"],
        "binary": binary.get("path"),
        "install_record": binary.get("record") if binary.get("method") in ("url", "file") else None,
        "supervisor_state": served.get("state_file"),
        "certificates": [{"cert": c["cert"], "key": c["key"], "uri_san": c["uri_san"],
                          "renew_before": int(c.get("renew_before") or 0), "issuer_pem": c.get("issuer_pem") or ""}
                         for c in plan["certificates"]],
    }
    return {key: value for key, value in args.items() if value not in (None, [], {})}


def compare(plan, observed, content_sha1, source_stat=None) -> list:
    """Every drift item of files, units, the binary and the served config (pure).

    ``content_sha1(want)`` is the sha1 a file should have (None: not compared;
    raises ValueError with the reason when it cannot be computed).
    """
    items = []
    for path, wants in plan["files"].items():
        found = observed["paths"].get(path, {"exists": False, "type": "absent"})
        for want in wants:
            try:
                sha1 = content_sha1(want)
            except ValueError as exc:
                items.append(drift("file", path, f"cannot be rendered on the controller: {exc}"))
                continue
            items += [item for item in file_drift(dict(want, sha1=sha1), found) if item not in items]
    for unit in plan["units"]:
        items += unit_drift(unit, observed["units"].get(unit))
    if plan["binary"]:
        binary = plan["binary"]
        items += binary_drift(binary, observed.get("binary") or {"exists": False, "type": "absent"},
                              observed.get("install_record"), source_stat)
    if plan["served_config"]:
        served = plan["served_config"]
        try:
            wanted = content_sha1({"path": served["config"], "template": served["template"]})
        except ValueError:
            wanted = None  # reported with the file itself
        if wanted is not None:
            items += served_config_drift(served["config"], wanted, observed.get("supervisor_state"))
    for role in plan["unprobed"]:
        items.append(drift("role", role, "state is not present: not probed, the converge runs"))
    return items


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        if "manifests" not in self._task.args:
            # The module's own options: read and engine checks only, nothing compared here.
            return self._execute_module(module_name=MODULE, module_args=self._task.args, task_vars=task_vars)
        manifests = self._task.args["manifests"]
        if set(self._task.args) != {"manifests"}:
            raise AnsibleActionFail("manifests cannot be combined with the module's other options")
        if not isinstance(manifests, list) or not manifests:
            raise AnsibleActionFail("manifests: a non-empty list of the roles' probe manifests is required "
                                    "(include the roles with tasks_from: probe first)")
        plan = merge_manifests(manifests)
        found = self._execute_module(module_name=MODULE, module_args=module_args(plan), task_vars=task_vars)
        if found.get("failed"):
            return found
        render_vars = dict(task_vars)
        facts = {}
        if found.get("net_cls_path"):
            facts[NET_CLS_FACT] = found["net_cls_path"]
            render_vars[NET_CLS_FACT] = found["net_cls_path"]
        for kind, name in plan["id_vars"].items():
            render_vars[name] = found["observed"]["user"].get(kind)
        cache = {}

        def content_sha1(want):
            key = want.get("template") or want.get("src")
            if not key or want.get("state", "file") != "file":
                return want.get("sha1")
            if key not in cache:
                try:
                    cache[key] = sha1_of(self._render(want["template"], want["path"], render_vars)
                                         if want.get("template") else self._read(want["src"]))
                except (AnsibleError, OSError) as exc:
                    cache[key] = exc
            if isinstance(cache[key], Exception):
                raise ValueError(to_text(cache[key]))
            return cache[key]

        source = source_stat = None
        binary = plan["binary"] or {}
        if binary.get("method") == "file" and binary.get("src"):
            try:
                source = self._find_needle("files", binary["src"])
                st = os.stat(source)
                source_stat = {"size": st.st_size, "mtime": st.st_mtime}
            except (AnsibleError, OSError):
                source_stat = None
        if source_needs_digest(found["observed"].get("install_record"), source_stat):
            source_stat["sha1"] = file_sha1(source)
        items = found["drift"] + compare(plan, found["observed"], content_sha1, source_stat)
        result.update(changed=False, converged=not items, drift=items, observed=found["observed"])
        if facts:
            result["ansible_facts"] = facts
        if items:
            result["msg"] = f"{len(items)} difference(s): " + "; ".join(item["msg"] for item in items)
        return result

    def _read(self, src):
        path = self._find_needle("files", in_collection(src))
        with open(path, "rb") as handle:
            return handle.read()

    def _render(self, template, dest, render_vars):
        """The bytes ansible.builtin.template would write (its defaults: trim_blocks, '\\n', utf-8)."""
        from ansible._internal._templating._template_vars import generate_ansible_template_vars

        source = self._find_needle("templates", in_collection(template))
        data = trust_as_template(self._loader.get_text_file_contents(source))
        searchpath = []
        for base in list(render_vars.get("ansible_search_path", [])) + [self._loader.get_basedir(),
                                                                        os.path.dirname(source)]:
            searchpath += [os.path.join(base, "templates"), base]
        template_vars = dict(render_vars)
        template_vars.update(generate_ansible_template_vars(path=template, fullpath=source, dest_path=dest,
                                                            include_ansible_managed="ansible_managed" not in render_vars))
        templar = self._templar.copy_with_new_env(searchpath=searchpath, available_variables=template_vars)
        rendered = templar.template(data, escape_backslashes=False,
                                    overrides=dict(trim_blocks=True, lstrip_blocks=False, newline_sequence="\n"))
        return to_bytes(rendered or "", encoding="utf-8", errors="surrogate_or_strict")
