"""Snakemake adapter: the paper's Figure 2 for one dataset (dpmedbench.ldp.figure2.figure2)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.ldp.figure2 import figure2

run_logged(
    snakemake.log[0],  # noqa: F821
    figure2,
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    clean_npy=snakemake.input.clean,  # noqa: F821
    data_info=snakemake.input.info,  # noqa: F821
    copies=list(snakemake.input.copies),  # noqa: F821
    privacy_jsons=list(snakemake.input.privacy),  # noqa: F821
    index=snakemake.params.index,  # noqa: F821
    show_clean=snakemake.params.show_clean,  # noqa: F821
    outputs=[snakemake.output.png, snakemake.output.pdf],  # noqa: F821
)
