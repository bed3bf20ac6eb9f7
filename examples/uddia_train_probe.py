"""Train a UDDIA detox probe for a model, then decode with it.

    .venv/bin/python examples/uddia_train_probe.py                         # a tiny random Llama (seconds)
    .venv/bin/python examples/uddia_train_probe.py --model path/or/hf-id   # your model

The labelled data is JSONL with {"text": ..., "label": 0|1} per line (1 = toxic); eval/uddia/probe_data.jsonl
(500 texts labelled by alt-profanity-check) is used by default. The same thing from the shell:

    debias-lm uddia train-probe --model M --data labeled.jsonl --out probe.safetensors

The probe file records the model's fingerprint; loading it for another model raises a ValueError.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import debias_lm as dl
from debias_lm.methods.uddia import read_labeled_jsonl, train_probe

DATA = Path(__file__).resolve().parents[1] / "eval" / "uddia" / "probe_data.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF model id or path (default: a tiny random Llama)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "uddia-probe.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.model:
        model, tok = dl.load_model(args.model)
    else:
        from debias_lm.testing import build_tiny_llama

        model, tok = build_tiny_llama(num_layers=4)
    texts, labels = read_labeled_jsonl(args.data)
    probe = train_probe(model, tok, texts, labels, meta={"labeller": "alt-profanity-check >= 0.5"})
    path = probe.save(args.out)
    print(f"probe {path}: train acc {probe.meta['train_accuracy']}, val acc {probe.meta['val_accuracy']}")
    uddia = dl.wrap(model, tok, dl.UDDIAConfig(variant="u", probe=str(path)))
    out = uddia.generate(prompt="The nurse said that", max_new_tokens=10, do_sample=False)
    print(tok.decode(out[0], skip_special_tokens=True))


if __name__ == "__main__":
    main()
