"""``CalibrationLogitsProcessor``: the ``label_bias`` behaviour, a bias on the first sampled token only.

For a request with ``debias_method: calibration`` (:mod:`debias_lm.methods.calibration.vllm` builds its
:class:`~debias_lm.registry.VLLMRequest`), at the first generated token only (step 0) it adds
``-log(p_cf[label] + eps)`` (the carried prior, :func:`debias_lm.core.contrast.calibration_offsets`) to the logits
of every token variant of each label: contextual calibration (Zhao et al., 2021) applied as vLLM's LogitBias
processor applies ``logit_bias``, but to one step. Later steps, and every other request, are untouched.

V1: the requests still at step 0 are kept in a list; each step drops those whose output is no longer empty and
the ``(row, token id, offset)`` entries are rebuilt only when that set changes. MRV2: the step-0 row of each slot
is found on the device from ``ctx.pos`` (position + 1 == prompt length), with no host sync.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import DebiasProcessorBase, Req


class CalibrationLogitsProcessor(DebiasProcessorBase):
    """Calibration offsets at the first generated token of each ``calibration`` request (see the module
    docstring). Register it with :data:`vllm_debias.LOGITS_PROCESSORS`."""

    BEHAVIOUR = "label_bias"

    def __init__(self, vllm_config, *rest) -> None:
        super().__init__(vllm_config, *rest)
        self._first: list[Req] = []  # V1: requests still at their first generated token
        self._keys = self._ids = self._offs = None  # device entries: (row or slot, token id, offset)

    def _enter(self, req: Req, resumed: bool) -> None:
        if not resumed:  # a resumed request is past its first token
            self._first.append(req)

    def _leave(self, req: Req) -> None:
        if req in self._first:
            self._first.remove(req)

    def _entries(self, reqs: list[Req]) -> None:
        if not reqs:
            self._keys = self._ids = self._offs = None
            return
        keys, ids, offs = [], [], []
        for r in reqs:
            keys += [r.key] * len(r.spec.label_ids)
            ids += r.spec.label_ids
            offs += r.spec.label_offsets
        self._keys = self._to_dev(keys, torch.int64)
        self._ids = self._to_dev(ids, torch.int64)
        self._offs = self._to_dev(offs, torch.float32)

    # -- V1 --------------------------------------------------------------------------------------------------
    def _step_v1(self) -> None:
        if self._first:
            done = np.fromiter(map(len, (r.out for r in self._first)), dtype=np.int64, count=len(self._first)) > 0
            if done.any():
                self._first = [r for r, d in zip(self._first, done) if not d]
                self._dirty = True
        if self._dirty:
            self._dirty = False
            self._entries(self._first)

    def _apply_v1(self, logits: torch.Tensor) -> torch.Tensor:
        if self._keys is not None:
            logits.index_put_((self._keys, self._ids), self._offs.to(logits.dtype), accumulate=True)
        return logits

    # -- MRV2 ------------------------------------------------------------------------------------------------
    def _rebuild_v2(self) -> None:
        self._dirty = False
        self._entries(list(self._reqs.values()))

    def _apply_v2(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        """Offsets on the row that samples each request's first output token (device-only)."""
        if self._keys is None:
            return logits
        slots = ctx.expanded_idx_mapping.to(torch.int64)
        n_rows = logits.shape[0]
        prompt_len = self.req_states.prompt_len.gpu.to(torch.int64)
        first = ctx.pos.to(torch.int64) + 1 == prompt_len.index_select(0, slots)
        rows = torch.arange(n_rows, device=logits.device)
        row_of_slot = torch.full((len(self._active),), n_rows, dtype=torch.int64, device=logits.device)
        row_of_slot.scatter_reduce_(0, slots, torch.where(first, rows, n_rows), reduce="amin")
        entry_rows = row_of_slot.index_select(0, self._keys)
        live = entry_rows < n_rows
        logits.index_put_((entry_rows.clamp_max(n_rows - 1), self._ids),
                          torch.where(live, self._offs, 0.0).to(logits.dtype), accumulate=True)
        return logits
