"""Tiny random vision-language models (LLaVA, Qwen2-VL, Idefics3) with matching processors, built offline.

Every builder returns ``(model, processor)``: a random-initialised model in eval mode (float32, seeded) and a
processor whose image processor is the PIL/numpy backend (no torchvision needed), whose tokenizer is the
in-process BPE tokenizer of :mod:`debias_lm.testing.text` plus the model's image tokens, and whose ChatML chat
template renders ``{"type": "image"}`` content parts as the model's image placeholder. The number of image
tokens the processor expands a placeholder into always equals the number of image features the model makes.
Text towers are Llama-like: hidden 64, 2 layers, 2 heads, head_dim 32.
"""

from __future__ import annotations

from functools import lru_cache

from .text import _set_generation_defaults, build_tiny_tokenizer

TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_HEADS = 2
TEXT_HEAD_DIM = TEXT_HIDDEN // TEXT_HEADS
ANSWER_WORDS = ("yes", "no", "Yes", "No")


def _chat_template(image_placeholder: str) -> str:
    """ChatML template whose content may be a string or a list of ``text``/``image`` parts."""
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image_placeholder + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


def _tokenizer(extra_special_tokens: tuple[str, ...], chat_template: str):
    """The tiny tokenizer with the model's image tokens and the multimodal chat template (kept in sync with the
    processor's so a saved directory has one template)."""
    tok = build_tiny_tokenizer(extra_special_tokens=extra_special_tokens)
    tok.add_tokens(list(ANSWER_WORDS))  # single-token answers, so yes/no calibration has labels to read
    tok.chat_template = chat_template
    return tok


