# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""pytest plumbing for the lab: `import hostmesh_lab`, the `lab` marker, and
a timing table printed at the end of the run."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (what, seconds) pairs the tests record, printed at the end of the run.
TIMINGS_KEY = pytest.StashKey[list]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "lab: boots systemd-nspawn hosts with tests/lab/hostmesh_lab.py (root, cached image; integration suite)",
    )
    config.stash[TIMINGS_KEY] = []


def pytest_terminal_summary(terminalreporter, config):
    timings = config.stash.get(TIMINGS_KEY, [])
    if timings:
        terminalreporter.section("hostmesh lab timings")
        for what, seconds in timings:
            terminalreporter.write_line(f"{what:<44} {seconds:7.1f} s")


@pytest.fixture(scope="session")
def lab_timings(request):
    """List to append (what, seconds) to; shown in the run's summary."""
    return request.config.stash[TIMINGS_KEY]


@pytest.fixture(scope="session", autouse=True)
def _lab_requires_root():
    if os.geteuid() != 0:
        pytest.fail("the lab tests boot containers and create network namespaces: run them as root")
