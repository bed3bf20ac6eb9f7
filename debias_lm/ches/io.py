"""Loading preference datasets (hub id or local files) and writing filtered datasets."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError

FORMATS = ("save_to_disk", "parquet", "jsonl")


def load_preference_dataset(source: str, config: str | None = None, split: str | None = None, revision: str | None = None):
    """A ``datasets.Dataset`` from a hub id, a json/jsonl/parquet file (or folder of them) or a save_to_disk folder."""
    import datasets

    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "state.json").is_file()
                           or (p / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(p))
        else:
            files = [p] if p.is_file() else sorted(x for x in p.iterdir() if x.suffix in (".json", ".jsonl", ".parquet"))
            if not files:
                raise UserInputError(f"{source!r} has no .json/.jsonl/.parquet files and is not a save_to_disk folder")
            kinds = {"parquet" if f.suffix == ".parquet" else "json" if f.suffix in (".json", ".jsonl") else None for f in files}
            if None in kinds or len(kinds) != 1:
                raise UserInputError(f"{source!r}: expected .json, .jsonl or .parquet files of one kind")
            try:
                ds = datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train")
            except Exception as e:
                raise UserInputError(f"cannot read {source!r}: {str(e).splitlines()[0]}") from None
    else:
        if source.startswith((".", "/", "~")) or source.count("/") > 1 or Path(source).suffix in (".json", ".jsonl", ".parquet"):
            raise UserInputError(f"dataset path {source!r} does not exist")
        try:
            ds = datasets.load_dataset(source, config, split=split, revision=revision)
        except Exception as e:
            raise UserInputError(f"cannot load dataset {source!r}: {str(e).splitlines()[0]}") from None
        split = None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if "train" not in ds:
                raise UserInputError(f"{source!r} has splits {list(ds)}; choose one with --split")
            split = "train"
        if split not in ds:
            raise UserInputError(f"{source!r} has no split {split!r}; available: {list(ds)}")
        ds = ds[split]
    elif split not in (None, "train"):
        raise UserInputError(f"{source!r} is a single split; drop --split {split!r}")
    return ds


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
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_json(str(path), lines=True, force_ascii=False)
    return path
