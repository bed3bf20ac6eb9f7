"""vLLM steering without an engine: request admission (every bad input refused with our message), the
prefix-cache salt and the middleware that enforces it, the per-token fill against a per-token Python loop (V1
rows; MRV2 slots with vLLM's own InputBatch / InputBuffers dataclasses), the layer hook against the HF formulas
of ``debias_lm.core.steer``, the vector registry's checks, and the plugin's entry point."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

import debias_lm as dl  # noqa: E402
from debias_lm.core import steer as core  # noqa: E402
from debias_lm.errors import UserInputError  # noqa: E402
from debias_lm.methods.steer.vllm import SteerSetting, cache_salt  # noqa: E402
from debias_lm.testing.steer import random_directions, write_steer_file  # noqa: E402

H, L = 16, 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("steer_units")
    a = write_steer_file(d / "a.safetensors", random_directions(H, (1, 2), seed=0), hidden_size=H, num_layers=L,
                         fingerprint="fp")
    b = write_steer_file(d / "b.safetensors", random_directions(H, (0, 3), seed=1, norm=2.0), hidden_size=H,
                         num_layers=L, fingerprint="fp")
    return {"a": a, "b": b}


@pytest.fixture
def served(files, monkeypatch):
    """The frontend knows the engine's vectors from the environment, as under ``debias-lm serve --steer``."""
    from vllm_debias.steer.vectors import ENV, encode

    monkeypatch.setenv(ENV, encode(files))
    return files


class _SP:
    def __init__(self, extra_args=None):
        self.extra_args = extra_args
        self.n = 1


def _steer(**kw):
    return {"debias_method": "steer", "debias_vectors": "a", **kw}


# -- admission ---------------------------------------------------------------------------------------------
def test_steer_request_parsed_with_the_config_defaults(served):
    from vllm_debias.args import parse

    spec = parse(_steer(debias_scale=2, debias_layers=[2]), steer=True)
    assert spec.steer == SteerSetting(name="a", scale=2.0, layers=(2,), positions="all", mode="add")
    assert parse(_steer(), steer=True).steer.scale == dl.SteerConfig().scale


@pytest.mark.parametrize("extra, message", [
    ({"debias_scale": 1e9}, "SteerConfig.scale=1000000000.0 is invalid"),
    ({"debias_scale": "nan"}, "scale"),
    ({"debias_scale": float("inf")}, "scale"),
    ({"debias_positions": "middle"}, "positions"),
    ({"debias_mode": "subtract"}, "mode"),
    ({"debias_layers": [-1]}, "layers"),
    ({"debias_layers": [1, 1]}, "listed twice"),
    ({"debias_layers": [0]}, "layer(s) [0] are not in the vectors 'a'"),
    ({"debias_vectors": "nope"}, "unknown steering vectors 'nope'; this engine serves: a, b"),
    ({"debias_vectors": ""}, "vectors"),
    ({"debias_scal": 2.0}, "unknown key 'debias_scal'"),
    ({"debias_pair": "x"}, "debias_pair do not apply to method 'steer'"),
])
def test_bad_steer_requests_refused_at_admission_with_our_message(served, extra, message):
    from vllm_debias.steer.processor import SteerLogitsProcessor

    with pytest.raises(ValueError) as e:
        SteerLogitsProcessor.validate_params(_SP(_steer(**extra)))
    assert str(e.value).startswith("vllm_debias:")
    assert message in str(e.value)


def test_valid_and_plain_requests_pass_admission(served):
    from vllm_debias.steer.processor import SteerLogitsProcessor

    for extra in (None, {}, {"other_plugin": 1}, _steer(), _steer(debias_vectors="b", debias_mode="ablate"),
                  _steer(debias_scale=0.0), _steer(debias_positions="generated", debias_layers=[1, 2])):
        SteerLogitsProcessor.validate_params(_SP(extra))


