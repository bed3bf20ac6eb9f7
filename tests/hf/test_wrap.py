"""wrap(): identity is bit-identical to plain generate; NBLS through every input path; peft and bnb models."""

import pytest
import torch

import debias_lm as dl


def _inputs(tok, texts=("The nurse said that", "Yesterday the chief executive of the small firm")):
    return tok(list(texts), return_tensors="pt", padding=True)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_identity_is_bit_identical(request, which):
    model, tok = request.getfixturevalue(which)
    enc = _inputs(tok)
    w = dl.wrap(model, tok, dl.IdentityConfig())
    assert w.model is model and w.tokenizer is tok
    greedy_plain = model.generate(**enc, max_new_tokens=12, do_sample=False)
    greedy_wrapped = w.generate(**enc, max_new_tokens=12, do_sample=False)
    assert torch.equal(greedy_plain, greedy_wrapped)
    torch.manual_seed(123)
    s_plain = model.generate(**enc, max_new_tokens=12, do_sample=True, top_k=0, temperature=1.3)
    torch.manual_seed(123)
    s_wrapped = w.generate(**enc, max_new_tokens=12, do_sample=True, top_k=0, temperature=1.3)
    assert torch.equal(s_plain, s_wrapped)
    # dict outputs too (everything HF generate takes is passed through)
    o1 = model.generate(**enc, max_new_tokens=3, return_dict_in_generate=True, output_scores=True)
    o2 = w.generate(**enc, max_new_tokens=3, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(o1.sequences, o2.sequences)
    assert all(torch.equal(a, b) for a, b in zip(o1.scores, o2.scores))


def test_wrap_accepts_names_dicts_and_rejects_junk(tiny_llama):
    model, tok = tiny_llama
    assert dl.wrap(model, tok).method == "identity"
    assert dl.wrap(model, tok, "nbls").config == dl.NBLSConfig()
    assert dl.wrap(model, tok, {"method": "nbls", "k": 3}).config.k == 3
    with pytest.raises(ValueError, match="config must be"):
        dl.wrap(model, tok, 42)
    with pytest.raises(ValueError, match="needs a model with .generate"):
        dl.wrap(object(), tok)
    with pytest.raises(ValueError, match="k=500 is larger"):
        dl.wrap(model, tok, dl.NBLSConfig(k=500))  # fails at wrap time, before any generation


def test_nbls_prompt_path_equals_manual_grounding(tiny_llama):
    model, tok = tiny_llama
    cfg = dl.NBLSConfig(k=4, seed=7)
    w = dl.wrap(model, tok, cfg)
    prompts = ["The nurse said that", "A pilot"]
    grounded = [cfg.grounding().apply(p) for p in prompts]
    ref = model.generate(**tok(grounded, return_tensors="pt", padding=True), max_new_tokens=8, do_sample=False)
    out = w.generate(prompts=prompts, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, ref)
    texts = w.generate_text(prompts, chat=False, max_new_tokens=8, do_sample=False)
    width = tok(grounded, return_tensors="pt", padding=True)["input_ids"].shape[1]
    assert texts == [tok.decode(r[width:], skip_special_tokens=True) for r in ref]


def test_nbls_input_ids_path_prefixes_grounding(tiny_llama):
    model, tok = tiny_llama
    cfg = dl.NBLSConfig(k=3, seed=1)
    w = dl.wrap(model, tok, cfg)
    enc = _inputs(tok)
    out = w.generate(**enc, max_new_tokens=6, do_sample=False)
    prefix = tok(cfg.grounding().text + "\n\n", add_special_tokens=False)["input_ids"]
    for i in range(2):  # each row, alone and unpadded, gives the same continuation
        real = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        x = torch.tensor([prefix + real])
        alone = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False)
        assert out[i, -6:].tolist() == alone[0, -6:].tolist()


def test_nbls_messages_path_uses_system_message(tiny_llama):
    model, tok = tiny_llama
    cfg = dl.NBLSConfig(k=3, seed=1)
    w = dl.wrap(model, tok, cfg)
    msgs = [{"role": "user", "content": "Describe a plumber."}]
    enc = w.impl.encode(messages=msgs)
    text = tok.decode(enc["input_ids"][0])
    assert text.startswith("<|im_start|>system\n" + cfg.grounding().text + "<|im_end|>")
    assert text.endswith("<|im_start|>user\nDescribe a plumber.<|im_end|>\n<|im_start|>assistant\n")
    out = w.generate(messages=msgs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    assert torch.equal(out, model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False))


def test_text_input_errors(tiny_llama):
    model, tok = tiny_llama
    w = dl.wrap(model, tok, "nbls")
    with pytest.raises(ValueError, match="empty"):
        w.generate(prompt="  ", max_new_tokens=2)
    with pytest.raises(ValueError, match="exactly one of"):
        w.impl.encode(prompt="a", messages=[{"role": "user", "content": "b"}])


def test_wrap_peft_lora_model(tiny_llama):
    peft = pytest.importorskip("peft")
    from debias_lm.testing import build_tiny_llama

    base, tok = build_tiny_llama(seed=3)
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    pm = peft.get_peft_model(base, lcfg).eval()
    enc = _inputs(tok)
    plain = pm.generate(**enc, max_new_tokens=8, do_sample=False)
    w = dl.wrap(pm, tok, "identity")
    assert torch.equal(w.generate(**enc, max_new_tokens=8, do_sample=False), plain)
    with pm.disable_adapter():
        no_lora = pm.generate(**enc, max_new_tokens=8, do_sample=False)
    assert not torch.equal(no_lora, plain)  # the adapter is really active
    g = dl.wrap(pm, tok, dl.NBLSConfig(k=2))
    out = g.generate(prompt="The nurse said that", max_new_tokens=5, do_sample=False)
    ref = pm.generate(**tok([dl.NBLSConfig(k=2).grounding().apply("The nurse said that")], return_tensors="pt"),
                      max_new_tokens=5, do_sample=False)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("bits", [8, 4])
def test_wrap_bitsandbytes_model(tiny_llama_dir, bits):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if bits == 8:
        q = BitsAndBytesConfig(load_in_8bit=True)
    else:
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=q, device_map="cpu").eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    layer = model.model.layers[0].self_attn.q_proj
    assert "bitsandbytes" in type(layer).__module__ or "bnb" in type(layer).__module__.lower()
    enc = _inputs(tok)
    plain = model.generate(**enc, max_new_tokens=6, do_sample=False)
    w = dl.wrap(model, tok, "identity")
    assert torch.equal(w.generate(**enc, max_new_tokens=6, do_sample=False), plain)
    out = dl.wrap(model, tok, dl.NBLSConfig(k=2)).generate(prompt="The nurse said that", max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > 4
