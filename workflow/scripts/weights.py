"""Snakemake adapter: download torchvision's ResNet-18 ImageNet weights and check their SHA-256 prefix."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpmedbench.core.logs import run_logged
from dpmedbench.data.weights import fetch_weights

run_logged(snakemake.log[0], fetch_weights, url=snakemake.params.url, dest=snakemake.output[0])  # noqa: F821
