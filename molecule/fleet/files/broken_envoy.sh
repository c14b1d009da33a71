#!/bin/sh
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# A broken "Envoy" for the fleet's rollout test (molecule/fleet/rollout.yml): it answers
# --version like Envoy 1.40.0 and accepts every bootstrap with --mode validate, so the
# envoy_sidecar role installs it, but it dies as soon as it is run as the sidecar.
case " $* " in
    *" --version "*)
        echo "envoy  version: 0000000000000000000000000000000000000000/1.40.0/Clean/RELEASE/BoringSSL"
        exit 0 ;;
    *" --mode validate "*)
        exit 0 ;;
esac
echo "broken envoy (rollout test): exiting" >&2
exit 1
