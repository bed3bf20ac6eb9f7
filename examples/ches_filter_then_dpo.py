"""Filter a DPO preference dataset by LN-CHES, then train trl's DPOTrainer on what is left.

The paper (Razin et al., ICLR 2025, §6) keeps the 5 % of pairs with the LOWEST LN-CHES: pairs whose preferred
and dispreferred responses look alike to the model (e.g. two refusals) drive likelihood displacement.

    python examples/ches_filter_then_dpo.py                  # embedded model, eval/ches/prefs.jsonl, 1 DPO step
    # the same filter from the shell:
    debias-lm ches filter --dataset eval/ches/prefs.jsonl --keep-fraction 0.05 --out runs/ches

Needs trl (pip install "debias-lm[train]").
"""

import copy
import tempfile
from pathlib import Path

from trl import DPOConfig, DPOTrainer

import debias_lm as dl
import debias_lm.ches as ches

data = Path(__file__).resolve().parents[1] / "eval" / "ches" / "prefs.jsonl"
model, tok = dl.load_default_model()

ds = ches.load_preference_dataset(str(data))          # hub id, json/jsonl/parquet, or a save_to_disk folder
scores = ches.score(model, tok, ds, batch_size=8)     # one dict per row: ches, ln_ches, status, skip_reason, ...
sel = ches.select(scores, keep_fraction=0.05)         # lowest 5 % LN-CHES, ties by original index
filtered = ches.filter_dataset(ds, sel)               # original schema and row order
print(f"kept {sel.n_kept} of {sel.n_total} pairs (LN-CHES <= {sel.cut_value:.4g})")

out = Path(tempfile.mkdtemp())
filtered.save_to_disk(str(out / "filtered"))          # what `debias-lm ches filter` writes

# The filtered dataset goes into DPOTrainer unchanged (extra columns such as "kind" are ignored by trl).
trainer = DPOTrainer(
    model=model,
    ref_model=copy.deepcopy(model),
    train_dataset=filtered,
    processing_class=tok,
    args=DPOConfig(output_dir=str(out / "dpo"), report_to=[], use_cpu=True, max_steps=1,
                   per_device_train_batch_size=2, learning_rate=1e-6),
)
trainer.train()
print("trained one DPO step on the filtered pairs")
