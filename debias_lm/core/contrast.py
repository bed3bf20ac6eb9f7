"""Post-hoc answer calibration and contrastive (debias-sampling) logits, as pure tensor functions.

Calibration (contextual calibration, Zhao et al. 2021, per question as in Zhang et al. 2024 "Debiasing Large
Visual Language Models"): for label probabilities p (with the image) and p_cf (image-free / content-free),

    q ∝ W p + b,   diagonal: W = diag(p_cf + ε)⁻¹, b = 0      identity: W = I, b = −p_cf

renormalised over the labels. ``batch`` uses the batch-calibration prior (Zhou et al. 2023): the mean label
distribution over the batch, with the diagonal form.

Contrast (visual debias decoding / VCD / CFG): for conditional and unconditional raw logits l_c, l_u,

    s = (1 + α)·l_c − α·l_u,   s[y] = −inf where p_c(y) < β · max p_c   (adaptive plausibility cutoff)

applied on raw logits before temperature / top-k / top-p. A row whose contrast has no usable value (overflow,
NaN logits) falls back to l_c with the cutoff and is reported (``return_fallback``).
"""

from __future__ import annotations

import math

import torch

CALIBRATION_MODES = ("diagonal", "identity", "batch")


def _normalise(p: torch.Tensor, name: str) -> torch.Tensor:
    p = p.double()
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} has NaN or infinite entries; pass finite probabilities")
    if (p < 0).any():
        raise ValueError(f"{name} has negative entries; pass probabilities (e.g. softmax over the labels)")
    s = p.sum(-1, keepdim=True)
    if (s == 0).any():
        raise ValueError(f"{name} has a row that sums to 0")
    return p / s


def batch_prior(p: torch.Tensor) -> torch.Tensor:
    """Batch-calibration prior: the mean (renormalised) label distribution over all leading dimensions."""
    p = _normalise(p, "p")
    return p.reshape(-1, p.shape[-1]).mean(0)


def calibrate(p: torch.Tensor, p_cf: torch.Tensor | None = None, mode: str = "diagonal", eps: float = 1e-4) -> torch.Tensor:
    """Calibrated label distributions ``[..., L]`` (float64, rows sum to 1).

    Args:
        p: label probabilities with the real input ``[..., L]`` (renormalised here).
        p_cf: the prior ``[..., L]`` or ``[L]`` (image-free / content-free probabilities); ignored for ``batch``.
        mode: ``diagonal`` (default), ``identity`` or ``batch``.
        eps: added to p_cf in the diagonal forms (the reference code uses 1e-4).

    In ``identity`` mode negative entries of p − p_cf are clipped to 0 before renormalising (a row equal to
    its prior becomes uniform); the argmax is that of p − p_cf.
    """
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"mode={mode!r} is invalid: expected one of {', '.join(CALIBRATION_MODES)}")
    pn = _normalise(p, "p")
    if mode == "batch":
        prior = batch_prior(p)
    else:
        if p_cf is None:
            raise ValueError(f"mode={mode!r} needs p_cf (the image-free / content-free prior)")
        prior = _normalise(p_cf, "p_cf").to(pn.device)
        if prior.shape[-1] != pn.shape[-1]:
            raise ValueError(f"p has {pn.shape[-1]} labels but p_cf has {prior.shape[-1]}")
    if mode in ("diagonal", "batch"):
        q = pn / (prior + eps)
    else:
        q = (pn - prior).clamp_min(0.0)
    s = q.sum(-1, keepdim=True)
    uniform = torch.full_like(q, 1.0 / q.shape[-1])
    return torch.where(s > 0, q / s.clamp_min(1e-300), uniform)


