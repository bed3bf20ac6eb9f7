"""``debias_lm.cli.flags``: flags generated from settings dataclasses (a flag and its help live on a field).

The expected namespaces and messages are written out by hand from the dataclass below; the CHES command's flags
are checked against its settings dataclass field by field, and against the flags it had before they were
generated (the user-visible interface must not change).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from debias_lm.cli.flags import Parser, add_dataclass_flags, settings_from_args
from debias_lm.errors import UserInputError


@dataclass(frozen=True, kw_only=True)
class Demo:
    data: str = field(metadata={"help": "input file"})
    batch_size: int = field(default=8, metadata={"type": "positive_int", "help": "rows per batch"})
    rate: float = 0.5
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    verbose: bool = False
    progress: bool = field(default=True, metadata={"flag": "--no-progress"})
    keep: float | None = field(default=None, metadata={"type": "fraction", "exclusive": "rule",
                                                         "exclusive_required": True})
    drop: float | None = field(default=None, metadata={"type": "fraction", "exclusive": "rule"})
    internal: str = field(default="x", metadata={"cli": False})
    suites: tuple[str, ...] = field(default=("t",), metadata={"type": "csv"})
    batches: tuple[int, ...] = field(default=(1, 8), metadata={"type": "int_csv"})
    sets: list = field(default_factory=list, metadata={"action": "append", "metavar": "K=V"})


def _parse(argv):
    p = Parser(prog="demo")
    add_dataclass_flags(p, Demo)
    return p.parse_args(argv)


def test_defaults_switches_and_types_come_from_the_fields():
    args = _parse(["--data", "f.jsonl", "--keep", "0.25"])
    assert settings_from_args(Demo, args) == Demo(data="f.jsonl", keep=0.25)
    args = _parse(["--data", "f", "--batch-size", "3", "--rate", "2.5", "--mode", "b", "--verbose", "--no-progress",
                   "--drop", "1", "--suites", "a, b,,c", "--batches", "2,4", "--sets", "x=1", "--sets", "y=2"])
    assert settings_from_args(Demo, args) == Demo(data="f", batch_size=3, rate=2.5, mode="b", verbose=True,
                                                  progress=False, drop=1.0, suites=("a", "b", "c"), batches=(2, 4),
                                                  sets=["x=1", "y=2"])
    assert not hasattr(args, "internal")


@pytest.mark.parametrize("argv, message", [
    (["--keep", "0.1"], "the following arguments are required: --data"),
    (["--data", "f"], "one of the arguments --keep --drop is required"),
    (["--data", "f", "--keep", "0.1", "--drop", "0.1"], "argument --drop: not allowed with argument --keep"),
    (["--data", "f", "--keep", "2"], "argument --keep: '2' is invalid: expected a fraction in [0, 1]"),
    (["--data", "f", "--keep", "0.1", "--batch-size", "0"], "'0' is invalid: expected an integer >= 1"),
    (["--data", "f", "--keep", "0.1", "--rate", "x"], "argument --rate: invalid float value: 'x'"),
    (["--data", "f", "--keep", "0.1", "--mode", "c"], "argument --mode: invalid choice: 'c'"),
    (["--data", "f", "--keep", "0.1", "--internal", "y"], "unrecognized arguments: --internal y"),
    (["--data", "f", "--keep", "0.1", "--batches", "1,x"], "'1,x' is invalid: expected comma-separated integers"),
])
def test_bad_values_are_one_user_input_error(argv, message):
    with pytest.raises(UserInputError) as info:
        _parse(argv)
    assert message in str(info.value) and "(see 'demo --help')" in str(info.value)


def test_ches_flags_are_the_settings_fields():
    from debias_lm.ches import FilterSettings, ScoreSettings
    from debias_lm.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["ches"]
    actions = next(a for a in sub._actions if a.dest == "ches_command").choices
    for name, cls in (("score", ScoreSettings), ("filter", FilterSettings)):
        flags = {a.dest: a.option_strings for a in actions[name]._actions if a.option_strings and a.dest != "help"}
        assert set(flags) == {f.name for f in dataclasses.fields(cls)}
    # the interface the command had before its flags were generated
    expected = {"--model", "--dtype", "--dataset", "--config", "--split", "--revision", "--prompt-col", "--chosen-col",
                "--rejected-col", "--batch-size", "--max-length", "--on-prefix-mismatch", "--shard-size",
                "--streaming", "--edit-distance", "--out", "--no-progress"}
    got = {s for a in actions["score"]._actions for s in a.option_strings} - {"-h", "--help"}
    assert got == expected
    got = {s for a in actions["filter"]._actions for s in a.option_strings} - {"-h", "--help"}
    assert got == expected | {"--keep-fraction", "--drop-top-fraction", "--threshold", "--score", "--format",
                              "--keep-skipped"}


def test_cli_filter_flags_build_the_same_settings_as_python():
    from debias_lm.ches import FilterSettings
    from debias_lm.cli.main import build_parser

    args = build_parser().parse_args(["ches", "filter", "--dataset", "d.jsonl", "--out", "o", "--threshold", "-1.5",
                                      "--format", "jsonl", "--max-length", "64", "--streaming", "--no-progress"])
    assert settings_from_args(FilterSettings, args) == FilterSettings(
        dataset="d.jsonl", out="o", threshold=-1.5, format="jsonl", max_length=64, streaming=True, progress=False)
