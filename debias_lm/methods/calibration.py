"""The ``calibration`` method: post-hoc calibration of answer labels against an image-free / content-free prior."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from ..config import MethodConfig
from ..core.contrast import CALIBRATION_MODES
from ..errors import UserInputError
from .debias_sampling import parse_variants

PRIORS = ("image_free", "dataset", "batch", "given")
REDUCTIONS = ("sum", "max")


@dataclasses.dataclass(frozen=True)
class CalibrationConfig(MethodConfig):
    """Config of post-hoc answer calibration.

    Attributes:
        labels: answer labels (``("yes", "no")``, or option letters); each label's token variants
            ("Yes", "yes", " yes", "▁Yes", ...) are gathered from the tokenizer.
        mode: ``diagonal`` (W = diag(p_cf)⁻¹, the default), ``identity`` (W = I, b = −p_cf) or ``batch``.
        prior: where p_cf comes from: ``image_free`` (per question, image-free branch(es) in the same batched
            forward), ``dataset`` (the mean image-free prior over everything scored), ``batch`` (batch
            calibration: mean label probability over the batch, no extra forward), ``given`` (``prior_probs``).
        variant: image-free variant(s) for the prior, as in debias sampling (``none``, ``unk``, ``none+unk``).
        reduce: how a label's token variants combine: ``sum`` (default) or ``max``.
        eps: added to p_cf in the diagonal form, in [0, 1] (1e-4, as the reference code). With ``eps=0`` every
            prior probability must be > 0 (the offset ``−log(p_cf + eps)`` is infinite otherwise).
        prior_probs: the prior for ``prior="given"``: one finite probability ≥ 0 per label, not all zero
            (renormalised over the labels).
    """

    method: ClassVar[str] = "calibration"
    labels: tuple[str, ...] = ("yes", "no")
    mode: str = "diagonal"
    prior: str = "image_free"
    variant: str = "none"
    reduce: str = "sum"
    eps: float = 1e-4
    prior_probs: tuple[float, ...] = ()

    def validate(self) -> None:
        if (not isinstance(self.labels, tuple) or len(self.labels) < 2
                or not all(isinstance(x, str) and x.strip() for x in self.labels)):
            raise UserInputError(
                f"CalibrationConfig.labels={self.labels!r} is invalid: expected a tuple of >= 2 non-empty strings"
            )
        norm = [x.strip().lower() for x in self.labels]
        if len(set(norm)) != len(norm):
            raise UserInputError(f"CalibrationConfig.labels={self.labels!r} has duplicates (case/space-insensitive)")
        self._check_choice("mode", CALIBRATION_MODES)
        self._check_choice("prior", PRIORS)
        self._check_choice("reduce", REDUCTIONS)
        parse_variants(self.variant)
        self._check_number("eps", lo=0, hi=1)
        if self.prior == "given":
            p = self.prior_probs
            if (not isinstance(p, tuple) or len(p) != len(self.labels)
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in p)
                    or sum(p) <= 0):
                raise UserInputError(
                    f"CalibrationConfig.prior_probs={p!r} is invalid: prior='given' needs one probability >= 0 per "
                    f"label ({len(self.labels)}), not all zero"
                )
            if not math.isfinite(sum(float(x) for x in p)):
                raise UserInputError(
                    f"CalibrationConfig.prior_probs={p!r} is invalid: expected finite probabilities (their sum "
                    "must be finite to renormalise them), e.g. (0.7, 0.3)"
                )
            if self.eps == 0 and any(x == 0 for x in p):
                raise UserInputError(
                    f"CalibrationConfig.prior_probs={p!r} has a zero probability, which needs eps > 0 (the offset "
                    "-log(p_cf + eps) would be infinite); keep the default eps=1e-4 or give every label a prior > 0"
                )
        elif self.prior_probs:
            raise UserInputError("CalibrationConfig.prior_probs is only used with prior='given'")
        if self.mode == "batch" and self.prior not in ("batch",):
            raise UserInputError("CalibrationConfig: mode='batch' goes with prior='batch'")
        if self.prior == "batch" and self.mode != "batch":
            raise UserInputError("CalibrationConfig: prior='batch' goes with mode='batch'")


from ..hf.base import HFMethod  # noqa: E402


def _sampling_temperature(model, kwargs: dict) -> float:
    """The temperature ``generate`` will divide the first-step logits by (1.0 when it does not sample)."""
    import copy

    from transformers import GenerationConfig

    gc = kwargs.get("generation_config")
    gc = copy.deepcopy(gc if gc is not None else getattr(model, "generation_config", None) or GenerationConfig())
    gc.update(**{k: kwargs[k] for k in ("do_sample", "temperature") if k in kwargs})
    if not gc.do_sample or gc.temperature is None:
        return 1.0
    return float(gc.temperature)


class CalibrationHF(HFMethod):
    """``wrap(model, processor, CalibrationConfig(...)).generate(**inputs)``: the first generated token is
    chosen with calibrated label scores (see :class:`debias_lm.hf.calibration.CalibrationLogitsProcessor`);
    per-question image-free priors are computed in one batched forward before generation. ``mode`` must be
    ``diagonal`` or ``batch`` here (``identity`` is not a logit offset: use :class:`debias_lm.AnswerCalibrator`).
    ``wrap(...).calibrator`` is the matching :class:`~debias_lm.AnswerCalibrator` for label distributions."""

    def __init__(self, model, tokenizer_or_processor, config: CalibrationConfig) -> None:
        super().__init__(model, tokenizer_or_processor, config)
        from ..hf.calibration import AnswerCalibrator

        if config.mode == "identity":
            raise UserInputError(
                "CalibrationConfig(mode='identity') cannot be applied inside generate (it is not a logit offset); "
                "use mode='diagonal', or dl.AnswerCalibrator for label distributions"
            )
        self.calibrator = AnswerCalibrator(model, tokenizer_or_processor, config=config)

    def _generate(self, *args, **kwargs):
        import torch

        from ..hf.calibration import CalibrationLogitsProcessor

        if args:
            raise UserInputError("pass generate inputs as keywords (input_ids=..., pixel_values=...)")
        if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
            raise UserInputError("calibration supports num_beams=1 and num_return_sequences=1")
        cfg = self.config
        if cfg.prior == "given":
            prior = torch.tensor(cfg.prior_probs, dtype=torch.float64)
        elif cfg.prior == "batch":
            prior = None
        else:
            inputs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            _, uncond = self.calibrator._logits_with_priors(inputs)
            prior = torch.stack([self.calibrator.label_probs_from_logits(u) for u in uncond]).mean(0)
            if cfg.prior == "dataset":
                prior = prior.mean(0)
        proc = CalibrationLogitsProcessor(self.calibrator.label_ids, prior, cfg.eps, cfg.reduce,
                                          temperature=_sampling_temperature(self.model, kwargs))
        procs = list(kwargs.pop("logits_processor", None) or [])
        return self.model.generate(*args, logits_processor=procs + [proc], **kwargs)
