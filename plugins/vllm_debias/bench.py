"""Throughput of the plugin, side by side in one run, and the cost of ``ContrastLogitsProcessor.apply`` alone.

    python -m vllm_debias.bench                                  # embedded SmolLM2-135M-Instruct, bf16, batch 8,32
    python -m vllm_debias.bench --batch 8,32 --max-tokens 64 --repeats 5 --out bench.json
    python -m vllm_debias.bench --apply-only --rows 8,64,256      # apply() microbenchmark only (no engine)
    python -m vllm_debias.bench --apply-only --before ../old-checkout   # ... next to an earlier version
    python -m vllm_debias.bench --steer --no-apply                # steering: plain / loaded / all / half steered

Engine part: two engines in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), one without the processor and
one with it; per batch size the configurations run interleaved round by round (after a warm-up round), so
background load hits them alike; medians over rounds. Configurations:

* ``no_processor``: plain requests, engine without the processor (the baseline);
* ``processor_loaded_plain``: plain requests, processor loaded and unused;
* ``calibration_mixed``: half the batch opts in to calibration;
* ``calibration_all``: every request opts in to calibration (logit offsets only);
* ``debias_sampling_greedy`` / ``debias_sampling_t1``: every prompt is a twin-row pair (two engine rows),
  greedy / temperature 1; throughput counts the main rows' tokens, i.e. tokens per *pair*;
* ``pairs_as_plain``: the same main and counterfactual prompts sent as independent plain requests to the engine
  without the processor, tokens counted per pair (half the tokens): the ceiling any twin-row implementation can
  reach on this machine, since a pair is two engine rows whatever the processor costs.

Each configuration reports wall tokens/s and tokens per CPU-second with its ratio to ``no_processor``.

Steering part (``--steer``): an engine without the plugin and one with steering vectors (``--steer-vectors FILE``,
default: a random direction of norm 8 at every second layer, written for the model), configurations
``no_plugin``, ``steer_loaded_unused`` (plain requests), ``steer_all`` (every request steered, scale 4) and
``steer_half`` (every second request), interleaved round by round like the engine part. ``--compile`` runs both
engines compiled (vLLM's CPU default: the hooks are traced into the graph) instead of eager. Goals:
loaded-and-unused >= 0.98x and steered >= 0.9x ``no_plugin`` tokens/s.

``apply()`` part: the processor alone on ``rows`` rows of 49,152-wide logits (SmolLM2's vocabulary), every row
in a twin-row pair (greedy; T = 1 unseeded, seeded, and with top-p 0.95, which sorts the vocabulary), plus a
plain batch; microseconds per
``update_state`` + ``apply`` step, median over steps. ``--before CHECKOUT`` runs the same on the plugin of another
checkout (e.g. a worktree of an earlier commit) in the same process, for before/after numbers (it only uses
``request_args`` and the V1 interface, which every version has).
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
CONFIGS = ("no_processor", "processor_loaded_plain", "calibration_mixed", "calibration_all",
           "debias_sampling_greedy", "debias_sampling_t1", "pairs_as_plain")


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return vals


def engine_bench(model: str, dtype: str, batches: list[int], max_tokens: int, repeats: int) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    import debias_lm as dl
    from debias_lm.methods.debias_sampling.vllm import counterfactual_texts

    from . import LOGITS_PROCESSORS, generate, request_args
    from .processors import without_installed

    kw = dict(model=model, dtype=dtype, max_model_len=1024, enforce_eager=True, seed=0)
    with without_installed():  # plain: no vllm_debias processor, even where the entry points are installed
        plain_llm = LLM(**kw)
    plug_llm = LLM(logits_processors=list(LOGITS_PROCESSORS), **kw)
    tok = plug_llm.get_tokenizer()
    n = max_tokens
    sp = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0)
    cal = dl.CalibrationConfig(labels=("yes", "no"), prior="given", prior_probs=(0.7, 0.3))
    sp_cal = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0,
                            extra_args=request_args(cal, tok))
    sp_t1 = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=1.0)
    ds = dl.DebiasSamplingConfig(alpha=1.0, beta=0.1, counterfactual_swap="gender")
    out: dict = {}
    for b in batches:
        prompts = (PROMPTS * (b // len(PROMPTS) + 1))[:b]
        gendered = [p + " he" for p in prompts]
        both = gendered + counterfactual_texts(ds, gendered)

        def run(name, b=b, prompts=prompts, gendered=gendered, both=both):
            if name == "pairs_as_plain":  # the two rows of every pair, no processor: tokens per pair
                outs = plain_llm.generate(both, sp, use_tqdm=False)
                return sum(len(o.outputs[0].token_ids) for o in outs) // 2
            if name == "no_processor":
                outs = plain_llm.generate(prompts, sp, use_tqdm=False)
            elif name == "processor_loaded_plain":
                outs = plug_llm.generate(prompts, sp, use_tqdm=False)
            elif name == "calibration_mixed":
                outs = plug_llm.generate(prompts, [sp_cal if i % 2 else sp for i in range(b)], use_tqdm=False)
            elif name == "calibration_all":
                outs = plug_llm.generate(prompts, sp_cal, use_tqdm=False)
            else:
                outs = generate(plug_llm, gendered, ds, sp if name.endswith("greedy") else sp_t1, fallback="raise")
            return sum(len(o.outputs[0].token_ids) for o in outs)

        out[str(b)] = side_by_side(CONFIGS, run, repeats,
                                   f"batch {b} ({n} new tokens each; debias sampling: tokens per pair)")
    return out


def side_by_side(configs: tuple[str, ...], run, repeats: int, title: str) -> dict:
    """``run(name) -> generated tokens`` for every configuration, timed by the project's one benchmark loop
    (``debias_lm.utils.timing.interleaved_rounds``: a warm-up round, then ``repeats`` rounds interleaved so
    background load hits them alike); medians of tokens/s and tokens per CPU-second, ratios to the first one."""
    from debias_lm.utils.timing import interleaved_rounds, ratios

    base = configs[0]
    timing = interleaved_rounds({name: (lambda name=name: run(name)) for name in configs}, repeats, warmup=True)
    wall = {k: [n / t for n, t in zip(v.results, v.wall)] for k, v in timing.items()}
    cpu = {k: [n / t for n, t in zip(v.results, v.cpu)] for k, v in timing.items()}
    med_w = {k: statistics.median(v) for k, v in wall.items()}
    med_c = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"\n{title}")
    print(f"{'configuration':<26}{'wall tok/s (ratio)':>24}{'tok per CPU-s (ratio)':>26}")
    for k in configs:
        print(f"{k:<26}{med_w[k]:>14.1f} ({med_w[k] / med_w[base]:.3f})"
              f"{med_c[k]:>16.1f} ({med_c[k] / med_c[base]:.3f})")
    return {"wall_tok_per_s_median": med_w, "cpu_tok_per_s_median": med_c,
            "wall_ratio": ratios(med_w, base), "cpu_ratio": ratios(med_c, base),
            "wall_tok_per_s_all": wall, "cpu_tok_per_s_all": cpu}


STEER_CONFIGS = ("no_plugin", "steer_loaded_unused", "steer_all", "steer_half")


def _bench_vectors(model: str, path: str) -> str:
    """A random-direction vectors file for ``model`` (norm 8 at every second layer), for timing only."""
    from debias_lm.models import load_model
    from debias_lm.testing.steer import random_directions, write_steer_file

    hf, _ = load_model(model, dtype="float32")
    hidden, depth = int(hf.config.hidden_size), int(hf.config.num_hidden_layers)
    out = write_steer_file(path, random_directions(hidden, range(0, depth, 2), norm=8.0), model=hf)
    del hf
    return out


def steer_bench(model: str, dtype: str, batches: list[int], max_tokens: int, repeats: int, *,
                vectors: str | None = None, compiled: bool = False) -> dict:
    """Tokens/s of plain vs steering loaded-and-unused vs all / half requests steered (see the module doc)."""
    import tempfile

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    import debias_lm as dl

    from .offline import generate as debias_generate
    from .offline import shutdown
    from .processors import without_installed
    from .steer import register, steer_engine_args

    register()  # what the installed entry point does; harmless when it already ran
    vectors = vectors or _bench_vectors(model, os.path.join(tempfile.mkdtemp(prefix="vsteer-bench-"),
                                                            "bench.safetensors"))
    kw = dict(model=model, dtype=dtype, max_model_len=1024, enforce_eager=not compiled, seed=0)
    with without_installed():
        plain_llm = LLM(**kw)
    steer_llm = LLM(**kw, **steer_engine_args({"bench": vectors}))
    n = max_tokens
    sp = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0)
    cfg = dl.SteerConfig(vectors="bench", scale=4.0)
    from debias_lm.methods.steer.vllm import cache_salt

    from .offline import steer_request

    extra, setting = steer_request(steer_llm, cfg)
    salt = cache_salt(setting)
    sp_steer = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0, extra_args=extra)
    out: dict = {}
    for b in batches:
        prompts = (PROMPTS * (b // len(PROMPTS) + 1))[:b]

        def run(name, b=b, prompts=prompts):
            if name == "no_plugin":
                outs = plain_llm.generate(prompts, sp, use_tqdm=False)
            elif name == "steer_loaded_unused":
                outs = steer_llm.generate(prompts, sp, use_tqdm=False)
            elif name == "steer_all":
                outs = debias_generate(steer_llm, prompts, cfg, sp)
            else:  # every second request steered (salted like generate() does it)
                outs = steer_llm.generate([{"prompt": p, "cache_salt": salt} if i % 2 else {"prompt": p}
                                           for i, p in enumerate(prompts)],
                                          [sp_steer if i % 2 else sp for i in range(b)], use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)

        out[str(b)] = side_by_side(STEER_CONFIGS, run, repeats, f"steering, batch {b} ({n} new tokens each, "
                                   f"{'compiled' if compiled else 'eager'})")
    for llm in (plain_llm, steer_llm):
        shutdown(llm)
    return out


def load_before(root: str):
    """The ``vllm_debias`` package of another checkout (``root/plugins/vllm_debias``), imported as
    ``vllm_debias_before`` so both versions run side by side in this process, with that checkout's
    ``debias_lm.core.contrast.contrast`` (the rest of ``debias_lm`` is this one's)."""
    import importlib
    import importlib.util
    import sys

    path = os.path.join(root, "plugins", "vllm_debias", "__init__.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--before {root}: no plugins/vllm_debias there")
    spec = importlib.util.spec_from_file_location("vllm_debias_before", path,
                                                  submodule_search_locations=[os.path.dirname(path)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vllm_debias_before"] = mod
    spec.loader.exec_module(mod)
    core = os.path.join(root, "debias_lm", "core", "contrast.py")
    if os.path.isfile(core):  # that checkout's contrast too, so "before" means the whole old path
        cspec = importlib.util.spec_from_file_location("debias_lm_before_contrast", core)
        cmod = importlib.util.module_from_spec(cspec)
        cspec.loader.exec_module(cmod)
        proc = importlib.import_module("vllm_debias_before.processor")
        proc.contrast = cmod.contrast
    return mod


def apply_bench(rows_list: list[int], vocab: int = 49152, steps: int = 30, device: str = "cpu",
                pkg=None) -> dict:
    """Microseconds per ``update_state(None)`` + ``apply`` step of the processor on its own (``pkg``: the
    ``vllm_debias`` package to measure; default this one)."""
    from types import SimpleNamespace

    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    import debias_lm as dl

    if pkg is None:
        from .args import request_args
        from .processors.contrast import ContrastLogitsProcessor as Processor
    else:
        import importlib

        try:
            Processor = importlib.import_module(pkg.__name__ + ".processors.contrast").ContrastLogitsProcessor
        except ImportError:  # a tree from before the split by behaviour (its one class did the twin rows)
            Processor = importlib.import_module(pkg.__name__ + ".processor").DebiasLogitsProcessor
        request_args = importlib.import_module(pkg.__name__ + ".args").request_args

    dev = torch.device(device)

    def engine_config():  # one per processor: a second processor on one engine's config is inert (dedupe)
        return SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: vocab, seed=0),
                               scheduler_config=SimpleNamespace(max_num_seqs=max(rows_list)))

    ds = dl.DebiasSamplingConfig(alpha=1.0, beta=0.1, counterfactual_prefix="x")
    variants = {
        "plain": lambda i: SamplingParams(temperature=0.0),
        "pairs_greedy": lambda i: SamplingParams(temperature=0.0),
        "pairs_t1": lambda i: SamplingParams(temperature=1.0),
        "pairs_t1_seeded": lambda i: SamplingParams(temperature=1.0, seed=1000 + i // 2),
        "pairs_t1_top_p": lambda i: SamplingParams(temperature=1.0, top_p=0.95),
    }
    gen = torch.Generator(device=dev).manual_seed(0)
    out: dict = {}
    for rows in rows_list:
        src = torch.randn(rows, vocab, generator=gen, device=dev) * 3
        for name, make in variants.items():
            proc = Processor(engine_config(), dev, False)
            outs = [[] for _ in range(rows)]
            added = []
            for i in range(rows):
                sp = make(i)
                if name != "plain":
                    sp.extra_args = request_args(ds, pair=f"p{i // 2}", role="main" if i % 2 == 0 else "aux")
                added.append((i, sp, [1, 2, 3], outs[i]))
            proc.update_state(BatchUpdate(batch_size=rows, removed=[], added=added, moved=[]))
            times = []
            for step in range(steps + 3):
                logits = src.clone()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                proc.update_state(None)
                proc.apply(logits)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if step >= 3:
                    times.append((time.perf_counter() - t) * 1e6)
                for o in outs:  # every row emitted one token: pairs stay in step
                    o.append(0)
            out.setdefault(str(rows), {})[name] = statistics.median(times)
        label = "" if pkg is None else f" [{pkg.__name__}]"
        print(f"apply() on {rows} rows x {vocab}{label}: "
              + ", ".join(f"{k} {v:,.0f} us" for k, v in out[str(rows)].items()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_debias.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model dir/id (default: the embedded SmolLM2-135M)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=_ints, default=[8, 32], help="batch sizes, comma-separated (8,32)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=_ints, default=[8, 64, 256], help="apply() microbenchmark rows (8,64,256)")
    ap.add_argument("--apply-steps", type=int, default=30)
    ap.add_argument("--apply-only", action="store_true", help="only the apply() microbenchmark (no engine)")
    ap.add_argument("--no-apply", action="store_true", help="skip the apply() microbenchmark")
    ap.add_argument("--before", default=None, metavar="CHECKOUT",
                    help="also run the apply() microbenchmark on the plugin of this other checkout (e.g. an "
                         "earlier commit's worktree), side by side")
    ap.add_argument("--steer", action="store_true",
                    help="run the steering benchmark (no_plugin / steer_loaded_unused / steer_all / steer_half) "
                         "instead of the logits-processor one")
    ap.add_argument("--steer-vectors", default=None, metavar="FILE",
                    help="steering vectors for --steer (default: random directions written for the model)")
    ap.add_argument("--compile", action="store_true", help="--steer: compiled engines (vLLM's CPU default)")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    if args.max_tokens < 1 or args.repeats < 1 or args.apply_steps < 1:
        ap.error("--max-tokens, --repeats and --apply-steps must be >= 1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict = {}
    if args.steer:
        from .serve import resolve_model

        model = resolve_model(args.model)
        report.update(model=model, dtype=args.dtype, max_tokens=args.max_tokens, repeats=args.repeats,
                      compiled=args.compile,
                      steer=steer_bench(model, args.dtype, args.batch, args.max_tokens, args.repeats,
                                        vectors=args.steer_vectors, compiled=args.compile))
    elif not args.apply_only:
        from .serve import resolve_model

        model = resolve_model(args.model)
        report.update(model=model, dtype=args.dtype, max_tokens=args.max_tokens, repeats=args.repeats,
                      batches=engine_bench(model, args.dtype, args.batch, args.max_tokens, args.repeats))
    if not args.no_apply:
        report["apply_us_per_step"] = apply_bench(args.rows, steps=args.apply_steps)
        if args.before:
            report["apply_us_per_step_before"] = apply_bench(args.rows, steps=args.apply_steps,
                                                             pkg=load_before(args.before))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
