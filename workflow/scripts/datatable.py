"""Snakemake adapter: the data-provenance table (dpmedbench.results.tables.write_data_table)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.results.tables import write_data_table

run_logged(
    snakemake.log[0],  # noqa: F821
    write_data_table,
    infos=dict(zip(snakemake.params.datasets, snakemake.input, strict=True)),  # noqa: F821
    outputs=[snakemake.output.csv, snakemake.output.md, snakemake.output.html],  # noqa: F821
)
