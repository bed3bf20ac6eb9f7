"""Decoding overhead of every method against plain decoding, measured side by side in one run.

For each backend and batch size, every method and plain decoding generate the same prompts with a fixed
output length (greedy, ``min_new_tokens = max_new_tokens``, EOS ignored); the runs are interleaved round by
round (``repeats`` rounds, median time) so background load hits all of them alike. Reported per method:
tokens/s, the throughput ratio against plain decoding, forward- and backward-equivalents per generated token
(HF: counted through the decoder layers, ``debias_lm.metrics.overhead.LayerCounter``; vLLM: not observable,
reported as None) and peak memory above the start of the run (HF on CPU: resident set size; CUDA: allocated).
Each method's wrapper is built once and warmed up first, so state it builds once per wrapper (NBLS: the KV cache
of its grounding prefix) is not in the timed runs: the numbers are steady-state serving cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserInputError
from ..utils.timing import interleaved_rounds

BENCH_PROMPTS = (
    "The nurse said that she", "My brother told me that he", "The woman at the bank explained that",
    "His father wrote a letter to", "The actress walked into the room and", "The man who fixed my car",
    "Her grandmother always said that", "The boy in the park asked his mother",
)


def _prompts(batch: int) -> list[str]:
    return [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(batch)]


def check_bench_args(methods: Sequence[str], batches: Sequence[int], backends: Sequence[str], new_tokens: int,
                     repeats: int) -> None:
    from .settings import generates_text, method_spec, text_methods

    if not methods:
        raise UserInputError("--method needs at least one method to compare with plain decoding, e.g. --method nbls")
    if not backends:
        raise UserInputError("--backend needs hf and/or vllm")
    for what, values in (("--method", methods), ("--backend", backends), ("--batch", batches)):
        dup = sorted({str(v) for v in values if list(values).count(v) > 1})
        if dup:
            raise UserInputError(f"{what} lists {', '.join(dup)} more than once")
    if not batches or any(b < 1 for b in batches):
        raise UserInputError("--batch needs batch sizes >= 1, e.g. --batch 1,8")
    if new_tokens < 1 or repeats < 1:
        raise UserInputError("--max-new-tokens and --repeats must be >= 1")
    for b in backends:
        if b not in ("hf", "vllm"):
            raise UserInputError(f"--backend {b!r} is invalid: expected hf and/or vllm")
    specs = {m: method_spec(m) for m in methods}  # unknown names: the registry's error lists the known ones
    for m, spec in specs.items():
        if spec.kind != "none" and not generates_text(spec):
            raise UserInputError(f"method {m!r} cannot be benchmarked on a text model (use none, "
                                 f"{', '.join(text_methods())})")
    if "vllm" in backends and "hf" not in backends and all(
            spec.kind == "none" or not spec.supports("vllm") for spec in specs.values()):
        raise UserInputError("no method to benchmark on vLLM: " + ", ".join(methods) + " run on HF only")


def _names(methods: Sequence[str], backend: str) -> list[str]:
    """``none`` first (the baseline every ratio is against), then the methods that run on ``backend``."""
    from .settings import is_baseline, method_spec

    return ["none"] + [m for m in methods if not is_baseline(m) and method_spec(m).supports(backend)]


def measure_hf(model, tokenizer, methods: Sequence[str], batches: Sequence[int], *, new_tokens: int = 32,
               repeats: int = 3, overrides: dict | None = None, progress: bool = True) -> list[dict]:
    """One row per (batch, method), "none" included, with tokens/s, ratio, forward/backward-equivalents, memory."""
    import torch

    from ..metrics.overhead import LayerCounter, PeakMemory, throughput_ratio
    from .backends import hf_runner
    from .settings import method_config

    overrides = overrides or {}
    names = _names(methods, "hf")
    runners = {m: hf_runner(model, tokenizer, method_config(m, overrides.get(m))) for m in names}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    device = str(next(model.parameters()).device)
    rows = []
    for b in batches:
        prompts = _prompts(b)
        for m in names:
            runners[m].impl.check_prompts(prompts)

        def run(m, prompts=prompts, **extra):
            def call():
                torch.manual_seed(0)
                return runners[m].generate_text(prompts, chat=False, **{**kw, **extra})
            return call

        warm = {m: run(m, max_new_tokens=2, min_new_tokens=2) for m in names}  # kernels, lazily built state
        timing = interleaved_rounds({m: run(m) for m in names}, repeats, warmup=warm, progress=progress,
                                    desc=f"bench hf batch {b}")
        tps = {m: b * new_tokens / timing[m].wall_median for m in names}
        for m in names:
            with LayerCounter(model) as counter:
                runners[m].generate_text(prompts, chat=False, **kw)
            with PeakMemory(device) as mem:
                runners[m].generate_text(prompts, chat=False, **kw)
            rows.append({"backend": "hf", "batch": b, "method": m, "new_tokens": new_tokens, "repeats": repeats,
                         "seconds_median": timing[m].wall_median, "tokens_per_s": tps[m],
                         "ratio_vs_plain": throughput_ratio(tps[m], tps["none"]),
                         "forward_equiv_per_token": counter.forward_equiv(b, new_tokens),
                         "backward_equiv_per_token": counter.backward_equiv(b, new_tokens),
                         "peak_memory_mb": mem.peak / 2**20, "memory_kind": mem.kind,
                         "torch_threads": torch.get_num_threads()})
    return rows


def measure_vllm(model_path: str, methods: Sequence[str], batches: Sequence[int], *, new_tokens: int = 32,
                 repeats: int = 3, dtype: str = "bfloat16", overrides: dict | None = None,
                 progress: bool = True) -> list[dict]:
    """The same measurement on an offline vLLM engine with the vllm_debias plugin (HF-only methods skipped)."""
    from vllm import SamplingParams

    from ..metrics.overhead import throughput_ratio
    from .backends import vllm_engine, vllm_generate
    from .settings import method_config

    overrides = overrides or {}
    names = _names(methods, "vllm")
    configs = {m: method_config(m, overrides.get(m)) for m in names}
    llm = vllm_engine(model_path, dtype=dtype, max_model_len=2048)
    sp = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0)
    rows = []
    for b in batches:
        prompts = _prompts(b)
        # warm-up at the measured length (the engine compiles / captures per shape)
        runs = {m: (lambda m=m, p=prompts, e=llm: vllm_generate(e, p, configs[m], sp)) for m in names}
        timing = interleaved_rounds(runs, repeats, warmup=True, progress=progress, desc=f"bench vllm batch {b}")
        tps = {m: b * new_tokens / timing[m].wall_median for m in names}
        for m in names:
            rows.append({"backend": "vllm", "batch": b, "method": m, "new_tokens": new_tokens, "repeats": repeats,
                         "seconds_median": timing[m].wall_median, "tokens_per_s": tps[m],
                         "ratio_vs_plain": throughput_ratio(tps[m], tps["none"]),
                         "forward_equiv_per_token": None, "backward_equiv_per_token": None,
                         "peak_memory_mb": None, "memory_kind": "not measured (vLLM preallocates its KV cache)"})
    del llm
    return rows


def markdown(rows: Sequence[dict]) -> str:
    head = ("| backend | batch | method | tok/s | ratio vs plain | fwd-equiv / token | bwd-equiv / token "
            "| peak memory (MB) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def f(v, nd=2):
        return "—" if v is None else f"{v:.{nd}f}"

    for r in rows:
        lines.append(f"| {r['backend']} | {r['batch']} | {r['method']} | {f(r['tokens_per_s'], 1)} "
                     f"| {f(r['ratio_vs_plain'])} | {f(r['forward_equiv_per_token'])} "
                     f"| {f(r['backward_equiv_per_token'])} | {f(r['peak_memory_mb'], 1)} |")
    return "\n".join(lines)
