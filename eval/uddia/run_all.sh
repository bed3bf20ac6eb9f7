#!/usr/bin/env bash
# The UDDIA measurements as run for docs/uddia.md (resumable: rerun to continue; finished prompts are skipped).
# Sized for 2 shared CPU cores: 4 samples per prompt, 20 toxicity prompts and 6 gender pairs (12 prompts) for
# the UDDIA variants; score.py compares methods on the prompts they all share. On a bigger machine:
#   LIMIT=102 PAIRS=60 N_SAMPLES=10 bash eval/uddia/run_all.sh
# The cost measurement (eval/uddia/cost.py) ran beside it for docs/uddia.md.
set -e
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
N=${N_SAMPLES:-4}
LIMIT=${LIMIT:-20}
PAIRS=${PAIRS:-12}
nice -n 10 $PY eval/uddia/run_effect.py --suite toxicity --methods plain,t,u --n-samples $N --prompts-per-batch 10 --limit $LIMIT
nice -n 10 $PY eval/uddia/run_effect.py --suite gender --methods plain,b,u --n-samples $N --prompts-per-batch 12 --limit $PAIRS
nice -n 10 $PY eval/uddia/score.py --results eval/uddia/results
