"""Names shared by the workflow's rules and the package: split names, β labels in paths, the cell folder template
and which module holds each mechanism's training plan.

Standard library only: ``workflow/rules/common.smk`` imports this while Snakemake builds the job graph, so it must
not pull in numpy, PyTorch or scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

SPLITS = ("train", "val", "test")
MECHANISMS = ("none", "ldp", "dpsgd")
#: Output folder of one training cell, as Snakemake wildcards.
CELL_DIR = "results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}"
#: Output folder of one reference model of the calibrated audit.
REFERENCE_DIR = "results/references/{dataset}/{mechanism}/beta{beta}/ref{ref}"
#: The package module that defines each mechanism's training plan, beyond what every plan runs (``plans``).
#: Plans are imported by name, so a cell's code digest covers its own plan and not the others: an edit to the
#: DP-SGD code reruns the DP-SGD cells only.
PLAN_MODULES = {"none": "plans", "ldp": "plans", "dpsgd": "dpplan"}


def beta_label(beta: float) -> str:
    """How a beta appears in paths: ``1`` for 1.0, ``0.5`` for 0.5 (``f"{beta:g}"``).

    >>> beta_label(1.0), beta_label(0.5), beta_label(4)
    ('1', '0.5', '4')
    """
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    return f"{beta:g}"


def is_medmnist(source: Mapping[str, Any]) -> bool:
    """A MedMNIST download, or a local ``.npz`` in MedMNIST's format (a ``source.json`` record)."""
    return source["source"] == "medmnist" or str(source["path"]).lower().endswith(".npz")


def groups_are_patients(dataset: str, source: Mapping[str, Any]) -> bool:
    """Whether the ``group`` column of a prepared manifest holds patient ids: the Kermany chest X-ray file names
    carry them; APTOS publishes one id per image and MedMNIST none, so there the group is an image id.

    >>> groups_are_patients("chest_xray", {"source": "kaggle", "path": "x.zip"})
    True
    >>> groups_are_patients("chest_xray", {"source": "local", "path": "pneumoniamnist_224.npz"})
    False
    >>> groups_are_patients("aptos", {"source": "kaggle", "path": "x.zip"})
    False
    """
    return dataset == "chest_xray" and not is_medmnist(source)
