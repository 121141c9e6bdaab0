"""Snakemake adapter: the run's configuration as a result (dpmedbench.results.report.write_configuration)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.results.report import write_configuration

run_logged(
    snakemake.log[0],  # noqa: F821
    write_configuration,
    config=snakemake.params.config,  # noqa: F821
    out_json=snakemake.output.json,  # noqa: F821
    out_html=snakemake.output.html,  # noqa: F821
)
