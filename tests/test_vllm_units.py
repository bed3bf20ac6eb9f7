"""vllm_debias without an engine: request-arg validation, vLLM's own loader checks for both interfaces, the
Model Runner V2 path driven with synthetic ``LogitsProcRequestState`` / ``LogitsContext`` objects built like
vLLM 0.32/0.33's sampler builds them, the V1 path driven with real ``BatchUpdate``s, and the helpers."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState  # noqa: E402
from vllm_debias import DebiasLogitsProcessor, request_args  # noqa: E402
from vllm_debias.args import DebiasArgsError, parse  # noqa: E402

import debias_lm as dl  # noqa: E402
from debias_lm.core.contrast import calibration_offsets, contrast  # noqa: E402

VOCAB = 40
FQCN = "vllm_debias:DebiasLogitsProcessor"


def _sp(extra=None, **kw):
    kw.setdefault("temperature", 0.0)
    return SamplingParams(extra_args=extra, **kw)


def _cal_args(prior=(0.9, 0.1), ids=((3, 4), (7,))):
    cfg = dl.CalibrationConfig(labels=("yes", "no"), prior="given", prior_probs=prior)
    d = cfg.to_dict()
    d["debias_label_ids"] = [i for g in ids for i in g]
    d["debias_label_sizes"] = [len(g) for g in ids]
    return d


def _pair_args(pair, role, alpha=1.0, beta=0.1):
    return request_args(dl.DebiasSamplingConfig(alpha=alpha, beta=beta, counterfactual_prefix="x"), pair=pair, role=role)


# -- validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, needle", [
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"method": "uddia"}, "needs gradients"),
    ({"method": "debias_sampling", "alpha": -1.0, "debias_pair": "p", "debias_role": "main"}, "alpha=-1.0 is invalid"),
    ({"method": "debias_sampling"}, "needs a pair id"),
    ({"method": "debias_sampling", "debias_pair": "p", "debias_role": "side"}, "'main' or 'aux'"),
    ({"method": "nbls"}, "prompt transform"),
    ({"method": "calibration", "prior": "given", "prior_probs": [0.5, 0.5]}, "debias_label_ids"),
    ({"method": "calibration"}, "prior='given'"),
    ({"method": "debias_sampling", "debias_pair": "p", "debias_role": "main", "alfa": 2}, "unknown field(s) alfa"),
    ({"debias_pair": "p"}, "without 'method'"),
])
def test_validate_params_rejects_with_our_message(extra, needle):
    with pytest.raises(ValueError) as e:
        DebiasLogitsProcessor.validate_params(_sp(extra))
    assert needle in str(e.value)
    assert str(e.value).startswith("vllm_debias: ")


def test_validate_params_accepts_plain_and_valid():
    for extra in (None, {}, {"other_plugin": 1}, {"method": "identity"}, _cal_args(), _pair_args("p", "aux"),
                  {**_pair_args(3, "main"), "kv_transfer_params": {"x": 1}}):
        DebiasLogitsProcessor.validate_params(_sp(extra))
    assert parse({"other_plugin": 1}) is None
    with pytest.raises(DebiasArgsError, match="penalt"):
        DebiasLogitsProcessor.validate_params(_sp(_pair_args("p", "main"), repetition_penalty=1.3))


def test_request_args_roundtrip_and_label_ids(tiny_llama):
    _, tok = tiny_llama
    cfg = dl.CalibrationConfig(labels=("he", "she"), prior="given", prior_probs=(0.7, 0.3))
    args = request_args(cfg, tok)
    from debias_lm.labels import label_token_ids

    groups = label_token_ids(tok, ["he", "she"])
    assert args["debias_label_ids"] == [i for g in groups for i in g]
    spec = parse(args)
    off = calibration_offsets(torch.tensor([0.7, 0.3], dtype=torch.float64), cfg.eps)
    want = [float(off[j]) for j, g in enumerate(groups) for _ in g]
    assert spec.label_offsets == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="tokenizer"):
        request_args(cfg)


# -- vLLM's own loader checks -------------------------------------------------------------------------------
def test_both_vllm_loaders_accept_the_class():
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1
    from vllm.v1.sample.logits_processor import (
        _load_custom_logitsprocs,
        validate_logits_processors_parameters,
    )
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs

    assert issubclass(DebiasLogitsProcessor, V1) and issubclass(DebiasLogitsProcessor, V2)
    assert DebiasLogitsProcessor in _load_custom_logitsprocs([FQCN])  # V1 loader (+ installed entry points)
    assert DebiasLogitsProcessor in _load_v2_logitsprocs([FQCN])  # MRV2 loader: raises for V1-only classes
    assert DebiasLogitsProcessor in _load_v2_logitsprocs([DebiasLogitsProcessor])
    from vllm.exceptions import VLLMValidationError

    v2_validate = build_custom_logits_processors_params_validator([FQCN])
    for validate in (v2_validate, lambda sp: validate_logits_processors_parameters([FQCN], sp)):
        validate(_sp(None))
        validate(_sp(_cal_args()))
        with pytest.raises(VLLMValidationError, match="needs gradients"):
            validate(_sp({"method": "uddia"}))


# -- a deterministic fake model, and drivers that call the processor like vLLM's two runners ------------
def fake_logits(seq) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash(tuple(seq)) % (2**31))
    return torch.randn(VOCAB, generator=g) * 2.0


class _Buf:
    """Stand-in for vLLM's UvaBackedTensor / StagedWriteTensor: ``.np`` host view, ``.cpu``, ``.gpu``."""

    def __init__(self, n, dtype=np.int32):
        self.np = np.zeros(n, dtype=dtype)
        self.cpu = torch.from_numpy(self.np)
        self.gpu = self.cpu


