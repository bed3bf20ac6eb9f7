"""vllm_debias without an engine: request-arg validation, vLLM's own loader checks for both interfaces, the
V1 path driven like vLLM's persistent batch drives it (``BatchUpdate``s with adds, removals, one-way moves,
preemption and resumption), the Model Runner V2 path driven with the real ``LogitsProcRequestState`` /
``LogitsContext`` dataclasses over host buffers standing in for vLLM's UVA tensors, the batched sampler, the
host-sync count of ``apply``, and the lockstep driver against the twin rows.

References are independent of the processor: a cache-free loop over a deterministic fake model that applies
:func:`debias_lm.core.contrast.contrast` pair by pair, closed-form probabilities for the sampler, and a
schedule-level definition of "every step of the pair was contrasted"."""

from __future__ import annotations

import math
import random
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState  # noqa: E402
from vllm_debias import LOGITS_PROCESSORS, CalibrationLogitsProcessor, ContrastLogitsProcessor, request_args  # noqa: E402
from vllm_debias.args import DebiasArgsError, parse  # noqa: E402

import debias_lm as dl  # noqa: E402
from debias_lm.core.contrast import calibration_offsets, contrast  # noqa: E402
from debias_lm.core.sampling import pick_tokens, seeded_uniform  # noqa: E402

VOCAB = 40
CLASSES = (CalibrationLogitsProcessor, ContrastLogitsProcessor)


class Engine:
    """What vLLM does with the classes of ``LOGITS_PROCESSORS`` in one engine: one instance of each, built with
    the engine's config, each given every batch update / request and applied in turn (``LogitsProcessors``)."""

    def __init__(self, vllm_config, *rest, classes=CLASSES):
        self.procs = [cls(vllm_config, *rest) for cls in classes]

    @staticmethod
    def validate_params(sp):  # the frontend: every loaded class's validate_params
        for cls in CLASSES:
            cls.validate_params(sp)

    def update_state(self, batch_update):
        for p in self.procs:
            p.update_state(batch_update)

    def add_request(self, slot, sp):
        return any([p.add_request(slot, sp) for p in self.procs])

    def apply_staged_writes(self):
        for p in self.procs:
            p.apply_staged_writes()

    def apply(self, logits, ctx=None):
        for p in self.procs:
            logits = p.apply(logits, ctx) if ctx is not None else p.apply(logits)
        return logits

    @property
    def _reqs(self):
        return {k: v for p in self.procs for k, v in p._reqs.items()}

    @property
    def _active(self):
        return np.logical_or.reduce([p._active for p in self.procs])

    @property
    def _pt(self):
        return self.procs[-1]._pt


def _sp(extra=None, **kw):
    kw.setdefault("temperature", 0.0)
    return SamplingParams(extra_args=extra, **kw)


def _cal_args(prior=(0.9, 0.1), ids=((3, 4), (7,))):
    cfg = dl.CalibrationConfig(labels=("yes", "no"), prior="given", prior_probs=prior)
    d = {"debias_method": "calibration", "debias_labels": list(cfg.labels), "debias_prior": "given",
         "debias_prior_probs": list(prior)}
    d["debias_label_ids"] = [i for g in ids for i in g]
    d["debias_label_sizes"] = [len(g) for g in ids]
    return d


def _pair_args(pair, role, alpha=1.0, beta=0.1):
    return request_args(dl.DebiasSamplingConfig(alpha=alpha, beta=beta, counterfactual_prefix="x"), pair=pair, role=role)


def _v1_processor(classes=CLASSES):
    return Engine(SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB, seed=0)),
                  torch.device("cpu"), False, classes=classes)


# -- validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, needle", [
    ({"debias_method": "nope"}, "unknown method 'nope'"),
    ({"debias_method": "uddia"}, "needs gradients"),
    ({"debias_method": "debias_sampling", "debias_alpha": -1.0, "debias_pair": "p", "debias_role": "main"},
     "alpha=-1.0 is invalid"),
    ({"debias_method": "debias_sampling", "debias_alpha": 1e38, "debias_pair": "p", "debias_role": "main"},
     "expected a number in [0, 100]"),
    ({"debias_method": "debias_sampling"}, "needs a pair id"),
    ({"debias_method": "debias_sampling", "debias_pair": "p", "debias_role": "side"}, "'main' or 'aux'"),
    ({"debias_method": "nbls"}, "prompt transform"),
    ({"debias_method": "calibration", "debias_prior": "given", "debias_prior_probs": [0.5, 0.5]}, "debias_label_ids"),
    ({"debias_method": "calibration"}, "prior='given'"),
    ({**_cal_args(), "debias_prior_probs": [0.0, 1.0], "debias_eps": 0.0}, "needs eps > 0"),
    ({**_cal_args(), "debias_prior_probs": [1e308, 1e308]}, "finite"),
    ({"debias_method": "debias_sampling", "debias_pair": "p", "debias_role": "main", "debias_alfa": 2},
     "unknown key 'debias_alfa'"),
    ({"debias_pair": "p"}, "without 'debias_method'"),
    ({**_pair_args("p", "main"), "debias_temperature": -1.0}, "debias_temperature=-1.0 is invalid"),
    ({**_pair_args("p", "main"), "debias_top_p": 0.0}, "debias_top_p=0 is invalid"),
    ({**_pair_args("p", "main"), "debias_seed": "x"}, "debias_seed='x' is invalid"),
    ({**_cal_args(), "debias_temperature": 1.0}, "do not apply to method 'calibration'"),
    # the generic key of earlier versions: refused with the way forward when it names one of our methods
    (dl.DebiasSamplingConfig().to_dict(), "opt-in key is 'debias_method'"),
    ({"method": "calibration", "labels": ["yes", "no"]}, "opt-in key is 'debias_method'"),
])
def test_validate_params_rejects_with_our_message(extra, needle):
    with pytest.raises(ValueError) as e:
        Engine.validate_params(_sp(extra))
    assert needle in str(e.value)
    assert str(e.value).startswith("vllm_debias: ")
    assert "math domain" not in str(e.value)


def test_validate_params_accepts_plain_and_valid():
    for extra in (None, {}, {"other_plugin": 1}, {"method": "beam"}, {"debias_method": "identity"}, _cal_args(),
                  _pair_args("p", "aux"), {**_pair_args(3, "main"), "kv_transfer_params": {"x": 1}},
                  {**_pair_args("p", "main"), "method": "someone_elses"}):
        Engine.validate_params(_sp(extra))
    assert parse({"other_plugin": 1}) is None and parse({"method": "beam"}) is None
    with pytest.raises(DebiasArgsError, match="penalt"):
        Engine.validate_params(_sp(_pair_args("p", "main"), repetition_penalty=1.3))


