"""The suite registry (lm-eval's task registry is the model) and the one benchmark loop.

A suite declared and registered in the test is run by ``run_eval`` and tabulated by the report from its
declared columns, without any edit to the runner or the report; suites take methods by the spec's kind /
modalities, never by name; ``interleaved_rounds`` runs every configuration once per round.
"""

from __future__ import annotations

import json

import pytest

from debias_lm.errors import UserInputError
from debias_lm.evaluation.settings import EvalSettings, method_config
from debias_lm.evaluation.suites import (
    Column,
    Suite,
    get_suite,
    list_suites,
    register_suite,
    unregister_suite,
)
from debias_lm.utils.timing import interleaved_rounds, ratios


def test_builtin_suites_in_run_order():
    import debias_lm.evaluation.suites.bbq_gender  # noqa: F401  (imported before the others: order is still fixed)
    import debias_lm.evaluation.suites.fluency  # noqa: F401

    names = [s.name for s in list_suites()]
    assert names[:7] == ["toxicity", "counterfactual", "occupational", "bbq-gender", "pope-synthetic", "fluency",
                         "overhead"]
    assert names.index("toxicity") < names.index("fluency")  # fluency reuses the toxicity samples


def test_suites_take_methods_by_spec_not_name():
    tox, pope = get_suite("toxicity"), get_suite("pope-synthetic")
    # text suites: every method that generates text (kinds prompt / decoding / activation); not the answer kind
    assert tox.takes("none") and tox.takes("nbls") and tox.takes("uddia") and tox.takes("debias_sampling")
    assert not tox.takes("calibration") and not tox.takes("debias_sampling+calibration")
    # the VLM suite: methods with the vision modality, and their combinations
    assert pope.takes("calibration") and pope.takes("debias_sampling+calibration") and pope.takes("none")
    assert not pope.takes("nbls") and not pope.takes("uddia")


def test_eval_defaults_apply_only_when_the_user_set_none_of_their_fields():
    from debias_lm.registry import get_method

    prefix = get_method("debias_sampling").eval_defaults["counterfactual_prefix"]
    assert prefix.strip()
    assert method_config("debias_sampling").counterfactual_prefix == prefix
    swapped = method_config("debias_sampling", {"counterfactual_swap": "gender"})
    assert swapped.counterfactual_swap == "gender" and swapped.counterfactual_prefix == ""
    own = method_config("debias_sampling", {"counterfactual_prefix": "Mine: "})
    assert own.counterfactual_prefix == "Mine: "
    assert method_config("nbls").to_dict() == method_config("nbls", {}).to_dict()  # no defaults registered


@pytest.fixture
def toy_suite():
    """A suite with no model: each method's score is the length of its name (computed by hand below)."""
    def run(ctx):
        return {m: {"score": float(len(m)), "count": 3} for m in ctx.settings.methods}

    suite = register_suite(Suite(name="toy-length", run=run, text_model=False,
                                 columns=(Column("name length", "score", True), Column("count", "count", None)),
                                 definition="len(method name)"))
    yield suite
    unregister_suite("toy-length")


def test_a_registered_suite_is_run_and_reported_from_its_columns(toy_suite, tmp_path):
    from debias_lm.evaluation.runner import run_eval

    out = tmp_path / "run"
    payload = run_eval(EvalSettings(suites=("toy-length",), methods=("none", "uddia"), out=str(out), progress=False))
    assert payload["results"]["toy-length"] == {"none": {"score": 4.0, "count": 3}, "uddia": {"score": 5.0, "count": 3}}
    res = json.loads((out / "results.json").read_text())
    assert res["metric_definitions"] == {"toy-length": "len(method name)"}
    assert res["metric_columns"]["toy-length"][0] == {"label": "name length", "key": "score", "higher_is_better": True}
    report = (out / "report.md").read_text()
    assert "## toy-length" in report
    assert "| method | name length ↑ | count |" in report
    assert "| uddia | 5.000 (+1.000, +25%) | 3 (+0, +0%) |" in report  # 5 - 4 = +1, +1 / 4 = +25%


def test_unknown_suite_and_inapplicable_method_fail_before_work(toy_suite, tmp_path):
    from debias_lm.evaluation.runner import run_eval

    with pytest.raises(UserInputError, match="expected one of .*toy-length"):
        run_eval(EvalSettings(suites=("nope",), out=str(tmp_path / "a")))
    with pytest.raises(UserInputError, match="does not apply to the toxicity suite"):
        run_eval(EvalSettings(suites=("toxicity",), methods=("none", "calibration"), out=str(tmp_path / "b")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_interleaved_rounds_runs_each_configuration_once_per_round():
    calls = []
    runs = {name: (lambda name=name: calls.append(name) or len(name)) for name in ("plain", "method")}
    timing = interleaved_rounds(runs, 3, warmup=True)
    # one untimed warm-up round, then plain/method alternating: background load hits both alike
    assert calls == ["plain", "method"] * 4
    assert [len(t.wall) for t in timing.values()] == [3, 3] and timing["method"].results == [6, 6, 6]
    assert all(w >= 0 and c >= 0 for t in timing.values() for w, c in zip(t.wall, t.cpu))
    calls.clear()
    interleaved_rounds(runs, 1, warmup={"plain": lambda: calls.append("warm")})
    assert calls == ["warm", "plain", "method"]
    assert ratios({"plain": 50.0, "method": 40.0}, "plain") == {"plain": 1.0, "method": 0.8}
