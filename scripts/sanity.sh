#!/usr/bin/env bash
# Copyright (c) 2025, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Run `ansible-test sanity` on the collection, without Docker.
#
# ansible-test must run from .../ansible_collections/hostmesh/sidecar, so the
# files git knows about (tracked, plus untracked files that are not ignored,
# so it works before a commit) are copied into such a tree in a temp dir.
# `--venv --requirements` makes ansible-test build its own pinned virtualenvs
# (cached under ~/.ansible/test/venv; PyPI is needed on the first run only).
# There is no tests/sanity/ignore-*.txt: every finding is a failure.
#
#   ./scripts/sanity.sh                    all sanity tests
#   ./scripts/sanity.sh --test pylint      extra arguments go to ansible-test
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON_VERSION=3.11

if compgen -G "$REPO_ROOT/tests/sanity/ignore-*.txt" > /dev/null; then
    echo "sanity.sh: tests/sanity/ignore-*.txt must not exist; fix the findings instead" >&2
    exit 1
fi

# ansible-test bootstraps pip in its virtualenvs with get-pip.py fetched from
# ci-files.testing.ansible.com, which this network does not reach (only the
# package registries do). Its own error message says to place the script in
# its cache; a stand-in that gets the same pinned pip from PyPI via ensurepip
# is written there when no real script is cached yet.
ansible_test_dir=$("$REPO_ROOT/.venv/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',\$/\1/p" "$ansible_test_dir/_internal/python_requirements.py" | head -n1)
pip_version=${pip_version:-24.2}
get_pip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ ! -s "$get_pip" ]; then
    mkdir -p "$(dirname "$get_pip")"
    cat > "$get_pip" <<'PY'
"""Stand-in for get-pip.py written by hostmesh.sidecar's scripts/sanity.sh.

Installs pip into the running (virtual environment's) Python with ensurepip,
then runs `pip install` with the arguments ansible-test passes (the pinned
pip version), from PyPI.
"""
import subprocess
import sys

args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"],
                      stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet"] + args)
PY
    echo "[sanity] wrote pip bootstrap stand-in: $get_pip"
fi

workdir=$(mktemp -d /tmp/hm-sanity.XXXXXX)
trap 'rm -rf "$workdir"' EXIT
collection="$workdir/ansible_collections/hostmesh/sidecar"
mkdir -p "$collection"

# Existing tracked and untracked-but-not-ignored files (a file deleted in the
# work tree but still tracked is skipped).
git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' path; do
        [ -e "$REPO_ROOT/$path" ] && printf '%s\0' "$path"
      done \
    | tar -C "$REPO_ROOT" --null --no-recursion -T - -cf - \
    | tar -C "$collection" -xf -

cd "$collection"
# A git repository lets ansible-test list exactly these files.
git init -q && git add -A && git -c user.email=sanity@localhost -c user.name=sanity commit -q -m sanity --no-verify

# Modules and module_utils run on managed hosts with Python 3.9 or later, but
# only Python 3.11 is on a fresh Debian 12. The parser's 3.9 grammar mode
# catches most newer syntax (match, type parameters) with 3.11; where a real
# python3.9 is on PATH the plugins are byte-compiled with it as well.
echo "[sanity] Python 3.9 syntax of plugins/"
syntax_status=0
"$REPO_ROOT/.venv/bin/python" - <<'PY' || syntax_status=1
import ast
import pathlib
import sys

failed = False
for path in sorted(pathlib.Path("plugins").rglob("*.py")):
    try:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
    except SyntaxError as error:
        print("ERROR: %s:%s:%s: not Python 3.9 syntax: %s" % (path, error.lineno, error.offset, error.msg))
        failed = True
sys.exit(1 if failed else 0)
PY
if python39=$(command -v python3.9) && "$python39" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
    echo "[sanity] byte-compiling plugins/ with $python39"
    find plugins -name '*.py' -print0 | xargs -0 -r "$python39" -c '
import sys
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as handle:
        compile(handle.read(), path, "exec")
' || syntax_status=1
fi

echo "[sanity] ansible-test sanity --python $PYTHON_VERSION on $(git ls-files | wc -l) files in $collection"
"$REPO_ROOT/.venv/bin/ansible-test" sanity --venv --requirements --python "$PYTHON_VERSION" --color no "$@"
exit "$syntax_status"
