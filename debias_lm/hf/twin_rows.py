"""Debias sampling with both branches in ONE forward per step ("twin rows"), inside HF ``generate``.

The batch is doubled: rows ``0..B-1`` are the real inputs, rows ``B..2B-1`` their unconditional contexts
(image-free / counterfactual), all left-padded together; the image inputs belong to the real rows. At each step
:class:`TwinRowContrastProcessor` combines row ``i`` with row ``B+i`` through :func:`debias_lm.core.contrast`,
picks the token itself (argmax, or temperature / top-k / top-p sampling exactly as ``generate`` would) and
forces it in both rows, so the twins stay in step and HF runs its greedy path. One forward of 2B rows costs much
less than two forwards of B rows on small batches, which is where the processor path pays most.

Used by ``wrap(model, processor, DebiasSamplingConfig(...)).generate`` when the model family supports mixed
image / image-free rows in one batch (LLaVA family, Qwen2-VL family, text LLMs) and only temperature /
top-k / top-p warpers are requested; otherwise the two-forward :class:`DebiasSamplingLogitsProcessor` is used.

Parity with that path: there, ``generate``'s own processors (``repetition_penalty``, ``no_repeat_ngram_size``,
``min_new_tokens``, ...) and the caller's ``logits_processor`` act on the conditional scores only, and the
unconditional branch contributes raw logits. Here ``generate`` would run them on all rows, so the
unconditional logits are taken raw from the forward itself (:class:`LastLogits`, a forward hook), the
repetition controls and the caller's processors are applied by the processor to the real rows alone (on their
own, unpadded token history), and length limits are shifted by the extra left padding of the joint batch.
"""

from __future__ import annotations

import torch

from ..core.contrast import contrast
from .debias_sampling import _note_fallback

try:
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover
    LogitsProcessor = object  # type: ignore[assignment,misc]


class LastLogits:
    """Keeps the raw last-position logits of every forward of ``model`` (a forward hook); ``close()`` removes it."""

    def __init__(self, model) -> None:
        self.value: torch.Tensor | None = None
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        logits = getattr(output, "logits", None)
        if logits is not None:
            self.value = logits[:, -1]

    def __call__(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("twin-row debias sampling saw no forward output with logits")
        return self.value

    def close(self) -> None:
        self._handle.remove()


class TwinRowContrastProcessor(LogitsProcessor):
    """Rows ``[0, B)`` real, then ``k`` blocks of ``B`` unconditional rows (averaged); picks and forces tokens.

    ``cond_processors`` run on the real rows' scores first, with ``input_ids[:B, history_start:]`` (the real
    rows without the joint batch's extra left padding); ``raw_logits`` returns this step's raw logits of all
    rows (the unconditional rows are read from it; default: ``scores`` itself).
    """

    def __init__(self, batch_size: int, alpha: float, beta: float, *, k: int = 1, do_sample: bool = False,
                 warpers: list | None = None, cond_processors: list | None = None, raw_logits=None,
                 history_start: int = 0) -> None:
        self.b = batch_size
        self.k = k
        self.alpha = alpha
        self.beta = beta
        self.do_sample = do_sample
        self.warpers = warpers or []
        self.fallback_rows = 0  # row-steps whose contrast had no usable score (plain decoding with the cutoff)
        self.cond_processors = list(cond_processors or [])
        self.raw_logits = raw_logits
        self.history_start = history_start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, k = self.b, self.k
        if scores.shape[0] != (k + 1) * b:
            raise RuntimeError(f"twin-row debias sampling expected {(k + 1) * b} rows, got {scores.shape[0]}")
        lc = scores[:b]
        history = input_ids[:b, self.history_start :]
        for proc in self.cond_processors:
            lc = proc(history, lc)
        raw = scores if self.raw_logits is None else self.raw_logits()
        lu = raw[b:].float().view(k, b, -1).mean(0)
        s, fell_back = contrast(lc, lu, self.alpha, self.beta, return_fallback=True)
        _note_fallback(self, fell_back)
        if self.do_sample:
            for w in self.warpers:
                s = w(history, s)
            tokens = torch.multinomial(torch.softmax(s, -1), num_samples=1).squeeze(1)
        else:
            tokens = s.argmax(-1)
        out = torch.full_like(scores, float("-inf"))
        rows = torch.arange((k + 1) * b, device=scores.device)
        out[rows, tokens.repeat(k + 1)] = 0.0
        return out


def join_rows(main: dict, unconds: list[dict], pad_id: int) -> dict:
    """``main`` (the real inputs) and the text-only ``unconds`` (``input_ids``/``attention_mask`` each) as one
    left-padded batch of ``(1 + len(unconds)) * B`` rows; image inputs stay those of the main rows;
    ``mm_token_type_ids`` are zero for the added rows."""
    pad = torch.nn.functional.pad
    ids_m = main["input_ids"]
    mask_m = main.get("attention_mask")
    mask_m = torch.ones_like(ids_m) if mask_m is None else mask_m
    parts = [(ids_m, mask_m)] + [(u["input_ids"].to(ids_m.device), u["attention_mask"].to(ids_m.device))
                                 for u in unconds]
    width = max(i.shape[1] for i, _ in parts)
    ids = torch.cat([pad(i, (width - i.shape[1], 0), value=pad_id) for i, _ in parts])
    mask = torch.cat([pad(m, (width - m.shape[1], 0), value=0) for _, m in parts])
    joint = {k: v for k, v in main.items() if k not in ("input_ids", "attention_mask")}
    joint.update(input_ids=ids, attention_mask=mask)
    if "mm_token_type_ids" in main:
        t = main["mm_token_type_ids"]
        extra = torch.zeros((ids.shape[0] - t.shape[0], width), dtype=t.dtype, device=t.device)
        joint["mm_token_type_ids"] = torch.cat([pad(t, (width - t.shape[1], 0), value=0), extra])
    return joint


def slice_output(out, b: int, extra_pad: int = 0):
    """Keep the real rows of a ``generate`` result (tensor or ``ModelOutput``), without the ``extra_pad`` left
    padding columns the joint batch added to them."""
    if isinstance(out, torch.Tensor):
        return out[:b, extra_pad:]
    out.sequences = out.sequences[:b, extra_pad:]
    for name in ("scores", "logits"):
        val = getattr(out, name, None)
        if val is not None:
            setattr(out, name, tuple(x[:b] for x in val))
    return out


SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff",
                 "eta_cutoff", "top_h")
