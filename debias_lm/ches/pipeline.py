"""The whole CHES run as one library call: load the preference data, score every pair, select, write.

    from debias_lm.ches import FilterSettings, filter_preferences
    run = filter_preferences(FilterSettings(dataset="prefs.jsonl", out="runs/ches", keep_fraction=0.05))
    run.selection.n_kept, run.filtered_path          # the kept pairs, in the original schema and order

``score_preferences(ScoreSettings(...))`` is the same run without the selection. Every check that needs no
model (output locations, the score name, the dataset's files and columns) runs before the model loads. The
``debias-lm ches score|filter`` command is a thin front end over these two functions; its flags are generated
from the fields below (their ``metadata`` holds each flag's help and argparse type).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..utils.files import check_output_path
from .formats import detect_columns
from .io import FORMATS, load_preference_dataset, save_dataset, save_filtered_stream, source_fingerprint
from .run import build_manifest, column_names, dist_info, score_dataset, write_scores
from .selection import SCORES, Selection, check_rule, select


def _meta(help: str = "", **kw: Any) -> dict[str, Any]:
    """A field's CLI metadata (see ``debias_lm.cli.flags.add_dataclass_flags``; ``type`` names a CLI number type)."""
    return {"help": help, **kw} if help else dict(kw)


@dataclass(frozen=True, kw_only=True)
class ScoreSettings:
    """What ``debias-lm ches score`` takes: the data, the model, the scoring parameters and the output folder."""

    model: str = field(default="default",
                       metadata=_meta("HF model id or local path (default: embedded model)"))
    dtype: str = field(default="float32", metadata=_meta(
        "model dtype (sums are accumulated in float32 either way)", choices=("float32", "bfloat16")))
    dataset: str = field(metadata=_meta("hub id, json/jsonl/parquet file or save_to_disk folder"))
    config: str | None = field(default=None, metadata=_meta("dataset config name (hub datasets)"))
    split: str | None = field(default=None, metadata=_meta("dataset split (default: train)"))
    revision: str | None = field(default=None, metadata=_meta("dataset revision (hub datasets)"))
    prompt_col: str | None = None
    chosen_col: str | None = None
    rejected_col: str | None = None
    batch_size: int = field(default=8, metadata=_meta("pairs per forward pass", type="positive_int"))
    max_length: int | None = field(default=None, metadata=_meta(
        "TRL's max_length, keep_start truncation (default 1024, or the model's context length if smaller)",
        type="length"))
    on_prefix_mismatch: str = field(default="trl", metadata=_meta(choices=("trl", "skip")))
    shard_size: int = field(default=512, metadata=_meta("rows per resumable shard", type="positive_int"))
    streaming: bool = field(default=False, metadata=_meta("read the dataset row by row (larger than memory)"))
    edit_distance: bool = field(default=False, metadata=_meta(
        "also compute the normalised token edit-distance baseline (slow for long responses)"))
    out: str = field(metadata=_meta(metavar="DIR"))
    progress: bool = field(default=True, metadata=_meta(flag="--no-progress"))

    def resolved_max_length(self, context_length: int | None) -> int:
        """``max_length``, or TRL's default 1024 capped at the model's context length."""
        return self.max_length if self.max_length is not None else min(1024, context_length or 1024)


@dataclass(frozen=True, kw_only=True)
class FilterSettings(ScoreSettings):
    """``ScoreSettings`` plus exactly one selection rule, the score it ranks by and the filtered dataset's format."""

    keep_fraction: float | None = field(default=None, metadata=_meta(
        "keep this fraction with the lowest score (paper: 0.05)", type="fraction", exclusive="rule",
        exclusive_required=True))
    drop_top_fraction: float | None = field(default=None, metadata=_meta(
        "drop this fraction with the highest score", type="fraction", exclusive="rule"))
    threshold: float | None = field(default=None, metadata=_meta(
        "keep pairs with score <= this value", type="finite", exclusive="rule"))
    score: str = field(default="ln_ches", metadata=_meta(
        "ln_ches (default), ches, neg_norm_edit_distance, last_hidden_inner, reward_margin"))
    format: str = field(default="save_to_disk", metadata=_meta(choices=FORMATS))
    keep_skipped: bool = field(default=False, metadata=_meta("keep rows that could not be scored"))

    @property
    def target_name(self) -> str:
        """The filtered dataset's name inside ``out``."""
        return {"save_to_disk": "filtered", "parquet": "filtered.parquet", "jsonl": "filtered.jsonl"}[self.format]

    def selection_args(self) -> dict[str, Any]:
        return {"keep_fraction": self.keep_fraction, "drop_top_fraction": self.drop_top_fraction,
                "threshold": self.threshold, "score": self.score, "keep_skipped": self.keep_skipped}


