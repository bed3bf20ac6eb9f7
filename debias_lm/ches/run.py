"""Dataset-level CHES runs: sharded and resumable scoring, manifest, filtered output."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .formats import UNDECODABLE, detect_columns
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


def dist_info() -> tuple[int, int]:
    """(rank, world size) of a data-parallel launch (``accelerate launch`` / ``torchrun`` set RANK, WORLD_SIZE)."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def _chunks(dataset, shard_size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(start index, rows) per shard, for a ``datasets.Dataset`` (sliced), an IterableDataset or a list.

    A row whose text is not valid UTF-8 (Arrow keeps such bytes from a JSON file) becomes ``{UNDECODABLE:
    reason}``, which :func:`~debias_lm.ches.formats.tokenize_pair` records as ``skip_reason="invalid_utf8"``,
    instead of stopping the whole run at that row.
    """
    if hasattr(dataset, "__len__") and hasattr(dataset, "column_names") and not _is_iterable_dataset(dataset):
        n = len(dataset)
        for start in range(0, n, shard_size):
            end = min(start + shard_size, n)
            try:
                batch = dataset[start:end]
            except UnicodeDecodeError:
                yield start, _arrow_rows(dataset.with_format("arrow")[start:end], start)
                continue
            keys = list(batch)
            yield start, [dict(zip(keys, vals)) for vals in zip(*(batch[k] for k in keys))]
        return
    if _is_iterable_dataset(dataset):
        start = 0
        for table in dataset.with_format("arrow").iter(batch_size=shard_size):
            rows = _arrow_rows(table, start)
            yield start, rows
            start += len(rows)
        return
    buf: list[dict[str, Any]] = []
    start = 0
    for row in dataset:
        buf.append(dict(row))
        if len(buf) == shard_size:
            yield start, buf
            start += len(buf)
            buf = []
    if buf:
        yield start, buf


def iter_rows(dataset) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, row)`` for every row of a dataset, undecodable rows as ``{UNDECODABLE: reason}`` (see _chunks)."""
    for start, rows in _chunks(dataset, 512):
        for i, row in enumerate(rows):
            yield start + i, row


def _arrow_rows(table, start: int) -> list[dict[str, Any]]:
    """Python rows of an Arrow table; a row that cannot be decoded is replaced by its reason (one row per row)."""
    try:
        return table.to_pylist()
    except UnicodeDecodeError:
        pass
    rows = []
    for i in range(table.num_rows):
        one = table.slice(i, 1)
        try:
            rows.append(one.to_pylist()[0])
        except UnicodeDecodeError:
            bad = []
            for name in one.column_names:
                try:
                    one.column(name).to_pylist()
                except UnicodeDecodeError as e:
                    bad.append(f"{name!r} (byte 0x{e.object[e.start]:02x} at {e.start})")
            rows.append({UNDECODABLE: f"row {start + i}: column {', '.join(bad)} is not valid UTF-8; "
                                      "fix the file's encoding (e.g. iconv -f latin1 -t utf-8)"})
    return rows


def _is_iterable_dataset(ds) -> bool:
    try:
        import datasets

        return isinstance(ds, datasets.IterableDataset)
    except ImportError:  # pragma: no cover
        return False


