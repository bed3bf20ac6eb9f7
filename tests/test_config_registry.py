"""Config base class and method registry."""

import dataclasses
import json
import subprocess
import sys
from typing import ClassVar

import pytest

import debias_lm as dl
from debias_lm.config import MethodConfig
from debias_lm.errors import UserInputError
from debias_lm.hf.base import HFMethod
from debias_lm.registry import _REGISTRY, config_from_dict, get_method, list_methods, register_method


def test_builtin_methods_registered():
    names = [s.name for s in list_methods()]
    assert {"identity", "nbls"} <= set(names)
    spec = get_method("nbls")
    assert spec.config_cls is dl.NBLSConfig and spec.vllm == "yes"
    assert spec.load_hf_impl().__name__ == "NBLSHF"


def test_unknown_method_lists_available():
    with pytest.raises(ValueError, match="unknown method 'nope'.*identity.*nbls"):
        get_method("nope")


def test_configs_are_frozen_and_validated_on_creation():
    cfg = dl.NBLSConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.k = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"NBLSConfig\.k=-1 is invalid: expected an integer in \[1, inf\]"):
        dl.NBLSConfig(k=-1)
    with pytest.raises(ValueError, match="NBLSConfig.seed"):
        dl.NBLSConfig(seed=-2)
    with pytest.raises(ValueError, match="allowed values: women, white, black, asian, hispanic"):
        dl.NBLSConfig(attributes=("gender",))
    with pytest.raises(ValueError, match="NBLSConfig.k"):
        cfg.replace(k=True)


def test_flat_dict_roundtrip_through_json():
    cfg = dl.NBLSConfig(k=7, attributes=("women", "asian"), exclude=("Cooks", "Bakers"), seed=5)
    d = cfg.to_dict()
    assert d == {"method": "nbls", "k": 7, "attributes": ["women", "asian"], "exclude": ["Cooks", "Bakers"],
                 "seed": 5, "template": "", "header": "", "bls_table": "", "exclude_related": True, "control": ""}
    assert all(not isinstance(v, dict) for v in d.values())  # flat
    back = config_from_dict(json.loads(json.dumps(d)))
    assert back == cfg and isinstance(back.exclude, tuple)
    assert dl.IdentityConfig.from_dict({"method": "identity"}) == dl.IdentityConfig()


def test_from_dict_errors():
    with pytest.raises(ValueError, match="unknown field"):
        dl.NBLSConfig.from_dict({"k": 3, "kk": 4})
    with pytest.raises(ValueError, match="expected 'nbls'"):
        dl.NBLSConfig.from_dict({"method": "identity"})
    with pytest.raises(ValueError, match="no 'method' key"):
        config_from_dict({"k": 3})


def test_register_a_new_method_and_wrap_it(tiny_llama):
    @dataclasses.dataclass(frozen=True)
    class ShoutConfig(MethodConfig):
        method: ClassVar[str] = "test-shout"
        suffix: str = "!"

    class ShoutHF(HFMethod):
        is_prompt_transform = True

        def transform_prompt(self, prompt):
            return prompt.upper() + self.config.suffix

    try:
        register_method(ShoutConfig, ShoutHF, description="test")
        with pytest.raises(ValueError, match="already registered"):
            register_method(ShoutConfig, ShoutHF)
        model, tok = tiny_llama
        w = dl.wrap(model, tok, {"method": "test-shout", "suffix": "?"})
        enc = w.impl.encode(prompt="hello")
        assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "HELLO?"
    finally:
        _REGISTRY.pop("test-shout", None)


