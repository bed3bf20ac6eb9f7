"""Debias sampling (contrastive decoding against a counterfactual / image-free context) as an HF logits processor.

The processor runs its own *unconditional* branch — the counterfactual context — with its own KV cache and
explicit position ids, feeds it every token the main branch emits, and returns
``contrast(l_cond, l_uncond, alpha, beta)`` (:func:`debias_lm.core.contrast`). It is a plain
``LogitsProcessor``: pass it to ``model.generate(logits_processor=[proc])``; greedy and sampling both work
(user processors run before temperature / top-k / top-p, as in the reference method).

This module has the text path (LLMs: the counterfactual is another prompt, e.g. with a biasing prefix or
group terms swapped). Image-free inputs for VLMs build on the same class.
"""

from __future__ import annotations

import torch

from ..core.contrast import contrast
from ..errors import UserInputError
from .base import encode_left_padded

try:  # transformers is a core dependency; keep the import local to this module
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover
    LogitsProcessor = object  # type: ignore[assignment,misc]


def _check_alpha_beta(alpha: float, beta: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0 or alpha != alpha:
        raise UserInputError(f"alpha={alpha!r} is invalid: expected a number >= 0 (1.0 is the method's default)")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta <= 1:
        raise UserInputError(f"beta={beta!r} is invalid: expected a number in (0, 1] (0.1 is the method's default)")


class DebiasSamplingLogitsProcessor(LogitsProcessor):
    """Contrast each step's logits against an unconditional (counterfactual) branch.

    Args:
        model: the same HF causal LM that generates.
        uncond_input_ids: ``[B, S]`` token ids of the counterfactual context, **left-padded**, one row per
            generated row (batch size must match the ``generate`` batch; beams are not supported).
        uncond_attention_mask: its attention mask (default: all ones).
        alpha: contrast strength α ≥ 0 (0 = plain decoding with the plausibility cutoff).
        beta: plausibility cutoff β ∈ (0, 1]: tokens with p_cond < β · max p_cond are never chosen.

    The processor's state (cache, positions) resets automatically when a new ``generate`` call starts.
    """

    def __init__(self, model, uncond_input_ids: torch.Tensor, uncond_attention_mask: torch.Tensor | None = None, *,
                 alpha: float = 1.0, beta: float = 0.1) -> None:
        _check_alpha_beta(alpha, beta)
        if uncond_input_ids.dim() != 2 or uncond_input_ids.shape[1] == 0:
            raise UserInputError("uncond_input_ids must be a non-empty [batch, length] tensor")
        if uncond_attention_mask is None:
            uncond_attention_mask = torch.ones_like(uncond_input_ids)
        if uncond_attention_mask.shape != uncond_input_ids.shape:
            raise UserInputError("uncond_attention_mask must have the shape of uncond_input_ids")
        if (uncond_attention_mask.sum(-1) == 0).any():
            raise UserInputError("a counterfactual context row is empty")
        if (uncond_attention_mask[:, -1] == 0).any():
            raise UserInputError("the counterfactual context must be left-padded (tokenizer.padding_side='left')")
        self.model = model
        self.uncond_input_ids = uncond_input_ids
        self.uncond_attention_mask = uncond_attention_mask
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.reset()

    @classmethod
    def from_texts(cls, model, tokenizer, texts: list[str] | str, *, alpha: float = 1.0, beta: float = 0.1,
                   add_special_tokens: bool = True):
        """Build from counterfactual prompt strings (tokenised with left padding)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise UserInputError("counterfactual texts must be non-empty strings")
        enc = encode_left_padded(tokenizer, texts, add_special_tokens=add_special_tokens,
                                 device=next(model.parameters()).device)
        return cls(model, enc["input_ids"], enc["attention_mask"], alpha=alpha, beta=beta)

    def reset(self) -> None:
        self._cache = None
        self._mask = None
        self._next_pos = None
        self._prev_input = None

    def _continues(self, input_ids: torch.Tensor) -> bool:
        prev = self._prev_input
        return (
            prev is not None
            and input_ids.shape[1] == prev.shape[1] + 1
            and torch.equal(input_ids[:, :-1], prev)
        )

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b = input_ids.shape[0]
        if b != self.uncond_input_ids.shape[0]:
            raise UserInputError(
                f"debias sampling got {b} rows but {self.uncond_input_ids.shape[0]} counterfactual contexts: beam "
                "search and num_return_sequences > 1 are not supported (use num_beams=1 and one context per row)"
            )
        if self._cache is not None and not self._continues(input_ids):
            self.reset()  # a new generate() call
        if self._cache is None:
            ids = self.uncond_input_ids.to(input_ids.device)
            mask = self.uncond_attention_mask.to(input_ids.device)
            pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
            self._next_pos = pos[:, -1] + 1
        else:
            ids = input_ids[:, -1:]
            mask = torch.cat([self._mask, torch.ones_like(ids)], dim=1)
            pos = self._next_pos[:, None]
            self._next_pos = self._next_pos + 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self._cache,
                         use_cache=True)
        self._cache, self._mask, self._prev_input = out.past_key_values, mask, input_ids
        return contrast(scores, out.logits[:, -1], self.alpha, self.beta).to(scores.dtype)
