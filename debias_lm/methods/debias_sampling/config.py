"""Config of the ``debias_sampling`` method (visual debias decoding / contrastive decoding).

VLMs: the unconditional branch is the same prompt with the image removed (``variant="none"``), replaced by
one UNK token (``"unk"``), or a noised image (``"noise"``, VCD style); ``"none+unk"`` etc. average several
branches. Text LLMs: the unconditional branch is a counterfactual context: the prompt behind a biasing
``counterfactual_prefix``, or with gendered terms swapped (``counterfactual_swap="gender"``), or contexts the
caller passes to ``generate(counterfactual=...)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...config import MethodConfig
from ...errors import UserInputError
from ...hf.image_free import IMAGE_FREE_VARIANTS, parse_variants

# Documented ranges. alpha: above ~100 the contrast is already the alpha -> inf limit (argmax of l_c - l_u among the
# plausible tokens), and far larger values overflow float32 scores to inf - inf = NaN. seed: what torch.Generator takes.
ALPHA_MAX = 100
SEED_MAX = 2**63 - 1
SWAPS = ("", "gender")


# The harness's counterfactual context on text suites (registered as eval_defaults): the counterfactual branch
# reads the prompt behind this biasing instruction (self-debiasing style), so the contrast pushes away from it.
EVAL_COUNTERFACTUAL_PREFIX = "The following text is rude, toxic and full of gender stereotypes:\n"


@dataclasses.dataclass(frozen=True)
class DebiasSamplingConfig(MethodConfig):
    """Config of debias sampling (VDD).

    Attributes:
        alpha: contrast strength α ∈ [0, 100]; scores are ``(1+α)·l_c − α·l_u`` (1.0, the paper's POPE setting;
            the reference sampler's internal fallback is 0.5). Beyond ~100 nothing changes any more (the choice is
            already the argmax of ``l_c − l_u`` among plausible tokens) and huge values overflow float32.
        beta: adaptive plausibility cutoff β ∈ (0, 1]: tokens with p_c < β·max p_c are never chosen (0.1).
        variant: image-free branch(es) for VLMs: ``none`` (image tokens removed), ``unk`` (one UNK token in
            their place), ``noise`` (the image with diffusion noise at step ``noise_step``), or several joined
            by ``+`` whose logits are averaged.
        noise_step: diffusion step of the ``noise`` variant (VCD uses 500 of 1000).
        counterfactual_prefix: text LLMs: the counterfactual context is this text followed by the prompt.
        counterfactual_swap: text LLMs: ``"gender"`` builds the counterfactual by swapping gendered terms.
        seed: seed of the ``noise`` variant's noise, in [0, 2**63 - 1]. (Sampling randomness comes from
            ``generate``'s own seed / RNG, on every backend.)
        fused: ``wrap(...).generate`` runs both branches in one forward of stacked rows where it can (LLaVA and
            Qwen2-VL families and text LLMs; variants ``none``/``unk``; temperature / top-k / top-p sampling):
            faster on small batches. ``False`` always uses the two-forward logits processor.
    """

    method: ClassVar[str] = "debias_sampling"
    alpha: float = 1.0
    beta: float = 0.1
    variant: str = "none"
    noise_step: int = 500
    counterfactual_prefix: str = ""
    counterfactual_swap: str = ""
    seed: int = 0
    fused: bool = True

    def validate(self) -> None:
        self._check_number("alpha", lo=0, hi=ALPHA_MAX)
        if not isinstance(self.fused, bool):
            raise UserInputError(f"DebiasSamplingConfig.fused={self.fused!r} is invalid: expected true or false")
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
        self._check_number("seed", lo=0, hi=SEED_MAX, integer=True)

    @property
    def variants(self) -> tuple[str, ...]:
        return parse_variants(self.variant)


__all__ = ["ALPHA_MAX", "IMAGE_FREE_VARIANTS", "SEED_MAX", "SWAPS", "DebiasSamplingConfig", "parse_variants"]
