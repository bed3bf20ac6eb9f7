"""Wrap Hugging Face generate with NBLS grounding (U.S. BLS occupation statistics in the system message).

    python examples/nbls_generate.py                       # embedded SmolLM2-135M-Instruct, offline
    python examples/nbls_generate.py --model Qwen/Qwen2.5-0.5B-Instruct
"""

import argparse

import torch

import debias_lm as dl

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="default", help="HF model id or local path (default: embedded model)")
parser.add_argument("--k", type=int, default=32)
args = parser.parse_args()

model, tok = dl.load_model(args.model)
grounding_cfg = dl.NBLSConfig(k=args.k, exclude=("Registered nurses", "Software developers"))
grounded = dl.wrap(model, tok, grounding_cfg)

question = [{"role": "user", "content": "Write two sentences about a nurse and a software developer."}]

# 1) chat messages: the grounding becomes (or is merged into) the system message
plain = dl.wrap(model, tok, "identity").generate_text(question, max_new_tokens=60, do_sample=False)
debiased = grounded.generate_text(question, max_new_tokens=60, do_sample=False)
print("plain:   ", plain[0].strip())
print("grounded:", debiased[0].strip())

# 2) the same object's generate takes every HF generate argument (here: seeded sampling, a batch)
torch.manual_seed(0)
ids = grounded.generate(messages=[question, [{"role": "user", "content": "Describe a carpenter."}]],
                        max_new_tokens=30, do_sample=True, top_p=0.9)
print(ids.shape)

# 3) the grounding on its own, for any pipeline (strings or chat messages in, same type out)
g = grounding_cfg.grounding()
print(g.occupations[:5], "...")
print(g.apply("Complete: The surgeon said that")[-200:])
