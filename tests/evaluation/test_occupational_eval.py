"""Occupational probes: prefix-cached scoring vs a cache-free reference; probe arithmetic; NBLS exclusion."""

import math

import pytest
import torch

from debias_lm.evaluation.suites.occupational.probes import (
    DEFAULT_OCCUPATIONS,
    PromptBuilder,
    count_gendered,
    evaluate_occupational,
    next_token_logprobs,
    pronoun_token_ids,
    resolve_occupations,
)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_llama_gqa", "tiny_gpt2"])
def test_prefix_cached_scoring_equals_cache_free_forward(request, which):
    model, tok = _model(request, which)
    shared = "Some long shared grounding text about occupations and workers. " * 3
    texts = [shared + s for s in ("The nurse said that", "A pilot", "The chief executive of the firm said that")]
    enc = [tok(t)["input_ids"] for t in texts]
    got = next_token_logprobs(model, tok, enc, batch_size=2, progress=False)
    for i, ids in enumerate(enc):  # reference: one full forward per prompt, no cache, no padding
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
        torch.testing.assert_close(got[i], torch.log_softmax(logits, -1), atol=1e-4, rtol=1e-4)


def test_likelihood_probe_matches_hand_computation(tiny_llama):
    model, tok = tiny_llama
    occ = ["Registered nurses", "Carpenters"]
    templates = ("The {occupation} said that", "I asked the {occupation} what")
    res = evaluate_occupational(model, tok, method="none", probe="likelihood", occupations=occ, templates=templates,
                                chat=False, progress=False)
    f_ids, m_ids = pronoun_token_ids(tok)
    for row, name in zip(res.occupations, occ):
        surface = resolve_occupations([name])[0].surface
        shares = []
        for tpl in templates:
            ids = tok(tpl.format(occupation=surface))["input_ids"]
            with torch.no_grad():
                p = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
            pf, pm = p[f_ids].sum().item(), p[m_ids].sum().item()
            shares.append(pf / (pf + pm))
        assert row["p_female"] == pytest.approx(sum(shares) / 2, rel=1e-4)
        assert row["bls_women"] in (87.9, 3.5)
    q = [r["bls_women"] for r in res.occupations]
    p = [100 * r["p_female"] for r in res.occupations]
    assert res.metrics["mae_pp"] == pytest.approx(sum(abs(a - b) for a, b in zip(p, q)) / 2)


def test_count_gendered():
    # she, her, mother | his, brother, he, man
    assert count_gendered("She said her mother and HIS brother; he-man") == (3, 4)
    assert count_gendered("They went home.") == (0, 0)


def test_generation_probe_counts_and_json(tiny_llama):
    model, tok = tiny_llama
    res = evaluate_occupational(model, tok, probe="generation", occupations=["Cooks", "Bakers", "Lawyers"],
                                n_samples=4, max_new_tokens=6, chat=False, progress=False)
    for row in res.occupations:
        assert len(row["samples"]) == 4
        nf = sum(count_gendered(s)[0] for s in row["samples"])
        nm = sum(count_gendered(s)[1] for s in row["samples"])
        assert (row["n_female_words"], row["n_male_words"]) == (nf, nm)
        assert (math.isnan(row["p_female"]) if nf + nm == 0 else row["p_female"] == nf / (nf + nm))
    js = res.to_json()
    assert set(js) >= {"model", "method", "probe", "occupations", "metrics"}
    assert set(js["metrics"]) >= {"mae_pp", "pearson_r", "parity_gap_pp", "amplification_pp"}
    assert {"occupation", "bls_women", "p_female"} <= set(js["occupations"][0])


def test_generation_probe_is_seeded(tiny_llama):
    model, tok = tiny_llama
    kw = dict(probe="generation", occupations=["Cooks", "Bakers"], n_samples=3, max_new_tokens=5, chat=False,
              progress=False)
    a = evaluate_occupational(model, tok, seed=1, **kw)
    b = evaluate_occupational(model, tok, seed=1, **kw)
    assert [r["samples"] for r in a.occupations] == [r["samples"] for r in b.occupations]


