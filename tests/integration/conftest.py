# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fixtures of the integration-test harness (see harness.py)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="session", autouse=True)
def _require_root():
    if os.geteuid() != 0:
        pytest.fail("the integration tests create network namespaces and mounts: run them as root")


@pytest.fixture
def netns_factory():
    """Callable returning a new NetNS; every namespace made is closed at teardown."""
    made = []

    def make():
        namespace = harness.NetNS()
        made.append(namespace)
        return namespace

    yield make
    for namespace in reversed(made):
        namespace.close()


@pytest.fixture
def netns(netns_factory):
    return netns_factory()


@pytest.fixture(params=["nft", "legacy"])
def iptables_variant(request):
    return request.param


@pytest.fixture
def etc_overlay():
    overlay = harness.EtcOverlay()
    yield overlay
    overlay.cleanup()
