"""``debias-lm uddia distill``: the distilled offsets equal the mean of the offsets UDDIA applied, recorded here by
wrapping UDDIA's own steps (the perturbed forward's offsets, each attempt's decoded rows), with the kept attempt of
each row taken from UDDIA's attempt log; the file is loaded by ``steer`` on the same model."""

from __future__ import annotations

import json

import pytest
import torch

import debias_lm as dl
from debias_lm.methods.uddia.hf import UDDIAHF
from debias_lm.utils.steer_file import SteerFile

PROMPTS = ["The nurse said that", "He and she went to the store and the teacher asked", "You stupid", "Hello"]




class Recorder:
    """Wraps ``UDDIAHF._decode`` (one call per attempt: its rows' token counts) and ``_perturbed`` (the offsets
    x_t's tuned distribution is computed with) — the test's own record, not the accumulator's."""

    def __init__(self, monkeypatch):
        self.calls = []  # per generate call: list of attempts
        orig_decode, orig_perturbed = UDDIAHF._decode, UDDIAHF._perturbed
        rec = self

        def decode(self_, input_ids, attention_mask, T, gen, return_cache=False):
            rec.calls[-1].append({"T": T, "offsets": []})
            out = orig_decode(self_, input_ids, attention_mask, T, gen, return_cache)
            rec.calls[-1][-1]["tokens"] = out[1].sum(1).tolist()  # row-steps decoded per row of this attempt
            return out

        def perturbed(self_, deltas, rows, ctx, counts):
            names = {id(s.module): s.name for s in [*self_.sites, self_.final_site]}
            rec.calls[-1][-1]["offsets"].append((rows.tolist(), {names[k]: d.clone() for k, d in deltas.items()}))
            return orig_perturbed(self_, deltas, rows, ctx, counts)

        monkeypatch.setattr(UDDIAHF, "_decode", decode)
        monkeypatch.setattr(UDDIAHF, "_perturbed", perturbed)

    def expected(self, logs_per_call):
        """Sum of offsets, row-steps and tuned row-steps over the kept attempt of every row (min perplexity, first
        on ties), from the attempt logs UDDIA returned."""
        total: dict[str, torch.Tensor] = {}
        steps = tuned = 0
        for attempts, log in zip(self.calls, logs_per_call):
            for r, row_log in enumerate(log):
                ppls = [a["ppl"] for a in row_log]
                k = min(range(len(ppls)), key=lambda i: (ppls[i], i)) if not all(p != p for p in ppls) else 0
                # the local index of row r in attempt k: rows still running at attempt k, in order
                local = sum(1 for rr in range(r) if len(log[rr]) > k)
                att = attempts[k]
                steps += att["tokens"][local]
                for rows, deltas in att["offsets"]:
                    if local in rows:
                        j = rows.index(local)
                        tuned += 1
                        for name, d in deltas.items():
                            total[name] = total.get(name, 0) + d[j].double()
        return total, steps, tuned