def contrast(l_c: torch.Tensor, l_u: torch.Tensor, alpha: float | torch.Tensor = 1.0,
             beta: float | torch.Tensor = 0.1, *, return_fallback: bool = False):
    """Contrastive scores ``(1+α)·l_c − α·l_u`` with the adaptive plausibility cutoff (float32, same shape).

    Tokens whose conditional probability is below ``beta`` times the most likely token's are set to −inf
    (equivalently l_c < log β + max l_c, on raw logits). ``alpha = 0`` returns l_c with that cutoff applied.
    Tokens already at −inf in ``l_c`` stay −inf; a −inf in ``l_u`` does not turn a token into +inf.

    ``alpha`` / ``beta``: numbers, or tensors with one value per row (``[N]``, for ``[N, V]`` logits; the
    caller checks their ranges).

    Non-finite safety: NaN never comes out. A NaN in ``l_c`` counts as −inf. A row whose contrasted scores have
    no value above −inf (e.g. ``inf − inf`` overflow with an absurd α, or a NaN anywhere in its ``l_u``)
    **falls back** to ``l_c`` with the cutoff (plain decoding restricted to the plausible tokens); with
    ``return_fallback=True`` the result is ``(scores, fell_back)``, a bool per row.
    """
    per_row = isinstance(alpha, torch.Tensor) or isinstance(beta, torch.Tensor)
    if not isinstance(alpha, torch.Tensor) and not (
            isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha={alpha!r} is invalid: expected a finite number >= 0")
    if not isinstance(beta, torch.Tensor) and not (isinstance(beta, (int, float)) and 0 < beta <= 1):
        raise ValueError(f"beta={beta!r} is invalid: expected a number in (0, 1]")
    if l_c.shape != l_u.shape:
        raise ValueError(f"l_c {tuple(l_c.shape)} and l_u {tuple(l_u.shape)} must have the same shape")
    neg_inf, pos_inf = float("-inf"), float("inf")
    # (elementwise kernels chosen for speed on CPU: nan_to_num / maximum / where, not fmax or masked_fill)
    lc = l_c.float().nan_to_num(nan=neg_inf, posinf=pos_inf, neginf=neg_inf)
    lu = l_u.float()
    # -inf counterfactual logits take the row's lowest finite one; +inf stays, so the token is excluded whenever
    # alpha > 0; a NaN makes the whole row's contrast unusable (NaN propagates to every score: the row falls back)
    finite_min = lu.nan_to_num(nan=math.nan, posinf=pos_inf, neginf=pos_inf).amin(-1, keepdim=True)
    lu = torch.maximum(lu, finite_min)
    top = lc.amax(-1, keepdim=True)
    if per_row:
        a = torch.as_tensor(alpha, dtype=torch.float32, device=lc.device).reshape(-1, 1)
        b = torch.as_tensor(beta, dtype=torch.float32, device=lc.device).reshape(-1, 1)
        lc_cut = torch.where(lc < torch.log(b) + top, neg_inf, lc)
        s = torch.where(a == 0, lc_cut, torch.addcmul(lc_cut, a, lc_cut - lu))  # (1+a)·lc − a·lu
    else:
        lc_cut = torch.where(lc < math.log(beta) + top, neg_inf, lc)
        s = torch.add(lc_cut, lc_cut - lu, alpha=float(alpha)) if alpha else lc_cut
    # cut tokens stay -inf (-inf + a·(-inf)); NaN (inf - inf, 0·inf) becomes -inf
    s = s.nan_to_num(nan=neg_inf, posinf=pos_inf, neginf=neg_inf)
    fell_back = s.amax(-1) == neg_inf
    s = torch.where(fell_back.unsqueeze(-1), lc_cut, s)
    return (s, fell_back) if return_fallback else s


def calibration_offsets(p_cf: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Diagonal calibration as additive logit offsets: ``−log(p̂_cf + ε)`` per label (float64, same shape).

    Adding the offset of label ℓ to the logit of every token variant of ℓ multiplies ℓ's total probability by
    ``1 / (p̂_cf,ℓ + ε)`` and leaves other tokens alone, so renormalised over the labels the result is exactly
    ``calibrate(p, p_cf, "diagonal", eps)``. ``p_cf`` is renormalised over the labels first. This is how a
    prior is applied inside decoding (HF ``generate`` and the vLLM plugin), where only logits are seen.
    """
    prior = _normalise(p_cf, "p_cf")
    return -torch.log(prior + eps)


def tempered_calibration_offsets(label_lse: torch.Tensor, label_lse_t: torch.Tensor, p_cf: torch.Tensor,
                                 temperature: float, eps: float = 1e-4) -> torch.Tensor:
    """Per-label logit offsets ``c`` [..., L] that make diagonal calibration exact **after** a temperature T.

    Sampling divides the processed logits by T, so adding :func:`calibration_offsets` before it gives label
    masses ∝ (p_ℓ / (p_cf,ℓ + ε))^(1/T) — not ``calibrate(p, p_cf)``. With, per label ℓ and from the same
    first-step logits s, ``label_lse[ℓ] = log r_ℓ`` (the label's variant tokens combined: logsumexp for
    ``reduce="sum"``, max for ``"max"``) and ``label_lse_t[ℓ]`` the same on s / T::

        log q = log calibrate(p, p_cf)          (p ∝ r, read at T = 1)
        A_T   = Σ_ℓ exp(label_lse_t[ℓ]) · (p_cf,ℓ + ε)^(−1/T)
        c_ℓ   = T · (log q_ℓ − label_lse_t[ℓ] + log A_T)

    After adding ``c_ℓ`` to every variant of ℓ and dividing by T, the labels' (renormalised) distribution is
    exactly q, and their total mass against the other tokens is what the plain offsets give (A_T). At T = 1 this
    reduces to :func:`calibration_offsets`. ``p_cf`` is ``[L]`` or ``[..., L]``; the result is float64.
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r} is invalid: expected a finite number > 0")
    lse, lse_t = label_lse.double(), label_lse_t.double()
    log_w = torch.log(_normalise(p_cf, "p_cf").to(lse.device) + eps)
    log_q = torch.log_softmax(lse - log_w, -1)
    log_a = torch.logsumexp(lse_t - log_w / temperature, -1, keepdim=True)
    return temperature * (log_q - lse_t + log_a)
