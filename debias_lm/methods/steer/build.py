"""Build CAA steering vectors from contrast pairs (``debias-lm steer build``).

A pairs file is JSONL, one pair per line: ``{"positive": str, "negative": str}`` with an optional shared
``"prompt"`` written in front of both (``prompt + positive``; put any separating space in the texts). Each text is
tokenised as generation tokenises raw prompts (the tokenizer's special tokens, left padding); its activation is
the output of decoder layer l at its last token, captured with a forward hook on the same module ``steer`` hooks,
so building and steering see the same residual stream. ``v_l = mean(positive) − mean(negative)``
(``core.steer.mean_difference``). Adding ``v`` moves activations toward the positive side.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import torch

from ...core.steer import mean_difference
from ...errors import UserInputError
from ...hf.base import encode_left_padded, get_tokenizer
from ...hf.sites import find_blocks
from ...utils.files import file_sha256

log = logging.getLogger(__name__)


def read_pairs(path: str | Path) -> list[dict]:
    """The pairs of a JSONL file (every line checked; errors name the file and line)."""
    from ...utils.jsonl import read_jsonl_objects

    rows = []
    for n, row in read_jsonl_objects(path, what="--pairs file"):
        for key in ("positive", "negative"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise UserInputError(f"{path}:{n}: expected {{\"positive\": str, \"negative\": str}} with non-empty "
                                     f"texts (optional \"prompt\": str); {key!r} is missing or empty")
        prompt = row.get("prompt", "")
        if not isinstance(prompt, str):
            raise UserInputError(f"{path}:{n}: \"prompt\" must be a string")
        unknown = sorted(set(row) - {"positive", "negative", "prompt", "id", "source", "labels"})
        if unknown:
            raise UserInputError(f"{path}:{n}: unknown key(s) {', '.join(unknown)}; a pair has positive, negative "
                                 "and optionally prompt (id, source, labels are kept as notes)")
        rows.append({"prompt": prompt, "positive": row["positive"], "negative": row["negative"]})
    if not rows:
        raise UserInputError(f"--pairs file {str(path)!r} holds no pairs")
    return rows


def last_token_activations(model, tokenizer, texts: list[str], layers: list[int], *, batch_size: int = 16,
                           progress: bool = False) -> dict[int, torch.Tensor]:
    """``{layer: [N, d] float32}``: the output of each decoder layer at each text's last token."""
    _, blocks, _ = find_blocks(model)
    tok = get_tokenizer(tokenizer)
    device = getattr(model, "device", None)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            captured[layer] = out[:, -1].detach().float().cpu()  # left padded: the last column is the last token

        return hook

    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="steer build: activations", unit="batch")
    try:
        for i in starts:
            enc = encode_left_padded(tok, texts[i : i + batch_size], device=device)
            mask = enc["attention_mask"]
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            captured.clear()
            model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=False)
            for layer in layers:
                out[layer].append(captured[layer])
    finally:
        for h in handles:
            h.remove()
    return {layer: torch.cat(v) for layer, v in out.items()}


def resolve_layers(spec: str, depth: int) -> list[int]:
    """``--layers``: ``auto`` (:func:`default_layers`), ``all``, or comma-separated 0-based indices."""
    spec = spec.strip()
    if spec == "auto":
        return default_layers(depth)
    if spec == "all":
        return list(range(depth))
    try:
        layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UserInputError(f"--layers {spec!r} is invalid: expected auto, all or comma-separated layer indices") \
            from None
    bad = [x for x in layers if not 0 <= x < depth]
    if not layers or bad:
        raise UserInputError(f"--layers {spec!r} is invalid for this model: layers are 0..{depth - 1}")
    return layers


def default_layers(depth: int) -> list[int]:
    """The default steered layer: one layer at 40 % of the depth (rounded down; layer 12 of SmolLM2's 30)."""
    return [int(0.4 * depth)]


def build_vectors(model, tokenizer, pairs: list[dict], layers: list[int], *, batch_size: int = 16,
                  progress: bool = False) -> dict[int, torch.Tensor]:
    """``{layer: v_l}`` with ``v_l = mean(positive activations) − mean(negative activations)``."""
    pos = last_token_activations(model, tokenizer, [p["prompt"] + p["positive"] for p in pairs], layers,
                                 batch_size=batch_size, progress=progress)
    neg = last_token_activations(model, tokenizer, [p["prompt"] + p["negative"] for p in pairs], layers,
                                 batch_size=batch_size, progress=progress)
    return {layer: mean_difference(pos[layer], neg[layer]) for layer in layers}


def build_file(model, tokenizer, pairs_path: str | Path, *, layers: str = "auto", attribute: str = "",
               ablation: bool = False, suggested_scale: float = 4.0, batch_size: int = 16, command: str = "",
               labeller: str = "", model_label: str = "", progress: bool = False):
    """Read the pairs, build the vectors and return the :class:`~debias_lm.utils.steer_file.SteerFile`."""
    from ... import __version__
    from ...utils.fingerprint import model_fingerprint, model_name
    from ...utils.steer_file import SteerFile

    pairs = read_pairs(pairs_path)
    _, blocks, _ = find_blocks(model)
    chosen = resolve_layers(layers, len(blocks))
    vecs = build_vectors(model, tokenizer, pairs, chosen, batch_size=batch_size, progress=progress)
    meta = {
        "site_kind": "residual",
        "model_name": model_label or model_name(model),
        "model_fingerprint": model_fingerprint(model),
        "hidden_size": int(model.get_input_embeddings().weight.shape[1]),
        "num_layers": len(blocks),
        "model_type": str(getattr(model.config, "model_type", "")),
        "recipe": "caa-ablation" if ablation else "caa",
        "attribute": attribute or "unspecified",
        "suggested_scale": float(suggested_scale),
        "suggested_mode": "ablate" if ablation else "add",
        "provenance": {
            "data": Path(pairs_path).name, "data_sha256": file_sha256(pairs_path), "n_pairs": len(pairs),
            "layers": chosen, "site": "decoder layer output at the last token", "command": command,
            "debias_lm_version": __version__, "date": datetime.now(timezone.utc).date().isoformat(),
            **({"labeller": labeller} if labeller else {}),
            "norms": {str(k): round(float(v.norm()), 4) for k, v in vecs.items()},
        },
    }
    return SteerFile({f"layers.{k}": v for k, v in vecs.items()}, meta)
