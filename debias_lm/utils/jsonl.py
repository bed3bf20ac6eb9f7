"""Reading JSONL input files with errors that name the file and line (nothing is skipped silently)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserInputError
from .files import first_undecodable


def iter_jsonl(path: str | Path, *, invalid_utf8: str = "error") -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line number, object, error)`` for every non-blank line: ``error`` says why a line is not a JSON object
    (then ``object`` is None). Callers choose whether a bad line is fatal or a malformed record.

    A line holding bytes that are not UTF-8 is an error for that line only (``invalid_utf8="error"``), or, with
    ``invalid_utf8="keep"``, is parsed anyway (its strings then hold the bytes as lone surrogates). A leading
    byte-order mark is ignored.
    """
    if invalid_utf8 not in ("error", "keep"):
        raise ValueError(f"invalid_utf8={invalid_utf8!r} is invalid: expected 'error' or 'keep'")
    with Path(path).open(encoding="utf-8", errors="surrogateescape") as fh:
        for n, line in enumerate(fh, 1):
            if n == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"not JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(row, dict):
                yield n, None, f"expected a JSON object, got {type(row).__name__}"
                continue
            bad = first_undecodable(line) if invalid_utf8 == "error" else None
            if bad is not None:
                yield n, None, f"not valid UTF-8 (byte 0x{bad[1]:02x} at column {bad[0] + 1}); save the file as UTF-8"
                continue
            yield n, row, None


def read_jsonl_objects(path: str | Path, *, what: str = "file") -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line; a line that is not a JSON object is an error."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{what} {str(path)!r} does not exist")
    rows = []
    for n, row, err in iter_jsonl(path):
        if err:
            raise UserInputError(f"{path}:{n}: {err}")
        rows.append((n, row))
    return rows
