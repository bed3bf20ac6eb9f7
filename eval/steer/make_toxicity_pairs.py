"""Write eval/steer/toxicity_pairs.jsonl (+ calibration_prompts.jsonl): the toxicity steering recipe's contrast data.

1. Prompts written for this project (``PROMPTS``: openings that invite an insult or a calm answer, in other words
   and situations than the evaluation prompts; checked disjoint from debias_lm/data/eval/toxicity_prompts.jsonl).
2. The embedded SmolLM2-135M-Instruct continues each one ``--samples`` times (raw text, nucleus 0.9, temperature 1,
   20 new tokens, ``torch.manual_seed(seed + prompt index)``).
3. Each continuation is labelled by two offline signals, neither of them the evaluation judge (hatesonar):
   alt-profanity-check's probability p (offensive wording) and VADER's compound sentiment c (hostility):
   toxic if p >= 0.5 and c <= -0.25; non-toxic if p <= 0.15 and c >= 0; anything else is left out.
4. Per prompt, up to ``--pairs-per-prompt`` (non-toxic, toxic) continuations are paired (seeded), written as
   ``{"prompt", "positive": non-toxic, "negative": toxic}``: adding the CAA vector moves toward non-toxic.

Circularity: the toxicity suite's second scorer is profanity-check, which labelled these pairs, so its numbers for
``steer`` are circular; hatesonar (the judge) labelled nothing here. The same prompts are the calibration set of
``debias-lm uddia distill`` (calibration_prompts.jsonl).

    .venv/bin/python eval/steer/make_toxicity_pairs.py        # ~5 min on 2 shared CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVAL_PROMPTS = HERE.parent.parent / "debias_lm" / "data" / "eval" / "toxicity_prompts.jsonl"

PROMPTS = [
    "The goalkeeper let in three goals and the coach called him a",
    "My upstairs neighbour plays drums at 3 am, so I left a note saying",
    "The customer threw the coffee back at the barista and screamed",
    "In the group chat, my cousin wrote that his boss is a",
    "The streamer lost the match and told his viewers they were",
    "She read the nasty comment out loud: you are an",
    "The man in the queue pushed past everyone and muttered",
    "My roommate ate my leftovers again, so I texted him",
    "The umpire made a terrible call and the pitcher shouted",
    "He got cut off in traffic and started yelling that the other driver was a",
    "The anonymous reply under her photo just said",
    "The boxer stared down his opponent and called him a",
    "When the printer jammed again, the intern kicked it and said",
    "The teenager slammed his phone down and told his sister she was",
    "The angry tenant wrote to the landlord that he was a",
    "After losing the debate, the senator called his opponent a",
    "The old lady at the bus stop told the skateboarders they were",
    "The chef threw the plate on the floor and told the cook he was a",
    "My ex sent me a message at midnight calling me",
    "The fans spat at the players and chanted that they were",
    "The hacker left a message on the website that said",
    "The guy who stole my parking spot is a",
    "The tech support caller lost his patience and told the customer",
    "In the YouTube comments, someone called the singer a",
    "The bus driver honked and shouted at the cyclist,",
    "The security guard grabbed his arm and said, listen you",
    "The twins were fighting and one told the other he was a",
    "The landlady called the students who rented her flat",
    "The player who missed the shot got a message saying he was a",
    "The loudmouth at the pub kept calling the barman a",
    "She found out her friend lied to her and told her she was",
    "The disgruntled employee wrote on the whiteboard that the manager is a",
    "The referee was surrounded by players calling him",
    "When the delivery was late again, he called the courier a",
    "The rival chef told the newspaper that her cooking was",
    "The passenger yelled at the flight attendant that she was a",
    "The heckler at the comedy club shouted that the comedian was",
    "The neighbours were arguing so loudly that we heard her call him a",
    "The anonymous letter called the principal a",
    "The gamer typed in the chat that the other team were a bunch of",
    "The protester held up a sign calling the minister a",
    "My brother broke my guitar, so I told him he was",
    "The critic said the singer's new album was",
    "The man on the phone to the bank yelled that they were",
    "The kid on the playground called the new girl",
    "The teacher overheard a student calling her a",
    "He was furious and wrote in his diary that his father was",
    "The drunk fan tweeted that the coach should",
    "The spammer's email began with the words",
    "The talk show host called his guest a",
    "Two drivers got out of their cars and one shouted,",
    "She blocked him after he called her a",
    "The troll's profile description says he hates",
    "The angry shopper told the cashier to",
    "During the argument, my uncle called the politician a",
    "The sergeant told the lazy private he was a",
    "The mean girl whispered that the new student was",
    "The voicemail from my neighbour said I was a",
    "The football pundit called the striker's performance",
    "Someone keyed my car and wrote",
    "The prankster's sign on the door read",
    "The billionaire called the journalists who criticised him",
    "The gang member warned the shopkeeper that he would",
    "The poker player lost everything and called the dealer a",
    "The frustrated programmer named the variable after his boss:",
    "The actor stormed off the set after the director called him a",
    "The hater left a one-word comment:",
    "He blamed his teammates and called them",
    "The racist graffiti on the wall said",
    "The furious mother told the other parent she was a",
    "The guy at the gym told me I was a",
    "Her online review called the hotel staff",
    "The caller on the radio show said that all politicians are",
    "The bitter loser congratulated the winner by calling him a",
    "The villain in the cartoon called the hero a",
    "The taxi driver cursed at the tourists and called them",
    "The dog owner yelled at the jogger that she was a",
    "The hostile reviewer said the author was a",
    "The student wrote on the exam that the professor was a",
    "In the heated meeting, the CFO called the marketing team",
    "The angry crowd threw eggs and shouted that the singer was",
    "The moderator deleted the post because it called the victim a",
    "My grandfather always called the neighbours' kids",
    "The scammer got caught and screamed at the police that they were",
    "The referee sent him off for calling the linesman a",
    "The ex-husband told the judge that his wife was a",
    "The teenager's text to his teacher said she was",
    "The neighbour's sign on the fence says trespassers are",
    "The angry hiker yelled at the mountain biker,",
    "The podcast host laughed and called his co-host a",
    "The kind nurse smiled and told the patient",
    "On a sunny morning the baker greeted his customers and said",
    "The grandmother wrote in her birthday card that",
    "The librarian whispered to the children that",
    "The volunteer at the shelter thanked everyone and said",
    "The coach hugged the players after the game and told them",
    "The teacher praised the class and said they were",
    "The new neighbour brought cookies and said",
    "My best friend wrote me a letter saying",
    "The gardener explained that the roses",
]


def _check_disjoint() -> None:
    eval_prompts = [json.loads(line)["prompt"] for line in EVAL_PROMPTS.open() if line.strip()]
    same = [p for p in PROMPTS if p in eval_prompts]
    assert not same, f"prompts also in the evaluation set: {same}"
    assert len(set(PROMPTS)) == len(PROMPTS), "duplicate prompts"


def label(p: float, c: float) -> int | None:
    """1 = toxic, 0 = non-toxic, None = ambiguous (left out)."""
    if p >= 0.5 and c <= -0.25:
        return 1
    if p <= 0.15 and c >= 0.0:
        return 0
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=16, help="continuations per prompt")
    ap.add_argument("--pairs-per-prompt", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    _check_disjoint()

    import torch

    import debias_lm as dl
    from debias_lm.evaluation.scorers import get_scorer

    torch.set_num_threads(args.threads)
    model, tok = dl.load_default_model(dtype="float32")
    plain = dl.wrap(model, tok, "identity")
    prof, vader = get_scorer("profanity-check"), get_scorer("vader")
    rows = []
    for i, prompt in enumerate(PROMPTS):
        torch.manual_seed(args.seed + i)
        texts = plain.generate_text([prompt] * args.samples, chat=False, max_new_tokens=args.max_new_tokens,
                                    do_sample=True, top_p=0.9, temperature=1.0, top_k=0,
                                    pad_token_id=tok.pad_token_id)
        ps, cs = prof.score_batch(texts), vader.score_batch(texts)
        for j, (t, p, c) in enumerate(zip(texts, ps, cs)):
            rows.append({"prompt_index": i, "prompt": prompt, "sample": j, "text": t, "profanity_check": p,
                         "vader": c, "label": label(p, c)})
        print(f"{i + 1}/{len(PROMPTS)}", flush=True)
    rng = random.Random(args.seed)
    pairs = []
    for i, prompt in enumerate(PROMPTS):
        tox = [r for r in rows if r["prompt_index"] == i and r["label"] == 1 and r["text"].strip()]
        ok = [r for r in rows if r["prompt_index"] == i and r["label"] == 0 and r["text"].strip()]
        rng.shuffle(tox)
        rng.shuffle(ok)
        for k, (good, bad) in enumerate(zip(ok, tox)):
            if k >= args.pairs_per_prompt:
                break
            pairs.append({"id": f"p{i:03d}-{k}", "prompt": prompt, "positive": good["text"], "negative": bad["text"],
                          "labels": {"positive": [round(good["profanity_check"], 4), round(good["vader"], 4)],
                                     "negative": [round(bad["profanity_check"], 4), round(bad["vader"], 4)]}})
    with (HERE / "toxicity_pairs.jsonl").open("w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    with (HERE / "calibration_prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i, prompt in enumerate(PROMPTS):
            fh.write(json.dumps({"id": f"cal{i:03d}", "prompt": prompt}) + "\n")
    summary = {
        "labeller": f"{prof.version()} predict_prob p + {vader.version()} compound; toxic: p >= 0.5 and compound <= -0.25; "
                    "non-toxic: p <= 0.15 and compound >= 0",
        "prompts": len(PROMPTS), "samples_per_prompt": args.samples, "continuations": len(rows),
        "toxic": sum(r["label"] == 1 for r in rows), "non_toxic": sum(r["label"] == 0 for r in rows),
        "ambiguous": sum(r["label"] is None for r in rows), "pairs": len(pairs),
        "prompts_with_pairs": len({p["prompt"] for p in pairs}), "seed": args.seed,
        "sampling": f"raw text, top_p 0.9, temperature 1, {args.max_new_tokens} new tokens, "
                    "torch.manual_seed(seed + prompt index)",
    }
    (HERE / "toxicity_pairs.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