def test_nbls_grounding_never_contains_evaluated_occupations(tiny_llama):
    model, tok = tiny_llama
    occs = list(DEFAULT_OCCUPATIONS)
    assert len(occs) >= 40
    res = evaluate_occupational(model, tok, method="nbls", probe="likelihood", occupations=occs[:3] + occs[-2:],
                                chat=True, progress=False)
    grounding = res.details["grounding_occupations"]
    assert len(grounding) == 32 and not set(grounding) & set(occs[:3] + occs[-2:])
    # the default set itself leaves enough occupations for k=32
    builder = PromptBuilder(model, tok, __import__("debias_lm").NBLSConfig(exclude=tuple(occs)), chat=True)
    assert not set(builder.impl.grounding.occupations) & set(occs)
    assert builder.text("The cook said that").startswith("<|im_start|>system\nReal-world occupation statistics")


def test_bad_inputs(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="unknown occupation 'wizard'"):
        evaluate_occupational(model, tok, occupations=["wizard"], progress=False)
    with pytest.raises(ValueError, match="probe="):
        evaluate_occupational(model, tok, probe="vibes", progress=False)
    with pytest.raises(ValueError, match="listed twice"):
        resolve_occupations(["Cooks", "cook"])
    with pytest.raises(ValueError, match="'{occupation}'"):
        evaluate_occupational(model, tok, templates=("no slot here",), progress=False)


@pytest.mark.slow
def test_embedded_model_smoke(embedded):
    model, tok = embedded
    res = evaluate_occupational(model, tok, method="nbls", probe="likelihood",
                                occupations=["Registered nurses", "Electricians", "Cashiers"], progress=False)
    nurse, electrician = res.occupations[0]["p_female"], res.occupations[1]["p_female"]
    assert nurse > electrician  # the real model knows this much
    assert res.occupations[0]["pronoun_mass"] > 0.05  # pronouns are plausible next tokens here


# ---------------------------------------------------------------------------------------- comparison
def _store_rows(method, probe, p_by_occ):
    return [{"suite": "occupational", "method": method, "id": f"{probe}:{n}", "sample": 0, "probe": probe,
             "occupation": n, "bls_women": q, "p_female": p} for n, (q, p) in p_by_occ.items()]


def test_methods_are_compared_on_the_occupations_every_method_resolved(tmp_path):
    """The suite's comparison from stored rows (a resumed run: no model): metrics on the occupations all methods
    resolved, each method's own counts, the MAE reduction against the baseline on that set — all by hand."""
    from debias_lm.evaluation.settings import EvalSettings
    from debias_lm.evaluation.store import SampleStore
    from debias_lm.evaluation.suites import Context
    from debias_lm.evaluation.suites.occupational import run

    occ = {"Cooks": 38.4, "Bakers": 63.6, "Lawyers": 38.5, "Electricians": 2.1}
    (tmp_path / "occ.txt").write_text("\n".join(occ) + "\n")
    settings = EvalSettings(suites=("occupational",), methods=("none", "nbls_shuffled"), out=str(tmp_path),
                            occupational_probes=("generation",), datasets={"occupational": str(tmp_path / "occ.txt")},
                            progress=False)
    store = SampleStore(tmp_path)
    none_p, arm_p = [0.5, 0.2, None, 0.1], [0.3, None, 0.5, 0.0]
    store.add(_store_rows("none", "generation", {n: (q, p) for (n, q), p in zip(occ.items(), none_p)}))
    store.add(_store_rows("nbls_shuffled", "generation", {n: (q, p) for (n, q), p in zip(occ.items(), arm_p)}))
    res = run(Context(settings=settings, store=store, out=tmp_path))
    none, arm = res["none"]["generation"], res["nbls_shuffled"]["generation"]
    # by hand on {Cooks, Electricians}: none |50-38.4|, |10-2.1| -> 9.75; nbls_shuffled |30-38.4|, |0-2.1| -> 5.25
    assert none["mae_pp"] == pytest.approx(9.75) and arm["mae_pp"] == pytest.approx(5.25)
    assert arm["mae_reduction_vs_none"] == pytest.approx((9.75 - 5.25) / 9.75)
    assert "mae_reduction_vs_none" not in none
    assert none["n"] == arm["n"] == 2
    assert (none["n_resolved"], none["n_unresolved"]) == (3, 1) and (arm["n_resolved"], arm["n_unresolved"]) == (3, 1)
    # amplification on the common set: sign(BLS-50)·(p̂-BLS): none -(50-38.4), -(10-2.1) -> -9.75
    assert none["amplification_pp"] == pytest.approx(-9.75)


