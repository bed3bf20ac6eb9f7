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
                            revision: str | None = None, streaming: bool = False, progress: bool = True):
    """A ``datasets.Dataset`` from a hub id, a json/jsonl/parquet file (or folder of them) or a save_to_disk folder.

    ``streaming=True`` returns an ``IterableDataset`` read row by row (datasets larger than memory). Local files
    are checked first (:func:`check_local_files`): an empty file, a line that is not a JSON object or a 0-row
    Parquet file is an error naming the file, the line and the fix. ``progress=False`` hides the ``datasets``
    progress bars.
    """
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        ds = _load(source, config, split, revision, streaming)
    finally:
        if not progress and not was_disabled:
            datasets.enable_progress_bars()
    n = None if streaming or not hasattr(ds, "__len__") else len(ds)
    if n == 0:
        raise UserInputError(f"dataset {source!r} has no rows (split {split or 'train'!r}); "
                             "pass a dataset with preference pairs")
    return ds


_EXAMPLE = '{"prompt": "...", "chosen": "...", "rejected": "..."}'


def check_local_files(files: list[Path]) -> None:
    """Clear errors, before any model loads, for local files the ``datasets`` readers would choke on or report
    only generically: empty files, lines that are not JSON objects, 0-row or unreadable Parquet files. Each
    error names the file, the line and the fix. Bytes that are not UTF-8 are not an error here: such a row is
    recorded with ``skip_reason="invalid_utf8"`` when it is scored."""
    for f in files:
        if f.suffix == ".parquet":
            _check_parquet(f)
        else:
            _check_json(f)


def _check_parquet(f: Path) -> None:
    import pyarrow.parquet as pq

    try:
        n = pq.ParquetFile(f).metadata.num_rows
    except Exception as e:  # not Parquet at all, truncated, ...
        raise UserInputError(f"{f} is not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             "re-export it, or pass a .jsonl file") from None
    if n == 0:
        raise UserInputError(f"{f} has 0 rows: remove it (or the folder entry) and pass files with preference pairs")


def _check_json(f: Path) -> None:
    from ..utils.jsonl import iter_jsonl

    size = f.stat().st_size
    if size == 0:
        raise UserInputError(f"{f} is empty (0 bytes): a preference dataset needs one JSON object per line, "
                             f"e.g. {_EXAMPLE}")
    with f.open("rb") as fh:
        head = fh.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if head.startswith("["):  # one JSON array of row objects
        _check_json_document(f, array=True)
        return
    n_rows = 0
    for n, _row, err in iter_jsonl(f, invalid_utf8="keep"):
        if err:
            if n_rows == 0 and head.startswith("{") and _check_json_document(f, array=False):
                return  # one JSON object of columns ({"prompt": [...], ...}), which datasets reads too
            raise UserInputError(f"{f}:{n}: {err}; every non-blank line must be one JSON object like {_EXAMPLE} "
                                 "(fix or delete that line)")
        n_rows += 1
    if n_rows == 0:
        raise UserInputError(f"{f} has no rows (only blank lines): write one JSON object per line, e.g. {_EXAMPLE}")


def _check_json_document(f: Path, *, array: bool) -> bool:
    import json

    text = f.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if not array:
            return False
        raise UserInputError(f"{f}:{e.lineno}: not JSON ({e.msg} at column {e.colno}); fix that line") from None
    if array:
        if not doc:
            raise UserInputError(f"{f} is an empty JSON array: it has no rows")
        bad = next((i for i, r in enumerate(doc) if not isinstance(r, dict)), None)
        if bad is not None:
            raise UserInputError(f"{f}: element {bad} of the JSON array is {type(doc[bad]).__name__}, expected an "
                                 f"object like {_EXAMPLE}")
        return True
    return isinstance(doc, dict)


def _check_saved_rows(p: Path, source: str) -> None:
    """A save_to_disk folder of 0 rows has no data files, which ``load_from_disk`` reports as an IndexError."""
    import json

    state = p / "state.json"
    if state.is_file():
        try:
            files = json.loads(state.read_text(encoding="utf-8")).get("_data_files")
        except (ValueError, OSError):
            return
        if files == []:
            raise UserInputError(f"dataset {source!r} has no rows (its save_to_disk folder holds no data files); "
                                 "pass a dataset with preference pairs")


def _root_message(e: BaseException) -> str:
    """The innermost cause's first line (``datasets`` wraps the useful message in a generic one)."""
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text


def _load(source, config, split, revision, streaming):
    import datasets

    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "state.json").is_file()
                           or (p / "dataset_dict.json").is_file()):
            _check_saved_rows(p, source)
            try:
                ds = datasets.load_from_disk(str(p))
            except Exception as e:
                raise UserInputError(f"cannot read the save_to_disk folder {source!r}: {_root_message(e)}") from None
            if streaming:
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[_pick_split(source, list(ds), split)]
                if len(ds) == 0:
                    raise UserInputError(f"dataset {source!r} has no rows; pass a dataset with preference pairs")
                return ds.to_iterable_dataset()
        else:
            files = [p] if p.is_file() else sorted(x for x in p.iterdir() if x.suffix in (".json", ".jsonl", ".parquet"))
            if not files:
                raise UserInputError(f"{source!r} has no .json/.jsonl/.parquet files and is not a save_to_disk folder")
            kinds = {"parquet" if f.suffix == ".parquet" else "json" if f.suffix in (".json", ".jsonl") else None for f in files}
            if None in kinds or len(kinds) != 1:
                raise UserInputError(f"{source!r}: expected .json, .jsonl or .parquet files of one kind")
            check_local_files(files)
            try:
                ds = datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train",
                                           streaming=streaming)
            except Exception as e:
                raise UserInputError(f"cannot read {source!r}: {_root_message(e)}") from None
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

    from .formats import UNDECODABLE
    from .run import iter_rows

    def rows():
        for i, row in iter_rows(dataset):
            if i in keep:
                if UNDECODABLE in row:  # select() never keeps these; a caller's own keep set might
                    raise UserInputError(f"row {i} cannot be written: {row[UNDECODABLE]}")
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