def column_names(dataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names:
        return list(names)
    if _is_iterable_dataset(dataset):  # streaming without declared features: the first table's schema
        first = next(iter(dataset.with_format("arrow").iter(batch_size=1)), None)
        if first is None or first.num_rows == 0:
            raise UserInputError("the dataset is empty")
        return list(first.column_names)
    first = next(iter(dataset), None)
    if first is None:
        raise UserInputError("the dataset is empty")
    return list(first)


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
    fingerprint: str | None = None,
    edit_distance: bool = False,
    progress: bool = True,
    wait_timeout_s: float = 7 * 24 * 3600,
) -> list[dict[str, Any]]:
    """Score every row of ``dataset``; one result dict per row, in order (``orig_index`` = row position).

    ``dataset``: a ``datasets.Dataset``, a streaming ``IterableDataset`` (rows are read shard by shard, never all
    at once) or a list of dicts. ``max_length`` may not exceed the model's context length; ``None`` truncates at
    that context length (when the model's config states one). With ``out_dir`` each shard of ``shard_size`` rows is saved under
    ``out_dir/shards/`` as soon as it is done; rerunning the same call skips finished shards, so an interrupted
    run resumes and ends with identical scores. Under ``accelerate launch`` (RANK / WORLD_SIZE set) process r
    scores the shards i with i % world == r, then every process waits for all shards and returns the merged
    scores (write outputs from rank 0 only).
    """
    from tqdm.auto import tqdm

    if on_prefix_mismatch not in ("trl", "skip"):
        raise UserInputError(f"on_prefix_mismatch={on_prefix_mismatch!r} is invalid: expected 'trl' or 'skip'")
    if shard_size < 1:
        raise UserInputError(f"shard_size={shard_size} is invalid: expected >= 1")
    if max_length is not None and max_length < 2:
        raise UserInputError(f"max_length={max_length} is invalid: expected >= 2 or None")
    from ..hf.base import check_tokenizer_matches, context_length

    check_tokenizer_matches(model, tokenizer)
    ctx = context_length(model)
    if max_length is not None and ctx is not None and max_length > ctx:
        raise UserInputError(f"max_length={max_length} (--max-length) is more than the model's context length {ctx}: "
                             f"pass {ctx} or less")
    rank, world = dist_info()
    if world > 1 and out_dir is None:
        raise UserInputError("a data-parallel run needs an output folder (--out) to share its shards")
    columns = detect_columns(column_names(dataset), prompt_col, chosen_col, rejected_col)
    params = {"max_length": max_length, "on_prefix_mismatch": on_prefix_mismatch, "edit_distance": edit_distance,
              "columns": [columns.prompt, columns.chosen, columns.rejected], "shard_size": shard_size}
    shard_dir = None
    if out_dir is not None:
        fp = fingerprint or getattr(dataset, "_fingerprint", None)
        if fp is None:
            if _is_iterable_dataset(dataset):
                raise UserInputError("a streaming dataset needs fingerprint= (e.g. its id, config, split, revision)")
            fp = _sha(json.dumps(list(dataset), sort_keys=True, default=str))
        key = run_key(fp, model_name, dtype, params, tokenizer)
        shard_dir = Path(out_dir) / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        key_file = shard_dir / "RUN_KEY"
        if key_file.exists() and key_file.read_text().strip() != key:
            raise UserInputError(
                f"{shard_dir} holds shards of a different run (other data, model or settings); "
                "use another --out or delete that folder"
            )
        if rank == 0 or not key_file.exists():
            key_file.write_text(key + "\n")
    total = len(dataset) if not _is_iterable_dataset(dataset) and hasattr(dataset, "__len__") else None
    results: list[dict[str, Any]] = []
    n_shards = 0
    bar = tqdm(total=total, desc="CHES scoring" + (f" [rank {rank}/{world}]" if world > 1 else ""), unit="pair",
               disable=not progress, dynamic_ncols=True)
    try:
        for k, (start, chunk) in enumerate(_chunks(dataset, shard_size)):
            n_shards = k + 1
            path = shard_dir / f"shard-{k:06d}.parquet" if shard_dir is not None else None
            if k % world != rank:
                continue
            if path is not None and path.exists():
                rows = _read_rows_parquet(path)
                bar.update(len(chunk))
            else:
                rows = score_rows(model, tokenizer, chunk, columns, start_index=start, batch_size=batch_size,
                                  max_length=max_length if max_length is not None else ctx,
                                  on_prefix_mismatch=on_prefix_mismatch,
                                  edit_distance=edit_distance, progress=bar)
                if path is not None:
                    _write_rows_parquet(rows, path)
            if world == 1:
                results.extend(rows)
    finally:
        bar.close()
    if world == 1:
        return results
    (shard_dir / f"DONE-{rank}-of-{world}").write_text(f"{n_shards}\n")
    deadline = time.monotonic() + wait_timeout_s
    markers = [shard_dir / f"DONE-{r}-of-{world}" for r in range(world)]
    while not all(m.exists() for m in markers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for the other {world - 1} processes' shards in {shard_dir}")
        time.sleep(0.2)
    for k in range(n_shards):
        results.extend(_read_rows_parquet(shard_dir / f"shard-{k:06d}.parquet"))
    return results


def versions() -> dict[str, str]:
    """The versions a CHES manifest records (``"not installed"`` for a missing one)."""
    from ..utils.provenance import NOT_INSTALLED, package_versions

    return package_versions(("debias-lm", "torch", "transformers", "datasets", "trl"), missing=NOT_INSTALLED)


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
