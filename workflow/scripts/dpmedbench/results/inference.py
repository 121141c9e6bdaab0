"""A trained network back from its ``best.pt``, and its predictions: what every evaluation and audit reads a model
through (:func:`load_model`, :func:`predict`)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from ..core.tensors import Preprocess, Split, infer
from ..training.models import build_resnet18

#: A model's per-image losses on a split.
Losses = Callable[[Split], np.ndarray]


def predict(model: torch.nn.Module, split: Split, prep: Preprocess, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (N, K), per-image cross-entropy (N,)) of ``model`` in eval mode."""
    result = infer(model, split, prep, batch)
    return result.probabilities, result.losses


def load_model(best: str | os.PathLike[str], dev: torch.device) -> tuple[torch.nn.Module, Preprocess, int]:
    """A network from a ``best.pt`` checkpoint, in eval mode, with the preprocessing it was trained with, and the
    epoch it was saved at."""
    checkpoint = torch.load(best, map_location=dev, weights_only=True)
    model = build_resnet18(num_classes=checkpoint["classes"], weights=None, norm=checkpoint["norm"]).to(dev)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    prep = Preprocess(crop=checkpoint["crop"], augment=False, normalize=checkpoint["normalize"], device=dev)
    return model, prep, checkpoint["epoch"]


def losses_of(model: torch.nn.Module, prep: Preprocess, batch: int) -> Losses:
    """The per-image losses of ``model`` on any split."""
    return lambda split: predict(model, split, prep, batch)[1]
