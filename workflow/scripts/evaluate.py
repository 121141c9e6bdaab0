"""Snakemake adapter: evaluate one cell and audit it (dpmedbench.results.evaluate.evaluate_cell)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.results.evaluate import evaluate_cell

inputs = dict(snakemake.input.items())  # noqa: F821
references = list(zip(inputs.pop("reference_models", []), inputs.pop("reference_members", []), strict=True))
run_logged(
    snakemake.log[0],  # noqa: F821
    evaluate_cell,
    best=inputs.pop("best"),
    metrics=inputs.pop("metrics"),
    inputs=inputs,
    out_json=snakemake.output[0],  # noqa: F821
    device=snakemake.resources.device,  # noqa: F821  (where it runs: a resource, not a param)
    bootstrap=snakemake.params.bootstrap,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    eval_batch=snakemake.resources.eval_batch,  # noqa: F821  (speed only: a resource, not a param)
    threads=snakemake.threads,  # noqa: F821
    references=references,
)