@pytest.mark.parametrize("redo", [False, True])
def test_distilled_offsets_are_the_mean_of_the_offsets_uddia_applied(tiny, tmp_path, monkeypatch, redo):
    from debias_lm.methods.uddia.distill import distill, distilled_file

    name, model, tok, probe = tiny
    extra = dict(num_layers=3, layer_step=1, ppl_threshold=1.0001) if redo else dict(layer_step=0)
    w = dl.wrap(model, tok, dl.UDDIAConfig(variant="t", probe=probe, lr=0.5, tox_trigger=0.5, **extra))
    rec = Recorder(monkeypatch)
    logs = []
    orig_generate = w.impl.generate_with_redo

    def generate_with_redo(*a, **k):
        rec.calls.append([])
        out = orig_generate(*a, **k)
        logs.append(w.impl.last_stats["attempt_log"])
        return out

    monkeypatch.setattr(w.impl, "generate_with_redo", generate_with_redo)
    acc, stats = distill(w, PROMPTS, samples=3, max_new_tokens=5, batch_size=5, seed=3)
    assert len(rec.calls) == 3  # 12 rows in batches of 5
    total, steps, tuned = rec.expected(logs)
    if redo:
        assert any(len(log) > 1 for call in logs for log in call)  # redo really happened
    assert 0 < tuned < steps, "the test needs both tuned and untuned steps"
    assert stats["kept_row_steps"] == steps and stats["kept_tuned_row_steps"] == tuned
    mean, trig = acc.result("mean"), acc.result("triggered")
    assert set(total) <= set(mean)
    for site, v in mean.items():
        ref = total.get(site, torch.zeros_like(v, dtype=torch.float64))
        torch.testing.assert_close(v.double(), ref / steps, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(trig[site].double(), ref / tuned, atol=1e-7, rtol=1e-6)
    assert any(float(v.abs().max()) > 0 for v in mean.values())

    # the file: steer format, uddia_sites, loadable by steer on this model and changing its output
    f = distilled_file(w, acc, stats, average="mean", prompts_path=_prompts_file(tmp_path), n_prompts=len(PROMPTS),
                       settings={"samples": 3})
    path = f.save(tmp_path / "d.safetensors")
    loaded = SteerFile.load(path)
    assert loaded.site_kind == "uddia_sites" and loaded.meta["recipe"] == "uddia-distill-mean"
    assert loaded.meta["provenance"]["kept_tuned_row_steps"] == tuned
    for site, v in loaded.site_vectors().items():
        torch.testing.assert_close(v.double(), total[site] / steps, atol=1e-7, rtol=1e-6)
    enc = tok(["The nurse said that"], return_tensors="pt")
    s = dl.wrap(model, tok, dl.SteerConfig(vectors=str(path), scale=50.0))
    steered = s.generate(**enc, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    plain = model.generate(**enc, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert not torch.allclose(steered.logits[0], plain.logits[0])


def _prompts_file(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": x}) + "\n" for x in PROMPTS))
    return p


def test_distill_cli_writes_both_averages(tiny_llama_dir, tmp_path, labeled_texts):
    from debias_lm.cli.main import main
    from debias_lm.methods.uddia.probe import train_probe
    from debias_lm.models import load_model

    model, tok = load_model(str(tiny_llama_dir))
    probe = train_probe(model, tok, *labeled_texts, epochs=20).save(tmp_path / "p.safetensors")
    out, other = tmp_path / "mean.safetensors", tmp_path / "trig.safetensors"
    assert main(["uddia", "distill", "--model", str(tiny_llama_dir), "--prompts", str(_prompts_file(tmp_path)),
                 "--out", str(out), "--out-other", str(other), "--set", f"probe={json.dumps(str(probe))}",
                 "--set", "tox_trigger=0.5", "--set", "lr=0.5", "--samples", "2", "--max-new-tokens", "4",
                 "--no-progress"]) == 0
    m, t = SteerFile.load(out), SteerFile.load(other)
    assert m.meta["recipe"] == "uddia-distill-mean" and t.meta["recipe"] == "uddia-distill-triggered"
    rate = m.meta["provenance"]["kept_trigger_rate"]
    assert 0 < rate <= 1
    for site, v in m.site_vectors().items():  # the same sums over two counts: triggered = mean / trigger rate
        torch.testing.assert_close(t.site_vectors()[site], v / rate, atol=1e-6, rtol=1e-4)
    assert "uddia distill" in m.meta["provenance"]["command"]
    js = tmp_path / "gen.json"
    assert main(["generate", "--method", "steer", "--model", str(tiny_llama_dir), "--no-chat", "--prompt", "Hello",
                 "--max-new-tokens", "3", "--set", f"vectors={out}", "--set", "scale=1", "--json", str(js)]) == 0


def test_distill_bad_input_before_the_model_loads(tmp_path):
    from debias_lm.cli.main import main

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    assert main(["uddia", "distill", "--model", "/nonexistent", "--prompts", str(bad), "--out",
                 str(tmp_path / "o.safetensors")]) == 2
    assert main(["uddia", "distill", "--model", "/nonexistent", "--prompts", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "o.safetensors")]) == 2
