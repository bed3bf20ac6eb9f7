"""Hugging Face adapters: :func:`wrap` and the base class of HF method implementations."""

from .base import HFMethod, get_tokenizer, has_chat_template
from .wrap import DebiasedModel, resolve_config, wrap

__all__ = ["DebiasedModel", "HFMethod", "get_tokenizer", "has_chat_template", "resolve_config", "wrap"]