def test_booleans_survive_the_server_schema():
    """vLLM's vllm_xargs schema turns JSON true into 1: a config boolean sent that way is accepted."""
    for v in (1, 0, True):
        spec = parse({**_pair_args("p", "main"), "debias_fused": v})
        assert spec.method == "debias_sampling"
    with pytest.raises(DebiasArgsError, match="fused"):
        parse({**_pair_args("p", "main"), "debias_fused": 2})


def test_request_args_sends_only_what_the_processor_reads(tiny_llama):
    _, tok = tiny_llama
    ds = request_args(dl.DebiasSamplingConfig(alpha=2.0, fused=False, counterfactual_swap="gender"), pair=1, role="aux")
    assert ds == {"debias_method": "debias_sampling", "debias_alpha": 2.0, "debias_beta": 0.1, "debias_pair": 1,
                  "debias_role": "aux"}
    assert all(k.startswith("debias_") for k in ds)
    cfg = dl.CalibrationConfig(labels=("he", "she"), prior="given", prior_probs=(0.7, 0.3))
    args = request_args(cfg, tok)
    from debias_lm.labels import label_token_ids

    groups = label_token_ids(tok, ["he", "she"])
    assert args["debias_label_ids"] == [i for g in groups for i in g]
    assert all(k.startswith("debias_") for k in args)
    spec = parse(args)
    off = calibration_offsets(torch.tensor([0.7, 0.3], dtype=torch.float64), cfg.eps)
    want = [float(off[j]) for j, g in enumerate(groups) for _ in g]
    assert spec.label_offsets == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="tokenizer"):
        request_args(cfg)
    with pytest.raises(ValueError, match="needs gradients"):
        request_args("uddia")


def test_label_ids_beyond_the_vocabulary_are_refused(monkeypatch):
    bad = _cal_args(ids=((3, 4), (VOCAB + 5,)))
    monkeypatch.setenv("VLLM_DEBIAS_VOCAB_SIZE", str(VOCAB))
    with pytest.raises(ValueError, match=r"beyond the model's vocabulary \(40 tokens\)"):
        Engine.validate_params(_sp(bad))
    Engine.validate_params(_sp(_cal_args()))
    # the worker checks too, and never crashes: the request is left unmodified with an error in the log
    proc = _v1_processor()
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, _sp(bad), [1], [])], moved=[]))
    assert not proc._reqs


# -- vLLM's own loader checks -------------------------------------------------------------------------------
def test_both_vllm_loaders_accept_the_classes():
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1
    from vllm.v1.sample.logits_processor import (
        _load_custom_logitsprocs,
        validate_logits_processors_parameters,
    )
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs

    fqcns = list(LOGITS_PROCESSORS)
    for cls in CLASSES:
        assert issubclass(cls, V1) and issubclass(cls, V2)
        assert cls in _load_custom_logitsprocs(fqcns)  # V1 loader (+ installed entry points)
        assert cls in _load_v2_logitsprocs(fqcns)  # MRV2 loader: raises for V1-only classes
        assert cls in _load_v2_logitsprocs([cls])
    from vllm.exceptions import VLLMValidationError

    v2_validate = build_custom_logits_processors_params_validator(fqcns)
    for validate in (v2_validate, lambda sp: validate_logits_processors_parameters(fqcns, sp)):
        validate(_sp(None))
        validate(_sp(_cal_args()))
        with pytest.raises(VLLMValidationError, match="needs gradients"):
            validate(_sp({"debias_method": "uddia"}))


def test_entry_point_processors_are_recognised(monkeypatch):
    """Processors installed under vLLM's ``vllm.logits_processors`` entry point (read by vLLM's own loader)
    count as loaded, each for its own behaviour; without them (or explicit ones) generate refuses."""
    import importlib.metadata as md

    from vllm_debias import offline

    llm = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(
        model_config=SimpleNamespace(logits_processors=None))), get_tokenizer=lambda: None)
    monkeypatch.setattr(md, "entry_points", lambda group=None: [])
    assert not offline._has_processor(llm, "label_bias") and not offline._has_processor(llm, "pair")
    with pytest.raises(ValueError, match="serving 'label_bias', which this engine does not load"):
        offline.generate(llm, ["x"], dl.CalibrationConfig(labels=("a", "b"), prior="given", prior_probs=(0.5, 0.5)))
    ep = md.EntryPoint(name="debias_lm_contrast", value=LOGITS_PROCESSORS[1], group="vllm.logits_processors")
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ep] if group == "vllm.logits_processors" else [])
    assert offline._has_processor(llm, "pair") and not offline._has_processor(llm, "label_bias")
    llm.llm_engine.vllm_config.model_config.logits_processors = [LOGITS_PROCESSORS[0]]  # explicit, as a string
    assert offline._has_processor(llm, "label_bias")
    llm.llm_engine.vllm_config.model_config.logits_processors = [CalibrationLogitsProcessor]  # or the class
    assert offline._has_processor(llm, "label_bias")
    # the V1 runner loads no custom processor under speculative decoding (entry points skipped silently)
    llm.llm_engine.vllm_config.speculative_config = object()
    assert not offline._has_processor(llm, "label_bias") and not offline._has_processor(llm, "pair")
    llm.llm_engine.vllm_config.use_v2_model_runner = True  # Model Runner V2 loads them
    assert offline._has_processor(llm, "label_bias")


def test_pyproject_declares_the_classes_as_entry_points():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["vllm.logits_processors"]
    assert sorted(eps.values()) == sorted(LOGITS_PROCESSORS)


# -- a deterministic fake model, a vLLM-like sampler for unmodified rows, and independent references --------
def fake_logits(seq) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash(tuple(seq)) % (2**31))
    return torch.randn(VOCAB, generator=g) * 2.0


def _engine_sample(row: torch.Tensor, sp, gen: torch.Generator) -> int:
    """How vLLM samples a row after the processors (one-hot rows always give their token)."""
    if sp.temperature < 1e-5:
        return int(row.argmax())
    p = torch.softmax(row.float() / sp.temperature, -1)
    return int(torch.multinomial(p, 1, generator=gen))


