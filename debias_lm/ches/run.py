"""Dataset-level CHES runs: sharded and resumable scoring, manifest, filtered output."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .formats import detect_columns
from .scoring import SCORE_FIELDS, score_rows

PAPER = "Razin et al. 2025, Unintentional Unalignment (arXiv 2410.08847)"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chat_template_hash(tokenizer) -> str:
    tpl = getattr(tokenizer, "chat_template", None) or ""
    return _sha(tpl if isinstance(tpl, str) else json.dumps(tpl, sort_keys=True))[:16]


def run_key(dataset_fingerprint: str, model_name: str, dtype: str, params: Mapping[str, Any], tokenizer) -> str:
    """Identifies what a shard's scores depend on; a resumed run must have the same key."""
    blob = json.dumps({"data": dataset_fingerprint, "model": model_name, "dtype": dtype, "params": dict(params),
                       "template": chat_template_hash(tokenizer), "vocab": len(tokenizer)}, sort_keys=True)
    return _sha(blob)[:20]


def _write_rows_parquet(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Atomic write (tmp file + rename), so an interrupted run never leaves a half-written shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in SCORE_FIELDS} for r in rows]), tmp)
    os.replace(tmp, path)


def _read_rows_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def score_dataset(
    model,
    tokenizer,
    dataset,
    *,
    prompt_col: str | None = None,
    chosen_col: str | None = None,
    rejected_col: str | None = None,
    batch_size: int = 8,
    max_length: int | None = 1024,
    on_prefix_mismatch: str = "trl",
    out_dir: str | Path | None = None,
    shard_size: int = 512,
    model_name: str = "",
    dtype: str = "",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score every row of ``dataset`` (a ``datasets.Dataset`` or a list of dicts); one result per row.

    With ``out_dir`` the work is split into shards of ``shard_size`` rows, each saved under
    ``out_dir/shards/`` as soon as it is done; rerunning the same call skips finished shards, so an
    interrupted run resumes and ends with identical scores.
    """
    from tqdm.auto import tqdm

    if on_prefix_mismatch not in ("trl", "skip"):
        raise UserInputError(f"on_prefix_mismatch={on_prefix_mismatch!r} is invalid: expected 'trl' or 'skip'")
    if shard_size < 1:
        raise UserInputError(f"shard_size={shard_size} is invalid: expected >= 1")
    if max_length is not None and max_length < 2:
        raise UserInputError(f"max_length={max_length} is invalid: expected >= 2 or None")
    rows_src = dataset
    names = list(dataset.column_names) if hasattr(dataset, "column_names") else sorted({k for r in dataset for k in r})
    columns = detect_columns(names, prompt_col, chosen_col, rejected_col)
    n = len(rows_src)
    params = {"max_length": max_length, "on_prefix_mismatch": on_prefix_mismatch,
              "columns": [columns.prompt, columns.chosen, columns.rejected], "shard_size": shard_size}
    shard_dir = None
    if out_dir is not None:
        fp = getattr(dataset, "_fingerprint", None) or _sha(json.dumps(list(dataset), sort_keys=True, default=str))
        key = run_key(fp, model_name, dtype, params, tokenizer)
        shard_dir = Path(out_dir) / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        key_file = shard_dir / "RUN_KEY"
        if key_file.exists() and key_file.read_text().strip() != key:
            raise UserInputError(
                f"{shard_dir} holds shards of a different run (other data, model or settings); "
                "use another --out or delete that folder"
            )
        key_file.write_text(key + "\n")
    results: list[dict[str, Any]] = []
    bar = tqdm(total=n, desc="CHES scoring", unit="pair", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, n, shard_size):
            stop = min(start + shard_size, n)
            path = shard_dir / f"shard-{start:09d}-{stop:09d}.parquet" if shard_dir is not None else None
            if path is not None and path.exists():
                rows = _read_rows_parquet(path)
                bar.update(stop - start)
            else:
                chunk = [dict(rows_src[i]) for i in range(start, stop)]
                rows = score_rows(model, tokenizer, chunk, columns, start_index=start, batch_size=batch_size,
                                  max_length=max_length, on_prefix_mismatch=on_prefix_mismatch, progress=bar)
                if path is not None:
                    _write_rows_parquet(rows, path)
            results.extend(rows)
    finally:
        bar.close()
    return results


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for d in ("debias-lm", "torch", "transformers", "datasets", "trl"):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = "not installed"
    return out


def build_manifest(*, arguments: Mapping[str, Any], dataset, model_name: str, dtype: str, tokenizer,
                   scores: Sequence[Mapping[str, Any]], selection=None) -> dict[str, Any]:
    import torch

    status_counts: dict[str, int] = {}
    for r in scores:
        key = r["status"] if r["status"] == "ok" else f"skipped:{r['skip_reason']}"
        status_counts[key] = status_counts.get(key, 0) + 1
    man: dict[str, Any] = {
        "tool": "debias-lm ches",
        "method": PAPER,
        "versions": versions(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "arguments": dict(arguments),
        "dataset": {"fingerprint": getattr(dataset, "_fingerprint", None), "num_rows": len(scores),
                    "columns": list(getattr(dataset, "column_names", []))},
        "model": {"name": model_name, "dtype": dtype, "chat_template_sha256_16": chat_template_hash(tokenizer)},
        "counts": {"rows": len(scores), "scored": status_counts.get("ok", 0),
                   "skipped": len(scores) - status_counts.get("ok", 0), "by_status": dict(sorted(status_counts.items()))},
    }
    if selection is not None:
        cut = selection.cut_value
        man["selection"] = {**selection.rule, "cut_value": None if isinstance(cut, float) and math.isnan(cut) else cut,
                            **{f"n_{k}": v for k, v in selection.counts().items()}}
    return man


def write_scores(out_dir: str | Path, scores: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_rows_parquet(scores, out / "scores.parquet")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
