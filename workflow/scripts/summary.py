"""Snakemake adapter: one row per cell in results/summary.csv (dpmedbench.results.summary.write_summary)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.results.summary import write_summary

run_logged(
    snakemake.log[0],  # noqa: F821
    write_summary,
    metrics=list(snakemake.input.metrics),  # noqa: F821
    evaluations=list(snakemake.input.evaluations),  # noqa: F821
    attacks=list(snakemake.input.attacks),  # noqa: F821
    out_csv=snakemake.output[0],  # noqa: F821
)
