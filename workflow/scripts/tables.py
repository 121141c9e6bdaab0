"""Snakemake adapter: results tables from results/summary.csv (dpmedbench.results.tables.write_tables)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.results.tables import write_tables

run_logged(
    snakemake.log[0],  # noqa: F821
    write_tables,
    summary_csv=snakemake.input[0],  # noqa: F821
    main=list(snakemake.output.main),  # noqa: F821
    paper=list(snakemake.output.paper),  # noqa: F821
)
