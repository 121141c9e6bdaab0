"""Snakemake adapter: fetch a dataset's archive and record its SHA-256 (dpmedbench.data.sources.fetch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.data.sources import fetch

run_logged(
    snakemake.log[0],  # noqa: F821
    fetch,
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    settings=snakemake.params.settings,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    out_json=snakemake.output[0],  # noqa: F821
)
