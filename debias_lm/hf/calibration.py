"""``AnswerCalibrator``: post-hoc calibration of yes/no and multiple-choice answers of (V)LMs.

Label scores come from the **raw first-step logits** (T = 1, before any logits processor) at the answer
position; each label's token variants ("yes", "Yes", " yes", "▁Yes", ...) are summed (``reduce="sum"``) or
maxed, then renormalised over the labels. The prior p_cf is, per ``prior``:

* ``image_free`` — per question: the same question without the image (variants ``none``/``unk``/``noise``,
  averaged when several), scored in the **same batched forward** as the real input (LLaVA and Qwen2-VL
  families; other families use one forward per variant);
* ``dataset`` — the mean image-free prior over everything scored in one :meth:`AnswerCalibrator.score` call;
* ``batch`` — batch calibration: the mean label distribution of the batch itself (no extra forward);
* ``given`` — fixed probabilities.

Then ``q = calibrate(p, p_cf, mode)`` (:func:`debias_lm.core.calibrate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..core.contrast import batch_prior, calibrate
from ..errors import UserInputError
from ..labels import label_token_ids
from ..methods.calibration import CalibrationConfig
from ..methods.debias_sampling import parse_variants
from .base import get_tokenizer


@dataclasses.dataclass
class CalibrationResult:
    """Label distributions before and after calibration (rows = questions, columns = ``labels``)."""

    labels: tuple[str, ...]
    probs: torch.Tensor  # [N, L] raw (renormalised over labels), float64
    prior: torch.Tensor  # [N, L] the p_cf used per row
    calibrated: torch.Tensor  # [N, L]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def predictions(self) -> list[str]:
        return [self.labels[i] for i in self.probs.argmax(-1).tolist()]

    @property
    def calibrated_predictions(self) -> list[str]:
        return [self.labels[i] for i in self.calibrated.argmax(-1).tolist()]


def _joint_family(model) -> bool:
    from .image_free import arch_spec

    return arch_spec(model).family in ("llava", "qwen2_vl")


class AnswerCalibrator:
    """Calibrate a VLM's (or LLM's) answer-label probabilities against a prior.

    Example::

        cal = dl.AnswerCalibrator(vlm, processor, labels=["yes", "no"], prior="image_free")
        res = cal.score(inputs, gold=["yes", "no"])       # inputs: processor(text=..., images=..., padding)
        res.calibrated_predictions, res.metrics["ece_before"], res.metrics["ece_after"]

    Args mirror :class:`debias_lm.CalibrationConfig` (or pass ``config=``).
    """

    def __init__(self, model, processor, labels: Sequence[str] = ("yes", "no"), *, prior: str = "image_free",
                 mode: str = "diagonal", variant: str = "none", reduce: str = "sum", eps: float = 1e-4,
                 prior_probs: Sequence[float] = (), config: CalibrationConfig | None = None) -> None:
        if config is None:
            config = CalibrationConfig(labels=tuple(labels), mode=mode, prior=prior, variant=variant, reduce=reduce,
                                       eps=eps, prior_probs=tuple(prior_probs))
        self.config = config
        self.model = model
        self.processor = processor
        self.tokenizer = get_tokenizer(processor)
        if config.prior in ("image_free", "dataset"):
            from .image_free import arch_spec

            arch_spec(model)  # text-only and unsupported models fail here, with the alternatives named
        self.label_ids = label_token_ids(self.tokenizer, config.labels)

    # -- scoring ------------------------------------------------------------------------------------
    def label_probs_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, V]`` raw logits -> ``[N, L]`` label distributions (variants summed or maxed, renormalised)."""
        logp = torch.log_softmax(logits.double(), -1)
        cols = []
        for ids in self.label_ids:
            lp = logp[:, ids]
            cols.append(torch.logsumexp(lp, -1) if self.config.reduce == "sum" else lp.amax(-1))
        lab = torch.stack(cols, -1)
        return torch.softmax(lab, -1)

    @torch.no_grad()
    def _last_logits(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """Logits ``[B, V]`` at each row's last real token (from the attention mask: left or right padding)."""
        out = self.model(**inputs)
        mask = inputs.get("attention_mask")
        if mask is None:
            return out.logits[:, -1]
        if (mask.sum(-1) == 0).any():
            raise UserInputError("a row of the batch is empty (its attention mask is all zeros)")
        width = mask.shape[1]
        last = width - 1 - mask.flip(-1).long().argmax(-1)  # index of the last 1 in each row
        return out.logits[torch.arange(mask.shape[0], device=out.logits.device), last.to(out.logits.device)]

    @torch.no_grad()
    def _logits_with_priors(self, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last-position logits of the real rows [B, V] and of the image-free rows [k, B, V] (or None)."""
        from .image_free import check_has_images, image_free_inputs

        inputs = {k: v for k, v in inputs.items() if v is not None}
        if self.config.prior not in ("image_free", "dataset"):
            return self._last_logits(inputs), None
        check_has_images(self.model, self.tokenizer, inputs)
        variants = parse_variants(self.config.variant)
        branches = [image_free_inputs(self.model, self.processor, inputs, v) for v in variants]
        text_only = [br for br in branches if set(br) == {"input_ids", "attention_mask"}]
        b = inputs["input_ids"].shape[0]
        if text_only and len(text_only) == len(branches) and _joint_family(self.model):
            from .twin_rows import join_rows

            joint = join_rows(inputs, text_only, self.tokenizer.pad_token_id or 0)
            logits = self._last_logits(joint)
            return logits[:b], logits[b:].view(len(branches), b, -1)
        real = self._last_logits(inputs)
        return real, torch.stack([self._last_logits(br) for br in branches])

    def score(self, inputs: Mapping[str, Any] | Iterable[Mapping[str, Any]],
              gold: Sequence[str] | None = None, *, progress: bool = True) -> CalibrationResult:
        """Score one processor batch, or an iterable of batches (the ``dataset`` prior spans all of them).

        ``gold``: the correct label of each row (optional; checked before any forward pass); adds accuracy, ECE
        and (yes/no labels) POPE metrics before and after calibration to ``result.metrics``.
        """
        from tqdm.auto import tqdm

        batches = [inputs] if isinstance(inputs, Mapping) else list(inputs)
        if not batches:
            raise UserInputError("AnswerCalibrator.score got no inputs")
        if gold is not None:
            n_rows = sum(int(b["input_ids"].shape[0]) for b in batches)
            self._gold_indices(gold, n_rows)
        probs, priors = [], []
        for batch in tqdm(batches, desc="calibration", disable=not progress or len(batches) < 2):
            logits, uncond = self._logits_with_priors(batch)
            probs.append(self.label_probs_from_logits(logits))
            if uncond is not None:
                pu = torch.stack([self.label_probs_from_logits(u) for u in uncond]).mean(0)
                priors.append(pu)
        p = torch.cat(probs)
        cfg = self.config
        if cfg.prior == "image_free":
            prior = torch.cat(priors)
        elif cfg.prior == "dataset":
            prior = torch.cat(priors).mean(0, keepdim=True).expand_as(p)
        elif cfg.prior == "batch":
            prior = torch.cat([batch_prior(x).expand_as(x) for x in probs])
        else:
            prior = torch.tensor(cfg.prior_probs, dtype=torch.float64)
            prior = (prior / prior.sum()).expand_as(p)
        mode = "diagonal" if cfg.mode == "batch" else cfg.mode
        q = calibrate(p, prior, mode=mode, eps=cfg.eps)
        result = CalibrationResult(tuple(cfg.labels), p, prior.clone(), q)
        if gold is not None:
            result.metrics = self.evaluate(result, gold)
        return result

    def _gold_indices(self, gold: Sequence[str], n_rows: int) -> list[int]:
        names = [x.strip().lower() for x in self.config.labels]
        if len(gold) != n_rows:
            raise UserInputError(f"{len(gold)} gold labels for {n_rows} rows to score")
        idx = []
        for g in gold:
            g2 = str(g).strip().lower()
            if g2 not in names:
                raise UserInputError(f"gold label {g!r} is not one of the labels {list(self.config.labels)}")
            idx.append(names.index(g2))
        return idx

    def evaluate(self, result: CalibrationResult, gold: Sequence[str]) -> dict[str, float]:
        """Accuracy and ECE (and POPE metrics for yes/no labels) before / after calibration."""
        from ..metrics.pope import expected_calibration_error, pope_metrics

        names = [x.strip().lower() for x in result.labels]
        idx = self._gold_indices(gold, result.probs.shape[0])
        out: dict[str, float] = {}
        for tag, probs in (("before", result.probs), ("after", result.calibrated)):
            pred = probs.argmax(-1).tolist()
            out[f"accuracy_{tag}"] = 100.0 * sum(a == b for a, b in zip(pred, idx)) / len(idx)
            out[f"ece_{tag}"] = expected_calibration_error(probs.tolist(), idx)
            if sorted(names) == ["no", "yes"]:
                m = pope_metrics([names[i] for i in pred], [names[i] for i in idx])
                for k in ("precision", "recall", "f1", "yes_ratio"):
                    out[f"{k}_{tag}"] = m[k]
        return out


try:
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover
    LogitsProcessor = object  # type: ignore[assignment,misc]


class CalibrationLogitsProcessor(LogitsProcessor):
    """Apply diagonal answer calibration inside ``generate``, at the first generated token only.

    For each row and label ℓ an offset is added to the logits of every token variant of ℓ; other tokens and
    later steps are untouched. At ``temperature`` 1 (and greedy decoding) the offset is ``−log(p̂_cf,ℓ + ε)``
    (:func:`debias_lm.core.calibration_offsets`); at any other temperature it is the offset that makes the
    distribution *after* the temperature warper exact (:func:`debias_lm.core.tempered_calibration_offsets`).
    Either way the first-step label distribution that ``generate`` samples from (variants combined with
    ``reduce``, renormalised over the labels) is exactly ``calibrate(p, p_cf, "diagonal")``, p being read from
    the first-step logits at T = 1. Pass the ``temperature`` you give ``generate`` (``wrap`` does this);
    top-k / top-p run after it and may still cut label tokens.

    A processor serves one ``generate`` call at a time: a call whose ``input_ids`` do not continue the previous
    call's (one token longer, same prefix) is a new call and is calibrated at its first step again. :meth:`reset`
    forgets the previous call explicitly (needed only when a new call's prompt is exactly the previous call's
    input plus one token).

    Args:
        label_ids: per label, its token ids (:func:`debias_lm.labels.label_token_ids`).
        prior: ``[L]`` or ``[B, L]`` prior probabilities, or ``None`` for batch calibration (the prior is the
            mean label distribution of the batch's own first-step scores).
        eps: added to the prior (1e-4, as the reference code).
        reduce: how a label's variants combine when reading the distribution: ``sum`` or ``max``.
        temperature: the sampling temperature ``generate`` applies after this processor (1.0 for greedy).
    """

    def __init__(self, label_ids: list[list[int]], prior: torch.Tensor | None, eps: float = 1e-4,
                 reduce: str = "sum", temperature: float = 1.0) -> None:
        import math

        self.label_ids = [list(x) for x in label_ids]
        self.prior = None if prior is None else torch.as_tensor(prior, dtype=torch.float64)
        if self.prior is not None and self.prior.shape[-1] != len(self.label_ids):
            raise UserInputError(f"prior has {self.prior.shape[-1]} entries for {len(self.label_ids)} labels")
        if reduce not in ("sum", "max"):
            raise UserInputError(f"reduce={reduce!r} is invalid: expected 'sum' or 'max'")
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not math.isfinite(temperature) or temperature <= 0):
            raise UserInputError(f"temperature={temperature!r} is invalid: expected a finite number > 0")
        self.eps = eps
        self.reduce = reduce
        self.temperature = float(temperature)
        self._prev_input: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the previous ``generate`` call: the next call is calibrated at its first step."""
        self._prev_input = None

    def _continues(self, input_ids: torch.Tensor) -> bool:
        prev = self._prev_input
        return (prev is not None and input_ids.shape[0] == prev.shape[0]
                and input_ids.shape[1] == prev.shape[1] + 1 and torch.equal(input_ids[:, :-1], prev))

    def _label_lse(self, logits: torch.Tensor) -> torch.Tensor:
        cols = [torch.logsumexp(logits[:, ids], -1) if self.reduce == "sum" else logits[:, ids].amax(-1)
                for ids in self.label_ids]
        return torch.stack(cols, -1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from ..core.contrast import calibration_offsets, tempered_calibration_offsets

        later_step = self._continues(input_ids)
        self._prev_input = input_ids
        if later_step:
            return scores
        logits = scores.double()
        lse = self._label_lse(logits)
        if self.prior is None:
            prior = batch_prior(torch.softmax(lse, -1))
        else:
            prior = self.prior.to(scores.device)
        if prior.dim() == 2 and prior.shape[0] != scores.shape[0]:
            raise UserInputError(
                f"calibration prior has {prior.shape[0]} rows for a batch of {scores.shape[0]} (beam search and "
                "num_return_sequences > 1 are not supported with per-question priors)"
            )
        if self.temperature == 1.0:
            off = calibration_offsets(prior, self.eps)
        else:
            off = tempered_calibration_offsets(lse, self._label_lse(logits / self.temperature), prior,
                                               self.temperature, self.eps)
        if off.dim() == 1:
            off = off.expand(scores.shape[0], -1)
        out = scores.clone()
        for j, ids in enumerate(self.label_ids):
            out[:, ids] += off[:, j : j + 1].to(out.dtype)
        return out
