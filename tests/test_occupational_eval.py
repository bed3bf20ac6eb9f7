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


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_prefix_cached_scoring_equals_cache_free_forward(request, which):
    model, tok = request.getfixturevalue(which)
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
