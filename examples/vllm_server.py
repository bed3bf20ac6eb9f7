"""debias-lm against a vLLM OpenAI-compatible server, with the OpenAI SDK.

Start the server first (the plugin loaded, every chat request NBLS-grounded)::

    debias-lm serve --model /path/to/model --nbls --port 8000
    # = python -m vllm.entrypoints.openai.api_server --model M \
    #     --logits-processors vllm_debias.processors.calibration:CalibrationLogitsProcessor \
    #     vllm_debias.processors.contrast:ContrastLogitsProcessor --max-logprobs 128 --chat-template <nbls template>

then::

    python examples/vllm_server.py --base-url http://127.0.0.1:8000 --model /path/to/model
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", required=True, help="the served model name (as in GET /v1/models)")
    args = ap.parse_args()

    from openai import OpenAI
    from transformers import AutoTokenizer
    from vllm_debias import LockstepClient, request_args

    import debias_lm as dl

    client = OpenAI(base_url=args.base_url.rstrip("/") + "/v1", api_key="EMPTY")

    # 1. Calibration inside generation: the prior travels in vllm_xargs (flat: str/int/float and lists).
    tok = AutoTokenizer.from_pretrained(args.model)  # label token ids depend on the tokenizer
    cal = dl.CalibrationConfig(labels=("yes", "no"), prior="given", prior_probs=(0.8, 0.2))
    r = client.completions.create(model=args.model, prompt="Is a nurse more likely a woman? Answer yes or no:",
                                  max_tokens=1, temperature=0.0,
                                  extra_body={"vllm_xargs": request_args(cal, tok)})
    print("[calibration]", repr(r.choices[0].text))

    # 2. Bad arguments come back as HTTP 400 with the plugin's message.
    try:
        client.completions.create(model=args.model, prompt="x", max_tokens=1,
                                  extra_body={"vllm_xargs": {"debias_method": "uddia"}})
    except Exception as e:  # openai.BadRequestError
        print("[uddia] rejected:", str(e)[:160], "...")

    # 3. Debias sampling online: the lockstep client (paired HTTP requests are not co-scheduled by vLLM).
    ls = LockstepClient(args.base_url, args.model, k=64)
    res = ls.generate(["The nurse walked in and he said"], dl.DebiasSamplingConfig(counterfactual_swap="gender"),
                      max_tokens=20)
    print("[debias_sampling]", repr(res[0].text), f"(truncated steps: {res[0].truncated_steps})")

    # 4. NBLS: with 'debias-lm serve --nbls' every chat request is grounded by the chat template.
    r = client.chat.completions.create(model=args.model, max_tokens=40, temperature=0.0,
                                       messages=[{"role": "user", "content": "Write one sentence about a surgeon."}])
    print("[nbls chat]", repr(r.choices[0].message.content))


if __name__ == "__main__":
    main()
