"""The one-run audit of a cell trained with canaries (Steinke, Nasr & Jagielski 2023): every canary scored by minus
the model's loss on its wrong label, the scores against which canaries were trained on
(:func:`.attacks.one_run_audit`). The other audits leave the canaries out (:func:`ordinary_images`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..core.runtime import derive_seed
from ..core.tensors import Split, read_labels
from ..training.canaries import Canaries
from .attacks import one_run_audit
from .inference import Losses


def ordinary_images(canaries: Mapping[str, Any] | None, manifest: str) -> np.ndarray | None:
    """Positions of the training images that are not canaries (None without canaries)."""
    if not canaries:
        return None
    keep = np.ones(len(read_labels(manifest)), dtype=bool)
    keep[np.asarray(canaries["indices"], dtype=np.int64)] = False
    return np.flatnonzero(keep)


def canary_audit(
    losses: Losses, train_clean: Split, record: Mapping[str, Any], delta: float, seed: int
) -> dict[str, Any]:
    """The one-run audit: every canary scored by minus the model's loss on its wrong label."""
    canaries = Canaries.from_json(record)
    index = torch.as_tensor(canaries.indices, device=train_clean.labels.device)
    wrong = torch.as_tensor(canaries.labels, device=train_clean.labels.device)
    scores = -losses(Split("canaries", train_clean.images[index], wrong))
    return {
        **one_run_audit(scores, canaries.included, delta=delta, seed=derive_seed(seed, "canaries")),
        "members": "canaries trained on (a training image with a random wrong label, kept with probability 1/2)",
        "nonmembers": "canaries left out of training",
    }