def _reference(requests, steps):
    """What the processor must produce (greedy): plain argmax, calibration offsets at step 0, pairs contrasted."""
    seqs = {name: list(r["prompt"]) for name, r in requests.items()}
    for step in range(steps):
        chosen = {}
        for name, r in requests.items():
            kind = r.get("kind", "plain")
            lg = fake_logits(seqs[name])
            if kind == "cal" and step == 0:
                for i, o in zip(r["ids"], r["offs"]):
                    lg[i] += o
            if kind in ("plain", "cal"):
                chosen[name] = int(lg.argmax())
            elif kind == "main":
                aux = r["aux"]
                s = contrast(lg[None], fake_logits(seqs[aux])[None], r["alpha"], r["beta"])[0]
                chosen[name] = chosen[aux] = int(s.argmax())
        for name in requests:
            seqs[name].append(chosen[name])
    return {name: seqs[name][len(r["prompt"]):] for name, r in requests.items()}


def _scenario():
    cal = _cal_args(prior=(0.999, 0.001), ids=((3, 4), (7,)))
    spec = parse(cal)
    return {
        "plain1": {"prompt": [1, 2, 3], "extra": None},
        "main": {"prompt": [5, 6, 7, 8], "kind": "main", "aux": "aux", "alpha": 1.5, "beta": 0.05,
                 "extra": _pair_args("p1", "main", 1.5, 0.05)},
        "cal": {"prompt": [9, 9], "kind": "cal", "ids": list(spec.label_ids), "offs": list(spec.label_offsets),
                "extra": cal},
        "aux": {"prompt": [11, 5, 6, 7, 8], "kind": "aux", "extra": _pair_args("p1", "aux", 1.5, 0.05)},
        "plain2": {"prompt": [2, 2, 2, 2, 2, 2], "extra": {"unrelated": "x"}},
    }


class V1Sim:
    """vLLM's V1 persistent batch in miniature: every step the scheduled requests form the batch; new and
    resumed ones fill the lowest free rows, finished / unscheduled ones are removed, the batch is condensed by
    one-way moves; then ``update_state``, ``apply`` and sampling."""

    def __init__(self, proc, seed=0):
        self.proc = proc
        self.rows: list[str | None] = []
        self.reqs: dict[str, dict] = {}
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, name, prompt, sp, max_tokens=None):
        self.reqs[name] = {"prompt": list(prompt), "out": [], "sp": sp, "max": max_tokens or sp.max_tokens}

    def done(self, name):
        r = self.reqs[name]
        return len(r["out"]) >= r["max"]

    def step(self, scheduled):
        scheduled = [n for n in scheduled if not self.done(n)]
        removed = [i for i, n in enumerate(self.rows) if n is not None and n not in scheduled]
        for i in removed:
            self.rows[i] = None
        added = []
        for n in scheduled:
            if n in self.rows:
                continue
            i = self.rows.index(None) if None in self.rows else len(self.rows)
            if i == len(self.rows):
                self.rows.append(None)
            self.rows[i] = n
            r = self.reqs[n]
            added.append((i, r["sp"], r["prompt"], r["out"]))
        moved = []
        while True:
            holes = [i for i, n in enumerate(self.rows) if n is None]
            occ = [i for i, n in enumerate(self.rows) if n is not None]
            if not holes or not occ or holes[0] > occ[-1]:
                break
            a, b = occ[-1], holes[0]
            self.rows[b], self.rows[a] = self.rows[a], None
            moved.append((a, b, MoveDirectionality.UNIDIRECTIONAL))
        while self.rows and self.rows[-1] is None:
            self.rows.pop()
        bu = BatchUpdate(batch_size=len(self.rows), removed=removed, added=added, moved=moved) \
            if (removed or added or moved) else None
        self.proc.update_state(bu)
        if not self.rows:
            return
        logits = torch.stack([fake_logits(self.reqs[n]["prompt"] + self.reqs[n]["out"]) for n in self.rows])
        out = self.proc.apply(logits)
        for r, n in enumerate(self.rows):
            self.reqs[n]["out"].append(_engine_sample(out[r], self.reqs[n]["sp"], self.gen))

    def outputs(self):
        return {n: r["out"] for n, r in self.reqs.items()}


def test_v1_path_with_batch_updates_matches_reference():
    reqs = _scenario()
    steps = 6
    want = _reference(reqs, steps)
    plain = _reference({n: {"prompt": r["prompt"]} for n, r in reqs.items()}, steps)
    assert want["cal"][0] in (3, 4, 7) and plain["cal"][0] not in (3, 4, 7)  # the offsets matter here
    assert want["main"] != plain["main"] and want["plain1"] == plain["plain1"]
    sim = V1Sim(_v1_processor())
    for n, r in reqs.items():
        sim.add(n, r["prompt"], _sp(r["extra"], max_tokens=steps))
    order = list(reqs)
    rng = random.Random(1)
    for _ in range(steps):
        rng.shuffle(order)  # admission order differs; rows move as requests come and go
        sim.step(order)
    assert sim.outputs() == want


# -- broken pairs: outputs equal => every step was contrasted -------------------------------------------------
def _intact(schedule, max_tokens):
    """Schedule-level truth: the pair was contrasted at every step only if main and aux were always scheduled
    together (neither sampled a step without the other)."""
    m = a = 0
    for sm, sa in schedule:
        sm, sa = sm and m < max_tokens, sa and a < max_tokens
        if sm != sa:
            return False
        m, a = m + sm, a + sa
    return m == a


def _clean(schedule):
    """Scheduled together at every step from start to end (no preemption at all)."""
    return all(sm and sa for sm, sa in schedule)