def _v2_processor(max_reqs=8):
    vllm_config = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB))
    rs = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=max_reqs, vocab_size=VOCAB,
                                all_token_ids=_Buf((max_reqs, 64)), prompt_len=_Buf(max_reqs),
                                prefill_len=_Buf(max_reqs), total_len=_Buf(max_reqs))
    return DebiasLogitsProcessor(vllm_config, rs), rs


def _ctx(slots, seqs, rs, spec_rows=None):
    """A ``LogitsContext`` as MRV2's Sampler builds it (no speculative decoding unless spec_rows)."""
    idx = np.array(slots, dtype=np.intp)
    exp = torch.tensor(slots if spec_rows is None else spec_rows[0])
    pos = torch.tensor([len(s) - 1 for s in seqs] if spec_rows is None else spec_rows[1])
    return LogitsContext(expanded_idx_mapping=exp, idx_mapping=torch.from_numpy(idx), idx_mapping_np=idx,
                         expanded_local_pos=torch.zeros(len(exp), dtype=torch.long),
                         input_ids=torch.zeros(len(exp), dtype=torch.long), pos=pos,
                         seq_lens_upper_bound_np=np.array([len(s) for s in seqs], dtype=np.int32))


def _reference(requests, steps):
    """What the processor must produce: plain greedy, calibration offsets at step 0, pairs contrasted."""
    out = {}
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
    for name, r in requests.items():
        out[name] = seqs[name][len(r["prompt"]):]
    return out


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


