"""Reading JSONL input files with errors that name the file and line (nothing is skipped silently)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserInputError


def read_jsonl_objects(path: str | Path, *, what: str = "file") -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line; a line that is not a JSON object is an error."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{what} {str(path)!r} does not exist")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserInputError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserInputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append((n, row))
    return rows
