"""CHES scoring and filtering of DPO preference data (Razin et al., ICLR 2025).

    import debias_lm.ches as ches
    ds = ches.load_preference_dataset("data/prefs.jsonl")
    scores = ches.score(model, tok, ds)                        # one dict per row, in order
    sel = ches.select(scores, keep_fraction=0.05)              # the paper: keep the lowest 5 % LN-CHES
    filtered = ds.select(sel.keep)                             # original schema and row order

The whole run (load, score, select, write the filtered dataset, the manifest) is one call, what
``debias-lm ches filter`` runs::

    run = ches.filter_preferences(ches.FilterSettings(dataset="data/prefs.jsonl", out="runs/ches", keep_fraction=0.05))

The math is in :mod:`debias_lm.core.ches`; tokenisation follows TRL's DPOTrainer (:mod:`.formats`).
"""

from .formats import SKIP_REASONS, Columns, TokenizedPair, detect_columns, extract_prompt, tokenize_pair
from .io import load_preference_dataset, save_dataset, save_filtered_stream, source_fingerprint
from .pipeline import ChesRun, FilterSettings, ScoreSettings, filter_preferences, score_preferences
from .run import build_manifest, dist_info, score_dataset, write_scores
from .scoring import base_model_of, score_rows
from .selection import SCORES, Selection, check_rule, select

score = score_dataset


def filter_dataset(dataset, selection: Selection):
    """The kept rows of ``dataset`` in their original order and schema."""
    return dataset.select(selection.keep)


__all__ = [
    "SCORES", "SKIP_REASONS", "ChesRun", "Columns", "FilterSettings", "ScoreSettings", "Selection", "check_rule",
    "filter_preferences", "score_preferences", "TokenizedPair", "base_model_of", "build_manifest",
    "detect_columns", "extract_prompt", "filter_dataset", "load_preference_dataset", "save_dataset", "score",
    "score_dataset", "score_rows", "select", "tokenize_pair", "write_scores", "dist_info", "save_filtered_stream",
    "source_fingerprint",
]
