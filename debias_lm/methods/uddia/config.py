"""``UDDIAConfig``: the fields of UDDIA (Yang et al., ICLR 2023), validated without a model."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...config import MethodConfig
from ...errors import UserInputError
from ...words import BUILTIN_GROUPS

VARIANTS = ("t", "b", "u")


def _is_pairs_file(name: str) -> bool:
    return name.endswith((".txt", ".tsv", ".csv")) or "/" in name


@dataclasses.dataclass(frozen=True)
class UDDIAConfig(MethodConfig):
    """Unified detoxifying and debiasing by inference-time adaptive optimisation.

    At each decoding step UDDIA takes ``steps`` Adam steps (fresh state each token; one step == signSGD with
    step ``lr``) on additive offsets at the bias sites of the top ``num_layers`` blocks and the final norm,
    against a toxicity-probe loss (``t``), a group-debias loss (``b``) or both (``u``), fuses the tuned and
    untuned next-token distributions (``fusion``), and regenerates a continuation with ``layer_step`` fewer
    tuned layers while its perplexity under the base model exceeds ``ppl_threshold``.

    Fields (defaults: the paper's run-script configuration, scaled by depth):
        variant: ``"t"`` detox only, ``"b"`` debias only, ``"u"`` both (default).
        lr: step size (0.06). ``0`` leaves the model untouched (output == plain decoding).
        steps: optimisation steps per token (1).
        num_layers: T0, the number of top blocks tuned. A float in (0, 1] is a fraction of the model's depth
            (rounded, halves up, at least 1); an int is a count. Default 0.5 (18 of GPT-2-large's 36 blocks,
            15 of SmolLM2-135M's 30).
        ppl_threshold: redo while the continuation's perplexity under the base model is above this (30).
        layer_step: ΔT, layers dropped per redo; a float in (0, 1) is a fraction of depth (default 1/12:
            3 of 36, 3 of 30), an int a count; ``0`` disables redo.
        debias_weight: λ of the debias term in ``u`` (0.05).
        trigger: the debias term is active only when the Hellinger gap exceeds this (0.1).
        fusion: γ in p ∝ p_tuned^γ · p_base^(1-γ) (0.9).
        groups: demographic groups of the debias term: built-in ``gender``, ``race``, ``religion``, or paths of
            pairs files (one ``word_a<TAB>word_b`` or ``word_a,word_b`` per line).
        probe: path of a toxicity probe file (``debias-lm uddia train-probe``); ``""`` uses the probe shipped
            for the embedded SmolLM2-135M-Instruct (an error for any other model with ``t``/``u``).
    """

    method: ClassVar[str] = "uddia"
    variant: str = "u"
    lr: float = 0.06
    steps: int = 1
    num_layers: float = 0.5
    ppl_threshold: float = 30.0
    layer_step: float = 1 / 12
    debias_weight: float = 0.05
    trigger: float = 0.1
    fusion: float = 0.9
    groups: tuple[str, ...] = ("gender",)
    probe: str = ""

    def validate(self) -> None:
        self._check_choice("variant", VARIANTS)
        self._check_number("lr", lo=0.0)
        self._check_number("steps", lo=1, integer=True)
        self._check_number("num_layers", lo=0.0, lo_open=True)
        if isinstance(self.num_layers, float) and self.num_layers > 1 and not self.num_layers.is_integer():
            raise UserInputError(
                f"UDDIAConfig.num_layers={self.num_layers!r} is invalid: expected a fraction of depth in (0, 1] "
                "or a whole number of layers")
        self._check_number("ppl_threshold", lo=0.0, lo_open=True)
        self._check_number("layer_step", lo=0.0)
        if isinstance(self.layer_step, float) and self.layer_step >= 1 and not self.layer_step.is_integer():
            raise UserInputError(
                f"UDDIAConfig.layer_step={self.layer_step!r} is invalid: expected a fraction of depth in [0, 1) "
                "or a whole number of layers")
        self._check_number("debias_weight", lo=0.0)
        self._check_number("trigger", lo=0.0, hi=1.0)
        self._check_number("fusion", lo=0.0, hi=1.0)
        if not isinstance(self.groups, tuple) or not self.groups or not all(isinstance(g, str) for g in self.groups):
            raise UserInputError(f"UDDIAConfig.groups={self.groups!r} is invalid: expected a non-empty tuple of "
                                 f"group names ({', '.join(BUILTIN_GROUPS)}) or pairs-file paths")
        for g in self.groups:
            if g not in BUILTIN_GROUPS and not _is_pairs_file(g):
                raise UserInputError(f"UDDIAConfig.groups has unknown group {g!r}: expected one of "
                                     f"{', '.join(BUILTIN_GROUPS)} or the path of a pairs file (.txt/.tsv/.csv)")
        if not isinstance(self.probe, str):
            raise UserInputError(f"UDDIAConfig.probe={self.probe!r} is invalid: expected a file path or ''")

    def preflight(self) -> None:
        """File checks (probe, pairs files) before a model is loaded."""
        import os

        if self.probe and not os.path.isfile(self.probe):
            raise UserInputError(f"UDDIAConfig.probe={self.probe!r}: no such file; train one with "
                                 "'debias-lm uddia train-probe' or leave it empty for the embedded model")
        for g in self.groups:
            if g not in BUILTIN_GROUPS:
                from .debias import read_pairs_file

                read_pairs_file(g)
