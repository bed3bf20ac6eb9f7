"""Debias sampling (contrastive decoding against a counterfactual / image-free context) as an HF logits processor.

The processor runs the *unconditional* branch — an image-free version of the VLM input, or a counterfactual
text context for LLMs — with its own KV cache and explicit position ids (3-D M-RoPE positions on
Qwen2-VL / Qwen2.5-VL), feeds it every token the main branch emits, and returns
``contrast(l_cond, l_uncond, alpha, beta)`` (:func:`debias_lm.core.contrast`). It is a plain ``LogitsProcessor``:
pass it to ``model.generate(logits_processor=[proc])``; greedy and sampling both work (user processors run
before temperature / top-k / top-p, as in the reference method), and the main branch's cache and the model's
own state (e.g. Qwen2-VL's ``rope_deltas``) are never touched.

Several unconditional variants (``"none+unk"``) are averaged, l_u = mean of their logits; text-only variants
run as one batched forward.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ...core.contrast import contrast
from ...errors import UserInputError
from ...hf.padding import encode_left_padded, stack_left_padded
from .config import ALPHA_MAX

log = logging.getLogger(__name__)


def _note_fallback(owner, fell_back: torch.Tensor) -> None:
    """Count rows whose contrast had no usable score (they were decoded plainly, with the cutoff) and warn once."""
    n = int(fell_back.sum())
    if n:
        if not owner.fallback_rows:
            log.warning("debias sampling: %d row(s) had no finite contrasted score at this step (overflow or NaN "
                        "logits); those steps use plain decoding with the plausibility cutoff", n)
        owner.fallback_rows += n


try:  # transformers is a core dependency; keep the import local to this module
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover
    LogitsProcessor = object  # type: ignore[assignment,misc]


def _check_alpha_beta(alpha: float, beta: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= ALPHA_MAX:
        raise UserInputError(f"alpha={alpha!r} is invalid: expected a number in [0, {ALPHA_MAX:g}] (1.0 is the "
                             "method's default)")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta <= 1:
        raise UserInputError(f"beta={beta!r} is invalid: expected a number in (0, 1] (0.1 is the method's default)")


def _check_left_padded(ids: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise UserInputError(f"{what} input_ids must be a non-empty [batch, length] tensor")
    if mask.shape != ids.shape:
        raise UserInputError(f"{what} attention_mask must have the shape of its input_ids")
    if (mask.sum(-1) == 0).any():
        raise UserInputError(f"a {what} row is empty")
    if (mask[:, -1] == 0).any():
        raise UserInputError(f"the {what} must be left-padded (tokenizer.padding_side='left')")


class _Branch:
    """One unconditional forward stream: ``repeat`` variants of the batch stacked as ``repeat * B`` rows."""

    def __init__(self, inputs: dict[str, Any], repeat: int, mrope: bool, model) -> None:
        self.inputs = inputs
        self.repeat = repeat
        self.mrope = mrope
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.cache = None
        self.mask = None
        self.next_pos = None

    def _prefill_positions(self, mask: torch.Tensor) -> torch.Tensor:
        inp = self.inputs
        if self.mrope and inp.get("image_grid_thw") is not None:  # a noised image: the model's own 3-D index
            base = getattr(self.model, "model", self.model)
            kw = {k: inp[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if inp.get(k) is not None}
            pos, _ = base.get_rope_index(inp["input_ids"], mm_token_type_ids=inp["mm_token_type_ids"],
                                         attention_mask=mask, **kw)
            self.next_pos = pos[..., -1].amax(0) + 1
            return pos
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        self.next_pos = pos[:, -1] + 1
        return pos.unsqueeze(0).expand(3, -1, -1) if self.mrope else pos

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[repeat, B, V]`` for the next token of every row."""
        device = input_ids.device
        extra: dict[str, Any] = {}
        if self.cache is None:
            ids = self.inputs["input_ids"].to(device)
            mask = self.inputs["attention_mask"].to(device)
            pos = self._prefill_positions(mask)
            extra = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.inputs.items()
                     if k not in ("input_ids", "attention_mask")}
        else:
            ids = input_ids[:, -1:].repeat(self.repeat, 1)
            mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
            pos = self.next_pos[:, None]
            if self.mrope:
                pos = pos.unsqueeze(0).expand(3, -1, -1)
            self.next_pos = self.next_pos + 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                         use_cache=True, **extra)
        self.cache, self.mask = out.past_key_values, mask
        logits = out.logits[:, -1].float()
        return logits.view(self.repeat, -1, logits.shape[-1])


