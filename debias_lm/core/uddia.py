"""UDDIA's math as pure tensor functions (no model calls).

Yang et al., "Unified Detoxifying and Debiasing in Language Generation via Inference-time Adaptive
Optimization" (ICLR 2023). Notation follows ``shared/reference/uddia.md``:

* detox: a linear probe ``f`` on the mean of final hidden states (prefix + current token + a *soft*
  look-ahead token, whose embedding is the expected input embedding under the tuned next-token
  distribution p_theta); loss = CE(f(h_mean), non-toxic).
* debias: a group direction v in input-embedding space (supervised PCA of word pairs; closed form below),
  token attribute posteriors p(a|x) = softmax([s, 1-s] / tau) with s = (1 + cos(e_x, v)) / 2, context-aware
  posteriors p(a|x,c) from r = (L * mean(E[c]) + e_x) / (L + 1), group token distributions q_a, the
  Hellinger-gap trigger, and
  L_bias = sum_x p_theta(x) KL(p(a|x,c) || p(a|x)) + 1/2 sum_x p_theta(x) KL(p(a|x) || U).
  Every cosine is taken on *post-processed* embeddings (``EmbeddingFrame``): the vocabulary mean is subtracted
  and the top D principal directions of the centred vocabulary are projected out ("all-but-the-top", Mu &
  Viswanath, ICLR 2018, D = max(1, round(d / 100))). Raw input embeddings share a large common component (and
  a frequency direction), so raw cosines put most of the vocabulary, " the" and " and" included, in one group.
* the update: Adam from a fresh state every token (one step == lr * g / (|g| + eps), i.e. signSGD), scaled
  per site by ``site_scale`` (the project's RMS rule: the site's activation RMS), optionally shrunk per row
  to a KL budget on the next-token distribution (``kl_rows``, ``kl_budget_scale``),
* fusion: p ∝ p_tuned^gamma * p_base^(1-gamma),
* redo: conditional perplexity of the continuation, against a threshold derived from the model's own plain
  samples (``redo_threshold``: a multiple of their median perplexity).

Attribute index 0 is the *first* word of each pair (``words.GENDER_PAIRS``: female), index 1 the second.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TAU = 0.1  # temperature of the attribute posterior (reference, hard-coded there)
GROUP_MASK = 0.75  # q_a keeps tokens with p(a|x) > 0.75 (reference)
_EPS = 1e-12


# -- group direction ------------------------------------------------------------------------------------
def group_direction(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """First supervised-PCA component (delta kernel on the group label) of pair-centred word embeddings.

    ``emb_a``/``emb_b``: ``[N, d]`` embeddings of the two words of N pairs. After centring each pair by its
    mean, the label-kernel matrix X^T H L H X is rank one (L_ij = 1[y_i = y_j] = (1 + y_i y_j) / 2 and the
    labels are balanced), so its top eigenvector is proportional to X^T y = sum_i (e_a_i - e_b_i). Returned
    unit-norm, pointing toward group a.
    """
    if emb_a.shape != emb_b.shape or emb_a.dim() != 2 or emb_a.shape[0] == 0:
        raise ValueError(f"group_direction needs two [N, d] tensors with N >= 1, got {tuple(emb_a.shape)} "
                         f"and {tuple(emb_b.shape)}")
    diff = (emb_a.double() - emb_b.double()).sum(0)
    norm = diff.norm()
    if norm == 0:
        raise ValueError("group_direction: the word pairs have identical embeddings")
    return (diff / norm).to(emb_a.dtype)


def top_components(centred: torch.Tensor, k: int) -> torch.Tensor:
    """The top ``k`` principal directions ``[k, d]`` (orthonormal rows) of an already-centred matrix ``[N, d]``.

    Exact (eigendecomposition of the d x d Gram matrix in float64) for d <= 2048; randomized
    (``torch.svd_lowrank``, 4 power iterations, fixed seed) above that.
    """
    if k <= 0:
        return centred.new_zeros(0, centred.shape[-1])
    if centred.shape[-1] <= 2048:
        x = centred.double()
        vals, vecs = torch.linalg.eigh(x.T @ x)
        top = vecs[:, torch.argsort(vals, descending=True)[:k]].T
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _, _, v = torch.svd_lowrank(centred.float(), q=k + 8, niter=4)
        top = v[:, :k].T.double()
    return top.to(centred.dtype).contiguous()


def n_removed_components(dim: int) -> int:
    """D of all-but-the-top: max(1, round(d / 100)) (Mu & Viswanath's rule of thumb)."""
    return max(1, int(math.floor(dim / 100 + 0.5)))


class EmbeddingFrame:
    """Affine post-processing of input embeddings before any cosine: x -> (x - mu) - ((x - mu) P^T) P.

    ``mu`` ``[d]`` is the vocabulary mean, ``P`` ``[D, d]`` the top D principal directions of the centred
    vocabulary. It is affine, so the post-processed mean of several embeddings is the mean of the
    post-processed embeddings (the context vector r keeps its meaning).
    """

    def __init__(self, emb: torch.Tensor, n_components: int | None = None) -> None:
        emb = emb.float()
        self.mu = emb.mean(0)
        k = n_removed_components(emb.shape[-1]) if n_components is None else int(n_components)
        self.P = top_components(emb - self.mu, k)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = x.float() - self.mu.to(x.device)
        P = self.P.to(x.device)
        return c - (c @ P.T) @ P if P.shape[0] else c

    def to(self, device) -> EmbeddingFrame:
        self.mu, self.P = self.mu.to(device), self.P.to(device)
        return self


def group_sizes(posterior: torch.Tensor, threshold: float = GROUP_MASK) -> tuple[int, int]:
    """How many tokens each attribute's q_a keeps: (#{x: p(a_0|x) > threshold}, #{x: p(a_1|x) > threshold})."""
    return int((posterior[:, 0] > threshold).sum()), int((posterior[:, 1] > threshold).sum())


def _cos_to(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cos(x_i, v) along the last dim."""
    return (x @ v) / (x.norm(dim=-1) * v.norm()).clamp_min(_EPS)


def attribute_posterior(cos: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """p(a|·) = softmax([s, 1 - s] / tau) with s = (1 + cos) / 2; returns ``[..., 2]``."""
    s = (1.0 + cos) / 2.0
    return torch.softmax(torch.stack([s, 1.0 - s], dim=-1) / tau, dim=-1)


def token_attribute_posterior(emb: torch.Tensor, v: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """p(a|x) for every token x of an embedding matrix ``emb`` ``[V, d]`` -> ``[V, 2]``."""
    return attribute_posterior(_cos_to(emb, v), tau)


def context_attribute_posterior(
    emb: torch.Tensor, v: torch.Tensor, ctx_mean: torch.Tensor, ctx_len: torch.Tensor, tau: float = TAU, *,
    ev: torch.Tensor | None = None, e_sq: torch.Tensor | None = None, ec: torch.Tensor | None = None,
) -> torch.Tensor:
    """p(a|x, c) with r(x, c) = (L * mean(E[c]) + e_x) / (L + 1) -> ``[B, V, 2]``.

    ``ctx_mean``: ``[B, d]`` mean input embedding of each context c (BOS + prompt + generated tokens);
    ``ctx_len``: ``[B]`` its length L. Computed without materialising r: r.v and |r|^2 expand into
    E v, E ctx_mean, |e_x|^2 and |ctx_mean|^2. ``ev`` = E v ``[V]``, ``e_sq`` = |e_x|^2 ``[V]`` (constants of a
    model and group) and ``ec`` = ctx_mean E^T ``[B, V]`` (shared by every group) may be passed precomputed.
    """
    L = ctx_len.to(emb.dtype).unsqueeze(1)  # [B, 1]
    ev = emb @ v if ev is None else ev  # [V]
    cv = ctx_mean @ v  # [B]
    e_sq = (emb * emb).sum(-1) if e_sq is None else e_sq  # [V]
    c_sq = (ctx_mean * ctx_mean).sum(-1)  # [B]
    ec = ctx_mean @ emb.T if ec is None else ec  # [B, V]
    num = (L * cv.unsqueeze(1) + ev.unsqueeze(0)) / (L + 1)
    r_sq = (L * L * c_sq.unsqueeze(1) + 2 * L * ec + e_sq.unsqueeze(0)) / (L + 1) ** 2
    cos = num / (r_sq.clamp_min(0).sqrt() * v.norm()).clamp_min(_EPS)
    return attribute_posterior(cos, tau)


def group_token_distributions(
    posterior: torch.Tensor, freq: torch.Tensor | None = None, threshold: float = GROUP_MASK
) -> torch.Tensor:
    """q_a(x) ∝ freq(x) p(a|x) 1[p(a|x) > threshold] -> ``[2, V]`` (uniform freq when ``None``).

    A group with no token above the threshold gets the unmasked distribution (so it stays defined).
    """
    post = posterior.T  # [2, V]
    w = post if freq is None else post * freq.to(post.dtype).unsqueeze(0)
    masked = w * (post > threshold)
    empty = masked.sum(-1, keepdim=True) <= 0
    masked = torch.where(empty, w, masked)
    return masked / masked.sum(-1, keepdim=True)


# -- trigger and losses ---------------------------------------------------------------------------------
def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """H(p, q) = sqrt(1 - sum sqrt(p q)) along the last dim (broadcasting)."""
    bc = (p.clamp_min(0) * q.clamp_min(0)).sqrt().sum(-1)
    return (1.0 - bc).clamp_min(0).sqrt()


def hellinger_gap(p: torch.Tensor, q_groups: torch.Tensor) -> torch.Tensor:
    """Trigger statistic Δ = |H(p, q_0) - H(p, q_1)| for ``p`` ``[B, V]`` and ``q_groups`` ``[2, V]`` -> ``[B]``."""
    return (hellinger(p, q_groups[0]) - hellinger(p, q_groups[1])).abs()


def kl_div(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) along the last dim; 0 log 0 = 0."""
    p = p.clamp_min(0)
    return torch.where(p > 0, p * (p.clamp_min(_EPS).log() - q.clamp_min(_EPS).log()), torch.zeros_like(p)).sum(-1)


def debias_loss(p_theta: torch.Tensor, post_ctx: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """L_bias per row: sum_x p(x) KL(p(a|x,c) || p(a|x)) + 1/2 sum_x p(x) KL(p(a|x) || Uniform).

    ``p_theta`` ``[B, V]`` (the only differentiable input), ``post_ctx`` ``[B, V, 2]``, ``post`` ``[V, 2]``.
    """
    k = post.shape[-1]
    kl_ctx = kl_div(post_ctx, post.unsqueeze(0))  # [B, V]
    kl_uni = kl_div(post, torch.full_like(post, 1.0 / k))  # [V]
    return (p_theta * kl_ctx).sum(-1) + 0.5 * (p_theta * kl_uni.unsqueeze(0)).sum(-1)


def mean_hidden(prefix_sum: torch.Tensor, prefix_count: torch.Tensor, *terms: torch.Tensor) -> torch.Tensor:
    """(prefix_sum + sum(terms)) / (prefix_count + len(terms)), rows ``[B, d]``."""
    total = prefix_sum
    for t in terms:
        total = total + t
    return total / (prefix_count.to(total.dtype) + len(terms)).unsqueeze(-1)


def toxicity_loss(probe_logits: torch.Tensor, target: int = 0) -> torch.Tensor:
    """CE(f(h), target) per row (target 0 = non-toxic)."""
    tgt = torch.full((probe_logits.shape[0],), target, dtype=torch.long, device=probe_logits.device)
    return F.cross_entropy(probe_logits.float(), tgt, reduction="none")


def combined_loss(
    variant: str,
    tox: torch.Tensor | None,
    bias: torch.Tensor | None,
    triggered: torch.Tensor | None,
    debias_weight: float,
) -> torch.Tensor:
    """Per-row objective: t -> L_tox; b -> 1[Δ > trigger] L_bias; u -> L_tox + λ 1[Δ > trigger] L_bias."""
    if variant == "t":
        return tox
    gated = bias * triggered.to(bias.dtype)
    if variant == "b":
        return gated
    if variant == "u":
        return tox + debias_weight * gated
    raise ValueError(f"unknown UDDIA variant {variant!r}; expected t, b or u")


# -- optimiser ------------------------------------------------------------------------------------------
def adam_step(
    grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step (as ``torch.optim.Adam``) -> (update to *subtract*, new m, new v). ``step`` starts at 1.

    From a fresh state (m = v = 0, step 1) the update is lr * g / (|g| + eps): sign-SGD.
    """
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    return lr * m_hat / (v_hat.sqrt() + eps), m, v


def rows_rms(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-row RMS over all elements of several ``[B, d_i]`` tensors -> ``[B]``."""
    total = sum((p.float() ** 2).sum(-1) for p in parts)
    return (total / sum(p.shape[-1] for p in parts)).sqrt()


def kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities ``[B, V]`` (-inf entries of p contribute 0)."""
    p = logp.exp()
    diff = torch.where(p > 0, logp - logq.clamp_min(-1e30), torch.zeros_like(logp))
    return (p * diff).sum(-1).clamp_min(0)


def kl_budget_scale(kl: torch.Tensor, budget: float, safety: float = 0.9) -> torch.Tensor:
    """Per-row factor to shrink an offset whose step moved the distribution by ``kl`` > ``budget``.

    For small offsets KL grows quadratically with the offset's size, so scaling the offset by
    sqrt(budget / kl) lands near the budget; ``safety`` aims a little below it. Rows within the budget get 1.
    """
    over = kl > budget
    factor = safety * (budget / kl.clamp_min(1e-12)).sqrt()
    return torch.where(over, factor.clamp(max=1.0), torch.ones_like(kl))


def redo_threshold(plain_ppls, factor: float) -> float:
    """The redo threshold: ``factor`` x the median of the model's own plain-sample perplexities (finite ones)."""
    import statistics

    finite = [float(p) for p in plain_ppls if p is not None and math.isfinite(float(p))]
    if not finite:
        raise ValueError("redo_threshold needs at least one finite perplexity")
    return factor * statistics.median(finite)


# -- decoding -------------------------------------------------------------------------------------------
def fuse_log_probs(logp_tuned: torch.Tensor, logp_base: torch.Tensor, gamma: float) -> torch.Tensor:
    """log of p ∝ p_tuned^gamma p_base^(1 - gamma), normalised (-inf stays -inf; x^0 = 1, so at gamma 0 or 1
    a -inf of the side with weight 0 does not turn 0·(-inf) into NaN)."""
    tuned = gamma * logp_tuned if gamma != 0 else torch.zeros_like(logp_tuned)
    base = (1.0 - gamma) * logp_base if gamma != 1 else torch.zeros_like(logp_base)
    return torch.log_softmax(tuned + base, dim=-1)


def conditional_perplexity(token_nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(mean NLL over the masked continuation tokens) per row; ``inf`` for an empty continuation."""
    n = mask.sum(-1)
    total = (token_nll * mask).sum(-1)
    out = torch.exp(total / n.clamp_min(1))
    return torch.where(n > 0, out, torch.full_like(out, math.inf))


def resolve_depth(value: float | int, depth: int) -> int:
    """A layer count given as an int (used as is) or a fraction in (0, 1] of ``depth`` (rounded, halves up, min 1)."""
    if isinstance(value, float) and value <= 1.0:
        return max(1, int(math.floor(value * depth + 0.5)))
    return int(value)
