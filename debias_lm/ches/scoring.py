"""Batched CHES scoring of preference rows with an HF causal LM (no logits, fp32 sums, right padding)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.ches import ches_from_sums, completion_score_mask, masked_hidden_sums, normalized_edit_distance
from ..errors import UserInputError
from .formats import Columns, TokenizedPair, tokenize_pair

SCORE_FIELDS = (
    "orig_index", "status", "skip_reason", "note", "ches", "ln_ches", "n_prompt", "n_chosen", "n_rejected",
    "neg_norm_edit_distance", "last_hidden_inner", "reward_margin",
)
REWARD_COLUMNS = (("score_chosen", "score_rejected"), ("chosen_score", "rejected_score"), ("chosen_rating", "rejected_rating"))


def base_model_of(model):
    """The decoder without its LM head: its ``last_hidden_state`` is what multiplies the unembedding."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise UserInputError(
            f"{type(model).__name__} has no separate base model (expected a *ForCausalLM with .base_model); "
            "pass the causal LM itself"
        )
    return base


def _reward_margin(row: Mapping[str, Any]) -> float:
    for a, b in REWARD_COLUMNS:
        if a in row and b in row:
            try:
                return float(row[a]) - float(row[b])
            except (TypeError, ValueError):
                return math.nan
    return math.nan


def score_rows(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    columns: Columns,
    *,
    start_index: int = 0,
    batch_size: int = 8,
    max_length: int | None = 1024,
    on_prefix_mismatch: str = "trl",
    edit_distance: bool = False,
    progress=None,
) -> list[dict[str, Any]]:
    """Score ``rows`` (one output dict per input row, in order; ``orig_index = start_index + i``).

    Pairs are sorted by length into batches of ``batch_size`` (2·batch_size sequences per forward pass),
    right-padded with explicit masks; each row's score does not depend on its batch-mates.
    ``edit_distance``: also compute the token-level edit-distance baseline (quadratic in the response length,
    in Python: off by default; ``last_hidden_inner`` and ``reward_margin`` cost nothing and are always filled).
    ``progress``: a tqdm bar to advance by the number of pairs done (or None).
    """
    import torch

    if batch_size < 1:
        raise UserInputError(f"batch_size={batch_size} is invalid: expected >= 1")
    pairs: list[TokenizedPair] = [
        tokenize_pair(tokenizer, r, columns, max_length=max_length, on_prefix_mismatch=on_prefix_mismatch) for r in rows
    ]
    out: list[dict[str, Any]] = []
    for i, (row, p) in enumerate(zip(rows, pairs)):
        out.append({
            "orig_index": start_index + i, "status": p.status, "skip_reason": p.skip_reason, "note": p.note,
            "ches": math.nan, "ln_ches": math.nan, "n_prompt": len(p.prompt_ids), "n_chosen": len(p.chosen_ids),
            "n_rejected": len(p.rejected_ids), "neg_norm_edit_distance": math.nan, "last_hidden_inner": math.nan,
            "reward_margin": _reward_margin(row),
        })
        if p.status == "ok" and edit_distance:
            out[-1]["neg_norm_edit_distance"] = -normalized_edit_distance(p.chosen_ids, p.rejected_ids)
    ok = [i for i, p in enumerate(pairs) if p.status == "ok"]
    ok.sort(key=lambda i: -(len(pairs[i].prompt_ids) + max(len(pairs[i].chosen_ids), len(pairs[i].rejected_ids))))
    base = base_model_of(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    with torch.no_grad():
        for s in range(0, len(ok), batch_size):
            idx = ok[s : s + batch_size]
            seqs, comp = [], []
            for key in ("chosen_ids", "rejected_ids"):
                for i in idx:
                    p = pairs[i]
                    seqs.append(p.prompt_ids + getattr(p, key))
                    comp.append([0] * len(p.prompt_ids) + [1] * len(getattr(p, key)))
            width = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            cmask = torch.zeros((len(seqs), width), dtype=torch.long)
            for j, (x, c) in enumerate(zip(seqs, comp)):
                ids[j, : len(x)] = torch.tensor(x)
                attn[j, : len(x)] = 1
                cmask[j, : len(c)] = torch.tensor(c)
            hidden = base(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).last_hidden_state
            smask = completion_score_mask(cmask).to(hidden.device)
            sums, counts = masked_hidden_sums(hidden, smask)
            b = len(idx)
            ches, ln = ches_from_sums(sums[:b], sums[b:], counts[:b], counts[b:])
            last_pos = torch.tensor([len(x) - 2 for x in seqs], device=hidden.device)  # predicts the last token
            h_last = hidden[torch.arange(len(seqs), device=hidden.device), last_pos].double()
            inner = (h_last[:b] * h_last[b:]).sum(-1)
            for k, i in enumerate(idx):
                out[i]["ches"] = float(ches[k])
                out[i]["ln_ches"] = float(ln[k])
                out[i]["last_hidden_inner"] = float(inner[k])
            if progress is not None:
                progress.update(b)
    if progress is not None:
        progress.update(len(rows) - len(ok))
    return out
