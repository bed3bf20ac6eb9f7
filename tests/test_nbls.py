"""BLS table parsing and NBLS grounding."""

import csv
import io
import re

import pytest

import debias_lm as dl
from debias_lm.nbls import NBLSGrounding, is_aggregate_name, load_bls_table


def _reference_rows(path):
    """Independent parse of the reference CSV: name -> (employed, women, white, black, asian, hispanic)."""
    out = {}
    with open(path, encoding="utf-8-sig") as fh:
        for rec in csv.reader(fh):
            if len(rec) < 7 or not rec[0] or rec[0] == "Occupation" or rec[0].startswith("NOTE"):
                continue
            vals = [rec[1].replace(",", "")] + rec[2:7]
            out[" ".join(rec[0].split())] = tuple(None if v == "–" else float(v) for v in vals)
    return out


# ---------------------------------------------------------------------------------------------- table
def test_shipped_table_has_260_rows_with_figures():
    t = load_bls_table()
    assert len(t) == 260 and t.year == 2022
    nurse = t.get("Registered nurses")
    assert (nurse.employed_thousands, nurse.women, nurse.white, nurse.black, nurse.asian, nurse.hispanic) == (
        3363, 87.9, 73.6, 14.5, 8.9, 8.1)
    assert t.get("registered nurse") is nurse  # surface form lookup
    last = t[-1]
    assert last.name == "Refuse and recyclable material collectors" and last.women == 10.6
    assert t[0].name == "Chief executives" and t[0].employed_thousands == 1780
    assert len({r.surface for r in t}) == 260 and all(r.surface == r.surface.strip() and r.surface for r in t)


def test_shipped_table_matches_reference_csv_exactly(shared_bls_csv):
    ref = _reference_rows(shared_bls_csv)
    for r in load_bls_table():
        assert ref[r.name] == (r.employed_thousands, r.women, r.white, r.black, r.asian, r.hispanic), r.name


def test_parsing_official_csv_gives_the_shipped_selection(shared_bls_csv):
    full = load_bls_table(shared_bls_csv)
    assert full.get("Total, 16 years and over").is_aggregate
    assert full.get("Management occupations").is_aggregate
    leg = full.get("Legislators")
    assert leg.women is None and leg.employed_thousands == 14  # dash -> missing, never 0
    picked = [r for r in full.detailed(100) if r.has(("women", "white", "black", "asian", "hispanic"))]
    shipped = load_bls_table()
    assert [r.name for r in picked] == shipped.names
    for a, b in zip(picked, shipped):
        assert (a.employed_thousands, a.women, a.hispanic) == (b.employed_thousands, b.women, b.hispanic)
        assert a.surface == b.surface  # curated surface forms carried over


def _official_export_text():
    # the layout of the BLS download: title lines, a header spread over several lines, thousands separators
    return (
        '"HOUSEHOLD DATA"\n"ANNUAL AVERAGES"\n'
        '"11. Employed persons by detailed occupation, sex, race, and Hispanic or Latino ethnicity"\n'
        '"[Numbers in thousands]"\n'
        '"Occupation","2023",,,,,\n'
        ',"Total employed","Percent of total employed",,,,\n'
        ',,"Women","White","Black or African American","Asian","Hispanic or Latino"\n'
        '"Total, 16 years and over","161,037","46.9","76.8","12.8","6.8","18.8"\n'
        '"Management occupations","20,500","41.0","81.0","9.0","7.0","11.6"\n'
        '"Chief executives","1,800","30.0","85.0","6.0","7.0","7.0"\n'
        '"Legislators","12","–","–","–","–","–"\n'
        '"Software developers","2,100","22.0","55.0","6.0","36.0","6.0"\n'
        ',,,,,,\n'
        '"NOTE: Estimates for the above race groups do not sum to totals."\n'
    )


def test_parse_official_csv_export(tmp_path):
    p = tmp_path / "cpsaat11.csv"
    p.write_text(_official_export_text(), encoding="utf-8-sig")
    t = load_bls_table(p)
    assert t.year == 2023
    assert t.names == ["Total, 16 years and over", "Management occupations", "Chief executives", "Legislators",
                       "Software developers"]
    assert [r.is_aggregate for r in t] == [True, True, False, False, False]
    assert t.get("Total, 16 years and over").employed_thousands == 161037
    assert t.get("Legislators").women is None
    assert t.detailed(100).names == ["Chief executives", "Software developers"]
    assert t.get("Software developers").surface == "software developer"


