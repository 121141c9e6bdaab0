"""Snakemake adapter: train one cell (dpmedbench.train.train_cell)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.logs import run_logged
from dpmedbench.settings import execution_settings
from dpmedbench.train import run_cell

run_logged(
    snakemake.log[0],  # noqa: F821
    run_cell,
    settings=snakemake.params.cell,  # noqa: F821
    code=snakemake.params.code,  # noqa: F821
    inputs=dict(snakemake.input.items()),  # noqa: F821
    out_dir=Path(snakemake.output.metrics).parent,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    execution=execution_settings(snakemake.resources),  # noqa: F821
)