def test_engine_without_steering_refuses_steer_requests(monkeypatch):
    """The classes of LOGITS_PROCESSORS (what an engine without steering loads) each refuse a steer request."""
    from vllm_debias import CalibrationLogitsProcessor, ContrastLogitsProcessor
    from vllm_debias.steer import vectors

    monkeypatch.delenv(vectors.ENV, raising=False)
    monkeypatch.setattr(vectors, "_ANNOUNCED", {})  # no steering engine configured in this process either
    for cls in (CalibrationLogitsProcessor, ContrastLogitsProcessor):
        with pytest.raises(ValueError, match="needs an engine started with steering vectors"):
            cls.validate_params(_SP(_steer()))


def test_frontend_that_does_not_know_the_vectors_refuses(monkeypatch):
    from vllm_debias.steer import vectors
    from vllm_debias.steer.processor import SteerLogitsProcessor

    monkeypatch.delenv(vectors.ENV, raising=False)
    monkeypatch.setattr(vectors, "_ANNOUNCED", {})
    with pytest.raises(ValueError, match="does not know which steering vectors"):
        SteerLogitsProcessor.validate_params(_SP(_steer()))
    SteerLogitsProcessor.validate_params(_SP({"debias_method": "identity"}))  # others are unaffected


def test_steer_engine_args_announce_the_vectors_in_process(files, monkeypatch):
    import vllm_debias
    from vllm_debias.steer import vectors
    from vllm_debias.steer.processor import SteerLogitsProcessor

    monkeypatch.delenv(vectors.ENV, raising=False)
    monkeypatch.setattr(vectors, "_ANNOUNCED", {})
    args = vllm_debias.steer_engine_args([f"a={files['a']}"])
    assert args["hf_overrides"]["architectures"] == ["DebiasSteerLlamaForCausalLM"]
    assert json.loads(args["hf_overrides"]["debias_steer_vectors"]) == {"a": files["a"]}
    assert args["logits_processors"] == ["vllm_debias.steer.processor:SteerLogitsProcessor",
                                         *vllm_debias.LOGITS_PROCESSORS]
    SteerLogitsProcessor.validate_params(_SP(_steer()))
    with pytest.raises(ValueError, match="unknown steering vectors 'b'"):
        SteerLogitsProcessor.validate_params(_SP(_steer(debias_vectors="b")))


# -- the salt ----------------------------------------------------------------------------------------------
def test_cache_salt_separates_every_setting_and_keeps_equal_ones_together():
    from vllm.entrypoints.generate.base.protocol import validate_cache_salt

    base = SteerSetting("a", 4.0)
    variants = [SteerSetting("b", 4.0), SteerSetting("a", 4.5), SteerSetting("a", 4.0, layers=(1,)),
                SteerSetting("a", 4.0, positions="generated"), SteerSetting("a", 4.0, mode="ablate")]
    salts = [cache_salt(s) for s in [base, *variants]] + [cache_salt(base, "client")]
    assert len(set(salts)) == len(salts)
    assert cache_salt(SteerSetting("a", 4)) == cache_salt(base)  # 4 and 4.0 are one setting
    assert cache_salt(None, "client") == "client" and cache_salt(None) is None
    assert cache_salt(SteerSetting("a", 0.0), "c") == "c"  # scale 0 is a plain request
    for s in salts:
        validate_cache_salt(s)  # vLLM's own check of the HTTP field


