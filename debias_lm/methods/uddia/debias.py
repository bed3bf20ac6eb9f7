"""UDDIA's debias objective on a concrete model: group directions from word pairs in its input embeddings.

The group token distributions q_a are weighted by token frequencies ``freq`` (the decoding loop passes the
model's own token prior, ``stats.token_prior``; uniform when None).

Every cosine is taken in the post-processed embedding frame (``core.EmbeddingFrame``: vocabulary mean
subtracted, top principal directions projected out). ``GroupDebias`` also counts, per group, how many tokens
each attribute's token distribution q_a keeps (p(a|x) > 0.75) and refuses a group whose two sets differ by more
than ``max_ratio`` (an unbalanced q pair pulls every triggered step toward one side).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ...core import uddia as core
from ...errors import UserInputError
from ...utils.files import read_text
from ...words import BUILTIN_GROUPS, word_pairs


def read_pairs_file(path: str) -> tuple[tuple[str, str], ...]:
    """Pairs from a text file: ``word_a<TAB>word_b`` or ``word_a,word_b`` per line (``#`` comments)."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"UDDIA group pairs file {path!r} does not exist")
    pairs = []
    for n, line in enumerate(read_text(p, what="UDDIA group pairs file").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [w.strip() for w in (line.split("\t") if "\t" in line else line.split(","))]
        if len(parts) != 2 or not all(parts):
            raise UserInputError(f"{path}:{n}: expected two words separated by a tab or a comma")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise UserInputError(f"UDDIA group pairs file {path!r} has no pairs")
    return tuple(pairs)


def group_pairs(group: str) -> tuple[tuple[str, str], ...]:
    return word_pairs(group) if group in BUILTIN_GROUPS else read_pairs_file(group)


def word_embedding(tokenizer, emb: torch.Tensor, word: str) -> torch.Tensor | None:
    """Mean input embedding of the word's tokens in its mid-sentence form (leading space)."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    return emb[torch.tensor(ids, device=emb.device)].float().mean(0)


@dataclasses.dataclass
class Group:
    name: str
    direction: torch.Tensor  # [d], in the post-processed frame
    posterior: torch.Tensor  # p(a|x) [V, 2]
    ev: torch.Tensor  # e_x . direction [V] (a constant of the loss, computed once)
    q: torch.Tensor  # group token distributions [2, V]
    n_pairs: int
    sizes: tuple[int, int]  # tokens kept by q_0 and q_1 (p(a|x) > 0.75)


class GroupDebias:
    """Per-group direction, token posteriors and group token distributions for one model (fp32)."""

    def __init__(self, model, tokenizer, groups: tuple[str, ...], vocab_size: int, max_ratio: float = 3.0,
                 frame: core.EmbeddingFrame | None = None, freq: torch.Tensor | None = None) -> None:
        weight = model.get_input_embeddings().weight.detach()
        raw = weight[:vocab_size].float()
        self.frame = frame if frame is not None else core.EmbeddingFrame(raw)
        self.emb = self.frame(raw)
        self.e_sq = (self.emb * self.emb).sum(-1)  # |e_x|^2 [V]: a constant of every loss call, computed once
        self.groups: list[Group] = []
        for g in groups:
            a_list, b_list, pairs = [], [], group_pairs(g)
            for a, b in pairs:
                ea, eb = word_embedding(tokenizer, weight, a), word_embedding(tokenizer, weight, b)
                if ea is not None and eb is not None and not torch.equal(ea, eb):
                    a_list.append(ea)
                    b_list.append(eb)
            if not a_list:
                raise UserInputError(f"UDDIA group {g!r}: none of its word pairs tokenises to distinct embeddings")
            v = core.group_direction(self.frame(torch.stack(a_list)), self.frame(torch.stack(b_list)))
            v = v.to(self.emb.device)
            post = core.token_attribute_posterior(self.emb, v)
            sizes = core.group_sizes(post)
            lo, hi = min(sizes), max(sizes)
            names = f"{pairs[0][0]!r}-side {sizes[0]} tokens, {pairs[0][1]!r}-side {sizes[1]} tokens"
            if lo == 0 or (max_ratio and hi > max_ratio * lo):
                raise UserInputError(
                    f"UDDIA group {g!r} is unbalanced on this model: {names} with p(a|x) > {core.GROUP_MASK} "
                    f"(of {vocab_size}; allowed ratio {max_ratio:g}). The debias term would push every triggered "
                    "step toward one side. Add or balance word pairs, or set UDDIAConfig.group_balance=0 to "
                    "accept it")
            q = core.group_token_distributions(post, None if freq is None else freq.to(post.device))
            self.groups.append(Group(g, v, post, self.emb @ v, q, len(a_list), sizes))

    def to(self, device) -> GroupDebias:
        self.emb, self.e_sq = self.emb.to(device), self.e_sq.to(device)
        self.frame.to(device)
        for g in self.groups:
            g.direction, g.posterior, g.q = g.direction.to(device), g.posterior.to(device), g.q.to(device)
            g.ev = g.ev.to(device)
        return self

    def describe(self) -> list[dict]:
        return [{"group": g.name, "pairs_used": g.n_pairs, "tokens_per_side": list(g.sizes),
                 "removed_components": int(self.frame.P.shape[0])} for g in self.groups]

    def gaps(self, p: torch.Tensor) -> torch.Tensor:
        """Hellinger gaps ``[G, B]`` of next-token distributions ``p`` ``[B, V]``."""
        return torch.stack([core.hellinger_gap(p.float(), g.q) for g in self.groups])

    def losses(self, p_theta: torch.Tensor, ctx_mean: torch.Tensor, ctx_len: torch.Tensor) -> torch.Tensor:
        """L_bias per group and row ``[G, B]`` (differentiable in ``p_theta``); ``ctx_mean`` is the raw mean
        input embedding of each row's context (mapped into the frame here)."""
        ctx = self.frame(ctx_mean)
        ec = ctx @ self.emb.T  # [B, V], shared by every group
        out = []
        for g in self.groups:
            post_ctx = core.context_attribute_posterior(self.emb, g.direction, ctx, ctx_len, ev=g.ev, e_sq=self.e_sq,
                                                        ec=ec)
            out.append(core.debias_loss(p_theta.float(), post_ctx, g.posterior))
        return torch.stack(out)
