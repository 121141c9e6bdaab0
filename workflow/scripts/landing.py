"""Snakemake adapter: the report's landing page with the main results (dpmedbench.results.report.landing_page)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.results.report import landing_page

run_logged(
    snakemake.log[0],  # noqa: F821
    landing_page,
    template=snakemake.input.template,  # noqa: F821
    summary_csv=snakemake.input.summary,  # noqa: F821
    out=snakemake.output[0],  # noqa: F821
)