@dataclass
class ChesRun:
    """What a run produced. ``written`` is False on the non-zero ranks of a data-parallel launch (rank 0 writes)."""

    settings: ScoreSettings
    scores: list[dict[str, Any]]
    manifest: dict[str, Any] | None = None
    selection: Selection | None = None
    out: Path | None = None
    filtered_path: Path | None = None
    written: bool = True

    @property
    def scores_path(self) -> Path | None:
        return None if self.out is None else self.out / "scores.parquet"

    @property
    def manifest_path(self) -> Path | None:
        return None if self.out is None else self.out / "manifest.json"


def score_preferences(settings: ScoreSettings, *, model=None, tokenizer=None) -> ChesRun:
    """Score every pair of ``settings.dataset``; writes ``scores.parquet`` and ``manifest.json`` to ``out``."""
    return _run(settings, model=model, tokenizer=tokenizer)


def filter_preferences(settings: FilterSettings, *, model=None, tokenizer=None) -> ChesRun:
    """Score, select by the rule of ``settings`` and write the filtered dataset (original schema and row order)
    beside the scores (``out/filtered``, ``filtered.parquet`` or ``filtered.jsonl``)."""
    if not isinstance(settings, FilterSettings):
        raise UserInputError("filter_preferences needs FilterSettings (with keep_fraction, drop_top_fraction or "
                             "threshold); use score_preferences to score only")
    return _run(settings, model=model, tokenizer=tokenizer)


def _run(settings: ScoreSettings, *, model=None, tokenizer=None) -> ChesRun:
    filtering = isinstance(settings, FilterSettings)
    out_dir = check_output_path(settings.out, kind="dir", flag="--out")
    if filtering:
        if settings.score not in SCORES:
            raise UserInputError(f"--score {settings.score!r} is invalid: expected one of {', '.join(SCORES)}")
        rule = settings.selection_args()
        rule.pop("keep_skipped")
        check_rule(**rule)  # exactly one valid rule, before anything is read or loaded
        check_output_path(out_dir / settings.target_name, kind="dir" if settings.format == "save_to_disk" else "file",
                          flag=f"--out (its {settings.target_name})")
    ds = load_preference_dataset(settings.dataset, settings.config, settings.split, settings.revision,
                                 streaming=settings.streaming, progress=settings.progress)
    detect_columns(column_names(ds), settings.prompt_col, settings.chosen_col, settings.rejected_col)  # before the model
    if model is None or tokenizer is None:
        from .. import models

        model, tokenizer = models.load_model(settings.model, dtype=settings.dtype)
    from ..hf.base import context_length

    settings = dataclasses.replace(settings, max_length=settings.resolved_max_length(context_length(model)))
    fingerprint = (source_fingerprint(settings.dataset, settings.config, settings.split, settings.revision)
                   if settings.streaming else None)
    scores = score_dataset(
        model, tokenizer, ds, prompt_col=settings.prompt_col, chosen_col=settings.chosen_col,
        rejected_col=settings.rejected_col, batch_size=settings.batch_size, max_length=settings.max_length,
        on_prefix_mismatch=settings.on_prefix_mismatch, out_dir=settings.out, shard_size=settings.shard_size,
        model_name=settings.model, dtype=settings.dtype, fingerprint=fingerprint,
        edit_distance=settings.edit_distance, progress=settings.progress,
    )
    rank, _ = dist_info()
    if rank != 0:  # data-parallel: process 0 writes the merged outputs
        return ChesRun(settings, scores, written=False)
    sel = select(scores, **settings.selection_args()) if filtering else None
    arguments = {"command": "ches", "ches_command": "filter" if filtering else "score",
                 **dataclasses.asdict(settings)}
    manifest = build_manifest(arguments=arguments, dataset=ds, model_name=settings.model, dtype=settings.dtype,
                              tokenizer=tokenizer, scores=scores, selection=sel)
    out = write_scores(settings.out, scores, manifest)
    run = ChesRun(settings, scores, manifest=manifest, selection=sel, out=out)
    if sel is not None:
        target = out / settings.target_name
        if settings.streaming:
            save_filtered_stream(ds, set(sel.keep), target, settings.format)
        else:
            save_dataset(ds.select(sel.keep), target, settings.format)
        run.filtered_path = target
    return run