def test_middleware_salts_steered_bodies_only(served):
    from vllm_debias.args import parse
    from vllm_debias.steer.salt import SteerSaltMiddleware

    seen = []

    async def app(scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        seen.append((dict(scope["headers"]), body))

    def run(body: bytes, path="/v1/completions", method="POST", chunks=1):
        step = max(1, len(body) // chunks)
        parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
        msgs = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

        async def receive():
            return msgs.pop(0)

        scope = {"type": "http", "method": method, "path": path,
                 "headers": [(b"content-length", str(len(body)).encode())]}
        asyncio.run(SteerSaltMiddleware(app)(scope, receive, None))
        return seen[-1]

    steered = {"model": "m", "prompt": "x", "vllm_xargs": _steer(debias_scale=2.0)}
    headers, body = run(json.dumps(steered).encode(), chunks=3)
    data = json.loads(body)
    assert data["cache_salt"] == cache_salt(parse(steered["vllm_xargs"], steer=True).steer)
    assert headers[b"content-length"] == str(len(body)).encode()
    with_client = dict(steered, cache_salt="mine")
    assert json.loads(run(json.dumps(with_client).encode(), path="/v1/chat/completions")[1])["cache_salt"] == \
        cache_salt(SteerSetting("a", 2.0), "mine")
    for unchanged in ({"model": "m", "prompt": "x"}, {"model": "m", "prompt": "x", "cache_salt": "c"},
                      {"model": "m", "prompt": "x", "vllm_xargs": _steer(debias_scale="bad")},
                      {"model": "m", "prompt": "x", "vllm_xargs": {"debias_method": "identity"}}):
        raw = json.dumps(unchanged).encode()
        assert run(raw)[1] == raw
    assert run(b"{not json")[1] == b"{not json"
    raw = json.dumps(steered).encode()
    assert run(raw, path="/v1/models")[1] == raw and run(raw, method="GET")[1] == raw


# -- per-token fill -----------------------------------------------------------------------------------------
def _tables(files):
    from vllm_debias.steer.vectors import VectorTables

    return VectorTables(files, hidden_size=H, num_layers=L)


def _expected(tables, setting, prompt_len, pos):
    """Per-token (table row, coef per layer, ablate) written out from the definitions."""
    if setting is None or setting.scale == 0:
        return 0, [0.0] * (L + 1), False
    file_layers = tables.layers[setting.name]
    on = setting.positions == "all" or pos >= prompt_len
    layers = setting.layers or file_layers
    ablate = setting.mode == "ablate"
    row = tables.ids[setting.name] + (tables.num_vectors if ablate else 0)
    coef = [(1.0 if ablate else setting.scale) if (on and layer in layers) else 0.0
            for layer in range(L)] + [0.0]  # no final-norm site in residual files
    return row, coef, ablate


def _check_tokens(buf, tables, per_token):
    for t, (setting, prompt_len, pos) in enumerate(per_token):
        row, coef, ablate = _expected(tables, setting, prompt_len, pos)
        if any(coef):
            assert int(buf.index[t]) == row and bool(buf.ablate[t]) == ablate, t
        assert buf.coef[:, t].tolist() == pytest.approx(coef), t


SETTINGS = {"A2": SteerSetting("a", 2.0), "Bgen": SteerSetting("b", -1.5, positions="generated"),
            "Aab": SteerSetting("a", 1.0, layers=(2,), mode="ablate"), "zero": SteerSetting("b", 0.0)}


def test_v1_fill_matches_a_per_token_loop(files):
    from vllm_debias.steer.rows import SteerRows, TokenBuffers, fill_tokens

    tables = _tables(files)
    rows = SteerRows(tables, 8, "cpu")
    buf = TokenBuffers(64, L + 1, "cpu")
    buf.coef.fill_(9.0)
    # rows 0..4: plain decode, A2 prefill chunk, Bgen straddling its prompt end, Aab decode, zero-scale decode
    reqs = [(None, 5, 9, 1), (SETTINGS["A2"], 10, 3, 5), (SETTINGS["Bgen"], 6, 4, 4), (SETTINGS["Aab"], 4, 7, 1),
            (SETTINGS["zero"], 3, 5, 1)]
    for r, (s, plen, _, _) in enumerate(reqs):
        rows.set(r, s, plen)
    rows.flush()
    counts = [c for *_, c in reqs]
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(counts), [sum(counts)]]), dtype=torch.int32)  # + a pad row
    n = sum(counts) + 3  # padding tokens after the last row
    positions = torch.tensor(sum([list(range(p, p + c)) for _, _, p, c in reqs], []) + [0, 0, 0])
    fill_tokens(buf, rows, qsl, positions, n)
    per_token = [(s, plen, p) for s, plen, start, c in reqs for p in range(start, start + c)] + [(None, 0, 0)] * 3
    _check_tokens(buf, tables, per_token)