def _random_schedule_trial(make_sim, trial, temperature, chunk_one_row=False):
    """One main/aux pair whose aux prompt equals its main prompt -- so a broken pair left alone would often
    emit identical tokens, the false "debiased" of issue 13 item 2 -- under a random preemption schedule."""
    rng = random.Random(1000 * trial + int(temperature * 10))
    max_tokens = rng.randint(3, 9)
    sim = make_sim(trial)
    kw = dict(temperature=temperature, max_tokens=max_tokens, seed=trial if temperature else None)
    prompt = [rng.randrange(VOCAB) for _ in range(3)]
    sim.add("main", prompt, _sp(_pair_args(f"t{trial}", "main", 1.0, 0.2), **kw))
    sim.add("aux", prompt, _sp(_pair_args(f"t{trial}", "aux", 1.0, 0.2), **kw))
    sim.add("plain", [5, 5], _sp(None, max_tokens=60))
    chunk = (rng.choice(["main", "aux"]),) if chunk_one_row else ()
    schedule = []
    for step in range(40):
        if trial % 3 == 0 or rng.random() < 0.7:
            sm = sa = True
        else:
            sm, sa = rng.random() < 0.5, rng.random() < 0.5
        schedule.append((sm, sa))
        args = (["plain"] + (["main"] if sm else []) + (["aux"] if sa else []),)
        sim.step(*args, **({"chunked": chunk if step == 0 else ()} if chunk_one_row else {}))
        if sim.done("main") and sim.done("aux"):
            break
    while not (sim.done("main") and sim.done("aux")):  # let both finish
        schedule.append((not sim.done("main"), not sim.done("aux")))
        sim.step(["main", "aux"])
    return sim.outputs(), schedule, max_tokens, bool(chunk)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_v1_broken_pairs_never_pass_the_equality_check(temperature):
    """Over random preemption schedules: main == aux only if the pair was scheduled together at every step
    (soundness: a broken pair is never taken for debiased), and a pair scheduled together throughout is never
    broken. (Both rows preempted together and resumed together is conservatively treated as broken.)"""
    n_equal = n_broken = 0
    for trial in range(60):
        out, schedule, max_tokens, _ = _random_schedule_trial(lambda t: V1Sim(_v1_processor(), seed=t), trial,
                                                              temperature)
        equal = out["main"] == out["aux"]
        assert not equal or _intact(schedule, max_tokens), (trial, schedule, out)
        assert equal or not _clean(schedule), (trial, schedule, out)
        n_equal += equal
        n_broken += not _intact(schedule, max_tokens)
    assert n_equal >= 20 and n_broken >= 20


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mrv2_broken_pairs_never_pass_the_equality_check(temperature):
    """As for V1, with MRV2's own break causes: slots recycled on preemption, resumed requests re-prefilling
    their output, and one row still in chunked prefill while its partner samples its first token."""
    n_equal = n_broken = 0
    for trial in range(60):
        chunk = trial % 4 == 1

        def make(t):
            proc, rs = _v2_processor()
            return V2Sim(proc, rs, seed=t)

        out, schedule, max_tokens, chunked = _random_schedule_trial(make, trial, temperature, chunk_one_row=chunk)
        equal = out["main"] == out["aux"]
        truth = _intact(schedule, max_tokens) and not chunked
        assert not equal or truth, (trial, chunked, schedule, out)
        assert equal or not (_clean(schedule) and not chunked), (trial, schedule, out)
        n_equal += equal
        n_broken += not truth
    assert n_equal >= 15 and n_broken >= 20


def test_v1_intact_pair_equals_the_contrast_reference():
    sim = V1Sim(_v1_processor())
    sim.add("main", [1, 2], _sp(_pair_args("q", "main", 2.0, 0.05), max_tokens=6))
    sim.add("aux", [7, 1, 2], _sp(_pair_args("q", "aux", 2.0, 0.05), max_tokens=6))
    for _ in range(6):
        sim.step(["aux", "main"])
    want = _reference({"main": {"prompt": [1, 2], "kind": "main", "aux": "aux", "alpha": 2.0, "beta": 0.05},
                       "aux": {"prompt": [7, 1, 2], "kind": "aux"}}, 6)
    assert sim.outputs() == want


# -- Model Runner V2 ---------------------------------------------------------------------------------------------
class _Buf:
    """Stand-in for vLLM's UvaBackedTensor / StagedWriteTensor: ``.np`` host view, ``.cpu``, ``.gpu``."""

    def __init__(self, n, dtype=np.int32):
        self.np = np.zeros(n, dtype=dtype)
        self.cpu = torch.from_numpy(self.np)
        self.gpu = self.cpu


def _v2_processor(max_reqs=8, spec=False, classes=CLASSES):
    vllm_config = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB, seed=0),
                                  speculative_config=object() if spec else None)
    rs = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=max_reqs, vocab_size=VOCAB,
                                all_token_ids=_Buf((max_reqs, 64)), prompt_len=_Buf(max_reqs),
                                prefill_len=_Buf(max_reqs), total_len=_Buf(max_reqs))
    return Engine(vllm_config, rs, classes=classes), rs


class V2Sim:
    """MRV2 in miniature: slots from a free list (recycled), ``add_request`` on admission and on resumption
    (prefill_len = prompt + output so far), ``apply_staged_writes`` every step, rows shuffled every step, an
    optional extra chunked-prefill step (the row's sample is discarded), committed tokens in all_token_ids."""

    def __init__(self, proc, rs, seed=0):
        self.proc, self.rs = proc, rs
        self.free = list(range(rs.max_num_reqs))
        self.reqs: dict[str, dict] = {}
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, name, prompt, sp, max_tokens=None):
        self.reqs[name] = {"prompt": list(prompt), "out": [], "sp": sp, "max": max_tokens or sp.max_tokens,
                           "slot": None, "prefill_left": 0}

    def done(self, name):
        r = self.reqs[name]
        return len(r["out"]) >= r["max"]

    def _admit(self, name, chunked):
        r = self.reqs[name]
        slot = self.free.pop(0)
        r["slot"] = slot
        seq = r["prompt"] + r["out"]
        rs = self.rs
        rs.prompt_len.np[slot] = len(r["prompt"])
        rs.prefill_len.np[slot] = len(seq)
        rs.total_len.np[slot] = len(seq)
        rs.all_token_ids.np[slot, :] = 0
        rs.all_token_ids.np[slot, :len(seq)] = seq
        r["prefill_left"] = 1 if chunked else 0
        self.proc.add_request(slot, r["sp"])

    def step(self, scheduled, chunked=()):
        for n, r in self.reqs.items():
            if r["slot"] is not None and (n not in scheduled or self.done(n)):  # preempted or finished
                self.free.append(r["slot"])
                r["slot"] = None
        live = [n for n in scheduled if not self.done(n)]
        for n in live:
            if self.reqs[n]["slot"] is None:
                self._admit(n, n in chunked)
        self.proc.apply_staged_writes()
        if not live:
            return
        self.rng.shuffle(live)
        rs = self.rs
        seqs, slots, lens = [], [], []
        for n in live:
            r = self.reqs[n]
            seq = r["prompt"] + r["out"]
            full = int(rs.prefill_len.np[r["slot"]]) if r["prefill_left"] else len(seq)
            seq_len = full - 1 if r["prefill_left"] else len(seq)
            seqs.append(seq[:seq_len])
            slots.append(r["slot"])
            lens.append(seq_len)
        idx = np.array(slots, dtype=np.intp)
        ctx = LogitsContext(expanded_idx_mapping=torch.tensor(slots), idx_mapping=torch.from_numpy(idx),
                            idx_mapping_np=idx, expanded_local_pos=torch.zeros(len(slots), dtype=torch.long),
                            input_ids=torch.zeros(len(slots), dtype=torch.long),
                            pos=torch.tensor([n - 1 for n in lens]),
                            seq_lens_upper_bound_np=np.array(lens, dtype=np.int32))
        logits = torch.stack([fake_logits(s) for s in seqs])
        out = self.proc.apply(logits, ctx)
        for row, n in enumerate(live):
            r = self.reqs[n]
            if r["prefill_left"]:  # a chunk of the prefill: the sample is discarded
                r["prefill_left"] = 0
                continue
            t = _engine_sample(out[row], r["sp"], self.gen)
            r["out"].append(t)
            slot = r["slot"]
            rs.all_token_ids.np[slot, rs.total_len.np[slot]] = t
            rs.total_len.np[slot] += 1

    def outputs(self):
        return {n: r["out"] for n, r in self.reqs.items()}


