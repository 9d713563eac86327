"""Every `vmcrypt` and `vtpm` subcommand behaves the same way at the edges.

The commands are read from the argparse parsers, so a new subcommand is walked
without touching this file: ``--help`` (exit 0, names the command, help on
every option), ``--json`` before and after the subcommand where it prints, a
usage error (exit 2, one ``error`` line, no traceback) and a bad input (exit 1,
exactly one ``error:`` line, no traceback). The walks run the real ``main``
in-process (one parser build per call, real files); closed pipes, --version
and the bad inputs of `vtpm`, which would start servers, run as processes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.servers import REPO_ROOT
from vmcrypt import cli, demo, vtpm_command
from vmcrypt.password_policy import WeakPassword, check_new_password
from vtpm.cli import build_parser as build_vtpm_parser

Main = Callable[[list[str]], int]


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command words, parser) of every runnable subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaves(sub, (*path, name))


VMCRYPT = sorted(_leaves(cli.build_parser()), key=lambda leaf: leaf[0])
VTPM = sorted(_leaves(build_vtpm_parser(vtpm_command.EngineStoreOptions())), key=lambda leaf: leaf[0])
ALL = [("vmcrypt", words, parser) for words, parser in VMCRYPT] + [("vtpm", words, parser) for words, parser in VTPM]
MAINS: dict[str, Main] = {"vmcrypt": cli.main, "vtpm": vtpm_command.main}


def _ids(rows: list[tuple[str, tuple[str, ...], argparse.ArgumentParser]]) -> list[str]:
    return [" ".join((prog, *words)) for prog, words, _ in rows]


def _prints_json(parser: argparse.ArgumentParser) -> bool:
    return any("--json" in a.option_strings for a in parser._actions)


def run(prog: str, argv: list[str]) -> tuple[int, str, str]:
    """``prog argv`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = MAINS[prog](argv)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def assert_one_error(status: int, expected: int, stderr: str) -> None:
    assert status == expected, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1, stderr


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("VMCRYPT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VMCRYPT_HOME", str(tmp_path / "env-home"))


@pytest.mark.parametrize(("prog", "words", "parser"), ALL, ids=_ids(ALL))
def test_help_names_the_command_and_every_option(prog: str, words: tuple[str, ...],
                                                 parser: argparse.ArgumentParser) -> None:
    status, out, err = run(prog, [*words, "--help"])
    assert status == 0, err
    assert f"usage: {' '.join((prog, *words))}" in " ".join(out.split())
    undocumented = [a.dest for a in parser._actions if a.help is None]
    assert not undocumented, f"options without help: {undocumented}"


@pytest.mark.parametrize(("prog", "words", "parser"), ALL, ids=_ids(ALL))
def test_usage_error_exits_2_with_one_error_line(prog: str, words: tuple[str, ...],
                                                 parser: argparse.ArgumentParser) -> None:
    status, out, err = run(prog, [*words, "--no-such-option"])
    assert_one_error(status, 2, err)
    assert out == ""


@pytest.mark.parametrize(("prog", "words", "parser"), ALL, ids=_ids(ALL))
def test_json_in_both_positions(prog: str, words: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    """Where a command prints, --json before and after it means the same; elsewhere it is a usage error."""
    fill = _arguments(parser, Path("/nonexistent"))
    top = cli.build_parser() if prog == "vmcrypt" else build_vtpm_parser(vtpm_command.EngineStoreOptions())
    if _prints_json(parser):
        before = top.parse_args(["--json", *words, *fill])
        after = top.parse_args([*words, *fill, "--json"])
        neither = top.parse_args([*words, *fill])
        assert before.json is True and after.json is True and neither.json is False
        assert {k: v for k, v in vars(before).items() if k != "func"} == {
            k: v for k, v in vars(after).items() if k != "func"}
    else:
        status, _, err = run(prog, ["--json", *words, *fill])
        assert_one_error(status, 2, err)
        assert "no JSON output" in err


def _arguments(parser: argparse.ArgumentParser, value: Path) -> list[str]:
    """Positionals and required options, each given ``value``."""
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.nargs != 0 and not isinstance(action, argparse._SubParsersAction):
            argv.append(str(value))
        elif action.required and action.option_strings:
            argv += [action.option_strings[-1], str(value)]
    return argv


#: what a command needs besides its positionals and required options to get past usage checks
EXTRA = {("restore",): ["--to", "{tmp}/restored"], ("inventory", "move-to"): ["--db-url", "postgresql://u@127.0.0.1:1/db"], ("serve",): ["--port", "1", "--state", "{tmp}/absent"],
         ("info",): ["--state", "{tmp}/absent"],
         ("socket",): ["--tpm2", "--ctrl", "type=unixio,path={tmp}/c", "--tpmstate", "dir={file}"]}


def _bad_input(words: tuple[str, ...], parser: argparse.ArgumentParser, tmp_path: Path) -> list[str]:
    bad = tmp_path / "not-a-vm"
    bad.write_text("not what any command expects\n")
    argv = [*words, *_arguments(parser, bad)]
    return argv + [e.format(tmp=tmp_path, file=bad) for e in EXTRA.get(words, [])]


@pytest.mark.parametrize(("words", "parser"), VMCRYPT, ids=[" ".join(w) for w, _ in VMCRYPT])
def test_vmcrypt_bad_input_is_one_error_line(words: tuple[str, ...], parser: argparse.ArgumentParser,
                                             tmp_path: Path) -> None:
    """The management home is a regular file, every path a file that is not a VM: exit 1, one line."""
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    status, out, err = run("vmcrypt", ["--home", str(home), *_bad_input(words, parser, tmp_path)])
    assert_one_error(status, 1, err)
    assert err.startswith("error: ")


@pytest.mark.parametrize(("words", "parser"), VTPM, ids=[" ".join(w) for w, _ in VTPM])
def test_vtpm_bad_input_is_one_error_line(words: tuple[str, ...], parser: argparse.ArgumentParser,
                                          tmp_path: Path) -> None:
    """As a process: a `vtpm` command that got past its checks would serve."""
    argv = _bad_input(words, parser, tmp_path)
    if words == ("host",):
        argv = ["host", "--socket", str(tmp_path / "not-a-vm" / "ctl.sock")]
    done = subprocess.run(vtpm_command.command_line(*argv), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdin=subprocess.DEVNULL)
    assert_one_error(done.returncode, 1, done.stderr)
    assert "error: " in done.stderr


def test_the_usage_errors_the_readme_promises(tmp_path: Path) -> None:
    for prog, argv, words in (
            ("vtpm", ["serve", "--port", "1"], "--state"),
            ("vmcrypt", ["vm", "create", str(tmp_path / "vm"), "--disk", "2X"], "not a size"),
            ("vmcrypt", ["restore", str(tmp_path / "a.tar")], "--to DIR"),
            ("vmcrypt", ["--user", "u", "restore", str(tmp_path / "a.tar")], "--datastore"),
            ("vtpm", ["serve", "--state", str(tmp_path), "--protocol", "mssim"], "--port")):
        status, _, err = run(prog, argv)
        assert_one_error(status, 2, err)
        assert words in err
    assert not (tmp_path / "vm").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    for prog in ("vmcrypt", "vtpm"):
        status, out, _ = run(prog, ["--version"])
        assert status == 0 and out.startswith(f"{prog} ") and any(c.isdigit() for c in out)


def test_json_before_and_after_print_the_same(tmp_path: Path) -> None:
    vm = tmp_path / "vm1"
    status, created, err = run("vmcrypt", ["--json", "vm", "create", str(vm), "--disk", "1M"])
    assert status == 0, err
    assert json.loads(created)["vm"] == "vm1"
    before = run("vmcrypt", ["--json", "describe", str(vm)])
    after = run("vmcrypt", ["describe", str(vm), "--json"])
    assert before[0] == after[0] == 0 and json.loads(before[1]) == json.loads(after[1])
    assert json.loads(before[1])["encrypted"] is False


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`... --json | head` where head has gone: exit 141 (as SIGPIPE), nothing on stderr."""
    vm = tmp_path / "vm1"
    assert run("vmcrypt", ["vm", "create", str(vm)])[0] == 0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for argv in ([sys.executable, "-m", "vmcrypt.cli", "--json", "describe", str(vm)],
                 [sys.executable, "-m", "vmcrypt.cli", "describe", str(vm)]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, env=env)
        finally:
            os.close(write_end)
        assert done.returncode == 141 and done.stderr == "", done.stderr


def test_serve_never_manufactures_into_a_typo(tmp_path: Path) -> None:
    typo = tmp_path / "stat"
    status, _, err = run("vtpm", ["serve", "--state", str(typo), "--port", "1"])
    assert_one_error(status, 1, err)
    assert "--create" in err and not typo.exists()


def test_inventory_passwords_follow_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "h"
    for weak, why in (("short-pw", "too short"), ("xx-Admin-2026-xx", "user name")):
        monkeypatch.setenv("VMCRYPT_PASSWORD", weak)
        status, _, err = run("vmcrypt", ["--home", str(home), "inventory", "init", "--admin", "admin"])
        assert_one_error(status, 1, err)
        assert why in err and weak not in err
        assert not (home / "inventory.db").exists()
    monkeypatch.setenv("VMCRYPT_PASSWORD", "correct horse battery")
    status, _, err = run("vmcrypt", ["--home", str(home), "inventory", "init", "--admin", "admin"])
    assert status == 0, err
    assert (home / "inventory.db").exists()
    with pytest.raises(WeakPassword):
        check_new_password("bob", "12345678901")
    check_new_password("bob", "123456789012")


def test_backup_and_restore_both_work_on_paths_without_user(tmp_path: Path) -> None:
    vm = tmp_path / "vm1"
    assert run("vmcrypt", ["vm", "create", str(vm), "--disk", "1M"])[0] == 0
    archive = tmp_path / "vm1.tar"
    status, _, err = run("vmcrypt", ["backup", str(vm), str(archive)])
    assert status == 0, err
    status, out, err = run("vmcrypt", ["--json", "restore", str(archive), "--to", str(tmp_path / "back")])
    assert status == 0, err
    assert Path(json.loads(out)["vmx"]) == tmp_path / "back" / "vm1.vmx"
    assert (tmp_path / "back" / "vm1-flat.vmdk").read_bytes() == (vm / "vm1-flat.vmdk").read_bytes()
    status, _, err = run("vmcrypt", ["backup", "verify", str(vm / "vm1.vmx")])
    assert_one_error(status, 1, err)
    assert "not a backup archive" in err


def test_demo_directories(tmp_path: Path) -> None:
    """The demo writes where it is told, else to a new temp directory; $VMCRYPT_HOME is its home."""
    out, home = demo.working_directories(str(tmp_path / "out"), {"VMCRYPT_HOME": str(tmp_path / "h")})
    assert out == tmp_path / "out" and home == tmp_path / "h"
    out, home = demo.working_directories(None, {})
    try:
        assert out.is_dir() and not any(out.iterdir()) and home == out / "home"
        assert not out.is_relative_to(REPO_ROOT)
    finally:
        out.rmdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    with pytest.raises(demo.DemoError, match="not empty"):
        demo.working_directories(str(tmp_path / "full"), {})
    with pytest.raises(demo.DemoError, match="VMCRYPT_HOME"):
        demo.working_directories(None, {"VMCRYPT_HOME": str(tmp_path / "full")})


def test_user_commands_before_inventory_init_say_there_is_none(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCRYPT_PASSWORD", "correct horse battery")
    status, _, err = run("vmcrypt", ["--home", str(tmp_path / "new"), "--user", "admin", "inventory", "users"])
    assert_one_error(status, 1, err)
    assert "there is no inventory" in err and "inventory init" in err and "login failed" not in err
    assert not (tmp_path / "new").exists()
