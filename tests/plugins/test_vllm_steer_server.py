"""A real ``debias-lm serve --steer a=A --steer b=B`` on 127.0.0.1 (tiny 4-layer Llama, fp32): opted-in, plain and bad
requests at once (the soak's kinds with its steering kinds; every plain one equals HF plain decoding, every steered
one the HF ``steer`` path, every bad one HTTP 400 with our message), the server-side ``cache_salt`` (a plain request
after a steered one with the same prompt gets no cached block and plain tokens), and the server keeps serving.

The steer-capable model is registered in the server's processes by the ``vllm.general_plugins`` entry point.
Where the package is not installed with its metadata (a source checkout on PYTHONPATH), the test adds the same
entry point through a minimal ``.dist-info`` on the server's PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from debias_lm.testing.steer import random_directions, write_steer_file  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.server]

N = 8
PROMPTS = ["The nurse said that", "A pilot", "The doctor told me that", "He and she went to the"]
LONG = " ".join(["The engineer said that he was busy and the nurse said that she would be late."] * 5)


def _entry_point_env(tmp: Path) -> dict:
    from importlib.metadata import entry_points

    env = dict(os.environ)
    # a real server, as deployed: its engine core runs in its own process (other test modules set this to 0 for
    # their in-process engines, and pytest imports them all before any test runs)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    if any(ep.value == "vllm_debias.steer:register" for ep in entry_points(group="vllm.general_plugins")):
        return env
    dist = tmp / "site" / "debias_lm_steer_entry-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: debias-lm-steer-entry\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[vllm.general_plugins]\ndebias_lm_steer = vllm_debias.steer:register\n")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp / "site"), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from debias_lm.testing import build_tiny_llama, save_tiny
    from debias_lm.testing.server import serve_local

    tmp = tmp_path_factory.mktemp("vsteer_server")
    model, tok = build_tiny_llama(num_layers=4)
    path = save_tiny(model, tok, tmp / "tiny4")
    files = {"a": write_steer_file(tmp / "a.safetensors", random_directions(64, (1, 2), seed=0, norm=1.0), model=model),
             "b": write_steer_file(tmp / "b.safetensors", random_directions(64, (0, 3), seed=1, norm=1.0), model=model)}
    with serve_local(path, tmp / "server.log", args=[a for n, f in files.items() for a in ("--steer", f"{n}={f}")],
                     vllm_args=("--enforce-eager", "--seed", "0", "--dtype", "float32", "--max-model-len", "512",
                                "--enable-prompt-tokens-details", "--enable-prefix-caching", "--block-size", "32"),
                     env=_entry_point_env(tmp), timeout_s=900) as srv:
        yield {"url": srv.url, "model": srv.model, "dir": str(path), "files": files, "hf": model, "tok": tok,
               "log": srv.log, "proc": srv}


def _post(server, body):
    from vllm_debias.soak import _post as post

    return post(server["url"] + "/v1/completions", json.dumps(dict(body, model=server["model"])).encode(), 120)


def _hf_plain(server, prompt, n=N):
    tok, model = server["tok"], server["hf"]
    enc = tok(prompt, return_tensors="pt")
    return model.generate(**enc, do_sample=False, max_new_tokens=n)[0, enc["input_ids"].shape[1]:].tolist()


def test_concurrent_opted_in_plain_and_bad_requests(server):
    from vllm_debias.soak import _ref_key, build_requests, soak, steer_reference_hf

    from debias_lm.utils.steer_file import SteerFile

    layers = {n: tuple(SteerFile.load(f).layers) for n, f in server["files"].items()}
    reqs = build_requests(126, server["tok"], len(server["tok"]), 512, N, prompts=PROMPTS, labels=("he", "she"),
                          steer=layers)
    reqs = [r for r in reqs if float(r["body"].get("temperature", 0.0)) == 0.0 and r["kind"] != "bad_plain_too_long"]
    assert len(reqs) >= 50 and {r["kind"] for r in reqs} >= {"steer_add", "steer_generated", "steer_ablate_one_layer",
                                                             "bad_steer_unknown_name", "plain_greedy"}
    reference = {_ref_key(r["body"]): _hf_plain(server, r["body"]["prompt"], r["body"]["max_tokens"])
                 for r in reqs if r["expect"] == "ref"}
    steered = steer_reference_hf(server["dir"], "float32", reqs, server["files"])
    assert len(steered) >= 3
    reference.update(steered)
    report = soak(server["url"], server["model"], reqs, reference, max_seconds=300, workers=len(reqs))
    assert report["findings"] == [] and report["server_up_after"]
    assert report["per_kind"]["steer_add"]["ok"] == report["per_kind"]["steer_add"]["sent"] >= 2
    # the steered kinds really steer: each changes the continuation of some prompt
    changed: dict[str, bool] = {}
    for r in reqs:
        if r["expect"] == "steer":
            differs = steered[_ref_key(r["body"])] != _hf_plain(server, r["body"]["prompt"])
            changed[r["kind"]] = changed.get(r["kind"], False) or differs
    assert changed and all(changed.values()), changed


def test_bad_steer_request_gets_400_with_our_message(server):
    code, resp = _post(server, {"prompt": "A pilot", "max_tokens": 2,
                                "vllm_xargs": {"debias_method": "steer", "debias_vectors": "nope"}})
    assert code == 400 and "vllm_debias: unknown steering vectors 'nope'; this engine serves: a, b" in json.dumps(resp)
    code, resp = _post(server, {"prompt": "A pilot", "max_tokens": 2,
                                "vllm_xargs": {"debias_method": "steer", "debias_vectors": "a", "debias_scale": 1e9}})
    assert code == 400 and "SteerConfig.scale" in json.dumps(resp)
    with urllib.request.urlopen(server["url"] + "/health", timeout=5) as r:
        assert r.status == 200


def test_server_salts_steered_requests_so_plain_ones_never_reuse_their_blocks(server):
    from vllm_debias.soak import steer_reference_hf

    steer = {"debias_method": "steer", "debias_vectors": "a", "debias_scale": 4.0}
    body = {"prompt": LONG, "max_tokens": N, "temperature": 0.0, "return_token_ids": True}

    def run(xargs=None):
        code, resp = _post(server, dict(body, **({"vllm_xargs": xargs} if xargs else {})))
        assert code == 200, resp
        cached = ((resp.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return resp["choices"][0]["token_ids"], cached

    s1, _ = run(steer)
    p1, cached_plain = run()
    assert cached_plain == 0 and p1 == _hf_plain(server, LONG)
    s2, cached_steer = run(steer)  # equal settings share their own blocks
    assert cached_steer > 0 and s2 == s1
    want = steer_reference_hf(server["dir"], "float32", [{"expect": "steer", "body": dict(body, vllm_xargs=steer)}],
                              server["files"])
    assert list(want.values()) == [s1] and s1 != p1
    p2, cached_plain = run()
    assert cached_plain > 0 and p2 == p1  # plain shares plain blocks: the cache is really on
