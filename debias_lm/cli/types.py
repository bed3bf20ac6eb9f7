"""Range-checked argument types for the CLI: a bad number is one line at parse time, before anything runs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(kind: type = float, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, what: str = "") -> Callable[[str], int | float]:
    """An argparse ``type=``: parses an int or a finite float and checks it against [lo, hi] (open ends allowed).

    ``number(int, lo=1)`` -> "an integer >= 1"; ``number(lo=0, hi=1, lo_open=True)`` -> "a number in (0, 1]".
    NaN and infinities are always rejected.
    """
    noun = what or ("an integer" if kind is int else "a number")
    if lo is not None and hi is not None:
        desc = f"{noun} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        desc = f"{noun} {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        desc = f"{noun} {'<' if hi_open else '<='} {hi:g}"
    else:
        desc = f"a finite {noun.split(' ', 1)[1]}" if kind is float else noun

    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is invalid: expected {desc}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{raw!r} is invalid: expected {desc} (finite)")
        if ((lo is not None and (value <= lo if lo_open else value < lo))
                or (hi is not None and (value >= hi if hi_open else value > hi))):
            raise argparse.ArgumentTypeError(f"{raw!r} is invalid: expected {desc}")
        return value

    parse.__name__ = desc
    return parse


POSITIVE_INT = number(int, lo=1)
NON_NEGATIVE_INT = number(int, lo=0)
SEED = number(int, lo=0, hi=2**32 - 1, what="an integer seed")
FRACTION = number(lo=0, hi=1, what="a fraction")
TOP_P = number(lo=0, hi=1, lo_open=True)
TEMPERATURE = number(lo=0, lo_open=True)
FINITE = number()
PORT = number(int, lo=1, hi=65535, what="a port")
LENGTH = number(int, lo=2)


def comma_separated(raw: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")`` (an argparse ``type=`` for comma lists)."""
    return tuple(x.strip() for x in (raw or "").split(",") if x.strip())


def int_list(raw: str) -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``."""
    try:
        return tuple(int(x) for x in comma_separated(raw))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is invalid: expected comma-separated integers, e.g. 1,8") from None


# By name, for settings dataclasses whose fields say ``metadata={"type": "fraction"}`` (the library never imports
# the CLI; ``cli.flags`` resolves the name).
TYPES = {"positive_int": POSITIVE_INT, "non_negative_int": NON_NEGATIVE_INT, "seed": SEED, "fraction": FRACTION,
         "top_p": TOP_P, "temperature": TEMPERATURE, "finite": FINITE, "port": PORT, "length": LENGTH,
         "csv": comma_separated, "int_csv": int_list}
