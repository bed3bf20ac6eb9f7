"""CHES and LN-CHES (Razin et al., ICLR 2025, Def. 2 / App. A Def. 3) as pure tensor functions.

For a prompt x and responses y⁺ (chosen) and y⁻ (rejected), h_{x,y<k} is the final hidden state (after the
final norm: the vector that multiplies the unembedding) at the position whose output predicts token y_k.

    S± = Σ_k h_{x,y±<k}                 (sums over every response position)
    CHES    = ⟨S⁺, S⁻⟩ − ‖S⁺‖²
    LN-CHES = ⟨S⁺, S⁻⟩ / (|y⁺||y⁻|) − ‖S⁺‖² / |y⁺|² = ⟨μ⁺, μ⁻ − μ⁺⟩,   μ± = S± / |y±|

Higher means more similar responses, i.e. more likelihood displacement expected when training DPO on the pair.
"""

from __future__ import annotations

import torch


def completion_score_mask(completion_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose output predicts a completion token: ``score[:, t] = completion[:, t + 1]``.

    ``completion_mask`` is ``[N, T]`` with 1 on completion tokens (right padding, 0 elsewhere).
    """
    score = torch.zeros_like(completion_mask, dtype=torch.bool)
    score[:, :-1] = completion_mask[:, 1:].bool()
    return score


def masked_hidden_sums(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``hidden[n, t]`` over the positions where ``mask[n, t]``, accumulated in float32.

    Returns ``(sums [N, d] float32, counts [N] int64)``. Works for bf16/fp16 hidden states without first
    materialising an fp32 copy of the whole tensor.
    """
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [N, T, d] and mask [N, T]; got {tuple(hidden.shape)} and {tuple(mask.shape)}")
    if hidden.dtype == torch.float32:
        sums = torch.bmm(mask.float().unsqueeze(1), hidden).squeeze(1)
    else:
        sums = _sum_fp32(hidden, mask)
    return sums, mask.sum(dim=1)


def _sum_fp32(hidden: torch.Tensor, mask: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """fp32 accumulation of a low-precision tensor, ``chunk`` positions at a time (bounded extra memory)."""
    out = torch.zeros(hidden.shape[0], hidden.shape[2], dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[1], chunk):
        h = hidden[:, s : s + chunk].float()
        out += (h * mask[:, s : s + chunk, None].float()).sum(dim=1)
    return out


def ches_from_sums(
    s_pos: torch.Tensor, s_neg: torch.Tensor, n_pos: torch.Tensor, n_neg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CHES, LN-CHES)`` per pair from the response sums and lengths, computed in float64.

    Pairs with an empty response (length 0) get NaN.
    """
    sp, sn = s_pos.double(), s_neg.double()
    npos, nneg = n_pos.double(), n_neg.double()
    ches = (sp * sn).sum(-1) - (sp * sp).sum(-1)
    mu_p = sp / npos.unsqueeze(-1)
    mu_n = sn / nneg.unsqueeze(-1)
    ln = (mu_p * (mu_n - mu_p)).sum(-1)
    bad = (npos == 0) | (nneg == 0)
    nan = torch.full_like(ches, float("nan"))
    return torch.where(bad, nan, ches), torch.where(bad, nan, ln)


def normalized_edit_distance(a: list[int], b: list[int]) -> float:
    """Token-level Levenshtein distance divided by ``max(len(a), len(b))`` (0 for two empty sequences)."""
    if not a and not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1] / max(len(a), len(b))
