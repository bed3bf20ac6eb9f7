"""The evaluation package behind ``debias-lm eval`` and ``debias-lm bench`` (docs/evaluation.md).

``settings`` (EvalSettings) -> ``runner.run_eval`` iterates the suite registry (``suites``: one module per
suite) -> ``store`` (samples.jsonl, resume) -> ``report`` (report.md + plots from each suite's declared
columns). ``backends`` is the only module that reaches an engine (HF through ``debias_lm.wrap``, vLLM through
the vllm_debias plugin); ``bench`` holds the benchmark drivers (the loop is debias_lm.utils.timing); debias_lm.utils.provenance the git commit and package
versions; ``scorers`` and ``datasets`` the judges and loaders. Heavy imports happen inside the functions.
"""
