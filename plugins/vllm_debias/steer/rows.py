"""Which request steers how: per-row settings (host mirrors + device tensors) and the per-token fill.

``SteerRows`` holds, per batch row (V1: the persistent-batch row; MRV2: the request slot):

* ``index`` int64 — the table row of its vector (0 plain, ``id`` for ``add``, ``id + V`` for ``ablate``);
* ``coef`` float32 ``[rows, L + 1]`` — per block (decoder layers, then the final norm): the scale (``add``), 1
  (``ablate``), 0 where the request does not steer that block;
* ``start`` int64 — the first steered position (0 for ``positions="all"``, the prompt length for
  ``"generated"``);
* ``ablate`` bool.

Host changes are written into numpy mirrors and copied to the device in one go (:meth:`SteerRows.flush`), from
the runner's Python before the forward (V1 ``update_state``, MRV2 ``apply_staged_writes``), never inside a
compiled or captured region.

:func:`fill_tokens` turns them into the per-token buffers the layer hooks read, with device tensor operations
only (no host sync, no Python per token), so it can run inside a captured CUDA graph:
``row(t) = searchsorted(query_start_loc[1:], t, right=True)``, then the row's values, with ``coef = 0`` where
``position(t) < start`` or ``t`` is a padding token (``t >= query_start_loc[R]``).
"""

from __future__ import annotations

import logging
import weakref

import numpy as np
import torch

log = logging.getLogger("vllm_debias")


class SteerRows:
    """Per-row steering settings (see the module docstring)."""

    def __init__(self, tables, num_rows: int, device) -> None:
        self.tables = tables
        layers = int(tables.num_blocks)
        self.h_index = np.zeros(num_rows, dtype=np.int64)
        self.h_coef = np.zeros((num_rows, layers), dtype=np.float32)
        self.h_start = np.zeros(num_rows, dtype=np.int64)
        self.h_ablate = np.zeros(num_rows, dtype=bool)
        self.index = torch.zeros(num_rows, dtype=torch.int64, device=device)
        self.coef = torch.zeros(num_rows, layers, dtype=torch.float32, device=device)
        self.start = torch.zeros(num_rows, dtype=torch.int64, device=device)
        self.ablate = torch.zeros(num_rows, dtype=torch.bool, device=device)
        self.changed = False

    @property
    def num_active(self) -> int:
        return int(np.count_nonzero(self.h_index))

    def set(self, row: int, setting, prompt_len: int) -> bool:
        """Row ``row`` now holds a request with ``setting`` (a SteerSetting, or None for plain). Returns whether
        it steers; an unknown name (the frontend normally refused it) leaves the row plain with an error logged."""
        self.changed = True
        self.clear(row)
        if setting is None or not setting.steers:
            return False
        t = self.tables
        vid = t.ids.get(setting.name)
        if vid is None:
            log.error("vllm_debias: steering vectors %r are not served by this engine (it serves %s); the request "
                      "runs unsteered", setting.name, ", ".join(t.names))
            return False
        layers = setting.layers or t.layers[setting.name]
        residual = t.kinds[setting.name] == "residual"
        bad = sorted(set(layers) - set(t.layers[setting.name] if residual else range(t.num_blocks)))
        if bad or (setting.mode == "ablate" and not residual):
            log.error("vllm_debias: steering vectors %r cannot steer blocks %s in mode %r; the request runs "
                      "unsteered", setting.name, list(layers), setting.mode)
            return False
        ablate = setting.mode == "ablate"
        self.h_index[row] = vid + (t.num_vectors if ablate else 0)
        self.h_coef[row, list(layers)] = 1.0 if ablate else setting.scale
        self.h_start[row] = prompt_len if setting.positions == "generated" else 0
        self.h_ablate[row] = ablate
        return True

    def clear(self, row: int) -> None:
        self.changed = True
        self.h_index[row] = 0
        self.h_coef[row] = 0.0
        self.h_start[row] = 0
        self.h_ablate[row] = False

    def move(self, a: int, b: int, swap: bool) -> None:
        """V1 persistent batch: row ``a`` moves to ``b`` (one way: ``a`` is then empty) or the two swap."""
        self.changed = True
        for arr in (self.h_index, self.h_coef, self.h_start, self.h_ablate):
            va, vb = arr[a].copy(), arr[b].copy()
            arr[b] = va
            arr[a] = vb if swap else 0

    def flush(self) -> None:
        """Copy the host mirrors to the device tensors (one copy each, only after changes)."""
        if not self.changed:
            return
        self.changed = False
        for dev, host in ((self.index, self.h_index), (self.coef, self.h_coef), (self.start, self.h_start),
                          (self.ablate, self.h_ablate)):
            src = torch.from_numpy(host)
            if dev.device.type != "cpu":
                src = src.pin_memory()
            dev.copy_(src, non_blocking=True)


