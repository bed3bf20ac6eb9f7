"""The tiny offline vision-language models of ``debias_lm.testing.vlm`` run end to end like the real ones."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from functools import cache

import pytest
import torch

from debias_lm.testing import build_tiny_idefics3, build_tiny_llava, build_tiny_qwen2_vl, tiny_image

# name -> (builder, image placeholder rendered by the chat template, image tokens per image after expansion)
SPECS = {
    "llava": (build_tiny_llava, "<image>\n", 16),
    "qwen2_vl": (build_tiny_qwen2_vl, "<|vision_start|><|image_pad|><|vision_end|>", 4),
    "idefics3": (build_tiny_idefics3, "<image>", 4),
}
NAMES = sorted(SPECS)


@cache
def _built(name: str):
    return SPECS[name][0](seed=0)


def _prompt(processor, text: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _image_token_id(model) -> int:
    return model.config.image_token_id


@pytest.mark.parametrize("name", NAMES)
def test_small_seeded_eval_float32(name):
    model, _ = _built(name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert all(p.dtype == torch.float32 for p in model.parameters())
    again, _ = SPECS[name][0](seed=0)
    other, _ = SPECS[name][0](seed=1)
    first = next(iter(model.state_dict()))
    assert torch.equal(model.state_dict()[first], again.state_dict()[first])
    assert not torch.equal(model.state_dict()[first], other.state_dict()[first])


@pytest.mark.parametrize("name", NAMES)
def test_chat_template_renders_image_placeholder(name):
    _, processor = _built(name)
    placeholder = SPECS[name][1]
    text = _prompt(processor, "Describe the picture.")
    assert placeholder in text
    assert text.endswith("<|im_start|>assistant\n")
    # The tokenizer carries the same template, so a saved directory has a single one.
    assert processor.tokenizer.chat_template == processor.chat_template


@pytest.mark.parametrize("name", NAMES)
def test_forward_logits_and_image_token_count(name):
    model, processor = _built(name)
    inputs = processor(
        text=[_prompt(processor, "Is there a cat?")], images=[tiny_image(32)], return_tensors="pt"
    )
    input_ids = inputs["input_ids"]
    assert int((input_ids == _image_token_id(model)).sum()) == SPECS[name][2]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, input_ids.shape[1], len(processor.tokenizer))
    assert logits.shape[-1] == model.config.text_config.vocab_size
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_generate_four_new_tokens(name):
    model, processor = _built(name)
    inputs = processor(
        text=[_prompt(processor, "Is there a cat?")], images=[tiny_image(32)], return_tensors="pt"
    )
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape == (1, prompt_len + 4)
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"])


@pytest.mark.parametrize("name", NAMES)
def test_batched_left_padding_matches_unbatched(name):
    model, processor = _built(name)
    prompts = [
        _prompt(processor, "Is there a cat?"),
        _prompt(processor, "Describe the picture and tell me what the nurse and the engineer are doing."),
    ]
    images = [tiny_image(32, seed=1), tiny_image(32, seed=2)]
    batch = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()  # the shorter row is padded on the left
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    batched = model.generate(**batch, **kwargs)
    width = batch["input_ids"].shape[1]
    assert batched.shape == (2, width + 4)
    with torch.no_grad():
        batched_last = model(**batch).logits[:, -1]
    for row, (prompt, image) in enumerate(zip(prompts, images)):
        single = processor(text=[prompt], images=[image], return_tensors="pt")
        n = single["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, width - n :], single["input_ids"][0])
        alone = model.generate(**single, **kwargs)
        assert torch.equal(batched[row, width:], alone[0, n:])
        with torch.no_grad():
            single_last = model(**single).logits[0, -1]
        torch.testing.assert_close(batched_last[row], single_last, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_save_and_reload_with_auto_classes(name, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = _built(name)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor2 = AutoProcessor.from_pretrained(tmp_path)
    assert type(model2) is type(model)
    assert type(processor2) is type(processor)
    assert not model2.training

    prompt = _prompt(processor2, "Is there a cat?")
    assert prompt == _prompt(processor, "Is there a cat?")
    inputs = processor(text=[prompt], images=[tiny_image(32)], return_tensors="pt")
    inputs2 = processor2(text=[prompt], images=[tiny_image(32)], return_tensors="pt")
    assert set(inputs) == set(inputs2)
    for key in inputs:
        assert torch.equal(inputs[key], inputs2[key]), key
    with torch.no_grad():
        logits = model(**inputs).logits
        logits2 = model2(**inputs2).logits
    assert torch.equal(logits, logits2)


def test_saved_qwen2_vl_processor_loads_in_a_fresh_process(tmp_path):
    """Without torchvision the stock Qwen2VLProcessor cannot load; the registered image-only class can."""
    _, processor = _built("qwen2_vl")
    processor.save_pretrained(tmp_path)
    code = textwrap.dedent(
        f"""
        from transformers import AutoProcessor
        from debias_lm.testing import register_qwen2_vl_image_only_processor, tiny_image
        cls = register_qwen2_vl_image_only_processor()
        processor = AutoProcessor.from_pretrained({str(tmp_path)!r})
        assert type(processor) is cls, type(processor)
        inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[tiny_image(32)])
        print(sum(i == processor.image_token_id for i in inputs["input_ids"][0]))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "4"
