"""Per-request activation steering in vLLM: one engine, named vectors, plain and steered requests in one batch.

    python examples/vllm_steer.py --vectors tox=TOX.safetensors [--model M]

The package must be installed (``pip install .``): vLLM's worker processes learn the steer-capable model from
its ``vllm.general_plugins`` entry point (from a source tree, run with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
Build vectors for your model first (``debias-lm steer build --model M --pairs pairs.jsonl --out TOX.safetensors``)
or use a file shipped for the embedded model (``--vectors tox=toxicity``). The same vectors over HTTP::

    debias-lm serve --model M --steer tox=TOX.safetensors
    curl -s 127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' -d '{"model": "M",
      "prompt": "The nurse said that", "max_tokens": 24, "vllm_xargs": {"debias_method": "steer",
      "debias_vectors": "tox", "debias_scale": 4}}'
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model dir/id (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--vectors", action="append", required=True, metavar="NAME=FILE")
    ap.add_argument("--scale", type=float, default=4.0)
    args = ap.parse_args()

    import vllm_debias
    from vllm import LLM, SamplingParams
    from vllm_debias.serve import resolve_model

    import debias_lm as dl

    llm = LLM(model=resolve_model(args.model), dtype="float32", max_model_len=512, enforce_eager=True,
              **vllm_debias.steer_engine_args(args.vectors))
    name = args.vectors[0].partition("=")[0]
    prompts = ["The nurse said that", "My neighbour, a carpenter, told me"]
    params = SamplingParams(max_tokens=24, temperature=0.0)
    plain = llm.generate(prompts, params, use_tqdm=False)
    steered = vllm_debias.generate(llm, prompts, dl.SteerConfig(vectors=name, scale=args.scale), params)
    for p, a, b in zip(prompts, plain, steered):
        print(f"{p!r}\n  plain:   {a.outputs[0].text!r}\n  steered: {b.outputs[0].text!r} ({b.debias_status.status})")


if __name__ == "__main__":
    main()
