"""Visual debias decoding (VDD) with plain HF ``generate`` on a LLaVA-style and a Qwen2-VL-style model.

    python examples/vdd_generate.py                                   # tiny offline models (random weights)
    python examples/vdd_generate.py --model llava-hf/llava-1.5-7b-hf --image photo.jpg
    python examples/vdd_generate.py --model Qwen/Qwen2-VL-2B-Instruct --image photo.jpg

With a real checkpoint the script loads it with AutoModelForImageTextToText / AutoProcessor (hub access or a
local directory needed); without one it builds the tiny offline LLaVA and Qwen2-VL models of
``debias_lm.testing``, which only show the mechanics (their text is random).
"""

import argparse

import torch

import debias_lm as dl


def run(model, processor, image, question: str, max_new_tokens: int) -> None:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=[text], images=[image], return_tensors="pt").to(model.device)
    n = inputs["input_ids"].shape[1]
    kw = dict(do_sample=False, max_new_tokens=max_new_tokens)
    with torch.no_grad():
        plain = model.generate(**inputs, **kw)
        # 1) the logits processor: the image-free branch runs with its own cache
        proc = dl.DebiasSamplingLogitsProcessor.from_inputs(model, processor, inputs, alpha=1.0, beta=0.1,
                                                            variant="none")
        vdd = model.generate(**inputs, logits_processor=[proc], **kw)
        # 2) wrap(): same method, both branches stacked into one forward where the model allows it
        wrapped = dl.wrap(model, processor, dl.DebiasSamplingConfig(alpha=1.0, beta=0.1, variant="none+unk"))
        vdd2 = wrapped.generate(**inputs, **kw)
    dec = processor.tokenizer.batch_decode
    print(f"[{type(model).__name__}]")
    print("  plain        :", dec(plain[:, n:], skip_special_tokens=True)[0])
    print("  VDD (none)   :", dec(vdd[:, n:], skip_special_tokens=True)[0])
    print("  VDD none+unk :", dec(vdd2[:, n:], skip_special_tokens=True)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="")
    ap.add_argument("--image", default="")
    ap.add_argument("--question", default="Describe the image in one sentence.")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    if args.model:
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(args.model, torch_dtype="auto", device_map="auto").eval()
        processor = AutoProcessor.from_pretrained(args.model)
        image = Image.open(args.image).convert("RGB")
        run(model, processor, image, args.question, args.max_new_tokens)
        return
    from debias_lm.testing import build_tiny_llava, build_tiny_qwen2_vl, tiny_image

    for build in (build_tiny_llava, build_tiny_qwen2_vl):
        model, processor = build(seed=0)
        run(model, processor, tiny_image(32), args.question, args.max_new_tokens)


if __name__ == "__main__":
    main()
