"""Offline builders for tiny random models, for tests, examples and benchmarks of the library.

Nothing here downloads anything: tokenizers are trained in-process on a small built-in corpus, models
are random-initialised from small configs. Builders return live objects and can save them with
``save_pretrained`` so the same model can be loaded by path (and by vLLM: head_dim is >= 32).
"""

from .text import build_tiny_gpt2, build_tiny_llama, build_tiny_tokenizer, save_tiny
from .vlm import (
    build_tiny_idefics3,
    build_tiny_llava,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
    register_qwen2_vl_image_only_processor,
    tiny_image,
)

__all__ = [
    "build_tiny_gpt2",
    "build_tiny_idefics3",
    "build_tiny_llama",
    "build_tiny_llava",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_vl",
    "build_tiny_tokenizer",
    "register_qwen2_vl_image_only_processor",
    "save_tiny",
    "tiny_image",
]
