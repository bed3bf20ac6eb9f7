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


def random_site_offsets(model, sites: Iterable[str], *, seed: int = 0, norm: float = 1.0) -> dict:
    """``{site name: float32 [width]}`` random offsets of norm ``norm`` for the named sites of an HF ``model``
    (names as ``debias_lm.hf.sites`` gives them, e.g. ``model.layers.2.self_attn.q_proj``, ``final_norm``)."""
    import torch

    from ..hf.sites import collect_sites

    blocks, final, _ = collect_sites(model)
    width = {s.name: s.dim for s in [*blocks, final]}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sites:
        v = torch.randn(width[name], generator=g)
        out[name] = v / v.norm() * norm
    return out


def write_site_file(path: str | Path, offsets: dict, *, model, **meta) -> str:
    """Write a bias-site steering file (``site_kind = "uddia_sites"``, ``sites.{name}``) for the HF ``model``."""
    from ..hf.sites import find_blocks
    from ..utils.fingerprint import model_fingerprint
    from ..utils.steer_file import FORMAT, SteerFile

    data = {"format": FORMAT, "site_kind": "uddia_sites", "model_name": "test",
            "model_fingerprint": model_fingerprint(model),
            "hidden_size": int(model.get_input_embeddings().weight.shape[1]), "num_layers": len(find_blocks(model)[1]),
            "model_type": model.config.model_type, "recipe": "uddia-distill-mean", "attribute": "test",
            "provenance": {"data": "random offsets (debias_lm.testing.steer)"}, "suggested_scale": 1.0}
    data.update(meta)
    SteerFile({f"sites.{k}": v for k, v in offsets.items()}, data).save(path)
    return str(path)


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
