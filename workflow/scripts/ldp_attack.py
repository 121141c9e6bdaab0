"""Snakemake adapter: re-identification and reconstruction attacks on one Local-DP copy
(dpmedbench.ldp.attacks.attack_copies)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.ldp.attacks import attack_copies

run_logged(
    snakemake.log[0],  # noqa: F821
    attack_copies,
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    beta=snakemake.params.beta,  # noqa: F821
    clean=[snakemake.input.clean],  # noqa: F821
    copies=[snakemake.input.noisy],  # noqa: F821
    splits=["train"],
    privacy_json=snakemake.input.privacy,  # noqa: F821
    out_json=snakemake.output[0],  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    queries=snakemake.params.queries,  # noqa: F821
    quality_images=snakemake.params.quality_images,  # noqa: F821
)
