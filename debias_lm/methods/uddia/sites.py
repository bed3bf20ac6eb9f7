"""Where UDDIA's offsets go: the bias sites of the top decoder blocks and the final norm, via forward hooks.

The model is never modified: offsets are separate ``[B, d]`` tensors added to the *outputs* of the Linear /
Conv1D / norm modules of a block (for a module with a bias this is exactly tuning its bias; for bias-free
Llama/Qwen/Gemma projections and RMSNorms it is a zero-initialised additive offset at the same site). Hooks
are registered only while UDDIA runs and removed afterwards. Finding the sites is generic (``debias_lm.hf.sites``).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ...hf.sites import Site, collect_sites, find_blocks, module_device

log = logging.getLogger(__name__)

__all__ = ["OffsetHooks", "Site", "collect_sites", "find_blocks", "module_device"]


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