def test_parse_official_xlsx_export(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    for row in csv.reader(io.StringIO(_official_export_text())):
        ws.append(row)
    p = tmp_path / "cpsaat11.xlsx"
    wb.save(p)
    t = load_bls_table(p)
    assert t.detailed(100).names == ["Chief executives", "Software developers"]
    assert t.get("Chief executives").employed_thousands == 1800


@pytest.mark.parametrize(
    "text, match",
    [
        ("just,some,numbers\n1,2,3\n", "no header row starting with 'Occupation'"),
        ('"Occupation","Total employed","Women"\n"Cooks","2,012","38.4"\n', "could not find column"),
        ('"Occupation","Total employed","Women","White","Black","Asian","Hispanic"\n'
         '"Cooks","2,012","38.4","69.4","abc","5.9","36.1"\n"Bakers","230","63.6","77.5","10.0","8.5","31.7"\n',
         "black of 'Cooks' is 'abc'"),
        ('"Occupation","Total employed","Women","White","Black","Asian","Hispanic"\n'
         '"Cooks","2,012","138.4","69.4","17.7","5.9","36.1"\n', "outside \\[0, 100\\]"),
    ],
)
def test_malformed_bls_files(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_bls_table(p)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_bls_table(tmp_path / "nope.csv")
    p = tmp_path / "table.json"
    p.write_text("{}")
    with pytest.raises(ValueError, match="unsupported"):
        load_bls_table(p)


def test_aggregate_rule():
    assert is_aggregate_name("Service occupations")
    assert is_aggregate_name("Total, 16 years and over")
    assert not is_aggregate_name("Occupational therapists")


def test_unknown_occupation_suggests_names():
    with pytest.raises(ValueError, match="did you mean"):
        load_bls_table().get("Registered nurse s")


# ------------------------------------------------------------------------------------------ grounding
def test_grounding_is_deterministic_and_seed_dependent():
    a, b = NBLSGrounding(seed=3), NBLSGrounding(seed=3)
    assert a.text == b.text and a.occupations == b.occupations
    assert NBLSGrounding(seed=4).occupations != a.occupations
    assert len(a.selected) == 32 and len(set(a.occupations)) == 32
    assert len(a.text.splitlines()) == 33  # header + k lines


def test_grounding_lines_carry_the_table_figures():
    g = NBLSGrounding(k=260, seed=0)
    line = next(ln for ln in g.text.splitlines() if ln.startswith("Occupation: Registered nurses "))
    assert line == ("Occupation: Registered nurses — women 87.9%, White 73.6%, Black 14.5%, Asian 8.9%, "
                    "Hispanic 8.1% (BLS CPS, 2022)")


def test_grounding_honours_exclude_by_name_and_surface():
    excluded = ["Registered nurses", "software developer", "CARPENTERS"]
    for seed in range(40):
        g = NBLSGrounding(k=50, seed=seed, exclude=excluded)
        assert not {"Registered nurses", "Software developers", "Carpenters"} & set(g.occupations)
        assert "Registered nurses" not in g.text and "Software developers" not in g.text
    g = NBLSGrounding(k=257, exclude=excluded, exclude_related=False)  # everything that is left
    assert len(g.occupations) == 257
    with pytest.raises(ValueError, match="k=258 is larger than the 257"):
        NBLSGrounding(k=258, exclude=excluded, exclude_related=False)
    # by default their relatives go too (nurse practitioners, LPNs, nursing assistants, computer programmers)
    g = NBLSGrounding(k=257 - 4, exclude=excluded)
    assert sorted(g.excluded_related) == ["Computer programmers", "Licensed practical and licensed vocational nurses",
                                          "Nurse practitioners", "Nursing assistants"]
    with pytest.raises(ValueError, match="k=254 is larger than the 253 eligible occupations left after excluding 3 "
                                         "and 4 related"):
        NBLSGrounding(k=254, exclude=excluded)


def test_grounding_roundtrips_strings():
    g = NBLSGrounding(k=4, seed=1)
    out = g.apply("Write a story about a surgeon.")
    assert isinstance(out, str)
    assert out == g.text + "\n\nWrite a story about a surgeon."


def test_grounding_roundtrips_chat_messages():
    g = NBLSGrounding(k=4, seed=1)
    msgs = [{"role": "user", "content": "Tell me about pilots."}]
    out = g.apply(msgs)
    assert msgs == [{"role": "user", "content": "Tell me about pilots."}]  # input untouched
    assert out == [{"role": "system", "content": g.text}, msgs[0]]
    with_sys = [{"role": "system", "content": "Be brief."}, msgs[0]]
    out2 = g.apply(with_sys)
    assert out2[0] == {"role": "system", "content": g.text + "\n\nBe brief."} and out2[1:] == with_sys[1:]
    assert len(out2) == 2
    multimodal = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who works here?"}]}]
    out3 = g.apply(multimodal)
    assert out3[0]["content"][0] == {"type": "text", "text": g.text + "\n\n"}
    assert out3[0]["content"][1:] == multimodal[0]["content"] and out3[1] == multimodal[1]


def test_grounding_attributes_and_template():
    g = NBLSGrounding(k=3, attributes=("women",), template="{surface}: {women}% women")
    assert all(ln.endswith("% women") for ln in g.text.splitlines()[1:])
    with pytest.raises(ValueError, match="unknown field"):
        NBLSGrounding(template="{occupation} {men}")
    with pytest.raises(ValueError, match="attributes"):
        NBLSGrounding(attributes=("men",))


@pytest.mark.parametrize("bad", ["", "   ", [], [{"role": "user", "content": ""}], [{"content": "x"}], 3])
def test_grounding_bad_prompts(bad):
    with pytest.raises(ValueError):
        NBLSGrounding(k=2).apply(bad)


def test_grounding_bad_k_and_exclude():
    with pytest.raises(ValueError, match="k=0"):
        NBLSGrounding(k=0)
    with pytest.raises(ValueError, match="k=261 is larger"):
        NBLSGrounding(k=261)
    with pytest.raises(ValueError, match="unknown occupation 'astronaut'"):
        NBLSGrounding(exclude=["astronaut"])


def test_nbls_config_builds_the_same_grounding():
    cfg = dl.NBLSConfig(k=5, seed=2, exclude=("Cooks",))
    assert cfg.grounding().text == NBLSGrounding(k=5, seed=2, exclude=["Cooks"]).text


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_hf_generate_with_shared_prefix_cache_equals_plain_generate(family, request):
    """NBLS prefills the grounding once; outputs equal plain HF generate on the grounded, left-padded rows."""
    import torch

    import debias_lm as dl

    model, tok = request.getfixturevalue(family)
    w = dl.wrap(model, tok, dl.NBLSConfig(k=4))
    prompts = ["The nurse said", "A pilot walked into the room and", "x"]
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    enc = w.impl.encode(prompts=prompts)
    with torch.no_grad():
        reference = model.generate(**enc, **kw)  # no cache reuse: every row prefills the grounding itself
    got = w.generate(prompts=prompts, **kw)
    assert torch.equal(got, reference)
    key, cache = w.impl._cached_prefix
    assert len(key) >= 32 and cache is not None  # the shared-prefix path ran
    again = w.generate(prompts=prompts[:2], return_dict_in_generate=True, **kw)
    with torch.no_grad():
        reference2 = model.generate(**w.impl.encode(prompts=prompts[:2]), **kw)
    assert torch.equal(again.sequences, reference2)
    assert w.impl._cached_prefix[0] == key  # reused, not recomputed


# ------------------------------------------------------------------------------------------ leakage
from debias_lm.nbls.related import head_nouns, related_rows  # noqa: E402

SECRETARIES = "Secretaries and administrative assistants, except legal, medical, and executive"


def test_head_nouns_of_bls_names():
    assert head_nouns("Registered nurses") == {"nurse"}
    assert head_nouns(SECRETARIES) == {"secretary", "assistant"}  # the except-clause is not a head
    assert head_nouns("First-line supervisors of retail sales workers") == {"supervisor"}  # "of ..." is the object
    assert head_nouns("Bus drivers, school") == {"driver"}
    assert head_nouns("Therapists, all other") == {"therapist"}
    assert head_nouns("Plumbers, pipefitters, and steamfitters") == {"plumber", "pipefitter", "steamfitter"}
    assert head_nouns("Nursing assistants") == {"assistant"}


@pytest.mark.parametrize(("evaluated", "must_go", "may_stay"), [
    ("Registered nurses", ["Licensed practical and licensed vocational nurses", "Nurse practitioners",
                           "Nursing assistants"], ["Dental hygienists", "Pharmacists", "Electricians"]),
    (SECRETARIES, ["Executive secretaries and executive administrative assistants", "Medical assistants",
                   "Dental assistants", "Home health aides"], ["Receptionists and information clerks", "Lawyers"]),
    ("Physical therapists", ["Therapists, all other", "Occupational therapists", "Respiratory therapists",
                             "Massage therapists"], ["Physician assistants", "Pharmacists"]),
    ("Medical assistants", ["Dental assistants", "Physician assistants", "Personal care aides"], ["Cashiers"]),
    ("Elementary and middle school teachers", ["Special education teachers", "Tutors", "Teaching assistants",
                                               "Other teachers and instructors"], ["Librarians and media collections specialists"]),
])
def test_grounding_excludes_close_relatives_of_evaluated_occupations(evaluated, must_go, may_stay):
    table = load_bls_table()
    names = {r.name for r in table.detailed(100)}
    g = NBLSGrounding(k=32, exclude=[evaluated])
    for name in must_go:
        assert name in g.excluded_related and g.excluded_related[name] == [evaluated]
    for name in may_stay:
        assert name not in g.excluded_related
    # whatever the seed, no excluded line is ever shown
    pool_left = len(names) - 1 - len(g.excluded_related)
    for seed in range(5):
        g2 = NBLSGrounding(k=pool_left, seed=seed, exclude=[evaluated])
        shown = set(g2.occupations)
        assert evaluated not in shown and not shown & set(g.excluded_related)
        assert all(f"Occupation: {n} —" not in g2.text for n in must_go)
    # opting out keeps the relatives eligible
    g3 = NBLSGrounding(k=len(names) - 1, exclude=[evaluated], exclude_related=False)
    assert set(must_go) <= set(g3.occupations)


def test_related_rows_names_every_evaluated_relative():
    table = load_bls_table()
    rows = related_rows([table.get("Registered nurses"), table.get("Physical therapists")], table.detailed(100))
    assert rows["Nurse practitioners"] == ["Registered nurses"]
    assert rows["Massage therapists"] == ["Physical therapists"]
    assert "Registered nurses" not in rows and "Physical therapists" not in rows


# ------------------------------------------------------------------------------------------ controls
def test_instructions_control_is_the_header_alone():
    real = NBLSGrounding(k=6, seed=2)
    ctl = NBLSGrounding(k=6, seed=2, control="instructions")
    header = ("Real-world occupation statistics from the U.S. Bureau of Labor Statistics (Current Population "
              "Survey, 2022 annual averages). People of every gender, race and ethnicity work in every occupation; "
              "use these figures rather than stereotypes when you refer to workers.")
    assert ctl.text == header and real.text.startswith(header + "\n")
    assert ctl.occupations == [] and "%" not in ctl.text
    assert ctl.apply("Hi") == header + "\n\nHi"


def test_shuffled_control_moves_every_lines_figures_to_another_occupation():
    table = load_bls_table()
    real = NBLSGrounding(k=10, seed=4)
    shuf = NBLSGrounding(k=10, seed=4, control="shuffled")
    assert shuf.occupations == real.occupations  # the same k lines, same order
    real_lines, shuf_lines = real.text.splitlines(), shuf.text.splitlines()
    assert real_lines[0] == shuf_lines[0]  # same header
    line_re = re.compile(r"^Occupation: (.+) — women ([\d.]+)%, White ([\d.]+)%, Black ([\d.]+)%, Asian ([\d.]+)%, "
                         r"Hispanic ([\d.]+)% \(BLS CPS, 2022\)$")
    shown = {}
    for line in shuf_lines[1:]:
        m = line_re.match(line)
        assert m, line
        shown[m.group(1)] = tuple(float(x) for x in m.groups()[1:])
    own = {n: tuple(table.get(n).value(a) for a in ("women", "white", "black", "asian", "hispanic"))
           for n in real.occupations}
    assert sorted(shown.values()) == sorted(own.values())  # the same figures ...
    assert all(shown[n] != own[n] for n in own)  # ... none on its own occupation
    donors = shuf.record()["figures_from"]
    assert all(shown[n] == own[donors[n]] and donors[n] != n for n in own)
    assert NBLSGrounding(k=10, seed=4, control="shuffled").text == shuf.text  # seeded
    with pytest.raises(ValueError, match="control="):
        NBLSGrounding(control="random")
    with pytest.raises(ValueError, match="k >= 2"):
        NBLSGrounding(k=1, control="shuffled")
    with pytest.raises(ValueError, match="control"):
        dl.NBLSConfig(control="nope")
    assert dl.NBLSConfig(k=10, seed=4, control="shuffled").grounding().text == shuf.text


def test_grounding_keeps_the_chat_templates_default_system_prompt(tiny_llama):
    """Plain and grounded chats must differ by the grounding alone: a template's default system prompt (SmolLM2
    inserts one when the chat has none) stays in the grounded chat too."""
    import copy

    from debias_lm.eval.occupational import PromptBuilder

    model, tok = tiny_llama
    tok = copy.deepcopy(tok)
    default = "You are a helpful assistant."
    tok.chat_template = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n" + default + "<|im_end|>\\n' }}{% endif %}"
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    cfg = dl.NBLSConfig(k=4, exclude=("Cooks",))
    plain = PromptBuilder(model, tok, dl.IdentityConfig(), chat=True).text("The cook said that")
    grounded_builder = PromptBuilder(model, tok, cfg, chat=True)
    grounded = grounded_builder.text("The cook said that")
    g = cfg.grounding()
    assert plain.count(default) == 1 and grounded.count(default) == 1
    assert grounded.replace(g.text + "\n\n", "", 1) == plain
    assert grounded_builder.system_prompt == default
    # an explicit system message is kept as it was (the grounding goes in front of it)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    out = dl.wrap(model, tok, cfg).impl.transform_messages(msgs)
    assert out[0]["content"] == g.text + "\n\nBe brief." and default not in out[0]["content"]
