"""Where UDDIA's offsets go: the bias sites of the top decoder blocks and the final norm, via forward hooks.

The model is never modified: offsets are separate ``[B, d]`` tensors added to the *outputs* of the Linear /
Conv1D / norm modules of a block (for a module with a bias this is exactly tuning its bias; for bias-free
Llama/Qwen/Gemma projections and RMSNorms it is a zero-initialised additive offset at the same site). Hooks
are registered only while UDDIA runs and removed afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch
from torch import nn

from ...errors import UserInputError

log = logging.getLogger(__name__)

_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f")


@dataclasses.dataclass
class Site:
    name: str
    module: nn.Module
    layer: int  # block index; depth for the final norm
    dim: int


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _depth_of(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        v = getattr(config, key, None)
        if isinstance(v, int):
            return v
    text = getattr(config, "text_config", None)
    return _depth_of(text) if text is not None else None


def _out_dim(module: nn.Module) -> int | None:
    cls = type(module).__name__
    if isinstance(module, nn.Linear) or hasattr(module, "out_features"):
        return int(module.out_features)
    if cls == "Conv1D" and hasattr(module, "nf"):
        return int(module.nf)
    if "norm" in cls.lower():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 1:
            return int(w.shape[0])
        shape = getattr(module, "normalized_shape", None)
        if shape:
            return int(shape[-1])
    return None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList, nn.Module]:
    """(name, decoder blocks, final norm) of a causal LM (GPT-2, Llama, Qwen, Gemma, Mistral, NeoX, OPT...)."""
    base = _base(model)
    depth = _depth_of(base.config)
    named = dict(base.named_modules())
    for name, mod in named.items():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (depth is None or len(mod) == depth):
            parent = named.get(name.rpartition(".")[0], base) if "." in name else base
            for nm in _FINAL_NORM_NAMES:
                norm = getattr(parent, nm, None)
                if isinstance(norm, nn.Module):
                    return name, mod, norm
    raise UserInputError(f"UDDIA cannot find the decoder blocks and final norm of {type(base).__name__}; "
                         "supported: GPT-2, Llama, Mistral, Qwen, Gemma, GPT-NeoX, OPT-style models")


def collect_sites(model: nn.Module) -> tuple[list[Site], Site, int]:
    """All candidate sites per block, the final-norm site, and the depth."""
    name, blocks, final_norm = find_blocks(model)
    sites: list[Site] = []
    for i, block in enumerate(blocks):
        for sub, mod in block.named_modules():
            if any(True for _ in mod.children()):
                continue
            dim = _out_dim(mod)
            low = sub.lower()
            if dim is None or "rotary" in low or "emb" in low or "lora_" in low:
                continue
            sites.append(Site(f"{name}.{i}.{sub}", mod, i, dim))
    fdim = _out_dim(final_norm)
    if fdim is None:
        raise UserInputError(f"UDDIA cannot read the width of the final norm {type(final_norm).__name__}")
    return sites, Site("final_norm", final_norm, len(blocks), fdim), len(blocks)


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters(recurse=False):
        return p.device
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class OffsetHooks:
    """Forward hooks adding per-sample offsets ``deltas[site] [B, d]`` and capturing the final-norm output."""

    def __init__(self, sites: list[Site], final: Site) -> None:
        self.sites = sites
        self.final = final
        self.deltas: dict[int, torch.Tensor] | None = None  # id(module) -> offset
        self.captured: torch.Tensor | None = None
        self.skipped: set[str] = set()
        self._handles: list = []

    def _make_hook(self, site: Site):
        is_final = site is self.final

        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            d = self.deltas.get(id(module)) if self.deltas else None
            if d is not None:
                if out.dim() < 3 or out.shape[0] != d.shape[0] or out.shape[-1] != d.shape[-1]:
                    if site.name not in self.skipped:
                        self.skipped.add(site.name)
                        log.warning("UDDIA: site %s has output shape %s; no offset added there", site.name,
                                    tuple(out.shape))
                else:
                    shape = (d.shape[0],) + (1,) * (out.dim() - 2) + (d.shape[-1],)
                    out = out + d.to(device=out.device, dtype=out.dtype).view(shape)
            if is_final:
                self.captured = out
            if isinstance(output, tuple):
                return (out,) + tuple(output[1:])
            return out

        return hook

    @contextlib.contextmanager
    def installed(self):
        """Register the hooks for the duration of the block (always removed)."""
        try:
            for s in [*self.sites, self.final]:
                self._handles.append(s.module.register_forward_hook(self._make_hook(s)))
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self.deltas = None
            self.captured = None

    @contextlib.contextmanager
    def use(self, deltas: dict[int, torch.Tensor] | None):
        old = self.deltas
        self.deltas = deltas
        try:
            yield
        finally:
            self.deltas = old