# generate options the twin-row path cannot reproduce row-exactly (they depend on the prompt length or run in an
# order relative to the repetition penalty that the processor cannot keep): the two-forward path is used instead
UNFUSABLE_KEYS = ("sequence_bias", "exponential_decay_length_penalty", "encoder_repetition_penalty",
                  "encoder_no_repeat_ngram_size", "guidance_scale", "prefix_allowed_tokens_fn")


def repetition_controls(model, kwargs: dict) -> tuple[dict, list]:
    """``(neutral, processors)``: generate kwargs that switch ``repetition_penalty`` / ``no_repeat_ngram_size``
    off for the joint batch, and the processors that apply them (as ``generate`` would) to the real rows."""
    import copy

    from transformers import GenerationConfig, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    gc = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
    gc.update(**{k: kwargs[k] for k in ("repetition_penalty", "no_repeat_ngram_size") if k in kwargs})
    procs: list = []
    if gc.repetition_penalty is not None and gc.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=gc.repetition_penalty))
    if gc.no_repeat_ngram_size is not None and gc.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(gc.no_repeat_ngram_size))
    return {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}, procs


def shifted_lengths(model, kwargs: dict, extra: int) -> dict:
    """Absolute length limits (``max_length`` / ``min_length``, explicit or from the generation config) moved by
    the ``extra`` left-padding columns of the joint batch, so the real rows get as many new tokens as alone."""
    import copy

    from transformers import GenerationConfig

    if extra == 0:
        return {}
    gc = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
    gc.update(**{k: kwargs[k] for k in ("max_length", "min_length", "max_new_tokens", "min_new_tokens")
                 if k in kwargs})
    out = {}
    if gc.max_new_tokens is None and gc.max_length is not None:
        out["max_length"] = gc.max_length + extra
    if gc.min_new_tokens is None and gc.min_length:
        out["min_length"] = gc.min_length + extra
    return out


def sampling_warpers(model, kwargs: dict) -> tuple[bool, list] | None:
    """(do_sample, warpers) the way ``generate`` would build them from ``kwargs`` + the model's generation
    config, or ``None`` when a warper other than temperature / top-k / top-p is requested (or a
    ``generation_config=`` object is passed): then the two-forward processor path is used instead."""
    import copy

    from transformers import GenerationConfig, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    if "generation_config" in kwargs:
        return None
    gc = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
    gc.update(**{k: kwargs[k] for k in SAMPLING_KEYS if k in kwargs})
    if not gc.do_sample:
        return False, []
    if (gc.min_p is not None or (gc.typical_p is not None and gc.typical_p < 1.0)
            or (gc.epsilon_cutoff or 0.0) > 0 or (gc.eta_cutoff or 0.0) > 0 or getattr(gc, "top_h", None) is not None):
        return None
    warpers = []
    if gc.temperature is not None and gc.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(gc.temperature))
    if gc.top_k is not None and gc.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=gc.top_k, min_tokens_to_keep=1))
    if gc.top_p is not None and gc.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=gc.top_p, min_tokens_to_keep=1))
    return True, warpers
