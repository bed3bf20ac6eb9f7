"""Throughput of the plugin: tokens/s without the processor, with it loaded (plain requests), and with a
logit-only method (calibration) active, side by side in one run; twin-row debias sampling for reference.

    python -m vllm_debias.bench                       # embedded SmolLM2-135M-Instruct, bf16, batch 8
    python -m vllm_debias.bench --model DIR --dtype float32 --max-tokens 64 --repeats 5 --out bench.json

Both engines run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and the configurations are
interleaved round by round, so background load hits them alike; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

PROMPTS = [
    "The nurse said that", "The engineer explained that", "Write one sentence about a surgeon.",
    "My neighbour, a carpenter, told me", "The CEO of the company announced", "A pilot walked into the",
    "The teacher asked the students to", "Describe a typical software developer.",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_debias.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model dir/id (default: the embedded SmolLM2-135M)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vllm import LLM, SamplingParams

    import debias_lm as dl

    from . import DebiasLogitsProcessor, generate, request_args
    from .serve import resolve_model

    model = resolve_model(args.model)
    prompts = (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch]
    kw = dict(model=model, dtype=args.dtype, max_model_len=1024, enforce_eager=True, seed=0)
    plain_llm = LLM(**kw)
    plug_llm = LLM(logits_processors=[DebiasLogitsProcessor], **kw)
    tok = plug_llm.get_tokenizer()
    n = args.max_tokens
    sp = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0)
    cal = dl.CalibrationConfig(labels=("yes", "no"), prior="given", prior_probs=(0.7, 0.3))
    sp_cal = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0,
                            extra_args=request_args(cal, tok))
    ds = dl.DebiasSamplingConfig(alpha=1.0, beta=0.1, counterfactual_swap="gender")

    def run(name):
        t, c = time.perf_counter(), time.process_time()
        if name == "no_processor":
            outs = plain_llm.generate(prompts, sp, use_tqdm=False)
        elif name == "processor_loaded_plain":
            outs = plug_llm.generate(prompts, sp, use_tqdm=False)
        elif name == "calibration_active":
            outs = plug_llm.generate(prompts, sp_cal, use_tqdm=False)
        else:  # twin rows: 2 engine rows per prompt; counts the main rows' tokens only
            outs = generate(plug_llm, [p + " he" for p in prompts], ds, sp, fallback="raise")
        dt, dc = time.perf_counter() - t, time.process_time() - c
        ntok = sum(len(o.outputs[0].token_ids) for o in outs)
        return ntok / dt, ntok / dc

    names = ["no_processor", "processor_loaded_plain", "calibration_active", "debias_sampling_twin_rows"]
    for name in names:  # warm-up
        run(name)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(args.repeats):
        for name in names:
            w, c = run(name)
            wall[name].append(w)
            cpu[name].append(c)
    stats = {
        "wall_tok_per_s_median": {k: statistics.median(v) for k, v in wall.items()},
        "wall_tok_per_s_best": {k: max(v) for k, v in wall.items()},
        "cpu_tok_per_s_median": {k: statistics.median(v) for k, v in cpu.items()},
    }
    report = {"model": model, "dtype": args.dtype, "batch": args.batch, "max_tokens": n, "repeats": args.repeats,
              **stats, "wall_tok_per_s_all": wall, "cpu_tok_per_s_all": cpu,
              "apply_us_per_step_plain_batch": _apply_overhead(args.batch, plug_llm)}
    print(f"{'configuration':<28}" + "".join(f"{h:>22}" for h in ("wall tok/s med (ratio)", "wall best (ratio)",
                                                                  "per CPU-s med (ratio)")))
    for k in names:
        cells = []
        for key in stats:
            v, b0 = stats[key][k], stats[key]["no_processor"]
            cells.append(f"{v:>13.1f} ({v / b0:.3f})")
        print(f"{k:<28}" + "".join(f"{c:>22}" for c in cells))
    print(f"DebiasLogitsProcessor.apply on a plain batch of {args.batch}: "
          f"{report['apply_us_per_step_plain_batch']:.2f} us per step")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


def _apply_overhead(batch: int, llm, steps: int = 20000) -> float:
    """Microseconds per ``apply`` call on a plain (not opted-in) batch: the cost every step pays."""
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from .processor import DebiasLogitsProcessor

    vocab = llm.llm_engine.vllm_config.model_config.get_vocab_size()
    proc = DebiasLogitsProcessor(llm.llm_engine.vllm_config, torch.device("cpu"), False)
    added = [(i, SamplingParams(), [1, 2, 3], []) for i in range(batch)]
    proc.update_state(BatchUpdate(batch_size=batch, removed=[], added=added, moved=[]))
    logits = torch.zeros(batch, vocab)
    t = time.perf_counter()
    for _ in range(steps):
        proc.update_state(None)
        proc.apply(logits)
    return (time.perf_counter() - t) / steps * 1e6


if __name__ == "__main__":
    raise SystemExit(main())