class DebiasSamplingLogitsProcessor(LogitsProcessor):
    """Contrast each step's logits against an unconditional (counterfactual / image-free) branch.

    Args:
        model: the same HF model that generates (a causal LM or a VLM).
        uncond_input_ids: ``[B, S]`` token ids of the unconditional context, **left-padded**, one row per
            generated row (the ``generate`` batch size; beams and ``num_return_sequences > 1`` are refused).
        uncond_attention_mask: its attention mask (default: all ones).
        alpha: contrast strength α ≥ 0 (0 = plain decoding with the plausibility cutoff).
        beta: plausibility cutoff β ∈ (0, 1]: tokens with p_cond < β · max p_cond are never chosen.
        branches: instead of ``uncond_input_ids``: a list of unconditional inputs (dicts with ``input_ids``,
            ``attention_mask`` and any other model inputs, e.g. noised ``pixel_values``) whose logits are
            averaged. Text-only branches are stacked into one forward.
        mrope: the model uses 3-D multimodal RoPE positions (Qwen2-VL / Qwen2.5-VL); set by
            :meth:`from_inputs`.

    Build it with :meth:`from_inputs` (VLMs: image-free variants) or :meth:`from_texts` (LLMs: counterfactual
    prompts). The processor's state (caches, positions) resets automatically when a new ``generate`` starts.
    """

    def __init__(self, model, uncond_input_ids: torch.Tensor | None = None,
                 uncond_attention_mask: torch.Tensor | None = None, *, alpha: float = 1.0, beta: float = 0.1,
                 branches: list[Mapping[str, Any]] | None = None, mrope: bool = False, pad_token_id: int = 0) -> None:
        _check_alpha_beta(alpha, beta)
        if (uncond_input_ids is None) == (branches is None):
            raise UserInputError("pass either uncond_input_ids or branches=[...], not both")
        if branches is None:
            if not isinstance(uncond_input_ids, torch.Tensor):
                raise UserInputError("uncond_input_ids must be a [batch, length] tensor of token ids")
            if uncond_attention_mask is None:
                uncond_attention_mask = torch.ones_like(uncond_input_ids)
            branches = [{"input_ids": uncond_input_ids, "attention_mask": uncond_attention_mask}]
        if not branches:
            raise UserInputError("branches must hold at least one unconditional input")
        norm = []
        for br in branches:
            ids = br.get("input_ids")
            if not isinstance(ids, torch.Tensor):
                raise UserInputError("each unconditional branch needs input_ids as a tensor")
            mask = br.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask
            _check_left_padded(ids, mask, "counterfactual context")
            norm.append({**br, "attention_mask": mask})
        sizes = {b["input_ids"].shape[0] for b in norm}
        if len(sizes) != 1:
            raise UserInputError(f"unconditional branches have different batch sizes {sorted(sizes)}")
        self.batch_size = sizes.pop()
        text_only = [b for b in norm if set(b) <= {"input_ids", "attention_mask"}]
        other = [b for b in norm if not set(b) <= {"input_ids", "attention_mask"}]
        self._branches: list[_Branch] = []
        if text_only:
            ids, mask = stack_left_padded([(b["input_ids"], b["attention_mask"]) for b in text_only], pad_token_id)
            self._branches.append(_Branch({"input_ids": ids, "attention_mask": mask}, len(text_only), mrope, model))
        for b in other:
            self._branches.append(_Branch(dict(b), 1, mrope, model))
        self.num_variants = len(norm)
        self.model = model
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mrope = mrope
        self.reset()

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, model, tokenizer, texts: list[str] | str, *, alpha: float = 1.0, beta: float = 0.1,
                   add_special_tokens: bool = True):
        """Text LLMs: build from counterfactual prompt strings (one per generated row; left-padded)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise UserInputError("counterfactual texts must be non-empty strings")
        enc = encode_left_padded(tokenizer, texts, add_special_tokens=add_special_tokens,
                                 device=next(model.parameters()).device)
        return cls(model, enc["input_ids"], enc["attention_mask"], alpha=alpha, beta=beta,
                   pad_token_id=tokenizer.pad_token_id or 0)

    @classmethod
    def from_inputs(cls, model, processor, inputs: Mapping[str, Any], *, alpha: float = 1.0, beta: float = 0.1,
                    variant: str = "none", noise_step: int = 500, seed: int = 0):
        """VLMs: build the image-free branch(es) of ``inputs`` (the processor's output for ``generate``).

        ``variant``: ``none`` (image tokens removed), ``unk`` (one UNK token per image), ``noise`` (the image
        forward-diffused to ``noise_step``, VCD), or several joined by ``+`` (logits averaged). The construction
        is chosen from ``model.config.model_type`` (LLaVA, LLaVA-NeXT/OneVision, Qwen2-VL, Qwen2.5-VL,
        Idefics3/SmolVLM, Gemma3); other architectures, inputs without image tokens and right-padded batches
        raise a ``ValueError`` here, before generation.
        """
        from ...hf.base import get_tokenizer
        from ...hf.image_free import arch_spec, image_free_inputs, parse_variants

        _check_alpha_beta(alpha, beta)
        spec = arch_spec(model)
        branches = [image_free_inputs(model, processor, inputs, v, noise_step=noise_step, seed=seed)
                    for v in parse_variants(variant)]
        tok = get_tokenizer(processor)
        return cls(model, alpha=alpha, beta=beta, branches=branches, mrope=spec.mrope,
                   pad_token_id=tok.pad_token_id or 0)

    # -- state --------------------------------------------------------------------------------------
    def reset(self) -> None:
        for br in self._branches:
            br.reset()
        self._prev_input = None
        self.fallback_rows = 0  # row-steps that fell back to plain decoding (see debias_lm.core.contrast)

    def _continues(self, input_ids: torch.Tensor) -> bool:
        prev = self._prev_input
        return (
            prev is not None
            and input_ids.shape[1] == prev.shape[1] + 1
            and torch.equal(input_ids[:, :-1], prev)
        )

    def unconditional_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Advance every branch by the last token of ``input_ids`` (or prefill) and return mean logits [B, V]."""
        total = None
        for br in self._branches:
            lu = br.step(input_ids).sum(0)
            total = lu if total is None else total + lu
        return total / self.num_variants

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b = input_ids.shape[0]
        if b != self.batch_size:
            raise UserInputError(
                f"debias sampling got {b} rows but {self.batch_size} counterfactual contexts: beam search and "
                "num_return_sequences > 1 are not supported (use num_beams=1 and one context per row)"
            )
        started = self._prev_input is not None
        if started and not self._continues(input_ids):
            self.reset()  # a new generate() call
        lu = self.unconditional_logits(input_ids)
        self._prev_input = input_ids
        if lu.shape[-1] != scores.shape[-1]:  # e.g. padded LM heads: compare on the shared vocabulary
            v = min(lu.shape[-1], scores.shape[-1])
            out = scores.float().clone()
            out[:, :v], fell_back = contrast(scores[:, :v], lu[:, :v], self.alpha, self.beta, return_fallback=True)
            out[:, v:] = float("-inf")
            _note_fallback(self, fell_back)
            return out.to(scores.dtype)
        out, fell_back = contrast(scores, lu, self.alpha, self.beta, return_fallback=True)
        _note_fallback(self, fell_back)
        return out.to(scores.dtype)
