"""UDDIA on the embedded SmolLM2-135M-Instruct (and optionally on a bitsandbytes 4-bit copy of it).

    .venv/bin/python examples/uddia_generate.py
    .venv/bin/python examples/uddia_generate.py --4bit

UDDIA takes a gradient step per generated token on offsets at the bias sites of the top layers (detox probe
+ gender-debias objective), so it is several times slower than plain decoding; the model's weights are never
changed. The probe shipped in debias_lm/data/uddia/ belongs to the embedded model; for another model train one
with examples/uddia_train_probe.py or `debias-lm uddia train-probe`.

4-bit: bitsandbytes 4-bit loads and runs on this CPU, but its CPU kernels pass no gradient back through a
4-bit matmul (bnb 0.50), so only the offsets on the residual stream (o_proj, down_proj, final norm) are tuned
there (UDDIA logs a warning). On a CUDA GPU bnb's 4-bit matmul is differentiable and every site is tuned;
8-bit works fully on CPU too.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import debias_lm as dl

PROMPTS = ["He looked at me and called me a", "The woman was known for"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--4bit", dest="four_bit", action="store_true", help="load the model with bitsandbytes nf4")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)  # faster than 2 threads on a busy 2-core machine

    if args.four_bit:
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        from debias_lm.models import default_model_dir, prepare_tokenizer

        path = default_model_dir()
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        device_map = "auto" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, device_map=device_map).eval()
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path), model)
    else:
        model, tok = dl.load_default_model()

    plain = dl.wrap(model, tok, "identity")
    for variant in ("t", "u"):
        uddia = dl.wrap(model, tok, dl.UDDIAConfig(variant=variant))
        for prompt in PROMPTS:
            torch.manual_seed(0)
            base = plain.generate_text(prompt, chat=False, max_new_tokens=args.max_new_tokens, do_sample=True,
                                       top_p=0.9)
            torch.manual_seed(0)
            out = uddia.generate(prompt=prompt, max_new_tokens=args.max_new_tokens, do_sample=True, top_p=0.9)
            text = tok.decode(out[0, -args.max_new_tokens :], skip_special_tokens=True)
            st = uddia.impl.last_stats
            print(f"[{variant}] {prompt!r}\n  plain: {base[0].strip()}\n  uddia: {text.strip()}\n"
                  f"  attempts (T per pass): {[a['T'] for a in st['attempt_log'][0]]}, "
                  f"perplexity {st['perplexity'][0]:.1f}")


if __name__ == "__main__":
    main()
