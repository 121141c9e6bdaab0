"""Canaries of the one-run audit (Steinke, Nasr & Jagielski 2023): training images given a random wrong label,
each included in training with probability 1/2 by an independent draw. A model that memorises its training data
fits the wrong labels of the canaries it saw and not of the others; the audit (:func:`dpmedbench.results.attacks.
one_run_audit`) turns how well their losses tell the two apart into an epsilon lower bound.

The canaries change the training set: the canaries left out are not trained on at all, the included ones carry
their wrong label, and each canary is a privacy unit of its own. A model trained with canaries is the audited
model, not the one a release would publish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import TrainingError
from ..core.tensors import Split


@dataclass(frozen=True)
class Canaries:
    indices: np.ndarray  # (m,) positions in the training split
    labels: np.ndarray  # (m,) their wrong labels
    included: np.ndarray  # (m,) bool: trained on

    def kept(self, n: int) -> np.ndarray:
        """Positions of the training split that training uses: every non-canary and the included canaries."""
        keep = np.ones(n, dtype=bool)
        keep[self.indices[~self.included]] = False
        return np.flatnonzero(keep)

    def apply(self, split: Split) -> Split:
        """The training split as trained on: canaries relabelled, left-out canaries removed."""
        labels = split.labels.clone()
        labels[torch.as_tensor(self.indices, device=labels.device)] = torch.as_tensor(self.labels, device=labels.device)
        keep = torch.as_tensor(self.kept(len(split)), device=labels.device)
        return Split(split.name, split.images[keep], labels[keep])

    def groups(self, groups: np.ndarray) -> np.ndarray:
        """The privacy units of the training set as trained on: each canary is a unit of its own."""
        groups = np.asarray(groups, dtype=object).copy()
        groups[self.indices] = [f"canary-{i}" for i in range(len(self.indices))]
        return groups[self.kept(len(groups))]

    def to_json(self) -> dict[str, Any]:
        return {
            "m": len(self.indices),
            "included": int(self.included.sum()),
            "indices": self.indices.tolist(),
            "labels": self.labels.tolist(),
            "trained_on": self.included.tolist(),
            "note": "canaries (training images with a random wrong label, each trained on with probability 1/2) "
            "changed this model's training set: it is the audited model, not the one a release would publish",
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Canaries:
        return cls(
            np.asarray(record["indices"], dtype=np.int64),
            np.asarray(record["labels"], dtype=np.int64),
            np.asarray(record["trained_on"], dtype=bool),
        )


def choose_canaries(labels: np.ndarray, m: int, *, classes: int, seed: int) -> Canaries:
    """``m`` distinct training images, a wrong label for each (uniform over the other classes) and an
    independent fair coin for each: trained on or not.

    >>> c = choose_canaries(np.array([0, 1] * 10), 6, classes=2, seed=0)
    >>> len(set(c.indices)), bool((c.labels != np.array([0, 1] * 10)[c.indices]).all())
    (6, True)
    """
    labels = np.asarray(labels, dtype=np.int64)
    if m > len(labels) // 2:
        raise TrainingError(
            f"evaluation.canaries: {m} canaries out of {len(labels)} training images; at most half the training "
            f"split ({len(labels) // 2}) can be canaries"
        )
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(labels), m, replace=False))
    wrong = (labels[indices] + rng.integers(1, classes, size=m)) % classes
    return Canaries(indices, wrong, rng.random(m) < 0.5)