def test_mrv2_path_with_synthetic_context_matches_reference():
    reqs = _scenario()
    steps = 6
    want = _reference(reqs, steps)
    proc, rs = _v2_processor()
    # a recycled slot: slot 0 first held an opted-in request that finished
    sim = V2Sim(proc, rs)
    sim.add("old", [3, 3], _sp(_pair_args("old", "main"), max_tokens=1))
    sim.step(["old"])
    for n, r in reqs.items():
        sim.add(n, r["prompt"], _sp(r["extra"], max_tokens=steps))
    needs = {}
    for _ in range(steps):
        sim.step(list(reqs))
        if not needs:
            needs = {n: bool(proc._active[sim.reqs[n]["slot"]]) for n in reqs}
    assert needs == {"plain1": False, "main": True, "cal": True, "aux": True, "plain2": False}
    assert {n: o for n, o in sim.outputs().items() if n != "old"} == want


def test_mrv2_speculative_decoding_marks_pairs_and_keeps_calibration():
    proc, rs = _v2_processor(spec=True)
    cal = _cal_args()
    spec = parse(cal)
    rs.prompt_len.np[2] = rs.prefill_len.np[2] = 3
    proc.add_request(2, _sp(cal))
    rs.prompt_len.np[4] = rs.prefill_len.np[4] = 3
    rs.prompt_len.np[5] = rs.prefill_len.np[5] = 3
    proc.add_request(4, _sp(_pair_args("s", "main")))
    proc.add_request(5, _sp(_pair_args("s", "aux")))
    proc.apply_staged_writes()
    logits = torch.zeros(7, VOCAB)
    # request 2: three rows (draft tokens) at positions 2, 3, 4 -- only position 2 samples output 0; then the
    # pair's rows, two each
    ctx = LogitsContext(expanded_idx_mapping=torch.tensor([2, 2, 2, 4, 4, 5, 5]),
                        idx_mapping=torch.tensor([2, 4, 5]), idx_mapping_np=np.array([2, 4, 5]),
                        expanded_local_pos=torch.tensor([0, 1, 2, 0, 1, 0, 1]), input_ids=torch.zeros(7, dtype=torch.long),
                        pos=torch.tensor([2, 3, 4, 2, 3, 2, 3]), seq_lens_upper_bound_np=np.array([5, 4, 4]))
    out = proc.apply(logits, ctx)
    assert out[0, 3] == pytest.approx(spec.label_offsets[0]) and out[0, 7] == pytest.approx(spec.label_offsets[2])
    assert torch.count_nonzero(out[1:3]) == 0
    marker = VOCAB - 1
    assert torch.isneginf(out[3:5, marker]).all()  # main rows may not emit the marker ...
    assert (out[5:7].argmax(-1) == marker).all() and torch.isfinite(out[5:7]).sum() == 2  # ... aux rows must


def test_mrv2_plain_batch_untouched():
    proc, rs = _v2_processor()
    for slot in range(3):
        rs.prompt_len.np[slot] = rs.prefill_len.np[slot] = 4
        assert proc.add_request(slot, _sp(None)) is False
    proc.apply_staged_writes()
    logits = torch.randn(3, VOCAB)
    before = logits.clone()
    idx = np.array([0, 1, 2])
    ctx = LogitsContext(expanded_idx_mapping=torch.tensor([0, 1, 2]), idx_mapping=torch.from_numpy(idx),
                        idx_mapping_np=idx, expanded_local_pos=torch.zeros(3, dtype=torch.long),
                        input_ids=torch.zeros(3, dtype=torch.long), pos=torch.tensor([3, 3, 3]),
                        seq_lens_upper_bound_np=np.array([4, 4, 4]))
    assert torch.equal(proc.apply(logits, ctx), before)


# -- one class per behaviour: each alone, both together (above), twice in one engine ---------------------------
def _run_v1(engine, reqs, steps):
    sim = V1Sim(engine)
    for n, r in reqs.items():
        sim.add(n, r["prompt"], _sp(r["extra"], max_tokens=steps))
    order = list(reqs)
    rng = random.Random(1)
    for _ in range(steps):
        rng.shuffle(order)
        sim.step(order)
    return sim.outputs()


def _run_v2(engine, rs, reqs, steps):
    sim = V2Sim(engine, rs)
    for n, r in reqs.items():
        sim.add(n, r["prompt"], _sp(r["extra"], max_tokens=steps))
    for _ in range(steps):
        sim.step(list(reqs))
    return sim.outputs()


@pytest.mark.parametrize("cls, kinds", [(CalibrationLogitsProcessor, ("cal",)),
                                        (ContrastLogitsProcessor, ("main", "aux"))])
def test_each_class_alone_serves_its_behaviour_and_leaves_the_others_plain(cls, kinds, caplog):
    """One class loaded without the other: its own requests get exactly the reference treatment, the other
    behaviour's requests are generated as plain ones (with an error in the log naming what is missing)."""
    reqs, steps = _scenario(), 6
    want = _reference({n: r if r.get("kind") in kinds else {"prompt": r["prompt"]} for n, r in reqs.items()}, steps)
    assert want != _reference(reqs, steps) and want != _reference(  # the test can tell the three apart
        {n: {"prompt": r["prompt"]} for n, r in reqs.items()}, steps)
    assert _run_v1(_v1_processor(classes=(cls,)), reqs, steps) == want
    assert "runs unmodified: this engine loads no processor serving" in caplog.text
    engine, rs = _v2_processor(classes=(cls,))
    assert _run_v2(engine, rs, reqs, steps) == want


