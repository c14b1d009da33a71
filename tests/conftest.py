# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Make ``ansible_collections.hostmesh.sidecar`` importable for plain pytest.

Unit tests import the collection's Python code the way Ansible does, by its
fully qualified package name. The harness keeps a session directory with
ansible_collections/hostmesh/sidecar linked to this checkout; putting it on
sys.path lets the namespace packages resolve without installing anything.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))

import harness  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, str(harness.collections_path()))
