"""Names shared by the workflow's rules and the package: split names, β labels in paths, the cell folder template
and which module holds each mechanism's training plan.

Standard library only: ``workflow/rules/common.smk`` imports this while Snakemake builds the job graph, so it must
not pull in numpy, PyTorch or scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

SPLITS = ("train", "val", "test")
#: Channels of each dataset's prepared images: greyscale chest X-rays, colour fundus photographs.
CHANNELS = {"chest_xray": 1, "aptos": 3}
#: The grid's mechanism families, as ``mechanisms`` in the configuration names them.
MECHANISMS = ("none", "ldp", "dpsgd")
#: Local-DP mechanisms (the registry in :mod:`dpmedbench.ldp.mechanisms` defines them) and how tables and legends
#: name them.
LDP_MECHANISMS = {"laplace_pixel": "per-pixel Laplace", "laplace_image_shift": "image shift", "dp_pix": "DP-Pix"}
#: A Local-DP cell's mechanism is ``ldp-<Local-DP mechanism>``: visible in its path, table row and legend.
LDP_PREFIX = "ldp-"
#: The columns of ``results/summary.csv`` that name a configuration: a cell without its seed (tables and figures
#: aggregate over seeds by them).
CONFIGURATION = ["dataset", "mechanism", "beta"]
#: Output folder of one training cell, as Snakemake wildcards.
CELL_DIR = "results/cells/{dataset}/{mechanism}/beta{beta}/seed{seed}"
#: Output folder of one reference model of the calibrated audit.
REFERENCE_DIR = "results/references/{dataset}/{mechanism}/beta{beta}/ref{ref}"
#: The package module that defines each mechanism's training plan, beyond what every plan runs (``plans``).
#: Plans are imported by name, so a cell's code digest covers its own plan and not the others: an edit to the
#: DP-SGD code reruns the DP-SGD cells only.
PLAN_MODULES = {"none": "training.plans", "ldp": "training.plans", "dpsgd": "training.dpsgd.plan"}


def ldp_cell_mechanism(ldp_mechanism: str) -> str:
    """The cell mechanism of a Local-DP mechanism's cells.

    >>> ldp_cell_mechanism("dp_pix")
    'ldp-dp_pix'
    """
    if ldp_mechanism not in LDP_MECHANISMS:
        raise ValueError(f"unknown Local-DP mechanism {ldp_mechanism!r}; known: {', '.join(LDP_MECHANISMS)}")
    return LDP_PREFIX + ldp_mechanism


def family(mechanism: str) -> str:
    """The family of a cell mechanism: ``none``, ``ldp`` or ``dpsgd``.

    >>> family("ldp-laplace_pixel"), family("dpsgd")
    ('ldp', 'dpsgd')
    """
    if mechanism.startswith(LDP_PREFIX):
        ldp_cell_mechanism(mechanism.removeprefix(LDP_PREFIX))  # refuses unknown ones
        return "ldp"
    if mechanism not in ("none", "dpsgd"):
        raise ValueError(f"unknown cell mechanism {mechanism!r}; known: none, dpsgd, ldp-<{'|'.join(LDP_MECHANISMS)}>")
    return mechanism


def ldp_mechanism(mechanism: str) -> str | None:
    """The Local-DP mechanism of a cell mechanism (``None`` outside Local-DP).

    >>> ldp_mechanism("ldp-dp_pix"), ldp_mechanism("none")
    ('dp_pix', None)
    """
    return mechanism.removeprefix(LDP_PREFIX) if family(mechanism) == "ldp" else None


def mechanism_label(mechanism: str) -> str:
    """How tables and legends name a cell mechanism.

    >>> mechanism_label("ldp-dp_pix"), mechanism_label("dpsgd"), mechanism_label("none"), mechanism_label("ldp")
    ('Local-DP, DP-Pix', 'DP-SGD', 'no privacy', 'ldp')
    """
    try:
        variant = ldp_mechanism(mechanism)
    except ValueError:  # a name this version does not know (an older summary.csv): shown as it is
        return mechanism
    if variant:
        return f"Local-DP, {LDP_MECHANISMS[variant]}"
    return {"none": "no privacy", "dpsgd": "DP-SGD"}[mechanism]


def mechanism_order(mechanism: str) -> tuple[int, int]:
    """Sort key of cell mechanisms: none, the Local-DP ones in registry order, DP-SGD.

    >>> sorted(["dpsgd", "ldp-dp_pix", "none", "ldp-laplace_pixel"], key=mechanism_order)
    ['none', 'ldp-laplace_pixel', 'ldp-dp_pix', 'dpsgd']
    """
    variant = ldp_mechanism(mechanism)
    return (MECHANISMS.index(family(mechanism)), list(LDP_MECHANISMS).index(variant) if variant else 0)


def beta_label(beta: float) -> str:
    """How a beta appears in paths: exact (the shortest text that reads back as the same number), without a
    trailing ``.0``, so two different betas never share a label and a label never rounds its beta.

    >>> beta_label(1.0), beta_label(0.5), beta_label(4), beta_label(1.0000001), beta_label(1.23456789)
    ('1', '0.5', '4', '1.0000001', '1.23456789')
    >>> float(beta_label(1e-7)) == 1e-7
    True
    """
    beta = float(beta)
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    text = repr(beta)
    return text[:-2] if text.endswith(".0") else text


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


#: What each source holds, in words: never call synthetic images "Kermany 2018", nor RetinaMNIST "APTOS 2019".
_DATA = {
    ("chest_xray", "demo"): "synthetic demo images in the layout of the Kermany chest X-ray archive, not real data",
    ("aptos", "demo"): "synthetic demo images in the layout of the APTOS 2019 archive, not real data",
    ("chest_xray", "medmnist"): "PneumoniaMNIST (Kermany 2018 chest X-rays, MedMNIST's resized copy)",
    ("aptos", "medmnist"): "RetinaMNIST (DeepDRiD fundus photographs, MedMNIST; a stand-in, not APTOS 2019)",
    ("chest_xray", "archive"): "Kermany 2018 paediatric chest X-rays",
    ("aptos", "archive"): "APTOS 2019 Blindness Detection fundus photographs",
}


def data_provenance(dataset: str, info: Mapping[str, Any]) -> dict[str, Any]:
    """Which data a prepared dataset is, from its ``info.json``: the source, the digest of what was read, and in
    words whether these are synthetic demo images, a MedMNIST stand-in or the real archive.

    >>> p = data_provenance("chest_xray", {"source": {"source": "demo", "path": "x.zip", "sha256": "ab"}})
    >>> p["description"].startswith("synthetic"), p["synthetic"], p["sha256"]
    (True, True, 'ab')
    """
    source = info["source"]
    kind = "medmnist" if is_medmnist(source) else ("demo" if source["source"] == "demo" else "archive")
    read = info.get("read") or {}
    return {
        "source": source["source"],
        "description": _DATA[(dataset, kind)],
        "synthetic": kind == "demo",
        "sha256": read.get("sha256") or source.get("sha256"),
        "sha256_of": read.get("sha256_of") or source.get("sha256_of"),
        "path": source.get("path"),
    }


#: One dataset order in every figure and table (the paper's), then any other dataset alphabetically.
DATASET_ORDER = ("chest_xray", "aptos")


def dataset_order(datasets: Iterable[str]) -> list[str]:
    """The datasets present, in :data:`DATASET_ORDER`.

    >>> dataset_order(["aptos", "chest_xray", "aptos"])
    ['chest_xray', 'aptos']
    """
    present = set(datasets)
    return [d for d in DATASET_ORDER if d in present] + sorted(present - set(DATASET_ORDER))
