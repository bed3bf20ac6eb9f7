"""Shared pieces of the ``debias-lm`` parser: the one-line-error parser class, the model flags several
commands share, and the parsers of comma lists and ``METHOD.FIELD=VALUE`` overrides."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from ..errors import UserInputError
from ..registry import _parse_value
from .types import TYPES, comma_separated


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: bad input raises ``UserInputError`` (exit 2 in ``main``), no usage dump."""

    def error(self, message: str):
        raise UserInputError(f"{message} (see '{self.prog} --help')")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype`` and ``--chat/--no-chat``, as ``generate`` takes them."""
    p.add_argument("--model", default="default",
                   help="HF model id or local path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="use the tokenizer's chat template (default: when it has one)")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="prompt with raw text")


def csv_list(raw: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return list(comma_separated(raw or ""))


def int_csv(raw: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in csv_list(raw))
    except ValueError:
        raise UserInputError(f"{flag} {raw!r} is invalid: expected comma-separated integers, e.g. 1,8") from None


def method_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["uddia.layer_step=0", ...]`` -> ``{"uddia": {"layer_step": 0}}`` (values parsed as JSON when they are)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, field = key.strip().partition(".")
        if not eq or not dot or not method or not field:
            raise UserInputError(f"--set {item!r} is invalid: expected METHOD.FIELD=VALUE, e.g. uddia.layer_step=0")
        out.setdefault(method, {})[field] = _parse_value(value)
    return out


def load_model_from_args(args):
    """The model and tokenizer named by ``--model`` / ``--dtype``."""
    from ..models import load_model

    return load_model(args.model, dtype=args.dtype)


# ------------------------------------------------------------------------------------------------------
# Flags generated from settings dataclasses (trl's HfArgumentParser, in a few lines)
# ------------------------------------------------------------------------------------------------------
def add_dataclass_flags(parser: argparse.ArgumentParser, cls, *, exclude: Sequence[str] = ()) -> None:
    """One flag per field of the dataclass ``cls``; a flag and its help live on the field.

    The field's ``metadata`` says how (every key optional):
    ``help``; ``type`` (an argparse ``type=``, or the name of one in :data:`debias_lm.cli.types.TYPES` such as
    ``"positive_int"``, ``"fraction"`` or ``"csv"`` (comma list -> tuple), so a library dataclass needs no CLI
    import; default: the field's annotation when it is ``int`` or ``float``); ``choices``; ``metavar``;
    ``action`` / ``nargs`` (passed to argparse, e.g. ``"append"``); ``flag`` (default
    ``--field-name``); ``required``; ``exclusive`` (a name: the fields sharing it form one mutually exclusive
    group, required when one of them has ``exclusive_required``); ``cli=False`` (no flag). A ``bool`` field
    defaulting to False is a switch (``--x``); one defaulting to True is turned off by its ``flag``
    (e.g. ``progress`` with ``flag="--no-progress"``). Fields without a default are required.
    """
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude or meta.get("cli", True) is False or not f.init:
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": f.name}
        if meta.get("help"):
            kwargs["help"] = meta["help"]
        default = _field_default(f)
        if _is_bool(f):
            kwargs["action"] = "store_false" if default is True else "store_true"
        else:
            kind = meta.get("type") or _plain_type(f)
            if isinstance(kind, str):
                kind = TYPES[kind]
            if kind is not None:
                kwargs["type"] = kind
            for key in ("choices", "metavar", "action", "nargs"):
                if key in meta:
                    kwargs[key] = list(meta[key]) if key == "choices" else meta[key]
        if default is dataclasses.MISSING or meta.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        target = parser
        if "exclusive" in meta:
            if meta["exclusive"] not in groups:
                groups[meta["exclusive"]] = parser.add_mutually_exclusive_group()
            group = groups[meta["exclusive"]]
            group.required = group.required or bool(meta.get("exclusive_required"))
            kwargs.pop("required", None)
            target = group
        target.add_argument(flag, **kwargs)


def settings_from_args(cls, args: argparse.Namespace, **extra: Any):
    """An instance of the settings dataclass ``cls`` from the parsed flags (``extra`` overrides)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    return cls(**{**values, **extra})


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _is_bool(f: dataclasses.Field) -> bool:
    return f.type in (bool, "bool")


def _plain_type(f: dataclasses.Field):
    kinds = {"int": int, "float": float, "int | None": int, "float | None": float, int: int, float: float}
    return kinds.get(f.type)
