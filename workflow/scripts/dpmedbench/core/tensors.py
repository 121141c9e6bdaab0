"""Data on the training device: packed splits, the preprocessing of the authors' pipeline, and the one inference
loop that both per-epoch validation and the ``evaluate`` rule use."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import TrainingError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Split:
    """A split held in memory on the training device: packed images and integer labels."""

    name: str
    images: torch.Tensor  # (N, H, W, C) uint8 or int16 grey levels, or float16 or float32 on [0, 1]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.name, self.images[indices], self.labels[indices])


def read_labels(manifest: str | os.PathLike[str]) -> np.ndarray:
    with open(manifest, newline="") as fh:
        return np.array([int(row["label"]) for row in csv.DictReader(fh)], dtype=np.int64)


def read_groups(manifest: str | os.PathLike[str]) -> np.ndarray:
    """The ``group`` column of a manifest (patient id, or image id where a source has no patient ids)."""
    with open(manifest, newline="") as fh:
        return np.array([row["group"] for row in csv.DictReader(fh)], dtype=object)


def load_split(
    name: str, array: str | os.PathLike[str], manifest: str | os.PathLike[str], device: torch.device
) -> Split:
    """Load a packed array and its manifest's labels; refuse non-finite values and mismatched lengths."""
    data = np.load(array, mmap_mode="r")
    labels = read_labels(manifest)
    if data.ndim != 4 or len(data) != len(labels):
        raise TrainingError(f"{array}: shape {data.shape} does not match the {len(labels)} rows of {manifest}")
    if data.dtype not in (np.uint8, np.int16, np.float16, np.float32):
        raise TrainingError(
            f"{array}: unsupported dtype {data.dtype} (expected uint8 or int16 grey levels, or float16 or float32 "
            "values on [0, 1])"
        )
    if data.dtype.kind == "f":
        for start in range(0, len(data), 256):
            chunk = np.asarray(data[start : start + 256])
            if not np.isfinite(chunk).all():
                bad = start + int(np.flatnonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1))[0])
                raise TrainingError(f"{array}: image {bad} holds NaN or infinite values; rebuild this file")
    images = torch.from_numpy(np.array(data)).to(device)  # a writable in-memory copy of the memory map
    return Split(name=name, images=images, labels=torch.from_numpy(labels).to(device))


class Preprocess:
    """Packed images -> normalised float32 (N, 3, crop, crop) tensors on the device.

    Training: the authors' ``RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(1, 1.1))`` (nearest-neighbour,
    zero fill, as torchvision's default for tensors), then the central ``crop``; evaluation: the central crop
    only. Then ImageNet mean/std normalisation. Greyscale is repeated to three channels.
    """

    def __init__(self, *, crop: int, augment: bool, normalize: bool, device: torch.device) -> None:
        self.crop, self.augment, self.normalize = crop, augment, normalize
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __call__(self, packed: torch.Tensor, *, train: bool, draws: torch.Tensor | None = None) -> torch.Tensor:
        """``draws``: (N, 3) uniform numbers, one row per image, that fix its random affine transform in training
        (each image's own, so that no image's augmentation depends on which other images share its batch)."""
        x = packed.permute(0, 3, 1, 2).float()
        if packed.dtype in (torch.uint8, torch.int16):  # grey levels: value / 255
            x = x / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if train and self.augment and len(x):
            if draws is None or len(draws) != len(x):
                raise ValueError("training preprocessing needs one row of augmentation draws per image")
            x = self._affine(x, draws)
        h, w = x.shape[-2:]
        if self.crop > min(h, w):
            raise TrainingError(f"crop {self.crop} is larger than the {h}x{w} images; lower model.crop")
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        if self.normalize:
            x = (x - self.mean) / self.std
        return x.contiguous()

    def _affine(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        n = len(x)
        params = params.cpu()  # the same draws on every device
        scale = 1.0 + 0.1 * params[:, 0]
        tx, ty = (params[:, 1] - 0.5) * 0.2, (params[:, 2] - 0.5) * 0.2  # fraction of the side, in [-0.1, 0.1]
        theta = torch.zeros((n, 2, 3))
        theta[:, 0, 0] = 1.0 / scale
        theta[:, 1, 1] = 1.0 / scale
        theta[:, 0, 2] = -2.0 * tx / scale
        theta[:, 1, 2] = -2.0 * ty / scale
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


@dataclass
class Inference:
    """What a model says about every image of a split, in the split's order (on the CPU; computed in float32
    on the device, then widened to float64)."""

    probabilities: np.ndarray  # (N, K)
    losses: np.ndarray  # (N,) cross-entropy of the true label
    labels: np.ndarray  # (N,)

    @property
    def loss(self) -> float:
        return float(self.losses.mean()) if len(self.losses) else 0.0

    @property
    def accuracy(self) -> float:
        return float((self.probabilities.argmax(1) == self.labels).mean()) if len(self.labels) else 0.0


@torch.no_grad()
def infer(model: nn.Module, split: Split, prep: Preprocess, batch: int) -> Inference:
    """Run ``model`` in eval mode over ``split`` (restoring its train/eval mode after)."""
    was_training = model.training
    model.eval()
    probas, losses = [], []
    try:
        for idx in torch.arange(len(split), device=split.labels.device).split(batch):
            logits = model(prep(split.images[idx], train=False))
            probas.append(torch.softmax(logits, 1).cpu())
            losses.append(F.cross_entropy(logits, split.labels[idx], reduction="none").cpu())
    finally:
        model.train(was_training)
    k = model.fc.out_features if hasattr(model, "fc") else 0
    return Inference(
        probabilities=torch.cat(probas).double().numpy() if probas else np.zeros((0, k)),
        losses=torch.cat(losses).double().numpy() if losses else np.zeros(0),
        labels=split.labels.cpu().numpy(),
    )
