# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the helpers every engine shares (plugins/module_utils/_host.py)."""

import os
import stat

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _host


@pytest.mark.parametrize("value,expected", [
    (5, 5), ("5", 5), (" 42 ", 42), ("0x10", 16), ("0X1f", 31), ("0", 0),
])
def test_parse_int_accepts_decimal_and_hex(value, expected):
    assert _host.parse_int(value, 0, 100) == expected


@pytest.mark.parametrize("value", ["1_0", "+5", "007", "ten", "0x", "", True, 1.5, None, "1e3"])
def test_parse_int_has_one_strict_grammar(value):
    with pytest.raises(ValueError):
        _host.parse_int(value, 0, 10 ** 9)


def test_parse_int_range():
    with pytest.raises(ValueError, match="between 1 and 10"):
        _host.parse_int(11, 1, 10)


@pytest.mark.parametrize("value,expected", [("0x100001", 0x100001), (1048577, 0x100001), ("1048577", 0x100001),
                                            ("0xffffffff", 0xFFFFFFFF)])
def test_parse_classid(value, expected):
    assert _host.parse_classid(value) == expected


@pytest.mark.parametrize("value,reason", [("1_048_577", "out of range or not a number"), (0, "must not be 0"),
                                          ("0x100000000", "out of range"), (-1, "out of range"),
                                          (True, "hex string"), (None, "hex string")])
def test_parse_classid_rejects(value, reason):
    with pytest.raises(ValueError, match=reason):
        _host.parse_classid(value)


def test_problems_collects_every_option():
    problems = _host.Problems()
    assert problems.parse("a", _host.parse_int, "x", 0, 5, fallback=-1) == -1
    assert problems.parse("b", _host.parse_int, "3", 0, 5) == 3
    problems.add("c", 9, "is odd")
    with pytest.raises(_host.HostmeshError) as caught:
        problems.raise_if_any()
    assert caught.value.option == "a"
    assert [problem[0] for problem in caught.value.problems] == ["a", "c"]
    assert str(caught.value).startswith("a='x': must be an integer")
    assert "c=9: is odd" in str(caught.value)
    assert caught.value.fail_json_args()["option"] == "a"


def test_problems_without_items_does_not_raise():
    _host.Problems().raise_if_any()


def test_error_details_reach_fail_json():
    error = _host.HostmeshError("restore failed", rc=1, stderr="boom")
    assert error.fail_json_args() == {"msg": "restore failed", "rc": 1, "stderr": "boom"}
    assert error.option is None


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "file.json"
    _host.atomic_write(str(target), "one\n", mode=0o600)
    assert target.read_text() == "one\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    _host.atomic_write(str(target), "two\n")
    assert target.read_text() == "two\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(_host.os, "replace", broken_replace)
    with pytest.raises(OSError):
        _host.atomic_write(str(tmp_path / "f"), "x")
    assert list(tmp_path.iterdir()) == []


def test_proc_status_parsing():
    text = "Name:\tenvoy\nTgid:\t42\nPPid:\t1\nUid:\t1337\t1337\t1337\t1337\n"
    fields = _host.parse_proc_status(text)
    assert fields["Name"] == "envoy" and fields["Uid"] == "1337\t1337\t1337\t1337" and fields["Tgid"] == "42"


def test_read_proc_status_of_self_and_of_a_missing_process(tmp_path):
    assert _host.read_proc_status(os.getpid())["Pid"] == str(os.getpid())
    assert _host.read_proc_status(1, proc=str(tmp_path)) is None


def test_run_command_uses_the_c_locale():
    rc, out, _err = _host.run_command(["sh", "-c", "echo $LC_ALL; cat"], data="in")
    assert (rc, out) == (0, "C\nin")


def test_cli_main_prints_and_returns_the_code(capsys):
    code = _host.cli_main(lambda argv: (1, "out:" + ",".join(argv) + "\n", "err\n"), ["a", "b"])
    captured = capsys.readouterr()
    assert (code, captured.out, captured.err) == (1, "out:a,b\n", "err\n")
