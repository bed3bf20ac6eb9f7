"""Occupational probes: prefix-cached scoring vs a cache-free reference; probe arithmetic; NBLS exclusion."""

import math

import pytest
import torch

from debias_lm.eval.occupational import (
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
def _result(method, probe, p_by_occ):
    from debias_lm.eval.occupational import OccupationalResult
    from debias_lm.metrics.occupational import occupational_metrics

    rows = [{"occupation": n, "bls_women": q, "p_female": p} for n, (q, p) in p_by_occ.items()]
    return OccupationalResult("m", method, probe, rows,
                              occupational_metrics([r["p_female"] for r in rows], [r["bls_women"] for r in rows]))


def test_arms_are_compared_on_the_occupations_every_arm_resolved():
    from debias_lm.eval.report import common_resolved, comparison_rows

    nan = math.nan
    occ = {"A": 90.0, "B": 10.0, "C": 50.0, "D": 70.0}
    none = _result("none", "generation", {n: (q, p) for (n, q), p in zip(occ.items(), [0.5, 0.2, nan, 0.7])})
    nbls = _result("nbls", "generation", {n: (q, p) for (n, q), p in zip(occ.items(), [0.8, nan, 0.5, 0.6])})
    assert common_resolved([none, nbls]) == ["A", "D"]
    rows = {r["method"]: r for r in comparison_rows([none, nbls])}
    # by hand on {A, D}: none |50-90|, |70-70| -> 20.0; nbls |80-90|, |60-70| -> 10.0
    assert rows["none"]["mae_pp"] == pytest.approx(20.0) and rows["nbls"]["mae_pp"] == pytest.approx(10.0)
    assert rows["nbls"]["mae_reduction_vs_none"] == pytest.approx(0.5)
    # amplification on {A, D}: none: sign(40)(50-90)=-40, sign(20)(70-70)=0 -> -20; nbls: -10, -10 -> -10
    assert rows["none"]["amplification_pp"] == pytest.approx(-20.0)
    assert rows["nbls"]["amplification_pp"] == pytest.approx(-10.0)
    assert rows["none"]["n_common"] == rows["nbls"]["n_common"] == 2
    assert (rows["none"]["n_resolved"], rows["none"]["n_unresolved"]) == (3, 1)
    assert (rows["nbls"]["n_resolved"], rows["nbls"]["n_unresolved"]) == (3, 1)
    # each arm alone would have been scored on a different set (the bug this guards against)
    assert none.metrics["mae_pp"] != pytest.approx(rows["none"]["mae_pp"])


def test_out_dir_of_an_earlier_run_is_replaced_and_a_foreign_one_refused(tmp_path):
    from debias_lm.errors import UserInputError
    from debias_lm.eval.report import check_out_dir, write_run

    out = tmp_path / "run"
    assert check_out_dir(out) == []
    write_run(out, {"none_likelihood.json": "{}", "nbls_likelihood.json": "{}", "report.md": "a"}, {"x": 1})
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["files"] == ["nbls_likelihood.json", "none_likelihood.json", "report.md"]
    # a second run with fewer arms: the first run's files go, nothing stale is left
    replaced = write_run(out, {"none_likelihood.json": "{}", "report.md": "b"}, {"x": 2})
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "none_likelihood.json", "report.md"]
    assert replaced == ["manifest.json", "nbls_likelihood.json", "none_likelihood.json", "report.md"]
    assert __import__("json").loads((out / "manifest.json").read_text())["replaced_from_earlier_run"] == replaced
    # a file the manifest does not list is never deleted; without a manifest such a directory is refused
    (out / "notes.txt").write_text("mine")
    assert check_out_dir(out) == ["manifest.json", "none_likelihood.json", "report.md"]  # manifest-owned only
    write_run(out, {"none_likelihood.json": "{}"}, {})
    assert (out / "notes.txt").read_text() == "mine"
    (out / "manifest.json").unlink()
    with pytest.raises(UserInputError, match="not written by 'eval occupational'.*notes.txt"):
        check_out_dir(out)
    assert (out / "notes.txt").read_text() == "mine"
    # an older run without a manifest: recognised by its file names
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("none_generation.json", "nbls_generation.json", "summary.json", "report.md", "occupational.png"):
        (legacy / name).write_text("x")
    assert len(check_out_dir(legacy)) == 5
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        check_out_dir(tmp_path / "afile")


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
    from debias_lm.eval.occupational import evaluate_occupational_probes

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
