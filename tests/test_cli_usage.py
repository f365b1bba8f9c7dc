"""Command-line mistakes are the user's to fix, not bugs: every command and every option, checked the same way.

Each case must end with exit 2, a message that starts with `error: ` and says what is wrong, and where help is;
never "internal error" or a traceback. The commands and options are read from the app itself, so a new option
is covered the day it is added.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import typer.main

from nas.cli import app, main

COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _args(name: str) -> list[str]:
    """The command with a placeholder for each required argument."""
    return [name] + ["x.yaml" for p in COMMANDS[name].params if p.param_type_name == "argument" and p.required]


def _options(numeric: bool | None = None) -> list[tuple[str, str]]:
    out = []
    for name, cmd in COMMANDS.items():
        hints = typing.get_type_hints(cmd.callback)
        for p in cmd.params:
            if p.param_type_name != "option" or p.is_flag:
                continue
            is_num = any(t in (int, float) for t in typing.get_args(hints[p.name]) or (hints[p.name],))
            if numeric is None or numeric == is_num:
                out.append((name, p.opts[0]))
    return out


def _flags() -> list[tuple[str, str]]:
    return [(name, p.opts[0]) for name, cmd in COMMANDS.items() for p in cmd.params
            if p.param_type_name == "option" and p.is_flag]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2, out + err
    assert err.startswith("error: "), err
    assert "internal error" not in err and "Traceback" not in err and "bug in nas" not in err, err
    return err


def test_every_command_is_covered() -> None:
    assert {"validate", "search", "export", "ui", "schema"} <= set(COMMANDS)
    assert len(_options(numeric=True)) >= 3 and len(_flags()) >= 2  # the lists below are not empty by accident


@pytest.mark.parametrize("typo,meant", [("serch", "search"), ("exprot", "export"), ("valdate", "validate")])
def test_an_unknown_command_suggests_the_right_one(typo: str, meant: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = run([typo, "x.yaml"], capsys)
    assert f"No such command '{typo}'. Did you mean '{meant}'?" in err and "Run 'nas --help'" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_unknown_option_names_it_and_the_commands_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = run(_args(name) + ["--bogus"], capsys)
    assert "No such option: --bogus" in err and f"Usage: nas {name}" in err and f"Run 'nas {name} --help'" in err


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if any(
    p.param_type_name == "argument" and p.required for p in COMMANDS[n].params)))
def test_a_missing_argument_is_named(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    arg = next(p for p in COMMANDS[name].params if p.param_type_name == "argument" and p.required)
    err = run([name], capsys)
    assert f"Missing argument '{arg.metavar}'" in err and f"Run 'nas {name} --help'" in err


@pytest.mark.parametrize("name,option", _options())
def test_an_option_without_its_value_is_named(name: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = run(_args(name) + [option], capsys)
    assert f"Option '{option}' requires an argument" in err and f"Run 'nas {name} --help'" in err


@pytest.mark.parametrize("name,option", _options(numeric=True))
def test_a_numeric_option_rejects_words(name: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = run(_args(name) + [option, "lots"], capsys)
    assert f"Invalid value for '{option}'" in err


@pytest.mark.parametrize("name,flag", _flags())
def test_a_flag_given_a_value_is_refused(name: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = run(_args(name) + [f"{flag}=yes"], capsys)
    assert f"Option '{flag}' does not take a value" in err


def test_an_option_typo_gets_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    err = run(["search", "x.yaml", "--trails", "3"], capsys)
    assert "No such option: --trails. Did you mean --trials?" in err


def test_an_extra_argument_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    err = run(["search", "a.yaml", "b.yaml"], capsys)
    assert "unexpected extra argument" in err and "b.yaml" in err


def test_the_value_checks_of_our_own_options_stay_clear(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "--timeout: expected a duration" in run(["search", "x.yaml", "--timeout", "soon"], capsys)
    assert "Invalid value for '--trials'" in run(["search", "x.yaml", "--trials", "0"], capsys)
    assert "--sparsity 1.5: expected a value in [0, 1)" in run(["export", str(tmp_path), "--sparsity", "1.5"], capsys)