def test_v1_rows_follow_moves_and_swaps(files):
    from vllm_debias.steer.rows import SteerRows

    rows = SteerRows(_tables(files), 4, "cpu")
    rows.set(0, SETTINGS["A2"], 3)
    rows.set(1, SETTINGS["Bgen"], 7)
    rows.move(0, 2, swap=False)  # condense: 0 -> 2, 0 empty
    rows.move(1, 2, swap=True)
    rows.flush()
    assert rows.index.tolist() == [0, rows.tables.ids["a"], rows.tables.ids["b"], 0]
    assert rows.start.tolist() == [0, 0, 7, 0]
    assert rows.coef[1].tolist() == [0.0, 2.0, 2.0, 0.0, 0.0] and rows.num_active == 2
    rows.set(1, None, 0)
    rows.set(2, SteerSetting("nope", 1.0), 0)  # unknown name (admission normally refuses): plain, logged
    rows.flush()
    assert rows.num_active == 0 and not rows.coef.any()


def test_mrv2_fill_with_vllms_input_batch_and_recycled_slots(files):
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.input_batch import InputBatch, InputBuffers
    from vllm_debias.steer.mrv2 import SteerSlots
    from vllm_debias.steer.rows import TokenBuffers

    tables = _tables(files)
    buf = TokenBuffers(64, L + 1, "cpu")
    buf.coef.fill_(9.0)
    slots = SteerSlots(tables, 8, buf, "cpu")
    reqs = {"q": (7, None, 3), "a": (5, SETTINGS["A2"], 10), "b": (0, SETTINGS["Bgen"], 6), "p": (2, None, 7),
            "x": (4, SETTINGS["Aab"], 2)}
    for rid, (slot, s, plen) in reqs.items():
        slots.add_request(slot, rid, SamplingParams(extra_args=None if s is None else s.wire()), plen)
    slots.apply_staged_writes()
    order, counts = ["q", "a", "b", "p", "x"], [1, 5, 2, 1, 1]
    start = {"q": 9, "a": 3, "b": 5, "p": 12, "x": 2}
    n, n_pad = sum(counts), 14
    ib = InputBatch.make_dummy(num_reqs=len(order), num_tokens=n, input_buffers=InputBuffers(8, 64, torch.device("cpu")))
    qsl_np = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    positions = torch.tensor(sum([list(range(start[r], start[r] + c)) for r, c in zip(order, counts)], []))
    ib = dataclasses.replace(ib, idx_mapping=torch.tensor([reqs[r][0] for r in order], dtype=torch.int32),
                             num_tokens_after_padding=n_pad, query_start_loc=torch.from_numpy(qsl_np),
                             query_start_loc_np=qsl_np,
                             positions=torch.cat([positions, torch.zeros(n_pad - n, dtype=torch.int64)]))
    slots.prepare(ib)
    per_token = [(reqs[r][1], reqs[r][2], p) for r, c in zip(order, counts) for p in range(start[r], start[r] + c)]
    _check_tokens(buf, tables, per_token + [(None, 0, 0)] * (n_pad - n))
    # slot 5 recycled by a plain request, slot 0's request removed: their tokens are plain now
    slots.remove_request("a")
    slots.add_request(5, "c", SamplingParams(), 4)
    slots.remove_request("b")
    slots.apply_staged_writes()
    slots.prepare(ib)
    per_token = [((None, 0, 0) if r in ("a", "b") else (reqs[r][1], reqs[r][2], p))
                 for r, c in zip(order, counts) for p in range(start[r], start[r] + c)]
    _check_tokens(buf, tables, per_token)
    slots.remove_request("x")
    slots.apply_staged_writes()
    slots.prepare(ib)
    assert not buf.coef.any()  # nothing steered: zeros, as a replayed graph then needs


