"""HF implementation of ``calibration``: calibrated label scores at the first generated token of ``generate``."""

from __future__ import annotations

from ...errors import UserInputError
from ...hf.base import HFMethod
from .config import CalibrationConfig


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
    chosen with calibrated label scores (see :class:`debias_lm.methods.calibration.processor.CalibrationLogitsProcessor`);
    per-question image-free priors are computed in one batched forward before generation. ``mode`` must be
    ``diagonal`` or ``batch`` here (``identity`` is not a logit offset: use :class:`debias_lm.AnswerCalibrator`).
    ``wrap(...).calibrator`` is the matching :class:`~debias_lm.AnswerCalibrator` for label distributions."""

    def __init__(self, model, tokenizer_or_processor, config: CalibrationConfig) -> None:
        super().__init__(model, tokenizer_or_processor, config)
        from .calibrator import AnswerCalibrator

        if config.mode == "identity":
            raise UserInputError(
                "CalibrationConfig(mode='identity') cannot be applied inside generate (it is not a logit offset); "
                "use mode='diagonal', or dl.AnswerCalibrator for label distributions"
            )
        self.calibrator = AnswerCalibrator(model, tokenizer_or_processor, config=config)

    def _generate(self, *args, **kwargs):
        import torch

        from .processor import CalibrationLogitsProcessor

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
