"""Snakemake adapter: train one reference model of the calibrated audit (dpmedbench.training.cell.run_reference)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.core.settings import execution_settings
from dpmedbench.training.cell import run_reference

run_logged(
    snakemake.log[0],  # noqa: F821
    run_reference,
    settings=snakemake.params.cell,  # noqa: F821
    code=snakemake.params.code,  # noqa: F821
    inputs=dict(snakemake.input.items()),  # noqa: F821
    out_dir=Path(snakemake.output.best).parent,  # noqa: F821
    index=snakemake.params.index,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    execution=execution_settings(snakemake.resources),  # noqa: F821
)
