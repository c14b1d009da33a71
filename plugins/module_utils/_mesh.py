# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The mesh model: what the inventory says about identities, peers, policy and services.

Pure functions on plain data (dicts, lists, strings); the filter plugins
``mesh_spiffe_id`` and ``mesh_model`` only adapt Ansible's values to them and
turn ``MeshError`` into ``AnsibleFilterError``.
"""

from __future__ import annotations

import re

# SPIFFE ID spec (spiffe/spiffe standards/SPIFFE-ID.md): the trust domain is
# lowercase letters, digits, '.', '-' and '_'; a path segment is letters,
# digits, '.', '-' and '_' and neither '.' nor '..'.
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")
PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
TRUST_DOMAIN_MAX = 255


class MeshError(ValueError):
    """Bad mesh input; ``problems`` lists ``(variable, message)`` pairs, every one found."""

    def __init__(self, message: str, problems=None):
        super().__init__(message)
        self.problems = list(problems or [])


def check_trust_domain(trust_domain) -> str:
    """The trust domain, or ValueError saying why it is not a SPIFFE trust domain."""
    if not isinstance(trust_domain, str) or not trust_domain:
        raise ValueError("a SPIFFE trust domain must be a non-empty string")
    if "://" in trust_domain:
        raise ValueError("a SPIFFE trust domain has no scheme (write 'example.org', not 'spiffe://example.org')")
    if ":" in trust_domain:
        raise ValueError("a SPIFFE trust domain has no port")
    if "/" in trust_domain:
        raise ValueError("a SPIFFE trust domain has no path")
    if len(trust_domain) > TRUST_DOMAIN_MAX:
        raise ValueError(f"a SPIFFE trust domain is at most {TRUST_DOMAIN_MAX} characters (this one has {len(trust_domain)})")
    if not TRUST_DOMAIN_RE.match(trust_domain):
        raise ValueError("a SPIFFE trust domain holds only lowercase letters, digits, '.', '-' and '_'")
    return trust_domain


def check_path_segment(name) -> str:
    """A host name usable as one SPIFFE ID path segment, or ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError("a SPIFFE ID path segment must be a non-empty string")
    if name in (".", ".."):
        raise ValueError("'.' and '..' are not SPIFFE ID path segments")
    if not PATH_SEGMENT_RE.match(name):
        raise ValueError("a SPIFFE ID path segment holds only letters, digits, '.', '-' and '_'")
    return name


def spiffe_id(trust_domain, hostname) -> str:
    """``spiffe://<trust domain>/host/<hostname>``; MeshError naming the bad part."""
    try:
        check_trust_domain(trust_domain)
    except ValueError as exc:
        raise MeshError(f"hostmesh_trust_domain {trust_domain!r}: {exc}", [("hostmesh_trust_domain", str(exc))]) from None
    try:
        check_path_segment(hostname)
    except ValueError as exc:
        raise MeshError(f"inventory_hostname {hostname!r} cannot name a mesh identity: {exc}",
                        [("inventory_hostname", str(exc))]) from None
    return f"spiffe://{trust_domain}/host/{hostname}"
