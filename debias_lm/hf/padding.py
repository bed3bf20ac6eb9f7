"""Left padding, the one layout decoder-only generation takes: text -> ids, id rows -> tensors, batches -> one batch.

Every batch the project builds for a model goes through these helpers, so "left-padded" means one thing:
real tokens flush right, ``attention_mask`` 1 on them and 0 on the pad columns, ``pad_id`` in ``input_ids``
under the zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def encode_left_padded(tokenizer, texts: list[str], *, add_special_tokens: bool = True, device=None) -> dict:
    """Tokenise a batch with left padding (what decoder-only generation needs), leaving the tokenizer as it was."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = old_side
    return {k: v.to(device) for k, v in enc.items()} if device is not None else dict(enc)


def left_pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device=None, dtype=None):
    """Token-id rows as a left-padded ``[B, max len]`` batch: ``(input_ids, attention_mask)`` (int64 unless
    ``dtype``; the mask has the same dtype)."""
    import torch

    dtype = torch.long if dtype is None else dtype
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=dtype)
            mask[i, width - len(r):] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def stack_left_padded(parts: Sequence[tuple[Any, Any]], pad_id: int):
    """Several left-padded ``(input_ids [B_i, S_i], attention_mask)`` batches as one left-padded
    ``[sum B_i, max S_i]`` batch (rows in order)."""
    import torch

    pad = torch.nn.functional.pad
    width = max(ids.shape[1] for ids, _ in parts)
    ids = torch.cat([pad(i, (width - i.shape[1], 0), value=pad_id) for i, _ in parts])
    mask = torch.cat([pad(m, (width - m.shape[1], 0), value=0) for _, m in parts])
    return ids, mask


def join_rows(main: dict, unconds: list[dict], pad_id: int) -> dict:
    """``main`` (the real inputs) and the text-only ``unconds`` (``input_ids``/``attention_mask`` each) as one
    left-padded batch of ``(1 + len(unconds)) * B`` rows; image inputs stay those of the main rows;
    ``mm_token_type_ids`` are zero for the added rows."""
    import torch

    ids_m = main["input_ids"]
    mask_m = main.get("attention_mask")
    mask_m = torch.ones_like(ids_m) if mask_m is None else mask_m
    parts = [(ids_m, mask_m)] + [(u["input_ids"].to(ids_m.device), u["attention_mask"].to(ids_m.device))
                                 for u in unconds]
    ids, mask = stack_left_padded(parts, pad_id)
    joint = {k: v for k, v in main.items() if k not in ("input_ids", "attention_mask")}
    joint.update(input_ids=ids, attention_mask=mask)
    if "mm_token_type_ids" in main:
        t = main["mm_token_type_ids"]
        width = ids.shape[1]
        extra = torch.zeros((ids.shape[0] - t.shape[0], width), dtype=t.dtype, device=t.device)
        joint["mm_token_type_ids"] = torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0), value=0), extra])
    return joint


__all__ = ["encode_left_padded", "join_rows", "left_pad_rows", "stack_left_padded"]
