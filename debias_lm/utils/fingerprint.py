"""Which model an artefact (a UDDIA probe, a steering-vector file) was built for.

``model_fingerprint`` hashes the model type, the input-embedding shape and its first 16 rows rounded to bf16, so
fp32 / bf16 / quantised-elsewhere copies of one checkpoint agree while another checkpoint (or a fine-tune that
touched the embeddings) differs. :func:`fingerprint_of` takes the pieces directly, for engines (vLLM) whose model
objects do not expose ``get_input_embeddings()`` the HF way.
"""

from __future__ import annotations

import hashlib
import json


def fingerprint_of(model_type, embedding_weight) -> str:
    """The fingerprint from a model type string and the ``[vocab, hidden]`` input-embedding weight."""
    import torch

    head = embedding_weight[:16].detach().float().to(torch.bfloat16).float().cpu().contiguous()
    h = hashlib.sha256()
    h.update(json.dumps({"model_type": model_type, "shape": list(embedding_weight.shape)}).encode())
    h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """A short hash of an HF model's type, embedding shape and first input-embedding rows (see the module doc)."""
    cfg = getattr(model, "config", None)
    return fingerprint_of(getattr(cfg, "model_type", None), model.get_input_embeddings().weight)


def model_name(model) -> str:
    """The name or path the model was loaded from (its ``config._name_or_path``), else its type."""
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "model"))
