"""``CalibrationLogitsProcessor``: diagonal answer calibration inside HF ``generate`` (first generated token only)."""

from __future__ import annotations

import torch

from ...core.contrast import batch_prior
from ...errors import UserInputError

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
        from ...core.contrast import calibration_offsets, tempered_calibration_offsets

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