class TokenBuffers:
    """The per-token buffers the layer hooks read (persistent: allocated once, before compile / capture)."""

    def __init__(self, max_tokens: int, num_layers: int, device) -> None:
        self.index = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.coef = torch.zeros(num_layers, max_tokens, dtype=torch.float32, device=device)
        self.ablate = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self.arange = torch.arange(max_tokens, device=device)
        self.dirty = False  # coef may hold non-zeros from an earlier step
        # True only for a step known to run without a CUDA graph and with no steered row: then the hooks,
        # when not traced by torch.compile, return at once (a compiled or captured graph always runs them)
        self.skip = False
        # True only for a step known to run without a CUDA graph and with no row in ablate mode: then eager hooks
        # leave out the projection onto the direction (add-only arithmetic)
        self.add_only = False

    def zero(self) -> None:
        if self.dirty:
            self.coef.zero_()
            self.dirty = False


@torch.no_grad()
def fill_tokens(buf: TokenBuffers, rows: SteerRows, query_start_loc: torch.Tensor, positions: torch.Tensor,
                num_tokens: int, row_of_batch: torch.Tensor | None = None, padded_tokens: int | None = None) -> None:
    """Per-token buffers for the first ``num_tokens`` tokens of a step (see the module docstring).

    ``query_start_loc`` ``[R + 1]``: token offsets of the step's batch rows (R may include padding rows);
    ``positions`` ``[n]`` (or ``[3, n]`` for M-RoPE: the first row is used); ``row_of_batch``: batch row -> row of
    ``rows`` (MRV2's ``idx_mapping``; V1 rows are the batch rows); tokens ``num_tokens .. padded_tokens`` are
    zeroed (CUDA-graph padding)."""
    n = num_tokens
    r = query_start_loc.numel() - 1
    tok = buf.arange[:n]
    batch_row = torch.searchsorted(query_start_loc[1:], tok.to(query_start_loc.dtype), right=True).clamp_(max=r - 1)
    row = batch_row if row_of_batch is None else row_of_batch[batch_row].long()
    pos = positions if positions.dim() == 1 else positions[0]
    on = (tok < query_start_loc[r]) & (pos[:n] >= rows.start[row])
    buf.index[:n] = rows.index[row]
    buf.ablate[:n] = rows.ablate[row]
    buf.coef[:, :n] = (rows.coef[row] * on.unsqueeze(1)).T
    if padded_tokens is not None and padded_tokens > n:
        buf.coef[:, n:padded_tokens] = 0.0
    buf.dirty = True


class SteerState:
    """One engine's steering state inside a worker process, shared by the logits processor (V1 rows) and the
    model (tables, token buffers). Both receive the worker's ``VllmConfig`` object: the state is keyed by it and
    dropped when it is collected."""

    _live: dict[int, SteerState] = {}

    def __init__(self, vllm_config, device) -> None:
        from .vectors import DIGEST_KEY, HF_KEY, VectorTables, announce, decode, digest

        hf = vllm_config.model_config.hf_config
        text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
        raw = getattr(hf, HF_KEY, None)
        if not raw:
            raise ValueError(f"vllm_debias: the steer model needs hf_overrides['{HF_KEY}'] (use "
                             "vllm_debias.steer_engine_args or debias-lm serve --steer)")
        self.files = decode(raw, f"hf_config.{HF_KEY}")
        want = getattr(hf, DIGEST_KEY, None)
        if want and digest(self.files) != want:
            raise ValueError("vllm_debias: a steering-vector file changed after the engine arguments were made "
                             f"({', '.join(f'{n}={p}' for n, p in sorted(self.files.items()))}); make them again")
        self.num_layers = int(text.num_hidden_layers)
        self.tables = VectorTables(self.files, hidden_size=int(text.hidden_size), num_layers=self.num_layers)
        announce(self.files)  # an in-process frontend can now judge names
        sched = vllm_config.scheduler_config
        self.max_rows = int(sched.max_num_seqs)
        self.max_tokens = int(sched.max_num_batched_tokens)
        self.device = torch.device(device)
        self.rows = SteerRows(self.tables, self.max_rows, self.device)  # V1 rows (MRV2 keeps its own slots)

    @classmethod
    def of(cls, vllm_config, device=None) -> SteerState:
        key = id(vllm_config)
        st = cls._live.get(key)
        if st is None:
            if device is None:
                device = vllm_config.device_config.device
            st = cls(vllm_config, device)
            cls._live[key] = st
            weakref.finalize(vllm_config, cls._live.pop, key, None)
        return st