def test_model_state_wrapper_keeps_vllms_base_class():
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState
    from vllm_debias.steer.mrv2 import steer_model_state_cls

    cls = steer_model_state_cls(DefaultModelState)
    assert issubclass(cls, DefaultModelState) and cls.__name__ == "SteerDefaultModelState"
    for hook in ("add_request", "remove_request", "apply_staged_writes", "prepare_inputs"):
        assert getattr(cls, hook) is not getattr(DefaultModelState, hook)


# -- the hook ------------------------------------------------------------------------------------------------
def test_layer_hook_equals_the_hf_formulas_and_leaves_plain_tokens_alone(files):
    from vllm_debias.steer.model import steer_hook
    from vllm_debias.steer.rows import SteerRows, TokenBuffers, fill_tokens

    tables = _tables(files)
    rows, buf = SteerRows(tables, 4, "cpu"), TokenBuffers(16, L + 1, "cpu")
    settings = [SETTINGS["A2"], None, SteerSetting("a", 1.0, mode="ablate")]
    for r, s in enumerate(settings):
        rows.set(r, s, 0)
    rows.flush()
    fill_tokens(buf, rows, torch.tensor([0, 2, 4, 6], dtype=torch.int32), torch.arange(6), 6)
    layer = 1
    module = torch.nn.Module()
    module.steer_table, module.steer_index = tables.table[layer], buf.index
    module.steer_coef, module.steer_ablate = buf.coef[layer], buf.ablate
    module.steer_tokens = buf
    g = torch.Generator().manual_seed(3)
    hidden, residual = torch.randn(6, H, generator=g), torch.randn(6, H, generator=g)
    h2, r2 = steer_hook(module, (), (hidden, residual))
    assert h2 is hidden
    stream, new = hidden + residual, h2 + r2
    v = tables.files["a"].layer_vectors()[layer].float()
    torch.testing.assert_close(new[:2], core.add_offsets(stream[:2].unsqueeze(0), core.row_offsets(
        v, torch.tensor([2.0]), torch.float32))[0], rtol=0, atol=1e-6)
    assert torch.equal(r2[2:4], residual[2:4])  # plain: exactly the same residual
    torch.testing.assert_close(new[4:], core.ablate_direction(stream[4:], v), rtol=0, atol=1e-6)
    assert not torch.allclose(new[4:], stream[4:])  # the ablation did something
    out = steer_hook(module, (), hidden)  # a layer that returns the stream itself
    torch.testing.assert_close(out[:2], hidden[:2] + 2.0 * v, rtol=0, atol=1e-6)
    rows.set(2, None, 0)  # no ablate row left: the eager add-only path gives the same additions
    rows.flush()
    fill_tokens(buf, rows, torch.tensor([0, 2, 4, 6], dtype=torch.int32), torch.arange(6), 6)
    full = steer_hook(module, (), (hidden, residual))[1]
    buf.add_only = True
    assert torch.equal(steer_hook(module, (), (hidden, residual))[1], full)


