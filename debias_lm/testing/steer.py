"""Steering-vector files for tests and benchmarks: random directions of a given norm, written in the real format."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def random_directions(hidden: int, layers: Iterable[int], *, seed: int = 0, norm: float = 4.0) -> dict:
    """``{layer: float32 [hidden]}`` random directions with norm ``norm`` (deterministic in ``seed``)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        v = torch.randn(hidden, generator=g)
        out[int(layer)] = v / v.norm() * norm
    return out


def write_steer_file(path: str | Path, vectors: dict, *, model=None, model_type: str = "llama",
                     hidden_size: int | None = None, num_layers: int | None = None, fingerprint: str | None = None,
                     **meta) -> str:
    """Write a residual steering file (``layers.{l}``) for ``model`` (an HF model: its fingerprint, width, depth)
    or for the given shape; extra metadata overrides the defaults. Returns the path."""
    from ..hf.sites import find_blocks
    from ..utils.fingerprint import model_fingerprint
    from ..utils.steer_file import FORMAT, SteerFile

    if model is not None:
        hidden_size = int(model.get_input_embeddings().weight.shape[1])
        num_layers = len(find_blocks(model)[1])
        fingerprint = model_fingerprint(model)
        model_type = model.config.model_type
    data = {"format": FORMAT, "site_kind": "residual", "model_name": "test", "model_fingerprint": fingerprint or "0",
            "hidden_size": hidden_size, "num_layers": num_layers, "model_type": model_type, "recipe": "caa",
            "attribute": "test", "provenance": {"data": "random directions (debias_lm.testing.steer)"},
            "suggested_scale": 1.0}
    data.update(meta)
    SteerFile({f"layers.{k}": v for k, v in vectors.items()}, data).save(path)
    return str(path)
