"""Counterfactual contexts of text debias sampling: the prompt behind a prefix, or with gendered terms swapped."""

from __future__ import annotations

from ...errors import UserInputError
from ...words import swap_terms
from .config import DebiasSamplingConfig


def counterfactual_texts(config: DebiasSamplingConfig, prompts: list[str]) -> list[str]:
    """Text LLMs: the counterfactual context of each prompt that ``config`` describes.

    ``counterfactual_prefix`` -> prefix + prompt; ``counterfactual_swap="gender"`` -> gendered terms swapped.
    Raises when the config names neither (then the caller must pass the contexts explicitly), or when
    swapping leaves a prompt unchanged (there is nothing to contrast against).
    """
    if config.counterfactual_prefix:
        return [config.counterfactual_prefix + p for p in prompts]
    if config.counterfactual_swap:
        out = [swap_terms(p, config.counterfactual_swap) for p in prompts]
        same = [i for i, (a, b) in enumerate(zip(prompts, out)) if a == b]
        if same:
            raise UserInputError(
                f"counterfactual_swap={config.counterfactual_swap!r} left prompt(s) {same[:5]} unchanged (no "
                f"{config.counterfactual_swap} terms); pass explicit counterfactual contexts for them"
            )
        return out
    raise UserInputError(
        "text debias sampling needs a counterfactual context: set DebiasSamplingConfig.counterfactual_prefix or "
        "counterfactual_swap='gender', or pass counterfactual=[...] (one text per prompt)"
    )


def swap_messages(messages: list[dict], config: DebiasSamplingConfig) -> list[dict]:
    """Counterfactual chat: the prefix goes before the last user message's text; swaps apply to every text."""
    out = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise UserInputError("counterfactual chat needs at least one user message")
    for i, m in enumerate(out):
        if not isinstance(m.get("content"), str):
            raise UserInputError("text debias sampling with messages= needs string message contents")
        if config.counterfactual_swap:
            m["content"] = swap_terms(m["content"], config.counterfactual_swap)
        elif i == last_user:
            m["content"] = config.counterfactual_prefix + m["content"]
    if config.counterfactual_swap and out == messages:
        raise UserInputError("counterfactual_swap left the chat unchanged (no gendered terms to swap)")
    return out
