#!/usr/bin/env bash
# The UDDIA measurements of issue 12 as reported in docs/uddia.md, full protocol by default:
#   toxicity: all 102 prompts x 4 samples, plain vs UDDIA-t vs UDDIA-u;
#   gender:   all 30 pairs (60 prompts) x 4 samples, plain vs UDDIA-b vs UDDIA-u;
# 20 new tokens, nucleus p = 0.9, the DEFAULT UDDIAConfig, then scoring (score.py) and the counted cost (cost.py).
# Resumable: rerun the same command to continue (finished prompts are skipped). About 45 min of one unloaded CPU
# core for the generations on the embedded model (fp32, one thread; summed from the batches' CPU seconds);
# score.py compares methods on the prompts they all share, so a partial run can be scored too.
#   LIMIT=20 PAIRS=6 bash eval/uddia/run_all.sh      # a quick subset (NOT the reported protocol)
# The tokens/s ratios need a quiet machine: python eval/uddia/cost.py --out eval/uddia/results/cost.json
set -e
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
N=${N_SAMPLES:-4}
LIMIT=${LIMIT:-0}     # toxicity prompts (0 = all 102)
PAIRS=${PAIRS:-0}     # gender pairs, two prompts each (0 = all 30)
OUT=${OUT:-eval/uddia/results}
$PY eval/uddia/run_effect.py --suite toxicity --methods plain,t,u --n-samples "$N" --limit "$LIMIT" --out "$OUT"
$PY eval/uddia/run_effect.py --suite gender --methods plain,b,u --n-samples "$N" --limit "$((PAIRS * 2))" --out "$OUT"
$PY eval/uddia/score.py --results "$OUT"
$PY eval/uddia/cost.py --count-only --out "$OUT/cost-counted.json"
