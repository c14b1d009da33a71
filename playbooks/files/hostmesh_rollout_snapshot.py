# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The previous working state of a mesh member, kept while rollout.yml changes it (stdlib only).

Run on the host by the rollout playbook (ansible.builtin.script), one command per call, with a
JSON document as its only argument; prints a JSON result.

``take {"dir": D, "files": [...], "binaries": [...]}`` records each path in D: a regular file is
copied (mode, owner and times kept), a binary is hard-linked (the 107 MB Envoy is never copied;
D must be on its file system), a path that does not exist is recorded as absent. D is made anew.

``restore {"dir": D}`` puts every recorded path back as it was: files are written beside their
place and renamed over it, a binary's hard link is renamed over it (the binary gets its old inode
back), a path recorded as absent is deleted. Prints which paths differed from the snapshot.

``drop {"dir": D}`` deletes D (nothing is left once the batch is healthy or rolled back).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

MANIFEST = "manifest.json"


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identity(path):
    """What says a path is unchanged: type, inode (binaries), mode, owner, digest; None if absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return {"mode": info.st_mode, "uid": info.st_uid, "gid": info.st_gid, "size": info.st_size,
            "sha256": sha256_of(path) if os.path.isfile(path) else None}


def take(spec):
    directory = spec["dir"]
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, mode=0o700)
    entries = []
    for kind in ("files", "binaries"):
        for path in spec.get(kind, []):
            index = len(entries)
            stored = os.path.join(directory, str(index))
            entry = {"path": path, "kind": kind, "stored": stored, "identity": identity(path)}
            if entry["identity"] is not None:
                if not os.path.isfile(path) or os.path.islink(path):
                    raise ValueError("%s is not a regular file: cannot snapshot it" % path)
                if kind == "binaries":
                    try:
                        os.link(path, stored)
                    except OSError as exc:
                        raise ValueError("cannot hard-link %s into %s (%s): the snapshot must be on the binary's "
                                         "file system" % (path, directory, exc.strerror)) from exc
                    entry["inode"] = os.stat(path).st_ino
                else:
                    shutil.copy2(path, stored)
                    info = os.stat(path)
                    os.chown(stored, info.st_uid, info.st_gid)
            entries.append(entry)
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"entries": entries}, handle, sort_keys=True)
    os.rename(tmp, os.path.join(directory, MANIFEST))
    return {"changed": True, "dir": directory,
            "present": [e["path"] for e in entries if e["identity"] is not None],
            "absent": [e["path"] for e in entries if e["identity"] is None]}


def restore(spec):
    directory = spec["dir"]
    with open(os.path.join(directory, MANIFEST), "r", encoding="utf-8") as handle:
        entries = json.load(handle)["entries"]
    restored = []
    for entry in entries:
        path = entry["path"]
        now = identity(path)
        if entry["identity"] is None:
            # Only files: a directory that appeared is not the converge's (it makes none of these).
            if now is not None and not os.path.isdir(path):
                os.unlink(path)
                restored.append(path)
            continue
        same_inode = entry["kind"] != "binaries" or (now is not None and os.stat(path).st_ino == entry["inode"])
        if now == entry["identity"] and same_inode:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = "%s.hostmesh-rollback" % path
        if os.path.lexists(staging):
            os.unlink(staging)
        if entry["kind"] == "binaries":
            os.link(entry["stored"], staging)
        else:
            shutil.copy2(entry["stored"], staging)
            os.chown(staging, entry["identity"]["uid"], entry["identity"]["gid"])
        os.rename(staging, path)
        restored.append(path)
    return {"changed": bool(restored), "restored": restored}


def drop(spec):
    existed = os.path.isdir(spec["dir"])
    shutil.rmtree(spec["dir"], ignore_errors=True)
    return {"changed": existed}


COMMANDS = {"take": take, "restore": restore, "drop": drop}


def main(argv):
    if len(argv) != 3 or argv[1] not in COMMANDS:
        sys.stdout.write(json.dumps({"failed": True, "msg": "usage: %s take|restore|drop JSON" % argv[0]}) + "\n")
        return 2
    try:
        result = COMMANDS[argv[1]](json.loads(argv[2]))
    except (OSError, ValueError, KeyError) as exc:
        sys.stdout.write(json.dumps({"failed": True, "msg": "%s: %s" % (argv[1], exc)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
