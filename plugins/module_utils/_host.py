# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""What the collection's engines (_netfilter, _net_cls, _proxy_user) share.

* ``HostmeshError``: the one error class of every engine. Module files turn it
  into ``fail_json``; the host-side commands print it and exit 2. Engines
  never call ``fail_json`` or ``sys.exit`` themselves.
* ``Problems``: validation collects every bad option before failing, so a user
  fixes all of them in one go, and nothing on the host has been touched.
* Value grammars used by more than one engine (integers, class ids).
* The side-effect helpers: the ``LC_ALL=C`` environment for commands whose
  output is parsed or passed on, a subprocess runner with the same signature
  as ``AnsibleModule.run_command``, atomic file writes, ``/proc/PID/status``.
* ``cli_main``: the one convention of the host-side commands.

Standard library only, like the engines: the transparent_proxy role installs it
on hosts as ``hostmesh_host.py`` beside ``hostmesh_netfilter.py`` and
``hostmesh_net_cls.py``, which import it under that name there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

# Error text from the tools is passed on to the user verbatim, and some output
# is parsed: both need the C locale.
LC_ENV = {"LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}

# (uid_t)-1 and (gid_t)-1 mean "no change" to the kernel: never a real id.
MAX_ID = 2 ** 32 - 2
CLASSID_MAX = 0xFFFFFFFF


class HostmeshError(Exception):
    """Why an engine cannot do what was asked.

    ``details`` are extra result fields for ``fail_json`` (a command's rc and
    output, the restore input that was refused, ...). ``problems`` lists
    ``(option, message)`` pairs when the error is bad input.
    """

    def __init__(self, message: str, problems=None, **details):
        super().__init__(message)
        self.problems = list(problems or [])
        self.details = details

    @property
    def option(self):
        """The first bad option, or None when the error is not about input."""
        return self.problems[0][0] if self.problems else None

    def fail_json_args(self) -> dict:
        """Keyword arguments for ``AnsibleModule.fail_json``."""
        args = dict(self.details)
        args["msg"] = str(self)
        if self.problems:
            args.setdefault("option", self.option)
        return args


class Problems:
    """Collects bad options; ``raise_if_any`` raises one HostmeshError naming them all.

    Parse functions raise ``ValueError(reason)``; ``parse`` records the reason
    against the option and returns ``fallback`` so validation can go on.
    """

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.items = []

    def add(self, option: str, value, reason: str) -> None:
        self.items.append((option, f"{option}={value!r}: {reason}"))

    def note(self, option, message: str) -> None:
        """A problem in the engine's own wording, which names the option itself (None: not about one option)."""
        self.items.append((option, message))

    def parse(self, option: str, parser, value, *args, fallback=None):
        try:
            return parser(value, *args)
        except ValueError as exc:
            self.add(option, value, str(exc))
            return fallback

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise HostmeshError(self.prefix + "; ".join(message for _option, message in self.items),
                                problems=self.items)


# ---------------------------------------------------------------------------
# Value grammars
# ---------------------------------------------------------------------------

_HEX_RE = re.compile(r"^0[xX][0-9a-fA-F]+$")
_DEC_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")


def parse_int(value, minimum: int, maximum: int) -> int:
    """An integer from an int, a decimal string or a 0x hex string.

    One grammar everywhere: no '_' separators, no leading zeros, no '+'
    (Python's int() accepts "1_048_577"; iptables and the kernel do not).
    """
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, str):
        text = value.strip()
        if _HEX_RE.match(text):
            number = int(text, 16)
        elif _DEC_RE.match(text):
            number = int(text, 10)
        else:
            raise ValueError("must be an integer (decimal, or hex such as 0x10)")
    elif isinstance(value, int):
        number = value
    else:
        raise ValueError("must be an integer")
    if not minimum <= number <= maximum:
        raise ValueError(f"must be between {minimum} and {maximum}")
    return number


def parse_classid(value) -> int:
    """A net_cls class id (0xMMMMmmmm: 16-bit major and minor) as an integer."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be a hex string such as 0x100001 or an integer")
    try:
        number = parse_int(value, 0, CLASSID_MAX)
    except ValueError:
        raise ValueError(
            "is out of range or not a number: a net_cls class id is 0xMMMMmmmm (16-bit major and minor), "
            "from 0x1 to 0xffffffff, written in hex (0x100001) or decimal") from None
    if number == 0:
        raise ValueError("must not be 0 (0 means 'no class' to net_cls)")
    return number


def format_classid(classid: int) -> str:
    return f"0x{classid:x}"


# ---------------------------------------------------------------------------
# Side effects
# ---------------------------------------------------------------------------

def run_command(argv, data=None):
    """Run ``argv``; ``(rc, stdout, stderr)`` like ``AnsibleModule.run_command``.

    The runner the host-side commands use; modules pass their own
    (``module.run_command`` with ``LC_ENV``), so tests can inject a fake.
    """
    proc = subprocess.run([str(arg) for arg in argv], input=data, capture_output=True, text=True,
                          env=dict(os.environ, **LC_ENV), check=False)
    return proc.returncode, proc.stdout, proc.stderr


def atomic_write(path: str, text: str, mode: int = 0o644, prefix: str = ".hostmesh-") -> None:
    """Replace ``path`` with ``text`` in one rename: readers see the old or the new file, never half."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_proc_status(text: str) -> dict:
    """The fields of ``/proc/PID/status`` as {key: value text}."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key] = value.strip()
    return values


def read_proc_status(pid, proc: str = "/proc"):
    """The parsed status of a process, or None when it does not exist (any more)."""
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="utf-8", errors="replace") as handle:
            return parse_proc_status(handle.read())
    except OSError:
        return None


# ---------------------------------------------------------------------------
# Host-side commands
# ---------------------------------------------------------------------------

def cli_main(run_cli, argv=None) -> int:
    """Run a host-side command: ``run_cli(argv) -> (exit code, stdout, stderr)``.

    Every engine's command is a pure ``run_cli`` that returns what to print;
    this is the only place that prints. Exit codes: 0 done (or in sync),
    1 ``check`` found a difference, 2 error.
    """
    code, out, err = run_cli(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code
