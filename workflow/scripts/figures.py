"""Snakemake adapter: Figures 3 and 4, privacy-utility and audit plots (dpmedbench.results.figures)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.results.figures import draw_figures

run_logged(
    snakemake.log[0],  # noqa: F821
    draw_figures,
    summary_csv=snakemake.input.summary,  # noqa: F821
    histories=list(snakemake.input.histories),  # noqa: F821
    cells=snakemake.params.cells,  # noqa: F821
    outputs=dict(snakemake.output.items()),  # noqa: F821
    dpi=snakemake.params.dpi,  # noqa: F821
)
