"""Snakemake adapter: one Local-DP noisy copy of train and val (dpmedbench.ldp.copies.materialise_copy)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.core.noisekey import with_key
from dpmedbench.ldp.copies import materialise_copy

run_logged(
    snakemake.log[0],  # noqa: F821
    # the secret noise key where the job draws keyed noise (its id is the param; the key is read when it runs)
    with_key(materialise_copy, snakemake.resources.noise_key, snakemake.params.key),  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    beta=snakemake.params.beta,  # noqa: F821
    mechanism=snakemake.params.settings["mechanism"],  # noqa: F821
    clip=snakemake.params.settings["clip"],  # noqa: F821
    # The neighbourhood m, and dp_pix's cell side b (only dp_pix's settings carry it).
    **{k: v for k, v in snakemake.params.settings.items() if k in ("block", "neighbourhood")},  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    noise_source=snakemake.params.noise_source,  # noqa: F821
    chunk_images=snakemake.resources.chunk_images,  # noqa: F821  (speed only: a resource, not a param)
    quality_images=snakemake.params.quality_images,  # noqa: F821
    inputs={"train": snakemake.input.train, "val": snakemake.input.val},  # noqa: F821
    outputs={"train": snakemake.output.train, "val": snakemake.output.val},  # noqa: F821
    privacy_json=snakemake.output.privacy,  # noqa: F821
)
