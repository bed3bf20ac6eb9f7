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


class _Replayed(torch.nn.Module):
    """Stand-in for a block below the tuned ones: returns the stored input of the first tuned block."""

    def __init__(self, block: torch.nn.Module, hidden: torch.Tensor, tuple_len: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.tuple_len = tuple_len
        for attr in ("attention_type", "layer_idx", "is_sliding"):  # read by some decoders' layer loops
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, *args, **kwargs):
        return (self.hidden,) + (None,) * (self.tuple_len - 1) if self.tuple_len else self.hidden


class LowerBlocks:
    """Skip the blocks below the tuned ones in a forward of the current token.

    The offsets sit in the top T blocks (and the final norm), so for the current token every block below
    ``lo = depth - T`` computes the same hidden state whatever the offsets are. ``record(lo)`` stores the input
    of block ``lo`` during a forward; inside ``replay(lo, rows)`` the blocks below ``lo`` are swapped out of the
    model's block list for stand-ins that return the stored state of ``rows``: the real blocks are not called
    (no compute, no K/V written; forwards that use it run on a scratch cache) and layer counters hooked on them
    do not fire. Decoders whose layer loop needs more of a block than its output are caught by a one-time
    comparison with the full forward (``UDDIAHF._check_shortcuts``).
    """

    def __init__(self, blocks: torch.nn.ModuleList) -> None:
        self.blocks = blocks
        self.hidden: torch.Tensor | None = None
        self.tuple_len = 0

    @contextlib.contextmanager
    def record(self, lo: int):
        if lo <= 0:
            yield
            return

        def pre(_mod, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            self.hidden = x.detach()

        def post(_mod, _args, output):
            self.tuple_len = len(output) if isinstance(output, tuple) else 0

        handles = [self.blocks[lo].register_forward_pre_hook(pre, with_kwargs=True),
                   self.blocks[lo - 1].register_forward_hook(post)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def replay(self, lo: int, rows: torch.Tensor | None):
        """Blocks below ``lo`` replaced by the stored state (of ``rows``; all when None) for the block."""
        if lo <= 0:
            yield
            return
        if self.hidden is None:
            raise RuntimeError("LowerBlocks.replay before any recorded forward")
        hidden = self.hidden if rows is None else self.hidden[rows.to(self.hidden.device)]
        originals = [self.blocks[i] for i in range(lo)]
        try:
            for i, block in enumerate(originals):
                self.blocks[i] = _Replayed(block, hidden, self.tuple_len)
            yield
        finally:
            for i, block in enumerate(originals):
                self.blocks[i] = block


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The module that holds the decoder blocks and the final norm (the model without its LM head): a forward
    through it gives the final hidden states without computing the vocabulary logits."""
    from ...hf.sites import base_model

    name, _, _ = find_blocks(model)
    base = base_model(model)
    parent = name.rpartition(".")[0]
    return base.get_submodule(parent) if parent else base