def test_mrv2_path_with_synthetic_context_matches_reference():
    reqs = _scenario()
    steps = 6
    want = _reference(reqs, steps)
    plain = _reference({n: {"prompt": r["prompt"]} for n, r in reqs.items()}, steps)
    assert want["cal"][0] in (3, 4, 7) and plain["cal"][0] not in (3, 4, 7)  # the offsets matter here
    assert want["main"] != plain["main"] and want["plain1"] == plain["plain1"]
    proc, rs = _v2_processor()
    rng = random.Random(0)
    # slots as MRV2's free list would hand them out (recycled slot 0 held a finished opted-in request)
    proc.add_request(0, _sp(_pair_args("old", "main")))
    slots = {"plain1": 3, "main": 0, "cal": 5, "aux": 1, "plain2": 6}
    needs = {}
    for name, slot in slots.items():
        rs.prompt_len.np[slot] = rs.prefill_len.np[slot] = len(reqs[name]["prompt"])
        needs[name] = proc.add_request(slot, _sp(reqs[name]["extra"]))
    assert needs == {"plain1": False, "main": True, "cal": True, "aux": True, "plain2": False}
    proc.apply_staged_writes()
    seqs = {n: list(r["prompt"]) for n, r in reqs.items()}
    for _ in range(steps):
        order = list(slots)
        rng.shuffle(order)  # MRV2 reorders rows every step
        logits = torch.stack([fake_logits(seqs[n]) for n in order])
        ctx = _ctx([slots[n] for n in order], [seqs[n] for n in order], rs)
        out = proc.apply(logits, ctx)
        for row, n in enumerate(order):
            seqs[n].append(int(out[row].argmax()))
    got = {n: seqs[n][len(r["prompt"]):] for n, r in reqs.items()}
    assert got == want
    assert got["main"] == got["aux"]


def test_mrv2_plain_batch_untouched_and_prefill_rows_skipped():
    proc, rs = _v2_processor()
    for slot in range(3):
        rs.prompt_len.np[slot] = rs.prefill_len.np[slot] = 4
        assert proc.add_request(slot, _sp(None)) is False
    logits = torch.randn(3, VOCAB)
    before = logits.clone()
    assert torch.equal(proc.apply(logits, _ctx([0, 1, 2], [[1] * 4] * 3, rs)), before)
    # a pair whose aux is still in chunked prefill: nothing sampled yet for it -> the pair waits, untouched
    rs.prompt_len.np[3] = rs.prefill_len.np[3] = 4
    rs.prompt_len.np[4] = rs.prefill_len.np[4] = 10
    proc.add_request(3, _sp(_pair_args("q", "main")))
    proc.add_request(4, _sp(_pair_args("q", "aux")))
    logits = torch.randn(2, VOCAB)
    before = logits.clone()
    out = proc.apply(logits, _ctx([3, 4], [[1] * 4, [1] * 6], rs))  # main sampling, aux prefilling
    assert torch.equal(out, before)  # main would have sampled alone: the pair is broken, left unmodified
    assert proc._rows[3].broken and proc._rows[4].broken
    # recycling slot 3 for a plain request resets everything
    assert proc.add_request(3, _sp(None)) is False and 3 not in proc._rows


def test_mrv2_speculative_rows_calibration_only_on_first_sample():
    proc, rs = _v2_processor()
    cal = _cal_args()
    spec = parse(cal)
    rs.prompt_len.np[2] = rs.prefill_len.np[2] = 3
    proc.add_request(2, _sp(cal))
    logits = torch.zeros(3, VOCAB)
    # three rows for one request (draft tokens) at positions 2, 3, 4: only position 2 samples output 0
    ctx = _ctx([2], [[0, 0, 0]], rs, spec_rows=([2, 2, 2], [2, 3, 4]))
    out = proc.apply(logits, ctx)
    assert out[0, 3] == pytest.approx(spec.label_offsets[0]) and out[0, 7] == pytest.approx(spec.label_offsets[2])
    assert torch.count_nonzero(out[1:]) == 0


