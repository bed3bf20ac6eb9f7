"""The vllm_debias logits processors, one class per behaviour of :class:`debias_lm.registry.VLLMMapping`:

* :class:`~vllm_debias.processors.calibration.CalibrationLogitsProcessor` — ``label_bias``: calibration offsets
  at the first sampled token;
* :class:`~vllm_debias.processors.contrast.ContrastLogitsProcessor` — ``pair``: debias sampling as twin rows;
* :class:`~vllm_debias.steer.processor.SteerLogitsProcessor` — ``activation``: steering admission and rows (only on
  an engine with steering vectors: ``vllm_debias.steer_engine_args``).

What they share (both vLLM interfaces, admission, bookkeeping, dedupe) is :mod:`.base`. Importing this package is
light: :data:`LOGITS_PROCESSORS` names the classes as vLLM's ``"module:Class"`` strings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

LOGITS_PROCESSORS: tuple[str, ...] = (
    "vllm_debias.processors.calibration:CalibrationLogitsProcessor",
    "vllm_debias.processors.contrast:ContrastLogitsProcessor",
)
"""What to register explicitly: ``LLM(..., logits_processors=list(vllm_debias.LOGITS_PROCESSORS))``. The same
classes are the package's ``vllm.logits_processors`` entry points (pyproject.toml); loading them both ways is
harmless (the second instance in an engine is inert)."""



def _ours(cls) -> bool:
    return getattr(cls, "__module__", "").startswith("vllm_debias.")


@contextlib.contextmanager
def without_installed() -> Iterator[None]:
    """Engines built inside this block do not load vllm_debias's ``vllm.logits_processors`` entry points (other
    packages' entry points still load): a processor-free engine in a venv where debias-lm is installed, e.g. the
    plain baseline of a benchmark or a test.

    It patches vLLM's entry-point loaders (V1 ``_load_logitsprocs_plugins``, MRV2 ``_load_v2_logitsprocs_plugins``)
    and clears the frontend's cache of loaded classes, so it holds for engines whose engine core runs in this
    process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) or in a process forked while the block runs (vLLM's default
    on CPU); a spawned engine core or a server started as a new process re-reads the entry points. Classes passed
    to ``LLM(logits_processors=...)`` are still loaded."""
    from vllm.v1.sample import logits_processor as v1

    patched = [(v1, "_load_logitsprocs_plugins")]
    try:
        from vllm.v1.worker.gpu.sample.logits_processor import loader as v2

        patched.append((v2, "_load_v2_logitsprocs_plugins"))
    except ImportError:  # pragma: no cover - vLLM before Model Runner V2 custom logits processors
        v2 = None
    saved = [(mod, name, getattr(mod, name)) for mod, name in patched]

    def _caches() -> None:
        v1.cached_load_custom_logitsprocs.cache_clear()
        if v2 is not None and hasattr(v2, "_cached_load_v2_logitsprocs"):
            v2._cached_load_v2_logitsprocs.cache_clear()

    for mod, name, load in saved:
        setattr(mod, name, lambda load=load: [c for c in load() if not _ours(c)])
    _caches()
    try:
        yield
    finally:
        for mod, name, load in saved:
            setattr(mod, name, load)
        _caches()


__all__ = ["LOGITS_PROCESSORS", "without_installed"]