def test_a_class_loaded_twice_in_one_engine_acts_once():
    """Entry points and explicit registration together: vLLM builds every class twice with the same vllm_config.
    The second instances are inert: the outputs are the reference's, and the calibration offset is added once
    (closed form), not twice; another engine's instances work."""
    reqs, steps = _scenario(), 6
    twice = _v1_processor(classes=CLASSES + CLASSES)
    assert [p.inert for p in twice.procs] == [False, False, True, True]
    assert _run_v1(twice, reqs, steps) == _reference(reqs, steps)
    engine, rs = _v2_processor(classes=CLASSES + CLASSES)
    assert [p.inert for p in engine.procs] == [False, False, True, True]
    assert _run_v2(engine, rs, reqs, steps) == _reference(reqs, steps)
    prior = (0.9, 0.1)
    off = calibration_offsets(torch.tensor(prior, dtype=torch.float64), dl.CalibrationConfig().eps)
    one = _v1_processor(classes=CLASSES + CLASSES)
    one.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, _sp(_cal_args(prior)), [9], [])], moved=[]))
    out = one.apply(torch.zeros(1, VOCAB))
    want = torch.zeros(VOCAB, dtype=torch.float64)
    want[[3, 4]], want[7] = float(off[0]), float(off[1])
    assert torch.allclose(out[0].double(), want, atol=1e-6)
    assert not any(p.inert for p in _v1_processor().procs)  # a fresh engine (another vllm_config)


def test_each_class_judges_only_its_own_requests_and_every_class_refuses_what_none_serves(monkeypatch):
    from vllm_debias.steer import vectors

    monkeypatch.delenv(vectors.ENV, raising=False)
    monkeypatch.setattr(vectors, "_ANNOUNCED", {})
    bad_pair = {"debias_method": "debias_sampling", "debias_alpha": -1.0, "debias_pair": "p", "debias_role": "main"}
    bad_cal = {**_cal_args(), "debias_prior_probs": [0.0, 1.0], "debias_eps": 0.0}
    CalibrationLogitsProcessor.validate_params(_sp(bad_pair))  # not its request: the contrast class judges it
    with pytest.raises(ValueError, match="alpha=-1.0 is invalid"):
        ContrastLogitsProcessor.validate_params(_sp(bad_pair))
    ContrastLogitsProcessor.validate_params(_sp(bad_cal))
    with pytest.raises(ValueError, match="needs eps > 0"):
        CalibrationLogitsProcessor.validate_params(_sp(bad_cal))
    for cls in CLASSES:
        for extra, needle in (({"debias_method": "uddia"}, "needs gradients"),
                              ({"debias_method": "nope"}, "unknown method 'nope'"),
                              ({"debias_method": "nbls"}, "prompt transform"),
                              ({"debias_method": "steer", "debias_vectors": "x"},
                               "needs an engine started with steering vectors"),
                              ({"method": "calibration"}, "opt-in key is 'debias_method'"),
                              ({"debias_pair": "p"}, "without 'debias_method'")):
            with pytest.raises(ValueError, match=re.escape(needle)):
                cls.validate_params(_sp(extra))
        cls.validate_params(_sp({"debias_method": "identity"}))  # identity: every class lets it pass ...
        with pytest.raises(ValueError, match="given with method 'identity'"):  # ... unless it carries our keys
            cls.validate_params(_sp({"debias_method": "identity", "debias_pair": "p"}))


def test_identity_requests_are_left_alone_by_every_class():
    engine = _v1_processor()
    engine.update_state(BatchUpdate(batch_size=2, removed=[], moved=[],
                                    added=[(0, _sp({"debias_method": "identity"}), [1], []), (1, _sp(None), [2], [])]))
    assert not engine._reqs
    logits = torch.randn(2, VOCAB)
    assert torch.equal(engine.apply(logits.clone()), logits)


# -- the batched sampler -----------------------------------------------------------------------------------------
def test_seeded_uniform_is_uniform_and_counter_based():
    seeds = torch.arange(2000).repeat_interleave(10)
    pos = torch.arange(10).repeat(2000)
    u = seeded_uniform(seeds, pos)
    assert u.dtype == torch.float64 and (u >= 0).all() and (u < 1).all()
    hist = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (hist - 2000).abs().max() < 200  # 20k draws, 10 bins: within ~4.5 sigma
    assert len(set(u.tolist())) == len(u)
    assert torch.equal(seeded_uniform(torch.tensor([7, 7]), torch.tensor([3, 3])), seeded_uniform(
        torch.tensor([7, 7]), torch.tensor([3, 3])))
    assert seeded_uniform(torch.tensor([2**62]), torch.tensor([0])) != seeded_uniform(torch.tensor([0]), torch.tensor([0]))


