"""Activation steering as pure tensor functions: build a vector, add it, or ablate its direction.

Contrastive activation addition (CAA; Rimsky et al., ACL 2024, "Steering Llama 2 via Contrastive Activation
Addition"; ActAdd, Turner et al. 2023). For pairs (positive_i, negative_i) and a_l(x) the residual stream after
decoder layer l at the last token of text x:

    v_l = (1/N) Σ_i a_l(positive_i) − (1/M) Σ_j a_l(negative_j)          (accumulated in float64, stored float32)

Steering adds it at every steered position (row b with scale s_b ≠ 0, column t in the steered set S):

    add:     h_l[b, t] ← h_l[b, t] + cast(s_b · v_l)                       (s_b · v_l in float32, cast to h's dtype)

Directional ablation (Arditi et al., NeurIPS 2024, "Refusal in Language Models Is Mediated by a Single
Direction") removes the component along the unit direction instead:

    ablate:  h_l[b, t] ← cast(h_l[b, t] − (h_l[b, t] · v̂_l) v̂_l),   v̂_l = v_l / ‖v_l‖   (float32, cast back)

Steered set S: every column (``positions="all"``: prompt and generated tokens) or the columns t ≥ P of a
left-padded prompt of width P (``"generated"``: the prompt's own states, and so the first sampled token, are
never steered). Rows with s_b = 0 are left exactly as they are (``torch.where``, not ``+ 0``).

Distilled UDDIA (``debias-lm uddia distill``): the static offset of a site is the mean of the per-token offsets
δ_t(site) UDDIA applied, over every decoding step of every row (``mean``) or over the steps at which the row's
trigger fired (``triggered``); see :func:`masked_mean_update`.
"""

from __future__ import annotations

import torch

POSITIONS = ("all", "generated")
MODES = ("add", "ablate")


def mean_difference(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``mean(positive) − mean(negative)`` over the first axis (``[N, d]``, ``[M, d]`` -> ``[d]`` float32)."""
    if positive.dim() != 2 or negative.dim() != 2 or positive.shape[1] != negative.shape[1]:
        raise ValueError(f"mean_difference needs [N, d] and [M, d] activations, got {tuple(positive.shape)} and "
                         f"{tuple(negative.shape)}")
    if positive.shape[0] == 0 or negative.shape[0] == 0:
        raise ValueError("mean_difference needs at least one positive and one negative activation")
    return (positive.double().mean(0) - negative.double().mean(0)).float()


def column_mask(start: int, length: int, prompt_width: int, positions: str, device=None) -> torch.Tensor | None:
    """Which of the columns ``start .. start + length − 1`` are steered (``[length]`` bool), or None for all."""
    if positions == "all":
        return None
    if positions != "generated":
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    return torch.arange(start, start + length, device=device) >= prompt_width


def select_mask(rows: torch.Tensor | None, columns: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, T]`` bool from a row mask ``[B]`` and a column mask ``[T]`` (None = every row / column); None if all."""
    if rows is None and columns is None:
        return None
    if rows is None:
        return columns.unsqueeze(0)
    if columns is None:
        return rows.unsqueeze(1)
    return rows.unsqueeze(1) & columns.unsqueeze(0)


def row_offsets(vector: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``cast(s_b · v)`` per row: ``[B, 1, d]`` in ``dtype`` (the product is taken in float32)."""
    return (scales.float().unsqueeze(1) * vector.float().unsqueeze(0)).to(dtype).unsqueeze(1)


def add_offsets(h: torch.Tensor, offsets: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
    """``h [B, T, d] + offsets [B, 1, d]`` where ``select [B, T]`` (or ``[1, T]`` / ``[B, 1]``) is true; else ``h``."""
    out = h + offsets
    if select is None:
        return out
    return torch.where(select.unsqueeze(-1), out, h)


def ablate_direction(h: torch.Tensor, vector: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
    """``h − (h · v̂) v̂`` (float32, cast back to h's dtype) where ``select`` is true; else ``h``."""
    u = vector.float()
    u = u / u.norm()
    hf = h.float()
    out = (hf - (hf @ u).unsqueeze(-1) * u).to(h.dtype)
    if select is None:
        return out
    return torch.where(select.unsqueeze(-1), out, h)


def masked_mean_update(total: torch.Tensor, count: torch.Tensor, values: torch.Tensor,
                       rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running sums for a masked mean over rows: ``total += Σ_{b: rows[b]} values[b]``, ``count += |rows|``.

    ``total`` ``[d]`` float64, ``count`` a 0-d float64 tensor, ``values`` ``[B, d]``, ``rows`` ``[B]`` bool.
    The mean is ``total / count``.
    """
    sel = values.double()[rows.to(values.device)]
    return total + sel.sum(0).to(total.device), count + float(sel.shape[0])