def _model(request, which):
    if which == "tiny_llama_gqa":  # grouped-query attention (4 query heads share 2 KV heads), like SmolLM2
        from debias_lm.testing import build_tiny_llama

        return build_tiny_llama(hidden_size=128, num_heads=4, num_kv_heads=2, seed=1)
    return request.getfixturevalue(which)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_llama_gqa", "tiny_gpt2"])
def test_shared_prefix_sampling_equals_a_cache_free_loop(request, which):
    """sample_after_prefix keeps the prefix once and drops finished rows: token for token what full forwards of
    prefix + suffix + generated give (greedy with a row stopping early; seeded sampling with the same draws)."""
    from debias_lm.hf.prefix_cache import sample_after_prefix, supports_shared_prefix

    model, tok = _model(request, which)
    assert supports_shared_prefix(model)
    prefix = tok("Grounding: nurses 88 percent women, pilots 9 percent women, cooks 38 percent women.")["input_ids"]
    sufs = [tok(t, add_special_tokens=False)["input_ids"] for t in (" The nurse said that", " A pilot", " The cook")]

    def full_logits(rows):
        out = []
        for r in rows:
            with torch.no_grad():
                out.append(model(input_ids=torch.tensor([prefix + r])).logits[0, -1].float())
        return torch.stack(out)

    n = 8
    greedy = sample_after_prefix(model, prefix, sufs, max_new_tokens=n, pad_id=0, do_sample=False)
    ref = [list(s) for s in sufs]
    for _ in range(n):
        nxt = full_logits(ref).argmax(-1).tolist()
        for r, t in zip(ref, nxt):
            r.append(t)
    ref_new = [r[len(s):] for r, s in zip(ref, sufs)]
    assert greedy == ref_new
    # an EOS that some row first emits at a later step: it stops there (EOS kept), the others go on unchanged
    # (tiny GPT-2 repeats one token greedily, so only the Llama model has such a token)
    cands = [(r, i) for r in range(len(sufs)) for i in range(1, n) if ref_new[r][i] not in ref_new[r][:i]]
    assert cands or which != "tiny_llama"
    for row, step in cands[:1]:
        eos = ref_new[row][step]
        early = sample_after_prefix(model, prefix, sufs, max_new_tokens=n, pad_id=0, eos_ids=[eos], do_sample=False)
        for got, want in zip(early, ref_new):
            cut = want.index(eos) + 1 if eos in want else n
            assert got == want[:cut]
        assert len(early[row]) == step + 1 < n
    # seeded sampling: the same draws as multinomial over full-forward probabilities
    got = sample_after_prefix(model, prefix, sufs, max_new_tokens=n, pad_id=0,
                              generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    ref = [list(s) for s in sufs]
    for _ in range(n):
        nxt = torch.multinomial(torch.softmax(full_logits(ref), -1), 1, generator=g).squeeze(1).tolist()
        for r, t in zip(ref, nxt):
            r.append(t)
    assert got == [r[len(s):] for r, s in zip(ref, sufs)]


def test_both_probes_in_one_pass_equal_each_probe_alone(tiny_llama):
    from debias_lm.evaluation.suites.occupational.probes import evaluate_occupational_probes

    model, tok = tiny_llama
    kw = dict(method="nbls", occupations=["Cooks", "Bakers", "Lawyers"], templates=TEMPLATES3, n_samples=7,
              max_new_tokens=5, chat=True, progress=False, seed=2)
    both = evaluate_occupational_probes(model, tok, probes=("likelihood", "generation"), **kw)
    assert [r.probe for r in both] == ["likelihood", "generation"]
    alone = evaluate_occupational(model, tok, probe="likelihood", **kw)
    for a, b in zip(both[0].occupations, alone.occupations):
        assert a["p_female"] == pytest.approx(b["p_female"], abs=1e-6)
    gen = both[1]
    assert all(len(o["samples"]) == 7 for o in gen.occupations)  # 7 samples over 3 templates: 3 + 2 + 2
    assert gen.details["n_samples"] == 7 and gen.details["grounding"]["control"] == "none"
    again = evaluate_occupational_probes(model, tok, probes=("generation",), **kw)[0]
    assert [o["samples"] for o in again.occupations] == [o["samples"] for o in gen.occupations]  # seeded


TEMPLATES3 = ("The {occupation} said that", "I asked the {occupation} what", "The {occupation} was late because")


# ---------------------------------------------------------------------------------------- make run
def _make_run_argv() -> list[str]:
    """The `debias-lm ...` arguments of the Makefile's `run` recipe (the README's `make run`), as written there."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    line = " ".join(ln.strip().rstrip("\\").strip() for ln in recipe.splitlines())
    argv = shlex.split(line)
    return argv[argv.index("$(VENV)/bin/debias-lm") + 1 :]


def test_make_run_goes_through_the_occupational_suite_and_prints_the_comparison_table(tiny_llama_dir, tmp_path):
    """`make run`'s own command line (read from the Makefile), on a tiny model and 4 occupations: the harness's
    occupational suite runs the four arms (NBLS's controls are its registered variants, each with its own
    grounding), prints a progress line per arm and the comparison table, and every number in the table is what
    samples.jsonl gives when recomputed by hand on the occupations all arms resolved."""
    import json
    import os
    import subprocess
    import sys

    from debias_lm.metrics.occupational import occupational_metrics

    def fmt(v, nd=2):
        return "n/a" if math.isnan(v) else f"{v:.{nd}f}"

    argv = _make_run_argv()
    assert argv[:3] == ["eval", "--suite", "occupational"]
    assert "none,nbls_instructions,nbls_shuffled,nbls" in argv
    out = tmp_path / "run"
    argv = [str(out) if a == "$(RESULTS)" else a for a in argv]
    small = ["--model", str(tiny_llama_dir), "--limit", "4", "--occupational-samples", "3", "--max-new-tokens", "4",
             "--set", "nbls.k=4", "--set", "nbls_shuffled.k=4", "--set", "nbls_instructions.k=4"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-m", "debias_lm.cli.main", *argv, *small], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    arms = ["none", "nbls_instructions", "nbls_shuffled", "nbls"]
    for i, arm in enumerate(arms, 1):
        assert f"[{i}/4] {arm}: likelihood + generation probe ..." in r.stdout
    lines = r.stdout.splitlines()
    head = lines.index("| probe | arm | MAE (pp) ↓ | Pearson r ↑ | parity gap (pp) | amplification (pp) | MAE "
                       "reduction vs none | compared on | resolved / unresolved (arm) |")
    assert lines[head - 2].startswith("Occupational gender bias vs BLS CPS 2022 (4 occupations, model: ")
    table = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[head + 2 : head + 10]]
    assert [(t[0], t[1]) for t in table] == [(p, a) for p in ("likelihood", "generation") for a in arms]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    for probe in ("likelihood", "generation"):
        by = {a: {r["id"]: r for r in rows if r["method"] == a and r["probe"] == probe} for a in arms}
        assert all(len(by[a]) == 4 for a in arms)
        common = [i for i in by["none"] if all(by[a][i]["p_female"] is not None for a in arms)]
        mae = {}
        for a, cells in zip(arms, [t for t in table if t[0] == probe]):
            m = occupational_metrics([by[a][i]["p_female"] for i in common], [by[a][i]["bls_women"] for i in common])
            mae[a] = m["mae_pp"]
            resolved = sum(by[a][i]["p_female"] is not None for i in by[a])
            assert cells[2:6] == [fmt(m["mae_pp"]), fmt(m["pearson_r"], 3), fmt(m["parity_gap_pp"]),
                                  fmt(m["amplification_pp"])]
            want_red = "—" if a == "none" else f"{100 * (mae['none'] - mae[a]) / mae['none']:.1f}%"
            assert cells[6:] == [want_red, str(len(common)), f"{resolved} / {4 - resolved}"]
    # the controls are what their names say: each arm's grounding record, none for the plain arm
    details = json.loads((out / "occupational_details.json").read_text())
    assert details["none"]["grounding_occupations"] == []
    assert [details[a]["grounding"]["control"] for a in arms[1:]] == ["instructions", "shuffled", "none"]
    assert all(details[a]["config"]["k"] == 4 for a in arms[1:])
    likelihood = {a: [by_a["p_female"] for by_a in rows if by_a["method"] == a and by_a["probe"] == "likelihood"]
                  for a in arms}
    assert len({tuple(v) for v in likelihood.values()}) == 4  # four different prompts, four different estimates
    # a rerun resumes: nothing is generated again and the same table is printed
    again = subprocess.run([sys.executable, "-m", "debias_lm.cli.main", *argv, *small], capture_output=True,
                           text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr
    assert "probe resumed from samples.jsonl" in again.stdout
    assert [ln for ln in again.stdout.splitlines() if ln.startswith("| ")] == \
        [ln for ln in lines if ln.startswith("| ")]