def _text_kwargs(tok) -> dict:
    """Shared Llama-like text-tower settings."""
    return dict(
        vocab_size=len(tok),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=TEXT_HIDDEN * 2,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_HEADS,
        num_key_value_heads=TEXT_HEADS,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _finish(model_cls, config, tok, seed: int):
    """Instantiate ``model_cls(config)`` under ``seed``, eval mode, generation ids from ``tok``."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(config).eval()
    _set_generation_defaults(model, tok)
    return model


def tiny_image(size: int | tuple[int, int] = 32, seed: int = 0):
    """A deterministic random RGB ``PIL.Image`` of ``size`` (int for square, or ``(width, height)``)."""
    import numpy as np
    from PIL import Image

    width, height = (size, size) if isinstance(size, int) else size
    pixels = np.random.RandomState(seed).randint(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)  # uint8 (H, W, 3) -> RGB


def build_tiny_llava(seed: int = 0, *, text_hidden: int = TEXT_HIDDEN, text_layers: int = TEXT_LAYERS,
                     vision_hidden: int = 32, vision_layers: int = 1, patch_size: int = 8):
    """A random ``LlavaForConditionalGeneration`` (CLIP 32x32 / patch 8 -> 16 image tokens) and ``LlavaProcessor``.

    The prompt placeholder is ``<image>``; the chat template renders an image part as ``<image>\\n``. The size
    arguments make larger variants (the synthetic biased VLM of ``debias_lm.evaluation.suites.pope_synthetic`` uses them);
    attention heads are ``hidden // 32`` (head_dim 32) in the text tower and 2 in the vision tower.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    image_size = 32
    num_image_tokens = (image_size // patch_size) ** 2  # CLS dropped by the "default" strategy
    template = _chat_template("<image>\n")
    tok = _tokenizer(("<image>",), template)
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text_kw = _text_kwargs(tok)
    heads = max(1, text_hidden // TEXT_HEAD_DIM)
    text_kw.update(hidden_size=text_hidden, intermediate_size=text_hidden * 2, num_hidden_layers=text_layers,
                   num_attention_heads=heads, num_key_value_heads=heads)
    text = LlamaConfig(**text_kw, head_dim=TEXT_HEAD_DIM)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    model = _finish(LlavaForConditionalGeneration, config, tok, seed)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=template,
        image_token="<image>",
    )
    return model, processor


QWEN2_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


@lru_cache(maxsize=1)
def register_qwen2_vl_image_only_processor():
    """Define ``Qwen2VLImageOnlyProcessor`` (a ``Qwen2VLProcessor`` without its video processor), register it
    with ``AutoProcessor`` and return it. Idempotent; :func:`build_tiny_qwen2_vl` calls it.

    Call it before ``AutoProcessor.from_pretrained`` on a saved tiny Qwen2-VL directory in a process that has
    not built one: the saved ``processor_config.json`` names this class. Why it exists: the stock class can
    neither be built nor loaded without torchvision, since its ``video_processor`` slot is type-checked against
    ``VideoProcessorMixin`` (exported by transformers only when torchvision is installed) and ``from_pretrained``
    requires a video processor config. Dropping the slot from ``__init__``'s signature removes it from the
    processor's attributes; images and text are handled exactly as by ``Qwen2VLProcessor``.
    """
    from transformers import AutoProcessor, Qwen2VLProcessor

    class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
        """A ``Qwen2VLProcessor`` with an image processor and a tokenizer only (no videos)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(
                image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
            )

    # A string key never equals a config type, so this changes no model's processor; it only lets
    # AutoProcessor resolve the class name stored in processor_config.json.
    AutoProcessor.register("debias_lm:Qwen2VLImageOnlyProcessor", Qwen2VLImageOnlyProcessor, exist_ok=True)
    return Qwen2VLImageOnlyProcessor


def _qwen_text_and_ids(tok) -> dict:
    """Text config (M-RoPE) and special-token ids shared by the tiny Qwen2-VL and Qwen2.5-VL builders."""
    ids = dict(zip(QWEN2_VL_TOKENS, tok.convert_tokens_to_ids(list(QWEN2_VL_TOKENS))))
    # mrope_section splits the rotary half-dim (head_dim / 2 = 16) into temporal/height/width parts.
    text = dict(
        **_text_kwargs(tok),
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]},
    )
    return dict(
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_qwen2_vl(seed: int = 0):
    """A random ``Qwen2VLForConditionalGeneration`` and a ``Qwen2VLProcessor`` subclass without videos (see
    :func:`register_qwen2_vl_image_only_processor`).

    Patch 14, merge 2, min_pixels = max_pixels = 56*56: every square image becomes 56x56, a 4x4 patch grid
    merged into 4 ``<|image_pad|>`` tokens. The chat template renders an image part as
    ``<|vision_start|><|image_pad|><|vision_end|>``.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    patch_size, merge_size, temporal_patch_size = 14, 2, 2
    pixels = (patch_size * merge_size * 2) ** 2  # 56*56
    template = _chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    tok = _tokenizer(QWEN2_VL_TOKENS, template)
    vision = dict(
        depth=1,
        embed_dim=32,
        hidden_size=TEXT_HIDDEN,  # output size of the patch merger = text hidden size
        num_heads=2,
        mlp_ratio=2,
        patch_size=patch_size,
        spatial_merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
    )
    config = Qwen2VLConfig(vision_config=vision, **_qwen_text_and_ids(tok))
    model = _finish(Qwen2VLForConditionalGeneration, config, tok, seed)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels,
        max_pixels=pixels,
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
    )
    processor_cls = register_qwen2_vl_image_only_processor()
    processor = processor_cls(image_processor=image_processor, tokenizer=tok, chat_template=template)
    return model, processor


def build_tiny_qwen2_5_vl(seed: int = 0):
    """A random ``Qwen2_5_VLForConditionalGeneration`` (windowed vision tower, 2 blocks) with the processor of
    :func:`build_tiny_qwen2_vl` (Qwen2.5-VL uses the same image tokens, image processor and chat format)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    _, processor = build_tiny_qwen2_vl(seed)
    tok = processor.tokenizer
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TEXT_HIDDEN,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(vision_config=vision, **_qwen_text_and_ids(tok))
    model = _finish(Qwen2_5_VLForConditionalGeneration, config, tok, seed)
    return model, processor


IDEFICS3_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")


def build_tiny_idefics3(seed: int = 0):
    """A random ``Idefics3ForConditionalGeneration`` and ``Idefics3Processor`` (no image splitting).

    Images are resized to 32x32; patch 8 gives 16 patches, pixel-shuffled by ``scale_factor`` 2 into
    ``image_seq_len`` = 4 ``<image>`` tokens wrapped as
    ``<fake_token_around_image><global-img><image>*4<fake_token_around_image>``.
    """
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    image_size, patch_size, scale_factor = 32, 8, 2
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    template = _chat_template("<image>")
    tok = _tokenizer(IDEFICS3_TOKENS, template)
    vision = Idefics3VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = LlamaConfig(**_text_kwargs(tok), head_dim=TEXT_HEAD_DIM)
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=scale_factor,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    model = _finish(Idefics3ForConditionalGeneration, config, tok, seed)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        do_image_splitting=False,
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len, chat_template=template
    )
    return model, processor
