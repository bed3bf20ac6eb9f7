"""Image-free inputs for vision-language models, per architecture (chosen from ``model.config.model_type``).

``image_free_inputs(model, processor, inputs, variant)`` takes the processor's batch (``input_ids``,
``attention_mask``, ``pixel_values``, ...) and returns the unconditional branch of one variant:

* ``none``: every image block removed from the token ids; no pixels (text-only input).
* ``unk``: each image block replaced by one UNK token (LLaVA-Align's ``--use_dd_unk``); no pixels.
* ``noise``: the same tokens with the image forward-diffused to ``noise_step`` (VCD).

An image block is, per family: LLaVA / LLaVA-NeXT / LLaVA-OneVision: the run of expanded ``<image>`` tokens;
Qwen2-VL / Qwen2.5-VL: ``<|vision_start|> … <|vision_end|>``; Idefics3 / SmolVLM: ``<fake_token_around_image>``
… ``<fake_token_around_image>`` (with ``<row_i_col_j>`` / ``<global-img>`` and the newlines between tiles);
Gemma3: ``<start_of_image> … <end_of_image>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import UserInputError
from .padding import left_pad_rows

IMAGE_FREE_VARIANTS = ("none", "unk", "noise")


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
class ArchSpec:
    family: str
    mrope: bool = False  # 3-D multimodal RoPE positions (Qwen2-VL / Qwen2.5-VL)
    pixel_keys: tuple[str, ...] = ("pixel_values",)
    image_keys: tuple[str, ...] = ()  # inputs dropped by the text-only variants, besides pixel keys


ARCHS: dict[str, ArchSpec] = {
    "llava": ArchSpec("llava", image_keys=("image_sizes",)),
    "llava_next": ArchSpec("llava", image_keys=("image_sizes",)),
    "llava_onevision": ArchSpec("llava", image_keys=("image_sizes",)),
    "qwen2_vl": ArchSpec("qwen2_vl", mrope=True, image_keys=("image_grid_thw", "mm_token_type_ids")),
    "qwen2_5_vl": ArchSpec("qwen2_vl", mrope=True, image_keys=("image_grid_thw", "mm_token_type_ids")),
    "idefics3": ArchSpec("idefics3", image_keys=("pixel_attention_mask",)),
    "smolvlm": ArchSpec("idefics3", image_keys=("pixel_attention_mask",)),
    "gemma3": ArchSpec("gemma3", image_keys=("token_type_ids",)),
}


def arch_spec(model) -> ArchSpec:
    """The image-free construction for ``model``; a clear error for architectures without one."""
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt in ARCHS:
        return ARCHS[mt]
    if cfg is not None and not hasattr(cfg, "vision_config"):
        raise UserInputError(
            f"{type(model).__name__} (model_type={mt!r}) is a text-only model: image-free branches need a VLM. For "
            "text LLMs use a counterfactual text context (DebiasSamplingLogitsProcessor.from_texts, or "
            "DebiasSamplingConfig.counterfactual_prefix / counterfactual_swap); for calibration, prior='given' or 'batch'"
        )
    raise UserInputError(
        f"image-free inputs are not implemented for {type(model).__name__} (model_type={mt!r}); supported "
        f"model types: {', '.join(sorted(ARCHS))}. Pass the unconditional branch yourself: "
        "DebiasSamplingLogitsProcessor(model, uncond_input_ids, uncond_attention_mask)"
    )


def _cfg_id(model, *names: str) -> int | None:
    for holder in (model.config, getattr(model.config, "text_config", None)):
        for n in names:
            v = getattr(holder, n, None) if holder is not None else None
            if isinstance(v, int):
                return v
    return None


def _tok_id(tokenizer, token: str) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


def image_spans(model, tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` spans of the image blocks in one row of token ids."""
    spec = arch_spec(model)
    if spec.family == "llava":
        img = _cfg_id(model, "image_token_id", "image_token_index")
        return _runs([i == img for i in ids])
    if spec.family == "qwen2_vl":
        start, end = _cfg_id(model, "vision_start_token_id"), _cfg_id(model, "vision_end_token_id")
        return _delimited(ids, start, end)
    if spec.family == "gemma3":
        start = _cfg_id(model, "boi_token_id", "boi_token_index")
        end = _cfg_id(model, "eoi_token_id", "eoi_token_index")
        return _delimited(ids, start, end)
    if spec.family == "idefics3":
        img = _cfg_id(model, "image_token_id")
        marks = {img}
        vocab = tokenizer.get_vocab()
        for tok, tid in vocab.items():
            if tok in ("<fake_token_around_image>", "<global-img>") or (tok.startswith("<row_") and "_col_" in tok):
                marks.add(tid)
        newline = {tid for tok, tid in vocab.items() if tok in ("\n", "Ċ", "<0x0A>")}
        spans = _runs([i in marks for i in ids])
        merged: list[tuple[int, int]] = []
        for s, e in spans:  # tiles of one image are separated by newlines only
            if merged and all(ids[j] in newline for j in range(merged[-1][1], s)):
                merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        return merged
    raise AssertionError(spec.family)  # pragma: no cover


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, f in enumerate(flags + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _delimited(ids: list[int], start: int | None, end: int | None) -> list[tuple[int, int]]:
    spans, open_at = [], None
    for i, t in enumerate(ids):
        if t == start and open_at is None:
            open_at = i
        elif t == end and open_at is not None:
            spans.append((open_at, i + 1))
            open_at = None
    return spans


def _rows(inputs: Mapping[str, Any]):
    import torch

    if "input_ids" not in inputs or not isinstance(inputs["input_ids"], torch.Tensor):
        raise UserInputError("inputs must contain `input_ids` (the processor's output with return_tensors='pt')")
    ids = inputs["input_ids"]
    if ids.dim() != 2:
        raise UserInputError(f"input_ids must be [batch, length], got shape {tuple(ids.shape)}")
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    if (mask[:, -1] == 0).any():
        raise UserInputError("inputs must be left-padded for generation (processor.tokenizer.padding_side='left')")
    return ids, mask


def check_has_images(model, tokenizer, inputs: Mapping[str, Any]) -> list[list[tuple[int, int]]]:
    """Image spans of every row; raises when a row has none (nothing to contrast against)."""
    ids, mask = _rows(inputs)
    out = []
    for b in range(ids.shape[0]):
        row = ids[b][mask[b].bool()].tolist()
        spans = image_spans(model, tokenizer, row)
        if not spans:
            raise UserInputError(
                f"row {b} of the inputs has no image tokens for {type(model).__name__}: build the inputs with the "
                "model's processor from a prompt that contains the image placeholder (e.g. via apply_chat_template "
                "with an {'type': 'image'} part) and pass images="
            )
        out.append(spans)
    return out


def image_free_inputs(model, processor, inputs: Mapping[str, Any], variant: str = "none", *,
                      noise_step: int = 500, seed: int = 0) -> dict[str, Any]:
    """The unconditional branch of one variant (see the module doc). Returns a dict with ``input_ids``,
    ``attention_mask`` (left-padded) and, for ``noise``, every other input with the pixels noised."""
    from .base import get_tokenizer

    (variant,) = parse_variants(variant) if "+" not in str(variant) else (None,)
    if variant is None:
        raise UserInputError("image_free_inputs builds one variant at a time; split 'a+b' yourself")
    tokenizer = get_tokenizer(processor)
    spec = arch_spec(model)
    ids, mask = _rows(inputs)
    spans = check_has_images(model, tokenizer, inputs)
    if variant == "noise":
        import torch

        from ..core.vision import diffusion_noise

        present = [k for k in spec.pixel_keys if inputs.get(k) is not None]
        if not present:
            raise UserInputError("variant 'noise' needs the image inputs (pixel_values) in inputs")
        gen = torch.Generator().manual_seed(seed)
        out = dict(inputs)
        for k in present:
            out[k] = diffusion_noise(inputs[k], noise_step, generator=gen)
        return out
    unk = None
    if variant == "unk":
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None:
            raise UserInputError(
                f"variant 'unk' needs a tokenizer with an UNK token; {type(tokenizer).__name__} has none: use 'none'"
            )
    rows = []
    for b in range(ids.shape[0]):
        row = ids[b][mask[b].bool()].tolist()
        new: list[int] = []
        prev = 0
        for s, e in spans[b]:
            new.extend(row[prev:s])
            if unk is not None:
                new.append(unk)
            prev = e
        new.extend(row[prev:])
        if not new:
            raise UserInputError(f"row {b} is only an image: the image-free prompt would be empty")
        rows.append(new)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    uids, umask = left_pad_rows(rows, pad, ids.device)
    return {"input_ids": uids, "attention_mask": umask}
