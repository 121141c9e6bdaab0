"""Tiny prepared arrays and cell settings for the training and evaluation tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from dpmedbench.core.settings import CellConfig, DPSettings
from dpmedbench.data.synth import chest_image

#: The secret noise key of the tests' keyed cells and copies (a fixed one: the tests need reproducible draws).
TEST_KEY = bytes(range(32))


def make_split(folder: Path, name: str, n: int, *, side: int = 32, classes: int = 2, dtype=np.uint8, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = np.stack([chest_image(rng, side, side, bool(lab)) for lab in labels])[..., None]
    if dtype != np.uint8:
        images = (images / 255.0).astype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", images)
    with open(folder / f"{name}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "source", "label", "class_name", "group", "origin"])
        for i, lab in enumerate(labels):
            writer.writerow([i, f"img{i}.jpeg", lab, ["NORMAL", "PNEUMONIA"][lab % 2], f"p{i}", name])
    return str(folder / f"{name}.npy"), str(folder / f"{name}.csv")


def tiny(mechanism: str, **kw) -> CellConfig:
    dp = DPSettings(**{"max_physical_batch": 8, **kw.pop("dp", {})})
    base = dict(
        dataset="chest_xray",
        mechanism=mechanism,
        beta=1.0,
        seed=0,
        epochs=2,
        batch_size=8,
        crop=28,
        pretrained=False,
        device="cpu",
        dpsgd=dp,
        max_physical_batch=6,
    )
    return CellConfig(**{**base, **kw})
