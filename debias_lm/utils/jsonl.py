"""Reading JSONL input files with errors that name the file and line (nothing is skipped silently)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserInputError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line number, object, error)`` for every non-blank line: ``error`` says why a line is not a JSON object
    (then ``object`` is None). Callers choose whether a bad line is fatal or a malformed record."""
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"not JSON ({e.msg})"
                continue
            if not isinstance(row, dict):
                yield n, None, f"expected a JSON object, got {type(row).__name__}"
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
