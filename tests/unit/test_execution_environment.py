# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The execution environment (execution-environment.yml, meta/execution-environment.yml).

Everything an `ansible-builder build` does short of the container engine, without Galaxy or
any network: the collection tarball is built as docs/awx.md says, `ansible-builder create`
writes the build context, then the context's own steps run here: the galaxy stage's
`ansible-galaxy collection install -r requirements.yml` (from the context's _build directory,
as in the Containerfile) and the builder stage's introspection of the installed collection,
which must come out with exactly the collection's declared needs and those of its dependency
community.crypto. Galaxy's part, providing community.crypto, is played by the copy
./scripts/setup.sh extracts from PyPI's `ansible` package, put into the stage's collections path
beforehand (ansible-galaxy takes an installed collection that satisfies a dependency as it is).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from bindep.depends import Depends
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402  pylint: disable=wrong-import-position,import-error

ROOT = Path(__file__).resolve().parents[2]
EE_FILE = ROOT / "execution-environment.yml"
COLLECTION_EE_FILE = ROOT / "meta" / "execution-environment.yml"
# Plugin types that run on the managed hosts: their imports are the hosts' business, not the EE's.
HOST_SIDE_PLUGIN_DIRS = {"modules"}
# galaxy.yml's dependencies, as ./scripts/setup.sh caches them.
CACHED_DEPENDENCIES = {"community.crypto": ROOT / ".cache" / "collections" / "ansible_collections" / "community" / "crypto"}
NOT_NEEDED_IN_AN_EE = ("molecule", "pytest", "pytest-testinfra", "ansible-lint", "yamllint",
                       "antsibull-changelog", "ansible-builder")