def test_a_variant_name_is_the_method_with_its_preset_fields(tiny_llama):
    """NBLS's controls are registered variants: the name resolves to the nbls spec and a config with the preset
    field set, user fields on top; a toy method's variants are checked at registration and leave with it."""
    from debias_lm.registry import resolve_config, unregister_method

    assert get_method("nbls_shuffled") is get_method("nbls")
    assert resolve_config("nbls_shuffled") == dl.NBLSConfig(control="shuffled")
    assert resolve_config("nbls_instructions", overrides={"k": 4}) == dl.NBLSConfig(k=4, control="instructions")
    assert resolve_config("nbls_shuffled", overrides={"control": ""}).control == ""  # the user's field wins
    assert config_from_dict({"method": "nbls_instructions", "seed": 2}) == dl.NBLSConfig(seed=2, control="instructions")
    assert resolve_config("nbls") == dl.NBLSConfig()

    @dataclasses.dataclass(frozen=True)
    class LoudConfig(MethodConfig):
        method: ClassVar[str] = "test-loud"
        level: int = 1

    class LoudHF(HFMethod):
        is_prompt_transform = True

        def transform_prompt(self, prompt):
            return prompt + "!" * self.config.level

    with pytest.raises(ValueError, match="not fields of LoudConfig"):
        register_method(LoudConfig, LoudHF, variants={"test-loud-x": {"volume": 3}})
    with pytest.raises(ValueError, match="already names method 'nbls'"):
        register_method(LoudConfig, LoudHF, variants={"nbls_shuffled": {"level": 3}})
    try:
        register_method(LoudConfig, LoudHF, variants={"test-louder": {"level": 3}})
        model, tok = tiny_llama
        w = dl.wrap(model, tok, "test-louder")
        assert w.config == LoudConfig(level=3) and w.impl.transform_prompt("hi") == "hi!!!"
    finally:
        unregister_method("test-loud")
    with pytest.raises(UserInputError, match="unknown method 'test-louder'"):
        get_method("test-louder")


def test_import_is_light():
    code = (
        "import sys, debias_lm as dl; "
        "heavy=[m for m in ('torch','transformers','vllm','trl','bitsandbytes') if m in sys.modules]; "
        "assert not heavy, heavy; dl.NBLSGrounding(k=2).apply('x'); "
        "assert 'torch' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- numeric fields bounded to documented ranges (issue 18 items 1 and 7) ------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    (dict(alpha=1e38), "alpha=1e+38 is invalid: expected a number in [0, 100]"),
    (dict(alpha=100.5), "alpha=100.5 is invalid"),
    (dict(alpha=float("nan")), "alpha=nan is invalid"),
    (dict(beta=0.0), "beta=0.0 is invalid"),
    (dict(seed=2**64), "seed="),
])
def test_debias_sampling_numbers_bounded(kwargs, needle):
    with pytest.raises(UserInputError) as e:
        dl.DebiasSamplingConfig(**kwargs)
    assert needle in str(e.value)
    dl.DebiasSamplingConfig(alpha=100.0, beta=1.0, seed=2**63 - 1)  # the bounds themselves are fine


@pytest.mark.parametrize("kwargs, needle", [
    (dict(eps=2.0), "eps=2.0 is invalid: expected a number in [0, 1]"),
    (dict(prior_probs=(float("inf"), 1.0)), "finite"),
    (dict(prior_probs=(1e308, 1e308)), "finite"),
    (dict(prior_probs=(0.0, 1.0), eps=0.0), "eps > 0"),
    (dict(prior_probs=(float("nan"), 1.0)), "prior_probs"),
])
def test_calibration_prior_errors_are_clear(kwargs, needle):
    kwargs = {"prior": "given", "prior_probs": (0.5, 0.5), **kwargs}
    with pytest.raises(UserInputError) as e:
        dl.CalibrationConfig(**kwargs)
    assert needle in str(e.value) and "math domain" not in str(e.value)
    dl.CalibrationConfig(prior="given", prior_probs=(0.0, 1.0))  # a zero prior is fine with the default eps


def test_hf_processor_rejects_overflowing_alpha(tiny_llama):
    from debias_lm.methods.debias_sampling.processor import DebiasSamplingLogitsProcessor

    model, tok = tiny_llama
    with pytest.raises(UserInputError, match=r"alpha=1e\+38 is invalid"):
        DebiasSamplingLogitsProcessor.from_texts(model, tok, ["x"], alpha=1e38)


def test_cli_generate_overflowing_alpha_is_a_clean_error(capsys, tiny_llama_dir):
    """The command from issue 18 (a traceback before) exits 2 with one line, before any model loads."""
    from debias_lm.cli.main import main

    rc = main(["generate", "--method", "debias_sampling", "--set", "alpha=1e38", "--set", "counterfactual_swap=gender",
               "--prompt", "The nurse said that she", "--max-new-tokens", "3", "--sample", "--no-chat",
               "--model", str(tiny_llama_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "alpha=1e+38 is invalid" in err and "Traceback" not in err
