"""Amortised UDDIA (``debias-lm uddia distill``): UDDIA's per-token offsets averaged into static per-site offsets.

UDDIA (``hf.py``) learns an offset δ_t(s) for every bias site s at every decoding step t of every row, by a
gradient step; rows whose trigger does not fire at t take no step (δ_t = 0: plain decoding). Running it over a
calibration prompt set and averaging gives one static offset per site, served by ``steer`` with no gradient:

    mean:       δ̄(s) = Σ_{r,t} δ_{r,t}(s) / #{(r, t): row r still decoding at step t}
    triggered:  δ̃(s) = Σ_{r,t} δ_{r,t}(s) / #{(r, t): UDDIA tuned row r at step t}

over the steps of the attempt UDDIA *kept* for each row (with redo, an attempt that a later, lower-perplexity one
replaced does not count). δ_{r,t} is the offset x_t's tuned distribution was computed with (after any KL-budget
shrink; a row whose KL stayed over the budget counts as tuned with δ = 0). A site outside the tuned top layers of
an attempt contributes 0. ``mean`` is what UDDIA added on average per generated token; ``triggered`` is the
offset of a typical tuned step (larger by 1 / trigger rate), so it needs a smaller ``scale``.

Serving differs from UDDIA in three ways (docs/steering.md): the offset is the same at every step and in every
row (no trigger); it is applied to the forward of every steered position, so it also shapes the KV cache (UDDIA
extends the cache with unperturbed K/V); and there is no redo.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import torch

from ...errors import UserInputError

log = logging.getLogger(__name__)

AVERAGES = ("mean", "triggered")


class OffsetAccumulator:
    """Observer attached to ``UDDIAHF.offset_observer``: per-row sums of the applied offsets, kept attempts only.

    ``UDDIAHF`` calls ``begin_attempt(rows)`` before each attempt (``rows``: the prompt rows it decodes),
    ``step(live [b])`` at each decoding step, ``offsets(local_rows, {site key: [n, d]})`` for the rows it tuned
    at that step, and ``end_attempt(kept [b])`` with which rows' attempt became their best one.
    """

    def __init__(self, sites) -> None:
        self.names = {id(s.module): s.name for s in sites}
        self.dims = {s.name: s.dim for s in sites}
        self.total = {name: torch.zeros(d, dtype=torch.float64) for name, d in self.dims.items()}
        self.steps = 0  # row-steps of kept attempts
        self.tuned = 0  # tuned row-steps of kept attempts
        self._best: dict[tuple[int, int], tuple[dict, int, int]] = {}  # (call, prompt row) -> kept attempt
        self._call = 0
        self._cur = None

    def new_call(self) -> None:
        """Fold the kept attempts of the finished ``generate`` call into the totals."""
        for sums, live, tuned in self._best.values():
            for name, v in sums.items():
                self.total[name] += v
            self.steps += live
            self.tuned += tuned
        self._best = {}
        self._call += 1

    def begin_attempt(self, rows: torch.Tensor) -> None:
        self._cur = {"rows": rows.tolist(), "sums": {}, "live": torch.zeros(len(rows), dtype=torch.long),
                     "tuned": torch.zeros(len(rows), dtype=torch.long)}

    def step(self, live: torch.Tensor) -> None:
        self._cur["live"] += live.long().cpu()

    def offsets(self, rows: torch.Tensor, deltas: dict[int, torch.Tensor]) -> None:
        cur = self._cur
        idx = rows.cpu()
        cur["tuned"].index_add_(0, idx, torch.ones(len(idx), dtype=torch.long))
        b = len(cur["rows"])
        for key, d in deltas.items():
            name = self.names[key]
            if name not in cur["sums"]:
                cur["sums"][name] = torch.zeros(b, self.dims[name], dtype=torch.float64)
            cur["sums"][name].index_add_(0, idx, d.detach().double().cpu())

    def end_attempt(self, kept: list[bool]) -> None:
        cur = self._cur
        for j, r in enumerate(cur["rows"]):
            if kept[j]:
                self._best[(self._call, r)] = ({n: s[j] for n, s in cur["sums"].items()}, int(cur["live"][j]),
                                               int(cur["tuned"][j]))
        self._cur = None

    def result(self, average: str) -> dict[str, torch.Tensor]:
        """``{site name: float32 [d]}`` (call :meth:`new_call` after the last generate first)."""
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        n = self.steps if average == "mean" else self.tuned
        if n == 0:
            raise UserInputError("UDDIA tuned no token of the calibration prompts (its trigger never fired), so there "
                                 "is nothing to distill; use prompts that trigger it, more samples, or a lower "
                                 "tox_trigger / trigger")
        return {name: (v / n).float() for name, v in self.total.items()}


def read_prompts(path: str | Path) -> list[str]:
    """Calibration prompts: JSONL with a ``"prompt"`` string per line (other keys ignored)."""
    from ...utils.jsonl import read_jsonl_objects

    out = []
    for n, row in read_jsonl_objects(path, what="--prompts file"):
        p = row.get("prompt")
        if not isinstance(p, str) or not p.strip():
            raise UserInputError(f"{path}:{n}: expected {{\"prompt\": str}} with a non-empty prompt")
        out.append(p)
    if not out:
        raise UserInputError(f"--prompts file {str(path)!r} holds no prompts")
    return out


def distill(wrapped, prompts: list[str], *, samples: int = 1, max_new_tokens: int = 20, batch_size: int = 16,
            seed: int = 0, top_p: float = 0.9, temperature: float = 1.0, progress: bool = False):
    """Run UDDIA (``wrapped``: ``dl.wrap(model, tok, UDDIAConfig(...))``) over ``prompts`` x ``samples`` (raw text,
    nucleus sampling, ``torch.manual_seed(seed + first row index)`` per batch) -> (accumulator, stats)."""
    from ...hf.base import encode_left_padded

    impl = wrapped.impl
    acc = OffsetAccumulator([*impl.sites, impl.final_site])
    impl.offset_observer = acc
    tok = impl.tokenizer
    rows = [p for p in prompts for _ in range(samples)]
    starts = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="uddia distill", unit="batch")
    tokens = tuned = 0
    try:
        for i in starts:
            chunk = rows[i : i + batch_size]
            enc = encode_left_padded(tok, chunk, device=getattr(wrapped.model, "device", None))
            torch.manual_seed(seed + i)
            wrapped.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, top_p=top_p,
                             temperature=temperature, top_k=0, pad_token_id=tok.pad_token_id)
            acc.new_call()
            st = impl.last_stats
            tokens += st["row_tokens"]
            tuned += st["tuned_row_tokens"]
    finally:
        impl.offset_observer = None
    stats = {"rows": len(rows), "kept_row_steps": acc.steps, "kept_tuned_row_steps": acc.tuned,
             "kept_trigger_rate": acc.tuned / max(acc.steps, 1), "all_attempts_trigger_rate": tuned / max(tokens, 1)}
    return acc, stats


def distilled_file(wrapped, acc: OffsetAccumulator, stats: dict, *, average: str, prompts_path: str | Path,
                   n_prompts: int, settings: dict, command: str = "", model_label: str = "",
                   suggested_scale: float = 1.0):
    """The :class:`~debias_lm.utils.steer_file.SteerFile` (``site_kind="uddia_sites"``) of a distillation."""
    from ... import __version__
    from ...hf.sites import find_blocks
    from ...utils.files import file_sha256
    from ...utils.fingerprint import model_fingerprint, model_name
    from ...utils.steer_file import SteerFile

    model = wrapped.model
    impl = wrapped.impl
    _, blocks, _ = find_blocks(model)
    vecs = acc.result(average)
    cfg = impl.config
    meta = {
        "site_kind": "uddia_sites",
        "model_name": model_label or model_name(model),
        "model_fingerprint": model_fingerprint(model),
        "hidden_size": int(model.get_input_embeddings().weight.shape[1]),
        "num_layers": len(blocks),
        "model_type": str(getattr(model.config, "model_type", "")),
        "recipe": f"uddia-distill-{average}",
        "attribute": {"t": "toxicity", "b": "bias", "u": "toxicity+bias"}[cfg.variant],
        "suggested_scale": float(suggested_scale),
        "suggested_mode": "add",
        "provenance": {
            "data": Path(prompts_path).name, "data_sha256": file_sha256(prompts_path), "n_prompts": n_prompts,
            "uddia_config": cfg.to_dict(), "average": average, **settings, **stats, "command": command,
            "debias_lm_version": __version__, "date": datetime.now(timezone.utc).date().isoformat(),
            "norms": {k: round(float(v.norm()), 5) for k, v in sorted(vecs.items())},
        },
    }
    # sites outside every kept attempt's tuned layers stay zero: leave them out of the file
    vecs = {k: v for k, v in vecs.items() if bool(v.abs().sum() > 0)}
    if not vecs:
        raise UserInputError("the distilled offsets are all zero; nothing to write")
    return SteerFile({f"sites.{k}": v for k, v in vecs.items()}, meta)
