"""Decoding overhead: throughput ratio, forward-equivalents per generated token, peak memory.

* **Throughput ratio** R = tok/s(method) ÷ tok/s(plain), both measured in the same run with the same model,
  batch size, prompt and output lengths, dtype and hardware (``throughput_ratio``).
* **Forward-equivalents per generated token** (``LayerCounter``): hardware independent. Every decoder layer
  call adds its number of rows (sequences in the batch); forward-equivalents = Σ rows over layer calls ÷
  (number of layers × batch × generated tokens). Plain decoding is exactly 1 (one full-depth pass per token,
  the prefill included); a method running a second branch for every row is 2; partial-depth recomputation
  counts the fraction of layers it runs. Backward passes are counted the same way through the layers'
  backward hooks (``backward_equiv``).
* **Peak memory**: on CUDA, ``torch.cuda.max_memory_allocated`` during the run; on CPU, the peak resident set
  size above the level at the start of the run (after returning freed heap pages to the OS with glibc's
  ``malloc_trim``), sampled every 5 ms and at the end (``PeakMemory``); a peak shorter than the sampling
  interval can be missed, so CPU figures are a lower bound.
"""

from __future__ import annotations

import os
import threading
import time


def throughput_ratio(tokens_per_s_method: float, tokens_per_s_plain: float) -> float:
    """R = tok/s(method) / tok/s(plain)."""
    if tokens_per_s_plain <= 0:
        raise ValueError("plain decoding throughput must be > 0")
    return tokens_per_s_method / tokens_per_s_plain


def decoder_layers(model):
    """The model's list of decoder layers (the first ModuleList whose items are all the same class)."""
    import torch

    for name in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
                 "model.language_model.layers", "language_model.model.layers", "model.text_model.layers"):
        mod = model
        try:
            for part in name.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        if isinstance(mod, torch.nn.ModuleList) and len(mod):
            return list(mod)
    best = None
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) and len({type(x) for x in m}) == 1:
            if best is None or len(m) > len(best):
                best = m
    if best is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return list(best)


class LayerCounter:
    """Counts rows through every decoder layer (forward and backward) while active (a context manager)."""

    def __init__(self, model) -> None:
        self.layers = decoder_layers(model)
        self.forward_rows = 0
        self.backward_rows = 0
        self._handles = []

    def __enter__(self):
        def fwd(_mod, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            if x is not None:
                self.forward_rows += int(x.shape[0])

        def bwd(_mod, grad_output):
            g = grad_output[0] if grad_output else None
            if g is not None:
                self.backward_rows += int(g.shape[0])

        for layer in self.layers:
            self._handles.append(layer.register_forward_pre_hook(fwd, with_kwargs=True))
            self._handles.append(layer.register_full_backward_pre_hook(bwd))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def forward_equiv(self, batch: int, new_tokens: int) -> float:
        return self.forward_rows / (len(self.layers) * batch * new_tokens)

    def backward_equiv(self, batch: int, new_tokens: int) -> float:
        return self.backward_rows / (len(self.layers) * batch * new_tokens)


def _rss_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _release_free_memory() -> None:
    """gc, then glibc's malloc_trim(0): without it freed-but-kept heap pages hide new allocations from RSS."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline then includes reusable free pages
        pass


class PeakMemory:
    """Peak memory above the starting level during a ``with`` block (bytes in ``.peak``; ``.kind`` says
    which memory: 'cuda_allocated' or 'cpu_rss')."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = str(device)
        self.peak = 0
        self.kind = "cuda_allocated" if self.device.startswith("cuda") else "cpu_rss"
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.kind == "cuda_allocated":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _release_free_memory()  # freed heap pages go back to the OS, so the baseline is what is in use now
        self._base = _rss_bytes()
        self._max = self._base

        def sample():
            while not self._stop.is_set():
                self._max = max(self._max, _rss_bytes())
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_allocated":
            import torch

            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss_bytes())
        self.peak = self._max - self._base