def offline(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run argv with no network: in a network namespace of its own when root (nothing is
    reachable, not even loopback), and with Galaxy pointed at a closed port in any case."""
    env = dict(os.environ, ANSIBLE_GALAXY_SERVER="http://127.0.0.1:9/", ANSIBLE_NOCOLOR="1")
    env.update(kwargs.pop("env", {}))
    if os.geteuid() == 0 and shutil.which("unshare"):
        argv = ["unshare", "--net", "--"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env, **kwargs)


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


@pytest.fixture(scope="module")
def ee_definition() -> dict:
    return yaml.safe_load(EE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def collection_ee() -> dict:
    return yaml.safe_load(COLLECTION_EE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def build(tmp_path_factory, ee_definition):
    """The documented build from a copy of execution-environment.yml in a temporary directory
    (its paths are relative to the file): the tarball into build/ee/, then the build context."""
    work = tmp_path_factory.mktemp("ee")
    shutil.copy2(EE_FILE, work / EE_FILE.name)
    tarball_dir = work / "build" / "ee"
    proc = offline([harness.venv_tool("ansible-galaxy"), "collection", "build", "--output-path", str(tarball_dir), str(ROOT)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = tarball_dir.glob("*.tar.gz")
    context = work / "context"
    proc = offline([harness.venv_tool("ansible-builder"), "create", "--file", str(work / EE_FILE.name),
                    "--context", str(context), "--output-filename", "Containerfile"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"work": work, "tarball": tarball, "context": context,
            "containerfile": (context / "Containerfile").read_text(encoding="utf-8")}


@pytest.fixture(scope="module")
def installed(build):
    """The galaxy stage: `ansible-galaxy collection install -r requirements.yml` run from a copy
    of the context's _build directory (the stage's /build), offline."""
    stage = build["work"] / "galaxy-stage"
    shutil.copytree(build["context"] / "_build", stage / "build")
    collections = stage / "usr-share-ansible" / "collections"
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))
    assert set(galaxy["dependencies"]) == set(CACHED_DEPENDENCIES)
    for name, cached in CACHED_DEPENDENCIES.items():
        if not (cached / "MANIFEST.json").is_file():
            pytest.fail(f"{name} is not in {cached}: run ./scripts/setup.sh")
        shutil.copytree(cached, collections / "ansible_collections" / name.replace(".", "/"))
    proc = offline([harness.venv_tool("ansible-galaxy"), "collection", "install", "-r", "requirements.yml",
                    "--collections-path", str(collections)],
                   cwd=stage / "build",
                   env={"ANSIBLE_GALAXY_DISABLE_GPG_VERIFY": "1", "ANSIBLE_HOME": str(stage / "ansible-home")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return collections


@pytest.fixture(scope="module")
def introspected(build, installed):
    """The builder stage: the context's introspect.py over the installed collections, writing the
    pip and bindep files the stage's assemble script installs."""
    out = build["work"] / "builder-stage"
    out.mkdir()
    proc = offline([sys.executable, str(build["context"] / "_build" / "scripts" / "introspect.py"), "introspect",
                    str(installed), f"--write-bindep={out / 'bindep.txt'}", f"--write-pip={out / 'requirements.txt'}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = yaml.safe_load(proc.stdout)
    return {
        "report": report,
        "bindep": requirement_lines(out / "bindep.txt") if (out / "bindep.txt").exists() else [],
        "pip": requirement_lines(out / "requirements.txt") if (out / "requirements.txt").exists() else [],
    }


def test_containerfile_installs_what_the_definition_lists(build, ee_definition):
    containerfile = build["containerfile"]
    deps = ee_definition["dependencies"]
    assert f'ARG EE_BASE_IMAGE="{ee_definition["images"]["base_image"]["name"]}"' in containerfile
    interpreter = deps["python_interpreter"]
    assert f'ARG PYPKG="{interpreter["package_system"]}"' in containerfile
    assert f'ARG PYCMD="{interpreter["python_path"]}"' in containerfile
    assert "RUN $PKGMGR install $PYPKG -y" in containerfile
    refs = f'{deps["ansible_core"]["package_pip"]} {deps["ansible_runner"]["package_pip"]}'
    assert f'ARG ANSIBLE_INSTALL_REFS="{refs}"' in containerfile
    assert "RUN $PYCMD -m pip install --no-cache-dir $ANSIBLE_INSTALL_REFS" in containerfile
    # The galaxy stage installs the collection requirements from the context.
    assert "COPY _build /build" in containerfile
    assert ("ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml "
            '--collections-path "/usr/share/ansible/collections"') in containerfile
    # The builder stage collects the installed collections' Python and system needs and the
    # final stage installs them (bindep) next to the collections.
    assert ("RUN $PYCMD /output/scripts/introspect.py introspect --write-bindep=/tmp/src/bindep.txt "
            "--write-pip=/tmp/src/requirements.txt") in containerfile
    assert "RUN /output/scripts/assemble" in containerfile
    assert "RUN /output/scripts/install-from-bindep" in containerfile
    assert containerfile.count("COPY --from=galaxy /usr/share/ansible /usr/share/ansible") == 2
    for script in ("assemble", "install-from-bindep", "introspect.py", "check_galaxy", "check_ansible",
                   "pip_install", "entrypoint"):
        assert (build["context"] / "_build" / "scripts" / script).is_file(), script


def test_context_holds_the_collection_tarball_it_installs(build, ee_definition):
    requirements = yaml.safe_load((build["context"] / "_build" / "requirements.yml").read_text(encoding="utf-8"))
    assert requirements == ee_definition["dependencies"]["galaxy"]
    (entry,) = requirements["collections"]
    assert entry["type"] == "file"
    # The galaxy stage's working directory is /build, the context's _build.
    in_context = build["context"] / "_build" / entry["name"]
    assert in_context.is_file(), f"{entry['name']} is not in the build context: does galaxy.yml's version match?"
    assert in_context.read_bytes() == build["tarball"].read_bytes()
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))
    with tarfile.open(in_context) as archive:
        manifest = json.load(archive.extractfile("MANIFEST.json"))
    info = manifest["collection_info"]
    wanted = (galaxy["namespace"], galaxy["name"], galaxy["version"])
    assert (info["namespace"], info["name"], info["version"]) == wanted


def test_tarball_carries_the_ee_metadata_not_the_checkout_build_file(build, collection_ee):
    with tarfile.open(build["tarball"]) as archive:
        names = set(archive.getnames())
    declared = {collection_ee["dependencies"]["python"], collection_ee["dependencies"]["system"]}
    assert {"meta/execution-environment.yml"} | declared <= names
    assert "execution-environment.yml" not in names
    assert not any(name == "context" or name.startswith("context/") for name in names)


def test_galaxy_stage_installs_the_collection_offline(installed, collection_ee):
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))
    for name, wanted in galaxy["dependencies"].items():
        manifest = json.loads((installed / "ansible_collections" / name.replace(".", "/") / "MANIFEST.json").read_text())
        assert Version(manifest["collection_info"]["version"]) in SpecifierSet(wanted), name
    collection = installed / "ansible_collections" / "hostmesh" / "sidecar"
    assert (collection / "MANIFEST.json").is_file()
    assert (collection / "playbooks" / "site.yml").is_file()
    for declared in collection_ee["dependencies"].values():
        assert (collection / declared).is_file(), declared


