"""Loading preference datasets (hub id or local files) and writing filtered datasets."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError

FORMATS = ("save_to_disk", "parquet", "jsonl")


def source_fingerprint(source: str, config: str | None = None, split: str | None = None,
                       revision: str | None = None) -> str:
    """Identifies a dataset without reading it (for streaming runs): the arguments plus local file sizes/mtimes."""
    import hashlib

    parts = [source, str(config), str(split), str(revision)]
    p = Path(source).expanduser()
    if p.exists():
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        parts += [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def load_preference_dataset(source: str, config: str | None = None, split: str | None = None,
                            revision: str | None = None, streaming: bool = False):
    """A ``datasets.Dataset`` from a hub id, a json/jsonl/parquet file (or folder of them) or a save_to_disk folder.

    ``streaming=True`` returns an ``IterableDataset`` read row by row (datasets larger than memory).
    """
    ds = _load(source, config, split, revision, streaming)
    return ds


def _load(source, config, split, revision, streaming):
    import datasets

    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "state.json").is_file()
                           or (p / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(p))
            if streaming:
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[_pick_split(source, list(ds), split)]
                return ds.to_iterable_dataset()
        else:
            files = [p] if p.is_file() else sorted(x for x in p.iterdir() if x.suffix in (".json", ".jsonl", ".parquet"))
            if not files:
                raise UserInputError(f"{source!r} has no .json/.jsonl/.parquet files and is not a save_to_disk folder")
            kinds = {"parquet" if f.suffix == ".parquet" else "json" if f.suffix in (".json", ".jsonl") else None for f in files}
            if None in kinds or len(kinds) != 1:
                raise UserInputError(f"{source!r}: expected .json, .jsonl or .parquet files of one kind")
            try:
                ds = datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train",
                                           streaming=streaming)
            except Exception as e:
                raise UserInputError(f"cannot read {source!r}: {str(e).splitlines()[0]}") from None
    else:
        if source.startswith((".", "/", "~")) or source.count("/") > 1 or Path(source).suffix in (".json", ".jsonl", ".parquet"):
            raise UserInputError(f"dataset path {source!r} does not exist")
        try:
            ds = datasets.load_dataset(source, config, split=split, revision=revision, streaming=streaming)
        except Exception as e:
            raise UserInputError(f"cannot load dataset {source!r}: {str(e).splitlines()[0]}") from None
        split = None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        ds = ds[_pick_split(source, list(ds), split)]
    elif split not in (None, "train"):
        raise UserInputError(f"{source!r} is a single split; drop --split {split!r}")
    return ds


def _pick_split(source: str, splits: list[str], split: str | None) -> str:
    if split is None:
        if "train" not in splits:
            raise UserInputError(f"{source!r} has splits {splits}; choose one with --split")
        return "train"
    if split not in splits:
        raise UserInputError(f"{source!r} has no split {split!r}; available: {splits}")
    return split


def save_filtered_stream(dataset, keep: set[int], path: str | Path, fmt: str) -> Path:
    """Write the kept rows of a (streaming) dataset in their original order without holding it in memory."""
    import datasets

    path = Path(path)
    if fmt not in FORMATS:
        raise UserInputError(f"format={fmt!r} is invalid: expected one of {', '.join(FORMATS)}")

    def rows():
        for i, row in enumerate(dataset):
            if i in keep:
                yield dict(row)

    if fmt == "jsonl":
        _write_jsonl(rows(), path)
        return path
    features = getattr(dataset, "features", None)
    ds = datasets.Dataset.from_generator(rows, features=features)
    return save_dataset(ds, path, fmt)


def save_dataset(ds, path: str | Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise UserInputError(f"format={fmt!r} is invalid: expected one of {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "save_to_disk":
        ds.save_to_disk(str(path))
    elif fmt == "parquet":
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(path))
    else:
        _write_jsonl(ds, path)
    return path


def _write_jsonl(rows, path: Path) -> None:
    """One JSON object per line (compact, UTF-8); the same bytes for in-memory and streaming datasets."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(dict(r), ensure_ascii=False, separators=(",", ":"), default=str) + "\n")
