"""``UDDIAConfig``: the fields of UDDIA (Yang et al., ICLR 2023), validated without a model."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...config import MethodConfig
from ...errors import UserInputError
from ...words import BUILTIN_GROUPS

VARIANTS = ("t", "b", "u")
STEP_SCALES = ("rms", "absolute")
UPDATES = ("adam", "gradient")
GRADIENT_PATHS = ("full", "look_ahead")
TOX_GATES = ("look_ahead", "last")


def _is_pairs_file(name: str) -> bool:
    return name.endswith((".txt", ".tsv", ".csv")) or "/" in name


@dataclasses.dataclass(frozen=True)
class UDDIAConfig(MethodConfig):
    """Unified detoxifying and debiasing by inference-time adaptive optimisation.

    At each decoding step UDDIA checks a trigger per row (the probe's toxicity for ``t``, the Hellinger gap of
    the next-token distribution to the group token distributions for ``b``, either for ``u``); only triggered
    rows take ``steps`` Adam steps (fresh state each token; one step == signSGD) on additive offsets at the bias
    sites of the top ``num_layers`` blocks and the final norm, the trigger being recomputed before every step.
    The tuned and untuned next-token distributions are fused (``fusion``), and a continuation that was tuned
    is regenerated with ``layer_step`` fewer tuned layers while its perplexity under the base model exceeds
    the redo threshold.

    Fields (see docs/uddia.md for the measurements behind each default):
        variant: ``"t"`` detox only, ``"b"`` debias only, ``"u"`` both (default).
        lr: step size (0.02). With ``step_scale="rms"`` it is in units of each site's activation RMS (measured
            once per model): one step moves every site's output by ``lr`` times its typical size, on any
            decoder. ``0`` leaves the model untouched (output == plain decoding).
        step_scale: ``"rms"`` (default) or ``"absolute"`` (the paper's: ``lr`` in raw units, tuned for
            GPT-2-large's bias terms).
        update: ``"adam"`` (the paper's: Adam from a fresh state every token, i.e. one step = ``lr`` x sign of
            the gradient, every offset element moves by the full step) or ``"gradient"`` (the gradient in RMS
            units, normalised per row to an RMS of ``lr``: the same overall size, spent where the gradient is).
        kl_budget: if > 0, a row whose tuned next-token distribution moved more than this (KL(tuned || base),
            nats) has its offsets shrunk until it is within the budget (0 = no budget).
        steps: optimisation steps per token (1).
        num_layers: T0, the number of top blocks tuned. A float in (0, 1] is a fraction of the model's depth
            (rounded, halves up, at least 1); an int is a count. Default 0.5.
        tox_trigger: ``t``/``u`` tune a row only while the probe's toxicity of the look-ahead token (the expected
            next token, before and after every step) exceeds this (0.5).
        tox_gate: which rows the detox trigger is checked on: ``"look_ahead"`` (default: every live row, by a
            no-grad forward of its look-ahead token) or ``"last"`` (only rows whose *current* token's final
            hidden state, which the trial forward already computed, scores above ``tox_trigger``: no extra
            forward for the other rows; a cheaper, approximate pre-check).
        gradient_path: ``"full"`` (default, the paper's: the offsets' gradient flows through p_theta into the
            look-ahead token's embedding and through the look-ahead's own tuned layers) or ``"look_ahead"``
            (the look-ahead token's embedding is held constant: the gradient flows only through the offsets in
            the look-ahead's tuned layers, so the backward covers the top ``num_layers`` blocks of one position
            and, in ``t``, the trial forward needs no graph).
        trigger: ``b``/``u`` apply the debias term only while the Hellinger gap exceeds this (0.1, the paper's).
        ppl_threshold: redo while the continuation's perplexity under the base model is above this. ``0``
            (default) derives it per model: ``ppl_factor`` x the median perplexity of the model's own plain
            samples on built-in prompts (measured once per model and decoding settings).
        ppl_factor: the multiple of the model's median plain perplexity used when ``ppl_threshold`` is 0
            (3: about one plain sample in twenty lies above 3x the median on the embedded model, so the redo
            catches what tuning broke rather than re-rolling what plain decoding itself produces).
        layer_step: ΔT, layers dropped per redo; a float in (0, 1) is a fraction of depth (default 1/12:
            3 of 36, 3 of 30), an int a count; ``0`` disables redo.
        debias_weight: λ of the debias term in ``u`` (0.05).
        fusion: γ in p ∝ p_tuned^γ · p_base^(1-γ) (0.9).
        groups: demographic groups of the debias term: built-in ``gender``, ``race``, ``religion``, or paths of
            pairs files (one ``word_a<TAB>word_b`` or ``word_a,word_b`` per line).
        group_balance: ``wrap()`` refuses a group whose two token sets (p(a|x) > 0.75) differ in size by more
            than this factor (3.0); 0 accepts any.
        probe: path of a toxicity probe file (``debias-lm uddia train-probe``); ``""`` uses the probe shipped
            for the embedded SmolLM2-135M-Instruct (an error for any other model with ``t``/``u``).
    """

    method: ClassVar[str] = "uddia"
    variant: str = "u"
    lr: float = 0.02
    step_scale: str = "rms"
    update: str = "adam"
    kl_budget: float = 0.0
    steps: int = 1
    num_layers: float = 0.5
    tox_trigger: float = 0.5
    tox_gate: str = "look_ahead"
    gradient_path: str = "full"
    trigger: float = 0.1
    ppl_threshold: float = 0.0
    ppl_factor: float = 3.0
    layer_step: float = 1 / 12
    debias_weight: float = 0.05
    fusion: float = 0.9
    groups: tuple[str, ...] = ("gender",)
    group_balance: float = 3.0
    probe: str = ""

    @property
    def selects_by_perplexity(self) -> bool:
        """Whether decoding picks continuations by the model's own perplexity (redo on and a non-zero step): a
        perplexity measured with the generating model is then circular (:func:`debias_lm.metrics.fluency.
        perplexity_is_circular`)."""
        return bool(self.layer_step) and float(self.lr) > 0

    def validate(self) -> None:
        self._check_choice("variant", VARIANTS)
        self._check_number("lr", lo=0.0)
        self._check_choice("step_scale", STEP_SCALES)
        self._check_choice("update", UPDATES)
        self._check_number("kl_budget", lo=0.0)
        self._check_number("tox_trigger", lo=0.0, hi=1.0)
        self._check_choice("tox_gate", TOX_GATES)
        self._check_choice("gradient_path", GRADIENT_PATHS)
        self._check_number("ppl_factor", lo=0.0, lo_open=True)
        self._check_number("group_balance", lo=0.0)
        if 0 < self.group_balance < 1:
            raise UserInputError(f"UDDIAConfig.group_balance={self.group_balance!r} is invalid: expected 0 (no check) "
                                 "or a ratio >= 1")
        self._check_number("steps", lo=1, integer=True)
        self._check_number("num_layers", lo=0.0, lo_open=True)
        if isinstance(self.num_layers, float) and self.num_layers > 1 and not self.num_layers.is_integer():
            raise UserInputError(
                f"UDDIAConfig.num_layers={self.num_layers!r} is invalid: expected a fraction of depth in (0, 1] "
                "or a whole number of layers")
        self._check_number("ppl_threshold", lo=0.0)
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