def test_v1_path_with_batch_updates_matches_reference():
    reqs = _scenario()
    steps = 6
    want = _reference(reqs, steps)
    proc = DebiasLogitsProcessor(SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB)),
                                 torch.device("cpu"), False)
    names = list(reqs)
    outs = {n: [] for n in names}
    added = [(i, _sp(reqs[n]["extra"]), list(reqs[n]["prompt"]), outs[n]) for i, n in enumerate(names)]
    proc.update_state(BatchUpdate(batch_size=len(names), removed=[], added=added, moved=[]))
    rows = list(names)
    rng = random.Random(1)
    for step in range(steps):
        if step in (2, 4):  # the persistent batch swaps / moves rows
            a, b = rng.sample(range(len(rows)), 2)
            rows[a], rows[b] = rows[b], rows[a]
            proc.update_state(BatchUpdate(batch_size=len(rows), removed=[], added=[],
                                          moved=[(a, b, MoveDirectionality.SWAP)]))
        else:
            proc.update_state(None)
        logits = torch.stack([fake_logits(list(reqs[n]["prompt"]) + outs[n]) for n in rows])
        out = proc.apply(logits)
        for r, n in enumerate(rows):
            outs[n].append(int(out[r].argmax()))
    assert outs == want
    # removal then a one-way move (condensing the batch) keeps the right state on the right row
    proc.update_state(BatchUpdate(batch_size=4, removed=[0], added=[],
                                  moved=[(len(rows) - 1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert proc._rows.get(len(rows) - 1) is None
    moved = rows[-1]
    assert (0 in proc._rows) == (reqs[moved]["extra"] is not None and "method" in reqs[moved]["extra"])


def test_v1_missing_partner_marks_pair_broken():
    proc = DebiasLogitsProcessor(SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB)),
                                 torch.device("cpu"), False)
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, _sp(_pair_args("z", "main")), [1, 2], [])],
                                  moved=[]))
    logits = torch.randn(1, VOCAB)
    before = logits.clone()
    assert torch.equal(proc.apply(logits), before)
    assert proc._rows[0].broken
    assert proc.is_argmax_invariant() is False


def test_twin_rows_sampling_is_seeded_and_forces_both_rows():
    def run(seed):
        proc = DebiasLogitsProcessor(SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB)),
                                     torch.device("cpu"), False)
        m = _sp(_pair_args("s", "main", 1.0, 0.01), temperature=1.0, top_p=0.9, seed=seed)
        a = _sp(_pair_args("s", "aux", 1.0, 0.01), temperature=1.0, top_p=0.9, seed=seed)
        om, oa = [], []
        proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[(0, m, [1], om), (1, a, [2], oa)], moved=[]))
        for _ in range(8):
            out = proc.apply(torch.stack([fake_logits([1] + om), fake_logits([2] + oa)]))
            assert torch.isfinite(out).sum() == 2  # one-hot rows
            om.append(int(out[0].argmax()))
            oa.append(int(out[1].argmax()))
        assert om == oa
        return om

    assert run(3) == run(3)
    assert run(3) != run(4) or run(3) != run(5)


# -- helpers -------------------------------------------------------------------------------------------------
def test_lockstep_choice_equals_full_vocab_contrast():
    from vllm_debias.lockstep import choose_token

    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        lc, lu = torch.randn(VOCAB, generator=g) * 3, torch.randn(VOCAB, generator=g) * 3
        full = int(contrast(lc[None], lu[None], 1.3, 0.1)[0].argmax())
        lpc, lpu = torch.log_softmax(lc.double(), -1), torch.log_softmax(lu.double(), -1)
        top = torch.topk(lpc, 20).indices.tolist()
        t = choose_token({i: float(lpc[i]) for i in top}, {i: float(lpu[i]) for i in top}, 1.3, 0.1)
        assert t == full


def test_waves_fit_the_token_budget():
    from vllm_debias.offline import _waves

    assert _waves([3, 3, 3, 3], budget=7, max_seqs=100) == [[0, 1], [2, 3]]
    assert _waves([3, 3, 3], budget=100, max_seqs=4) == [[0, 1], [2]]
    assert _waves([10], budget=5, max_seqs=4) == [[0]]


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


def test_serve_command(tmp_path, tiny_llama_dir):
    from vllm_debias.serve import server_command

    from debias_lm.cli.main import main

    cmd = server_command(str(tiny_llama_dir), port=8123, nbls=True, chat_template_dir=str(tmp_path),
                         extra=["--enforce-eager"])
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "vllm_debias:DebiasLogitsProcessor" in cmd and cmd[-1] == "--enforce-eager"
    assert (tmp_path / "nbls_chat_template.jinja").is_file()
    assert main(["serve", "--model", str(tiny_llama_dir), "--dry-run"]) == 0
    assert main(["serve", "--model", str(tiny_llama_dir), "--nbls", "--nbls-k", "0", "--dry-run"]) == 2
    assert math.isfinite(1.0)
