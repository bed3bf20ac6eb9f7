"""UDDIA's debias objective on a concrete model: group directions from word pairs in its input embeddings."""

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
    direction: torch.Tensor  # [d]
    posterior: torch.Tensor  # p(a|x) [V, 2]
    q: torch.Tensor  # group token distributions [2, V]
    n_pairs: int


class GroupDebias:
    """Per-group direction, token posteriors and group token distributions for one model (fp32)."""

    def __init__(self, model, tokenizer, groups: tuple[str, ...], vocab_size: int) -> None:
        weight = model.get_input_embeddings().weight.detach()
        self.emb = weight[:vocab_size].float()
        self.groups: list[Group] = []
        for g in groups:
            a_list, b_list = [], []
            for a, b in group_pairs(g):
                ea, eb = word_embedding(tokenizer, weight, a), word_embedding(tokenizer, weight, b)
                if ea is not None and eb is not None and not torch.equal(ea, eb):
                    a_list.append(ea)
                    b_list.append(eb)
            if not a_list:
                raise UserInputError(f"UDDIA group {g!r}: none of its word pairs tokenises to distinct embeddings")
            v = core.group_direction(torch.stack(a_list), torch.stack(b_list)).to(self.emb.device)
            post = core.token_attribute_posterior(self.emb, v)
            self.groups.append(Group(g, v, post, core.group_token_distributions(post), len(a_list)))

    def to(self, device) -> GroupDebias:
        self.emb = self.emb.to(device)
        for g in self.groups:
            g.direction, g.posterior, g.q = g.direction.to(device), g.posterior.to(device), g.q.to(device)
        return self

    def gaps(self, p_base: torch.Tensor) -> torch.Tensor:
        """Hellinger gaps ``[G, B]`` of the (untuned) next-token distribution."""
        return torch.stack([core.hellinger_gap(p_base.float(), g.q) for g in self.groups])

    def losses(self, p_theta: torch.Tensor, ctx_mean: torch.Tensor, ctx_len: torch.Tensor) -> torch.Tensor:
        """L_bias per group and row ``[G, B]`` (differentiable in ``p_theta``)."""
        out = []
        for g in self.groups:
            post_ctx = core.context_attribute_posterior(self.emb, g.direction, ctx_mean.float(), ctx_len)
            out.append(core.debias_loss(p_theta.float(), post_ctx, g.posterior))
        return torch.stack(out)
