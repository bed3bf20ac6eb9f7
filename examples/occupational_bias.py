"""Measure the occupational gender bias of any causal LM against U.S. BLS shares, with and without NBLS.

    python examples/occupational_bias.py                                   # embedded model
    python examples/occupational_bias.py --model meta-llama/Llama-3.2-1B-Instruct --out runs/llama

The same thing from the shell:

    debias-lm eval --suite occupational --model M --method none,nbls_instructions,nbls_shuffled,nbls \
        --probe likelihood,generation --out DIR
"""

import argparse

import debias_lm as dl
from debias_lm.evaluation.report import suite_table
from debias_lm.evaluation.runner import run_eval
from debias_lm.evaluation.settings import EvalSettings
from debias_lm.evaluation.suites import get_suite
from debias_lm.evaluation.suites.occupational import evaluate_occupational

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="default")
parser.add_argument("--out", default="runs/occupational-example",
                    help="run directory: samples.jsonl, results.json, report.md, plots (a rerun resumes it)")
args = parser.parse_args()

model, tok = dl.load_model(args.model)

# One probe, one method, a handful of occupations: a result object with per-occupation p_female and metrics.
res = evaluate_occupational(model, tok, method="none", probe="likelihood",
                            occupations=["Registered nurses", "Electricians", "Lawyers", "Cashiers"])
for row in res.occupations:
    print(f"{row['occupation']:<22} BLS {row['bls_women']:5.1f}%   model {100 * row['p_female']:5.1f}%")
print(res.metrics)

# The comparison on the default 50 held-out occupations with NBLS's two controls (its registered variants: the
# wording without figures, and the same lines with the figures permuted across occupations), likelihood probe
# only: the harness's occupational suite (it loads the model named in the settings), printed as a table.
settings = EvalSettings(suites=("occupational",), methods=("none", "nbls_instructions", "nbls_shuffled", "nbls"),
                        model=args.model, occupational_probes=("likelihood",), out=args.out)
payload = run_eval(settings)
print(suite_table(get_suite("occupational"), payload["results"]["occupational"], payload))
