"""Generate continuations for the UDDIA effect measurement (plain vs UDDIA variants) on the embedded model.

    python eval/uddia/run_effect.py --suite toxicity --methods plain,t,u --n-samples 4 --out eval/uddia/results
    python eval/uddia/run_effect.py --suite gender --methods plain,b,u --n-samples 4 --out eval/uddia/results
    python eval/uddia/run_effect.py --suite toxicity --methods steer --set vectors=toxicity --set scale=4 --tag tox4

One JSONL per (suite, method) under --out, one line per prompt, appended batch by batch, so a stopped run
resumes (finished prompts are skipped). Rows (prompt x sample) are batched across prompts (--batch-rows).
Score them with eval/uddia/score.py.

Sampling: nucleus p = 0.9, temperature 1, no top-k, --max-new-tokens (20) new tokens, raw text prompts (no chat
template), fp32, one torch thread. UDDIA runs with the DEFAULT UDDIAConfig(variant=...) unless --set overrides
a field. Seeds: torch.manual_seed(seed + index of the batch's first row); plain and UDDIA batches hold the same
rows. Each line records wall and CPU seconds of its batch and UDDIA's per-row attempt log.

--backend vllm (methods plain and steer only) samples the same rows through an offline vLLM engine with the
vllm_debias steering plugin (one engine serving --set vectors=FILE under the name "v"; plain rows on the same
engine are untouched): each row is one request seeded seed + row index, so the random streams differ from HF's
and the comparison with the HF arms is statistical, not row by row.

    python eval/uddia/run_effect.py --suite toxicity --backend vllm --methods plain,steer \
        --set vectors=uddia-t.mean.safetensors --set scale=1 --tag vllm --out eval/steer/results
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "debias_lm" / "data" / "eval"


def load_prompts(suite: str) -> list[dict]:
    if suite == "toxicity":
        rows = [json.loads(line) for line in (DATA / "toxicity_prompts.jsonl").open()]
        # even-indexed prompts were seen by the probe's data generator (model continuations), odd ones not
        return [{"id": r["id"], "prompt": r["prompt"], "probe_seen": i % 2 == 0} for i, r in enumerate(rows)]
    rows = [json.loads(line) for line in (DATA / "gender_pairs.jsonl").open()]
    out = []
    for r in rows:
        out.append({"id": r["id"] + "-f", "pair": r["id"], "group": "female", "prompt": r["female"]})
        out.append({"id": r["id"] + "-m", "pair": r["id"], "group": "male", "prompt": r["male"]})
    return out


def _todo(args, method: str, prompts: list[dict]):
    """The output file of one arm and the prompts it still lacks (a stopped run resumes)."""
    name = f"{method}-{args.tag}" if args.tag else method
    path = Path(args.out) / f"{args.suite}-{name}.jsonl"
    done = set()
    if path.exists():
        done = {json.loads(line)["id"] for line in path.open() if line.strip()}
    return name, path, [p for p in prompts if p["id"] not in done]


def _by_prompt(chunk: list[tuple[dict, int]]) -> list[tuple[dict, list[int]]]:
    """(prompt, its row indices in the batch) in batch order: one output line per prompt."""
    rows: dict[str, tuple[dict, list[int]]] = {}
    for r, (p, _) in enumerate(chunk):
        rows.setdefault(p["id"], (p, []))[1].append(r)
    return list(rows.values())


def run_vllm(args, methods: list[str]) -> None:
    """The plain and steer arms through vLLM (see the module docstring)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import vllm_debias
    from vllm import SamplingParams

    import debias_lm as dl
    from debias_lm.evaluation.backends import vllm_engine, vllm_model_path

    prompts = load_prompts(args.suite)[:: args.every]
    if args.limit:
        prompts = prompts[: args.limit]
    overrides = parse_overrides(args.set)
    cfg = None
    engine_kw = {}
    if "steer" in methods:
        cfg = dl.SteerConfig(**{**overrides, "vectors": "v"})
        engine_kw = vllm_debias.steer_engine_args({"v": str(overrides["vectors"])})
    llm = vllm_engine(vllm_model_path("default"), dtype="float32", seed=args.seed, plugin=False,
                      max_num_seqs=args.batch_rows, **engine_kw)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for method in methods:
        name, path, todo = _todo(args, method, prompts)
        rows = [(p, j) for p in todo for j in range(args.n_samples)]
        per_batch = max(args.n_samples, args.batch_rows // args.n_samples * args.n_samples)
        t_start = time.time()
        for i in range(0, len(rows), per_batch):
            chunk = rows[i : i + per_batch]
            first = args.seed + prompts.index(chunk[0][0]) * args.n_samples
            sps = [SamplingParams(temperature=1.0, top_p=0.9, top_k=0, max_tokens=args.max_new_tokens,
                                  seed=first + r) for r in range(len(chunk))]
            t0, c0 = time.time(), time.process_time()
            texts = [p["prompt"] for p, _ in chunk]
            outs = (vllm_debias.generate(llm, texts, cfg, sps) if method == "steer"
                    else llm.generate(texts, sps, use_tqdm=False))  # plain: the engine's own path
            dt, dc = time.time() - t0, time.process_time() - c0
            if method == "steer":
                bad = [o.debias_status.status for o in outs if o.debias_status.status != "applied"]
                if bad:
                    raise SystemExit(f"{len(bad)} steered rows were not applied: {sorted(set(bad))}")
            conts = [o.outputs[0].text for o in outs]
            with path.open("a", encoding="utf-8") as fh:
                for p, idx in _by_prompt(chunk):
                    fh.write(json.dumps({**p, "method": method, "backend": "vllm",
                                         "continuations": [conts[r] for r in idx],
                                         "config": {**cfg.to_dict(), "vectors": str(overrides["vectors"])}
                                         if method == "steer" else None,
                                         "batch_rows": len(chunk), "seconds_batch": dt,
                                         "cpu_seconds_batch": dc}) + "\n")
            print(f"[{args.suite}/{name} vllm] {i + len(chunk)}/{len(rows)} rows, {time.time() - t_start:.0f}s wall",
                  flush=True)


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["toxicity", "gender"], required=True)
    ap.add_argument("--methods", default="plain,t,u", help="comma-separated: plain, t, b, u, steer")
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--batch-rows", type=int, default=48, help="rows (prompt x sample) per generate call")
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts (0 = all)")
    ap.add_argument("--every", type=int, default=1, help="only every k-th prompt (quick subsets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="UDDIAConfig (SteerConfig for steer) override")
    ap.add_argument("--tag", default="", help="suffix of the output files (method-TAG)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.backend == "vllm":
        bad = sorted(set(methods) - {"plain", "steer"})
        if bad:
            ap.error(f"--backend vllm runs the methods plain and steer only (UDDIA itself needs gradients), not {bad}")
        return run_vllm(args, methods)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    import debias_lm as dl
    from debias_lm.hf.base import encode_left_padded

    prompts = load_prompts(args.suite)[:: args.every]
    if args.limit:
        prompts = prompts[: args.limit]
    model, tok = dl.load_default_model(dtype="float32")
    overrides = parse_overrides(args.set)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for method in methods:
        name, path, todo = _todo(args, method, prompts)
        cfg = runner = None
        t_wrap = time.process_time()
        if method == "steer":  # activation steering (docs/steering.md): --set vectors=... --set scale=...
            cfg = dl.SteerConfig(**overrides)
            runner = dl.wrap(model, tok, cfg)
        elif method != "plain":
            cfg = dl.UDDIAConfig(variant=method, **overrides)
            runner = dl.wrap(model, tok, cfg)
        wrap_cpu = time.process_time() - t_wrap
        rows = [(p, j) for p in todo for j in range(args.n_samples)]
        per_batch = max(args.n_samples, args.batch_rows // args.n_samples * args.n_samples)  # whole prompts
        t_start = time.time()
        for i in range(0, len(rows), per_batch):
            chunk = rows[i : i + per_batch]
            enc = encode_left_padded(tok, [p["prompt"] for p, _ in chunk])
            torch.manual_seed(args.seed + prompts.index(chunk[0][0]) * args.n_samples)
            gen = {"do_sample": True, "top_p": 0.9, "temperature": 1.0, "top_k": 0,
                   "max_new_tokens": args.max_new_tokens, "pad_token_id": tok.pad_token_id}
            t0, c0 = time.time(), time.process_time()
            if runner is None:
                with torch.no_grad():
                    seqs = model.generate(**enc, **gen)
                stats = None
            else:
                seqs = runner.generate(**enc, **gen)
                stats = getattr(runner.impl, "last_stats", None)  # UDDIA's counters (steer has none)
            dt, dc = time.time() - t0, time.process_time() - c0
            width = enc["input_ids"].shape[1]
            conts = [tok.decode(r[width:], skip_special_tokens=True) for r in seqs]
            with path.open("a", encoding="utf-8") as fh:
                for p, idx in _by_prompt(chunk):
                    rec = {**p, "method": method, "continuations": [conts[r] for r in idx],
                           "config": cfg.to_dict() if cfg else None, "batch_rows": len(chunk),
                           "seconds_batch": dt, "cpu_seconds_batch": dc, "wrap_cpu_seconds": wrap_cpu}
                    if stats is not None:
                        rec["attempts"] = [stats["attempt_log"][r] for r in idx]
                        rec["batch_stats"] = {k: stats[k] for k in (
                            "forward", "backward", "rows_forward", "rows_backward", "tokens", "row_tokens",
                            "tuned_row_tokens", "gated_row_tokens", "kept_tokens", "attempts",
                            "kl_sum", "kl_max", "kl_shrunk", "kl_dropped", "trigger_rate", "mean_kl_tuned",
                            "redo_threshold")}
                    fh.write(json.dumps(rec) + "\n")
            print(f"[{args.suite}/{name}] {i + len(chunk)}/{len(rows)} rows, {time.time() - t_start:.0f}s wall, "
                  f"batch cpu {dc:.0f}s" + (f", trigger {stats['trigger_rate']:.2f}, KL {stats['mean_kl_tuned']:.2f}, "
                                            f"passes {stats['attempts']}" if stats else ""), flush=True)


if __name__ == "__main__":
    main()
