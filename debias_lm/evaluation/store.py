"""The run directory's ``samples.jsonl``: rows appended as produced; a rerun loads them and skips what is done."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def row_key(row: dict) -> tuple:
    return (row.get("suite"), row.get("method"), str(row.get("id")), row.get("sample", 0))


class SampleStore:
    """The run's samples.jsonl: rows appended as produced; a rerun loads them and skips what is done."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "samples.jsonl"
        self.rows: dict[tuple, dict] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interruption: regenerated
                        log.warning("samples.jsonl line %d is incomplete; it will be regenerated", n)
                        continue
                    self.rows[row_key(row)] = row

    def has(self, suite: str, method: str, item_id: str, sample: int = 0) -> bool:
        return (suite, method, str(item_id), sample) in self.rows

    def add(self, rows: Sequence[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                self.rows[row_key(row)] = row
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def select(self, suite: str, method: str | None = None) -> list[dict]:
        return [r for r in self.rows.values() if r.get("suite") == suite and (method is None or r.get("method") == method)]

    def flush(self) -> None:
        """Rewrite the file from memory (after scoring filled rows in), atomically."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for row in self.rows.values():
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)