def _filtered_probs(scores, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """Closed-form sampling distribution in vLLM's order (numpy, float64): temperature, min-p, top-k, top-p."""
    x = scores.double().numpy() / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    if min_p:
        p = np.where(p < min_p * p.max(), 0, p)
        p /= p.sum()
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    if top_k:
        keep = set(order[:top_k])
        p = np.array([v if i in keep else 0 for i, v in enumerate(p)])
        p /= p.sum()
    if top_p < 1:
        acc, keep = 0.0, set()
        for i in order:
            if acc >= top_p:
                break
            keep.add(i)
            acc += p[i]
        p = np.array([v if i in keep else 0 for i, v in enumerate(p)])
        p /= p.sum()
    return p


@pytest.mark.parametrize("kw", [dict(), dict(top_k=5), dict(top_p=0.7), dict(min_p=0.2), dict(top_k=8, top_p=0.9)])
def test_pick_tokens_samples_the_filtered_distribution(kw):
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(1, 30, generator=g) * 1.5
    scores[0, 4] = float("-inf")
    n = 40000
    u = torch.rand(n, generator=g, dtype=torch.float64)
    rows = scores.expand(n, -1)
    opt = {k: torch.full((n,), v) for k, v in kw.items()}
    want = _filtered_probs(scores[0], 0.8, **kw)
    fast = dict(top_k_max=kw["top_k"]) if "top_k" in kw else {}  # torch.topk instead of a sort
    for extra in ({}, fast):
        tok = pick_tokens(rows, torch.full((n,), 0.8), u, **opt, **extra)
        freq = np.bincount(tok.numpy(), minlength=30) / n
        assert np.abs(freq - want).max() < 0.012
        assert freq[want == 0].sum() == 0
    greedy = pick_tokens(scores, torch.zeros(1), torch.zeros(1, dtype=torch.float64))
    assert int(greedy) == int(scores.argmax())


def test_pick_tokens_on_candidates_equals_full_vocabulary():
    """Lockstep samples among main's candidates in token-id order; with the plausible set inside them the draw
    equals the full-vocabulary draw of the twin rows for the same u."""
    g = torch.Generator().manual_seed(5)
    covered = 0
    for trial in range(300):
        lc, lu = torch.randn(1, 60, generator=g) * 3, torch.randn(1, 60, generator=g) * 3
        s = contrast(lc, lu, 1.0, 0.1)
        cand = torch.topk(lc, 16).indices[0].sort().values
        u = torch.rand(1, generator=g, dtype=torch.float64)
        if torch.isfinite(s[0, cand]).sum() != torch.isfinite(s).sum():
            continue  # the plausible set is larger than the candidates: lockstep counts a truncated step
        covered += 1
        kw = [dict(), dict(top_p=torch.tensor([0.9])), dict(top_k=torch.tensor([3])), dict(min_p=torch.tensor([0.1]))]
        kw = kw[trial % 4]
        full = pick_tokens(s, torch.tensor([0.7]), u, **kw)
        sub = cand[pick_tokens(contrast(lc[:, cand], lu[:, cand], 1.0, 0.1), torch.tensor([0.7]), u, **kw)]
        assert int(full) == int(sub)
    assert covered > 200


# -- apply() without host syncs -------------------------------------------------------------------------------
class _SyncCounter(TorchFunctionMode):
    """Counts the calls that read a tensor back to the host (or need to, on an accelerator): ``item``,
    ``tolist``, ``cpu``, ``numpy``, Python truth / number conversions, ``nonzero``, ``masked_select``, ``unique``,
    ``repeat_interleave``, and indexing with a boolean tensor (which needs the count of True entries).

    A torch function mode, active only inside the watched ``apply`` calls: it sees every tensor method and torch
    function without patching ``torch.Tensor`` (patching its dunder slots leaves the type changed after the
    test: ``torch.tensor([tensor(-2)])`` then fails in every later test of the process)."""

    NAMES = frozenset({"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                       "masked_select", "unique", "repeat_interleave"})
    INDEXING = frozenset({"__getitem__", "__setitem__", "index_put_", "index_put"})

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            self.calls.append(name)
        elif name in self.INDEXING and len(args) > 1:
            items = args[1] if isinstance(args[1], (tuple, list)) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items):
                self.calls.append(f"{name}[bool]")
        return func(*args, **(kwargs or {}))

    def watch(self, proc):
        """Count during every ``proc.apply`` call."""
        orig = proc.apply

        def counted(*a, **k):
            with self:
                return orig(*a, **k)

        proc.apply = counted


def test_apply_has_no_host_sync():
    """A mixed batch (greedy, seeded and unseeded sampled pairs with top-k / top-p / min-p, calibration, plain
    rows, a broken pair) through both runners' apply(): nothing is read back from the device."""
    sampled = [dict(temperature=0.0), dict(temperature=1.0, seed=3), dict(temperature=0.7),
               dict(temperature=0.9, top_k=5, top_p=0.8, min_p=0.05, seed=1)]
    counter = _SyncCounter()
    # V1
    sim = V1Sim(_v1_processor())
    for i, kw in enumerate(sampled):
        sim.add(f"m{i}", [1, i], _sp(_pair_args(f"p{i}", "main"), max_tokens=4, **kw))
        sim.add(f"a{i}", [2, i], _sp(_pair_args(f"p{i}", "aux"), max_tokens=4, **kw))
    sim.add("cal", [9], _sp(_cal_args(), max_tokens=4))
    sim.add("plain", [3], _sp(None, max_tokens=4))
    sim.add("lonely", [4], _sp(_pair_args("alone", "main"), max_tokens=4))  # never gets a partner: broken
    proc = sim.proc
    counter.watch(proc)
    for _ in range(4):
        sim.step(list(sim.reqs))
    assert counter.calls == []
    assert proc._pt is None or proc._pt.n == 4
    # MRV2
    proc2, rs = _v2_processor(max_reqs=16)
    sim2 = V2Sim(proc2, rs)
    for name, r in sim.reqs.items():
        sim2.add(name, r["prompt"], r["sp"])
    counter.watch(proc2)
    for _ in range(4):
        sim2.step(list(sim2.reqs))
    assert counter.calls == []
    # the counter does count: a .item() in apply would be seen
    with counter:
        torch.zeros(1).item()
        torch.arange(3)[torch.tensor([True, False, True])]
    assert counter.calls == ["item", "__getitem__[bool]"]


def test_pair_sampling_carried_in_the_request_equals_sampling_params():
    """vllm_debias.generate sends the rows to vLLM as greedy and carries the pair's sampling in the request:
    the processor draws exactly what it draws from the request's own SamplingParams."""
    kw = dict(temperature=0.9, top_k=6, top_p=0.9, min_p=0.02, seed=21)

    def run(carried):
        sim = V1Sim(_v1_processor())
        for pid in ("a", "b"):
            for role, prompt in (("main", [1, len(pid)]), ("aux", [2, len(pid)])):
                args = _pair_args(pid, role, 1.0, 0.01)
                if carried:
                    args.update(debias_temperature=kw["temperature"], debias_top_k=kw["top_k"],
                                debias_top_p=kw["top_p"], debias_min_p=kw["min_p"], debias_seed=kw["seed"])
                    sp = _sp(args, max_tokens=6)  # greedy in vLLM
                else:
                    sp = _sp(args, max_tokens=6, **kw)
                sim.add(f"{role}{pid}", prompt, sp)
        for _ in range(6):
            sim.step(list(sim.reqs))
        return sim.outputs()

    assert run(True) == run(False)


def test_twin_rows_sampling_seeded_reproducible_unseeded_independent():
    def run(seed, pair_ids=("s",)):
        sim = V1Sim(_v1_processor())
        for pid in pair_ids:
            kw = dict(temperature=1.0, top_p=0.95, seed=seed, max_tokens=8)
            sim.add(f"m{pid}", [1], _sp(_pair_args(pid, "main", 1.0, 0.01), **kw))
            sim.add(f"a{pid}", [2], _sp(_pair_args(pid, "aux", 1.0, 0.01), **kw))
        for _ in range(8):
            sim.step(list(sim.reqs))
        out = sim.outputs()
        assert all(out[f"m{p}"] == out[f"a{p}"] for p in pair_ids)
        return [out[f"m{p}"] for p in pair_ids]

    assert run(3) == run(3)
    assert run(3) != run(4)
    # four copies of one pair in one batch, no seed: independent draws (not one shared stream)
    copies = run(None, pair_ids=("c0", "c1", "c2", "c3"))
    assert len({tuple(c) for c in copies}) >= 3
    # a seed gives the same draws whatever else is in the batch
    assert run(3, pair_ids=("x", "y"))[0] == run(3)[0]


# -- lockstep: the same functions as the twin rows ---------------------------------------------------------------
def _fake_backend():
    def lp(seq):
        return torch.log_softmax(fake_logits(seq).double(), -1)

    def top_fn(contexts, k):
        out = []
        for c in contexts:
            v = lp(c)
            top = torch.topk(v, k).indices.tolist()
            out.append({t: float(v[t]) for t in top})
        return out

    def score_fn(contexts, ids):
        return [{t: float(lp(c)[t]) for t in i} for c, i in zip(contexts, ids)]

    return top_fn, score_fn


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=1.0, seed=11),
                                dict(temperature=0.8, top_k=4, min_p=0.05, seed=5)])
