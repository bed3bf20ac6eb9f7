"""The ``debias_sampling`` method (visual debias decoding / contrastive decoding): config and HF implementation.

VLMs: the unconditional branch is the same prompt with the image removed (``variant="none"``), replaced by
one UNK token (``"unk"``), or a noised image (``"noise"``, VCD style); ``"none+unk"`` etc. average several
branches. Text LLMs: the unconditional branch is a counterfactual context: the prompt behind a biasing
``counterfactual_prefix``, or with gendered terms swapped (``counterfactual_swap="gender"``), or contexts the
caller passes to ``generate(counterfactual=...)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..config import MethodConfig
from ..errors import UserInputError

IMAGE_FREE_VARIANTS = ("none", "unk", "noise")
SWAPS = ("", "gender")


def parse_variants(variant: str) -> tuple[str, ...]:
    """``"none+unk"`` -> ``("none", "unk")``; raises on unknown or repeated parts."""
    parts = tuple(p.strip() for p in str(variant).split("+"))
    bad = [p for p in parts if p not in IMAGE_FREE_VARIANTS]
    if not parts or bad or len(set(parts)) != len(parts):
        raise UserInputError(
            f"variant={variant!r} is invalid: expected one of {', '.join(IMAGE_FREE_VARIANTS)} or several joined "
            "with '+' (e.g. 'none+unk': the branches' logits are averaged)"
        )
    return parts


@dataclasses.dataclass(frozen=True)
class DebiasSamplingConfig(MethodConfig):
    """Config of debias sampling (VDD).

    Attributes:
        alpha: contrast strength α ≥ 0; scores are ``(1+α)·l_c − α·l_u`` (1.0, the paper's POPE setting; the
            reference sampler's internal fallback is 0.5).
        beta: adaptive plausibility cutoff β ∈ (0, 1]: tokens with p_c < β·max p_c are never chosen (0.1).
        variant: image-free branch(es) for VLMs: ``none`` (image tokens removed), ``unk`` (one UNK token in
            their place), ``noise`` (the image with diffusion noise at step ``noise_step``), or several joined
            by ``+`` whose logits are averaged.
        noise_step: diffusion step of the ``noise`` variant (VCD uses 500 of 1000).
        counterfactual_prefix: text LLMs: the counterfactual context is this text followed by the prompt.
        counterfactual_swap: text LLMs: ``"gender"`` builds the counterfactual by swapping gendered terms.
        seed: seed of the ``noise`` variant's noise.
    """

    method: ClassVar[str] = "debias_sampling"
    alpha: float = 1.0
    beta: float = 0.1
    variant: str = "none"
    noise_step: int = 500
    counterfactual_prefix: str = ""
    counterfactual_swap: str = ""
    seed: int = 0

    def validate(self) -> None:
        self._check_number("alpha", lo=0)
        self._check_number("beta", lo=0, hi=1, lo_open=True)
        if not isinstance(self.variant, str):
            raise UserInputError(f"DebiasSamplingConfig.variant={self.variant!r} is invalid: expected a string")
        parse_variants(self.variant)
        self._check_number("noise_step", lo=1, hi=999, integer=True)
        if not isinstance(self.counterfactual_prefix, str):
            raise UserInputError("DebiasSamplingConfig.counterfactual_prefix must be a string")
        self._check_choice("counterfactual_swap", SWAPS)
        if self.counterfactual_prefix and self.counterfactual_swap:
            raise UserInputError(
                "DebiasSamplingConfig: set counterfactual_prefix or counterfactual_swap, not both"
            )
        self._check_number("seed", lo=0, integer=True)

    @property
    def variants(self) -> tuple[str, ...]:
        return parse_variants(self.variant)


def counterfactual_texts(config: DebiasSamplingConfig, prompts: list[str]) -> list[str]:
    """Text LLMs: the counterfactual context of each prompt that ``config`` describes.

    ``counterfactual_prefix`` -> prefix + prompt; ``counterfactual_swap="gender"`` -> gendered terms swapped.
    Raises when the config names neither (then the caller must pass the contexts explicitly), or when
    swapping leaves a prompt unchanged (there is nothing to contrast against).
    """
    if config.counterfactual_prefix:
        return [config.counterfactual_prefix + p for p in prompts]
    if config.counterfactual_swap:
        from ..words import swap_terms

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
