# -*- coding: utf-8 -*-
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Private doc fragment (the leading underscore keeps it out of the public API):
# shared descriptions of the check_mode, diff_mode and platform attributes.
# Modules use it with
#   extends_documentation_fragment: [hostmesh.sidecar._attributes]
# and then state in their own `attributes:` what they support.

from __future__ import annotations


class ModuleDocFragment:

    # Standard documentation fragment
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    # Should be used together with the standard fragment
    PLATFORM = r"""
options: {}
attributes:
  platform:
    platforms: posix
"""

    # Should be used together with the standard fragment
    LINUX = r"""
options: {}
attributes:
  platform:
    platforms: linux
    details:
      - Linux only, since the module works with netfilter, cgroups or the Linux user database.
"""
