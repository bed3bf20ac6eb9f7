"""Sites of a causal LM where methods add activation offsets: the decoder blocks, their leaf modules, the final norm.

A *site* is a leaf module of a decoder block whose output has a known width (Linear / Conv1D / norm modules);
its name is ``"<blocks>.<i>.<sub>"`` relative to the base model (``"model.layers.3.self_attn.q_proj"``,
``"transformer.h.0.attn.c_attn"``), and the final norm is the site ``"final_norm"``. UDDIA tunes offsets on these
sites (``methods/uddia``); ``steer`` adds static vectors after decoder blocks or on these sites (``methods/steer``).
Nothing here changes the model.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import UserInputError

_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f")


@dataclasses.dataclass
class Site:
    name: str
    module: nn.Module
    layer: int  # block index; depth for the final norm
    dim: int


def base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def depth_of(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        v = getattr(config, key, None)
        if isinstance(v, int):
            return v
    text = getattr(config, "text_config", None)
    return depth_of(text) if text is not None else None


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
    base = base_model(model)
    depth = depth_of(base.config)
    named = dict(base.named_modules())
    for name, mod in named.items():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (depth is None or len(mod) == depth):
            parent = named.get(name.rpartition(".")[0], base) if "." in name else base
            for nm in _FINAL_NORM_NAMES:
                norm = getattr(parent, nm, None)
                if isinstance(norm, nn.Module):
                    return name, mod, norm
    raise UserInputError(f"cannot find the decoder blocks and final norm of {type(base).__name__}; "
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
        raise UserInputError(f"cannot read the width of the final norm {type(final_norm).__name__}")
    return sites, Site("final_norm", final_norm, len(blocks), fdim), len(blocks)


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters(recurse=False):
        return p.device
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