def test_builder_stage_finds_exactly_the_collection_needs(introspected):
    # System: the declared bindep lines and community.crypto's, for the EE's RPM base image as for a
    # Debian one (community.crypto brings python3-cryptography, which the controller's signing needs).
    crypto = CACHED_DEPENDENCIES["community.crypto"]
    declared_bindep = requirement_lines(ROOT / "meta" / "bindep.txt")
    crypto_bindep = requirement_lines(crypto / "meta" / "ee-bindep.txt")
    assert sorted(set(introspected["bindep"])) == sorted(set(declared_bindep + crypto_bindep))
    rules = Depends("\n".join(introspected["bindep"]) + "\n")
    rpm = {rule[0] for rule in rules.active_rules(["platform:rpm", "platform:redhat"])}
    dpkg = {rule[0] for rule in rules.active_rules(["platform:dpkg", "platform:debian"])}
    assert {"openssh-clients", "python3-cryptography"} <= rpm and {"openssh-client", "python3-cryptography"} <= dpkg
    # Python: the collection needs nothing beyond ansible-core, which the EE installs itself and
    # introspection leaves out, and community.crypto's own needs; the development requirements
    # (requirements.txt, also in the tarball) must not leak in (they would without
    # meta/execution-environment.yml).
    assert requirement_lines(ROOT / "meta" / "ee-requirements.txt") == ["ansible-core>=2.16"]
    # community.crypto's one Python need, PyYAML, comes with ansible-core: left out too.
    assert requirement_lines(crypto / "meta" / "ee-requirements.txt") == ["PyYAML"]
    assert introspected["pip"] == []
    python_report = introspected["report"]["python"]
    assert not any(name in str(python_report) for name in NOT_NEEDED_IN_AN_EE), python_report


def test_ansible_core_ranges_agree(ee_definition):
    """The EE's ansible-core is the line the collection is tested with (requirements.txt), the
    version installed here falls in it, and it satisfies meta/runtime.yml and ee-requirements."""
    ee_core = Requirement(ee_definition["dependencies"]["ansible_core"]["package_pip"])
    dev_core = next(Requirement(line) for line in requirement_lines(ROOT / "requirements.txt")
                    if Requirement(line).name == "ansible-core")
    assert ee_core.specifier == dev_core.specifier
    from ansible.release import __version__ as installed_core  # pylint: disable=import-outside-toplevel
    assert Version(installed_core) in ee_core.specifier
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text(encoding="utf-8"))
    assert Version(installed_core) in SpecifierSet(runtime["requires_ansible"])
    declared_core = Requirement(requirement_lines(ROOT / "meta" / "ee-requirements.txt")[0])
    assert declared_core.specifier == SpecifierSet(runtime["requires_ansible"])
    ee_runner = Requirement(ee_definition["dependencies"]["ansible_runner"]["package_pip"])
    assert ee_runner.name == "ansible-runner"


class _ImportCollector(ast.NodeVisitor):
    """Top-level module names a file imports, leaving out the fallbacks in `except ImportError:`
    (the host-side names of the engines)."""

    def __init__(self):
        self.names: set[str] = set()

    def visit_Import(self, node):  # noqa: N802  (ast.NodeVisitor's naming)
        self.names.update(alias.name.split(".")[0] for alias in node.names)

    def visit_ImportFrom(self, node):  # noqa: N802
        if node.level == 0 and node.module:
            self.names.add(node.module.split(".")[0])

    def visit_Try(self, node):  # noqa: N802
        for child in node.body + node.orelse + node.finalbody:
            self.visit(child)


def test_controller_side_plugins_import_nothing_undeclared():
    """Every import of the plugins that run on the controller (all but modules) is the standard
    library, Ansible, this collection, or a package in meta/ee-requirements.txt."""
    declared = {Requirement(line).name.replace("-", "_").lower()
                for line in requirement_lines(ROOT / "meta" / "ee-requirements.txt")}
    # cryptography: community.crypto (galaxy.yml's dependency) installs it in an EE (its meta/ee-bindep.txt).
    provided = {"cryptography"}
    assert "python3-cryptography [platform:rpm]" in requirement_lines(
        CACHED_DEPENDENCIES["community.crypto"] / "meta" / "ee-bindep.txt")
    allowed = set(sys.stdlib_module_names) | {"ansible", "ansible_collections"} | declared | provided
    scanned = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        if path.relative_to(ROOT / "plugins").parts[0] in HOST_SIDE_PLUGIN_DIRS:
            continue
        collector = _ImportCollector()
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        undeclared = collector.names - allowed
        assert not undeclared, f"{path.relative_to(ROOT)} imports {sorted(undeclared)}: add to meta/ee-requirements.txt"
        scanned.append(path)
    assert any("filter" in path.parts for path in scanned)
