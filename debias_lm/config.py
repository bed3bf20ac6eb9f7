"""Base class for method configurations.

Every method's config is a frozen dataclass deriving from :class:`MethodConfig`:

* ``validate()`` raises :class:`~debias_lm.errors.UserInputError` (a ``ValueError``) naming the field and
  the allowed values; it runs in ``__post_init__`` so a bad config can never exist.
* ``to_dict()`` / ``from_dict()`` use a *flat* mapping of JSON scalars and lists (plus ``"method"``), so
  the same config can travel as vLLM ``extra_args`` / ``vllm_xargs`` or a JSON file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .errors import UserInputError


def _fail(cls_name: str, field: str, value: Any, allowed: str) -> UserInputError:
    return UserInputError(f"{cls_name}.{field}={value!r} is invalid: expected {allowed}")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base config. Subclasses set ``method`` (the registry name) as a ClassVar."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """Text fields must be strings and tuple fields tuples of their element type (numbers and flags are
        checked with their ranges in :meth:`validate`)."""
        name = type(self).__name__
        for field, hint in _field_hints(type(self)).items():
            value = getattr(self, field)
            if hint is str and not isinstance(value, str):
                raise _fail(name, field, value, "a string")
            if typing.get_origin(hint) is tuple:
                elem = typing.get_args(hint)[0] if typing.get_args(hint) else object
                if elem is float:
                    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value) \
                        if isinstance(value, tuple) else False
                    kind = "a list of numbers"
                else:
                    ok = isinstance(value, tuple) and all(isinstance(x, elem) for x in value)
                    kind = f"a list of {getattr(elem, '__name__', elem)}s".replace("strs", "strings")
                if not ok:
                    raise _fail(name, field, value, kind)

    # -- validation helpers -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; subclasses extend this and call ``super().validate()``."""

    def preflight(self) -> None:
        """Checks that need more than the fields (data files, tables) but no model; run before loading one."""

    def _check_choice(self, field: str, allowed: Iterable[Any]) -> None:
        allowed = tuple(allowed)
        value = getattr(self, field)
        if value not in allowed:
            raise _fail(type(self).__name__, field, value, "one of " + ", ".join(repr(a) for a in allowed))

    def _check_number(
        self,
        field: str,
        *,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
        hi_open: bool = False,
        integer: bool = False,
    ) -> None:
        value = getattr(self, field)
        name = type(self).__name__
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise _fail(name, field, value, kind)
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(name, field, value, f"a finite {kind[2:] if kind.startswith('a ') else kind}")
        bad = (
            (lo is not None and (value <= lo if lo_open else value < lo))
            or (hi is not None and (value >= hi if hi_open else value > hi))
        )
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            raise _fail(name, field, value, f"{kind} in {rng}")

    # -- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-serialisable dict including ``"method"``; tuples become lists."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error (they are usually typos)."""
        if not isinstance(data, Mapping):
            raise UserInputError(f"{cls.__name__}.from_dict needs a dict of fields, got {type(data).__name__}")
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise UserInputError(f"{cls.__name__}.from_dict got method={method!r}; expected {cls.method!r}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - set(names)))
        if unknown:
            raise UserInputError(
                f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; allowed fields: {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in data.items():
            hint = str(hints.get(key, ""))
            if isinstance(value, list) and "tuple" in hint.lower():
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> MethodConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class IdentityConfig(MethodConfig):
    """The no-op method: the wrapped ``generate`` is exactly the model's ``generate``."""

    method: ClassVar[str] = "identity"
