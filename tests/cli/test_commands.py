"""The command modules: one per command, each ``register(subparsers)`` + ``run(args)``, and every ``--help``
prints (argparse formats usage lazily, so a malformed parser only shows when someone asks for help)."""

from __future__ import annotations

import importlib

import pytest

from debias_lm.cli.commands import COMMANDS
from debias_lm.cli.main import build_parser, main

HELP = [[c] for c in COMMANDS] + [["ches", "score"], ["ches", "filter"],
                                  ["uddia", "train-probe"]]


def test_every_command_is_a_module_with_register_and_run():
    parser = build_parser()
    listed = next(a for a in parser._actions if a.dest == "command").choices
    assert list(listed) == list(COMMANDS)
    for name in COMMANDS:
        module = importlib.import_module(f"debias_lm.cli.commands.{name}")
        assert callable(module.register) and callable(module.run)
        assert listed[name].get_default("run") is module.run


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_help_prints_for_every_command(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: debias-lm {' '.join(argv)}")
    assert "--help" in out