# -- the registry --------------------------------------------------------------------------------------------
def test_vector_specs_and_files_are_checked_before_any_engine(files, tmp_path):
    from vllm_debias.steer.vectors import architecture_for, load_files, parse_specs

    assert parse_specs([f"a={files['a']}", f"b={files['b']}"]) == files
    for bad, msg in ((["a"], "expected NAME=FILE"), ([f"a={files['a']}", f"a={files['b']}"], "given twice"),
                     ([f"a b={files['a']}"], "is invalid"), (["a=missing.safetensors"], "no such file"), ([], "at least")):
        with pytest.raises(UserInputError, match=msg):
            parse_specs(bad)
    other = write_steer_file(tmp_path / "o.safetensors", random_directions(H * 2, (0,)), hidden_size=H * 2,
                             num_layers=L)
    with pytest.raises(UserInputError, match="different models"):
        load_files({"a": files["a"], "o": other})
    gpt2 = write_steer_file(tmp_path / "g.safetensors", random_directions(H, (0,)), hidden_size=H, num_layers=L,
                            model_type="gpt2")
    with pytest.raises(UserInputError, match="supports model types llama"):
        architecture_for({"g": gpt2})


def test_tables_hold_vectors_and_unit_directions(files):
    tables = _tables(files)
    v = len(tables.names)
    assert tables.table.shape == (L, 1 + 2 * v, H) and not tables.table[:, 0].any()
    a = tables.files["a"].layer_vectors()
    for layer in range(L):
        row = tables.table[layer, tables.ids["a"]]
        if layer in a:
            assert torch.equal(row, a[layer].float())
            torch.testing.assert_close(tables.table[layer, v + tables.ids["a"]], a[layer] / a[layer].norm())
        else:
            assert not row.any()


def test_general_plugin_entry_point_declared_and_reentrant():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from vllm import ModelRegistry
    from vllm_debias.steer import register

    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["vllm.general_plugins"] == {"debias_lm_steer": "vllm_debias.steer:register"}
    register()
    register()
    assert "DebiasSteerLlamaForCausalLM" in ModelRegistry.get_supported_archs()


def test_bias_site_files_add_only_and_steer_their_blocks(files, tmp_path, monkeypatch):
    from vllm_debias.steer.processor import SteerLogitsProcessor
    from vllm_debias.steer.rows import SteerRows
    from vllm_debias.steer.vectors import ENV, VectorTables, encode

    from debias_lm.utils.steer_file import SteerFile

    meta = {**SteerFile.load(files["a"]).meta, "site_kind": "uddia_sites", "recipe": "uddia-distill-mean"}
    u = tmp_path / "u.safetensors"
    SteerFile({"sites.model.layers.1.mlp.down_proj": torch.ones(H), "sites.final_norm": torch.full((H,), 2.0)},
              meta).save(u)
    served = {"a": files["a"], "u": str(u)}
    monkeypatch.setenv(ENV, encode(served))
    for extra, message in (({"debias_mode": "ablate"}, "needs residual-stream vectors"),
                           ({"debias_layers": [9]}, r"blocks \[9\] do not exist")):
        with pytest.raises(ValueError, match=message):
            SteerLogitsProcessor.validate_params(_SP(_steer(debias_vectors="u", **extra)))
    for extra in ({}, {"debias_layers": [L]}, {"debias_layers": [0, 2]}):  # block L = the final norm
        SteerLogitsProcessor.validate_params(_SP(_steer(debias_vectors="u", **extra)))
    tables = VectorTables(served, hidden_size=H, num_layers=L)
    i, v = tables.ids["u"], tables.num_vectors
    assert tables.layers["u"] == (1, L) and not tables.table[:, i].any()  # no residual rows for a site file
    assert tables.sites["final_norm"][i].tolist() == [2.0] * H and not tables.sites["final_norm"][v + i].any()
    assert not tables.sites["final_norm"][tables.ids["a"]].any()  # a residual file adds nothing at sites
    rows = SteerRows(tables, 2, "cpu")
    rows.set(0, SteerSetting("u", 3.0), 0)
    rows.set(1, SteerSetting("u", 3.0, mode="ablate"), 0)  # admission refuses it; the worker leaves it plain
    rows.flush()
    assert rows.coef[0].tolist() == [0.0, 3.0, 0.0, 0.0, 3.0] and not rows.coef[1].any()