def test_lockstep_equals_twin_rows(kw):
    """Same pairs, same seeds: the lockstep driver (main's top-k candidates) and the twin-row processor (full
    vocabulary) give the same tokens, stop on the same stop token and honour min_tokens the same way."""
    from vllm_debias.lockstep import PairJob, lockstep_decode

    prompts = [([1, 2], [7, 1, 2]), ([3], [3, 3]), ([4, 4, 1], [9, 4, 4, 1])]
    sim = V1Sim(_v1_processor())
    stop = 11
    for i, (m, a) in enumerate(prompts):
        sp = dict(max_tokens=7, **kw)
        sim.add(f"m{i}", m, _sp(_pair_args(f"l{i}", "main", 1.5, 0.02), **sp))
        sim.add(f"a{i}", a, _sp(_pair_args(f"l{i}", "aux", 1.5, 0.02), **sp))
    for _ in range(7):
        sim.step(list(sim.reqs))
    twin = [sim.reqs[f"m{i}"]["out"] for i in range(len(prompts))]
    jobs = [PairJob(m, a, alpha=1.5, beta=0.02, max_tokens=7, temperature=kw["temperature"],
                    top_k=kw.get("top_k", 0), min_p=kw.get("min_p", 0.0), seed=kw.get("seed"))
            for m, a in prompts]
    res = lockstep_decode(*_fake_backend(), jobs, k=VOCAB)
    assert [r.token_ids for r in res] == twin
    assert all(r.status == "lockstep" and r.truncated_steps == 0 for r in res)
    # stop tokens: the twin-row output cut at the first stop token, and min_tokens keeps it out
    for r, t in zip(lockstep_decode(*_fake_backend(), [dataclass_replace(j, stop_token_ids=frozenset([stop]))
                                                        for j in jobs], k=VOCAB), twin):
        want = t[:t.index(stop) + 1] if stop in t else t
        assert r.token_ids == want and (r.finish_reason == "stop") == (stop in t)
    low = frozenset(range(VOCAB // 2))  # half the vocabulary stops; min_tokens=3 keeps it out of 3 tokens
    blocked = lockstep_decode(*_fake_backend(), [dataclass_replace(j, stop_token_ids=low, min_tokens_block=low,
                                                                   min_tokens=3) for j in jobs], k=VOCAB)
    for r in blocked:
        assert len(r.token_ids) >= 3 and all(t not in low for t in r.token_ids[:3])
        assert (r.finish_reason == "stop") == (r.token_ids[-1] in low)


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_lockstep_unseeded_pairs_draw_independently():
    from vllm_debias.lockstep import PairJob, lockstep_decode

    jobs = [PairJob([1, 2], [3, 1, 2], temperature=1.0, beta=0.001, max_tokens=6) for _ in range(4)]
    res = lockstep_decode(*_fake_backend(), jobs, k=VOCAB)
    assert len({tuple(r.token_ids) for r in res}) >= 3


def test_lockstep_non_finite_contrast_is_not_applied():
    from vllm_debias.lockstep import PairJob, lockstep_decode

    top_fn, _ = _fake_backend()

    def nan_scores(contexts, ids):
        return [{t: float("nan") for t in i} for i in ids]

    res = lockstep_decode(top_fn, nan_scores, [PairJob([1], [2], max_tokens=3)], k=VOCAB)
    assert res[0].status == "not_applied" and res[0].fallback_steps == 3 and "no usable" in res[0].reason
    assert res[0].token_ids == [int(fake_logits(s).argmax()) for s in ([1], [1, res[0].token_ids[0]],
                                                                       [1] + res[0].token_ids[:2])]


def test_waves_fit_budget_sequences_and_kv_cache():
    from vllm_debias.offline import _Pair, _waves

    def pair(i, m, a, n):
        return _Pair(i, None, None, m, a, SimpleNamespace(max_tokens=n))

    ps = [pair(i, 3, 4, 9) for i in range(4)]
    assert [[p.index for p in w] for w in _waves(ps, budget=14, max_seqs=100, kv=10**6, block=16)] == [[0, 1], [2, 3]]
    assert [[p.index for p in w] for w in _waves(ps, budget=100, max_seqs=4, kv=10**6, block=16)] == [[0, 1], [2, 3]]
    # each row of a pair ends at 12-13 tokens: one 16-token block each, 32 per pair
    assert [[p.index for p in w] for w in _waves(ps, budget=100, max_seqs=100, kv=96, block=16)] == [[0, 1, 2], [3]]
    assert len(_waves([pair(0, 10, 10, 1)], budget=5, max_seqs=4, kv=1, block=16)) == 1


def test_nbls_chat_template_renders_the_hf_grounded_text(tiny_llama):
    _, tok = tiny_llama
    from vllm_debias import nbls_chat_template

    cfg = dl.NBLSConfig(k=4)
    tpl = nbls_chat_template(tok, cfg)
    g = cfg.grounding()
    for msgs in ([{"role": "user", "content": "Write about a surgeon."}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                 [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]):
        ours = tok.apply_chat_template(msgs, chat_template=tpl, tokenize=False, add_generation_prompt=True)
        hf = tok.apply_chat_template(g.apply(msgs), tokenize=False, add_generation_prompt=True)
        assert ours == hf


def test_serve_command_and_environment(tmp_path, tiny_llama_dir):
    from vllm_debias.serve import server_command, server_env

    from debias_lm.cli.main import main

    cmd = server_command(str(tiny_llama_dir), port=8123, nbls=True, chat_template_dir=str(tmp_path),
                         extra=["--enforce-eager"])
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    at = cmd.index("--logits-processors")
    assert cmd[at + 1:at + 3] == list(LOGITS_PROCESSORS) and cmd[-1] == "--enforce-eager"
    assert (tmp_path / "nbls_chat_template.jinja").is_file()
    from transformers import AutoConfig

    env = server_env({}, model=str(tiny_llama_dir))
    assert env["VLLM_DEBIAS_VOCAB_SIZE"] == str(AutoConfig.from_pretrained(tiny_llama_dir).vocab_size)
    assert main(["serve", "--model", str(tiny_llama_dir), "--dry-run"]) == 0
    assert main(["serve", "--model", str(tiny_llama_dir), "--nbls", "--nbls-k", "0", "--dry-run"]) == 2
    assert math.isfinite(1.0)
