"""Snakemake adapter: split and resize a dataset into data/prepared (dpmedbench.data.prepare.prepare_dataset)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.data.prepare import prepare_dataset

run_logged(
    snakemake.log[0],  # noqa: F821
    prepare_dataset,
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    source_json=snakemake.input[0],  # noqa: F821
    out_dir=Path(snakemake.output.info).parent,  # noqa: F821
    image_size=snakemake.params.image_size,  # noqa: F821
    resize_mode=snakemake.params.resize_mode,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    **snakemake.params.split,  # noqa: F821
)
