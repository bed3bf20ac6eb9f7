"""Per-request activation steering in vLLM, as a plugin (no fork, no patched vLLM file).

* ``register()`` — the ``vllm.general_plugins`` entry point (``pyproject.toml``), run by vLLM in every process
  (frontend, engine core, workers): it registers the steer-capable architecture alias
  ``DebiasSteerLlamaForCausalLM`` as a lazy ``"module:Class"`` string (no model code imported). Stock models are
  never changed: an engine opts in by naming the alias.
* Engine opt-in — vectors loaded once per engine, by name::

      llm = LLM(model=M, **vllm_debias.steer_engine_args({"gender": "gender.safetensors"}))
      debias-lm serve --model M --steer gender=gender.safetensors [--steer tox=tox.safetensors]

  which sets ``hf_overrides`` (the alias and the vectors), registers
  :class:`~vllm_debias.steer.processor.SteerLogitsProcessor` (admission, V1 row tracking) next to
  :data:`vllm_debias.LOGITS_PROCESSORS` (calibration and debias sampling keep working) and, for the server, the
  ``cache_salt`` middleware.
* Request opt-in — ``extra_args`` / ``vllm_xargs``: ``{"debias_method": "steer", "debias_vectors": "gender",
  "debias_scale": 4.0, "debias_positions": "all", "debias_layers": [...], "debias_mode": "add"}`` plus a
  ``cache_salt`` (:func:`debias_lm.methods.steer.vllm.cache_salt`; the server adds it itself;
  ``vllm_debias.generate(llm, prompts, dl.SteerConfig(...), params)`` does it offline).

Pieces: :mod:`.vectors` (names, files, tables), :mod:`.rows` (per-row settings, per-token fill), :mod:`.model`
(buffers and layer hooks), :mod:`.mrv2` (Model Runner V2), :mod:`.processor`, :mod:`.salt`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .vectors import ARCHITECTURES, HF_KEY, alias

PROCESSOR = "vllm_debias.steer.processor:SteerLogitsProcessor"
MIDDLEWARE = "vllm_debias.steer.salt.SteerSaltMiddleware"
MODEL_MODULE = "vllm_debias.steer.model"


def register() -> None:
    """Register the steer aliases with vLLM's model registry (re-entrant; imports no model code)."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for arch in ARCHITECTURES.values():
        name = alias(arch)
        if name not in known:
            ModelRegistry.register_model(name, f"{MODEL_MODULE}:{name}")


def steer_engine_args(vectors: Mapping[str, str] | Sequence[str], *, model_type: str | None = None,
                      hf_overrides: Mapping[str, Any] | None = None,
                      logits_processors: Sequence[Any] = ()) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM(model=M, **steer_engine_args({NAME: FILE, ...}))``.

    ``vectors``: ``{name: file}`` or ``["NAME=FILE", ...]`` (a file may be a shipped short name such as
    ``toxicity``). Every file is checked now (format, NaN, residual kind, one model shape). Returns
    ``hf_overrides`` (merged with yours) and ``logits_processors`` (``SteerLogitsProcessor``, the classes of
    :data:`vllm_debias.LOGITS_PROCESSORS`, then yours). The vectors are also announced to
    this process, so an in-process frontend refuses unknown names, and the alias is registered here too (the
    entry point does it in every process of an installed package; this covers an in-process engine,
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, when the package runs from a source tree without its metadata: vLLM's
    worker processes then know the alias only through the installed entry point)."""
    from ..processors import LOGITS_PROCESSORS
    from .vectors import DIGEST_KEY, announce, architecture_for, digest, encode, parse_specs

    register()
    files = parse_specs(vectors)
    arch = architecture_for(files, model_type)
    announce(files)
    overrides = dict(hf_overrides or {})
    overrides.update({"architectures": [arch], HF_KEY: encode(files), DIGEST_KEY: digest(files)})
    return {"hf_overrides": overrides, "logits_processors": [PROCESSOR, *LOGITS_PROCESSORS, *logits_processors]}


def engine_vectors(llm) -> dict[str, str]:
    """``{name: file}`` an offline ``LLM`` serves (empty for an engine without steering)."""
    from .vectors import decode

    hf = llm.llm_engine.vllm_config.model_config.hf_config
    raw = getattr(hf, HF_KEY, None)
    return decode(raw, f"hf_config.{HF_KEY}") if raw else {}


__all__ = ["MIDDLEWARE", "PROCESSOR", "engine_vectors", "register", "steer_engine_args"]
