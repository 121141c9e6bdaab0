"""MedMNIST+ stand-ins: PneumoniaMNIST for chest X-rays, RetinaMNIST for fundus photographs.

The addresses and MD5s below are those the ``medmnist`` package (3.0.2, ``medmnist/info.py``) publishes;
``tests/test_medmnist.py`` checks them against that file when the package can be fetched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LayoutError
from .names import SPLITS

_ZENODO = "https://zenodo.org/records/10519652/files"


@dataclass(frozen=True)
class MedMNISTInfo:
    flag: str
    classes: tuple[str, ...]
    md5: dict[int, str]

    def url(self, size: int) -> str:
        suffix = "" if size == 28 else f"_{size}"
        return f"{_ZENODO}/{self.flag}{suffix}.npz?download=1"

    def filename(self, size: int) -> str:
        return f"{self.flag}{'' if size == 28 else f'_{size}'}.npz"


MEDMNIST = {
    "chest_xray": MedMNISTInfo(
        flag="pneumoniamnist",
        classes=("NORMAL", "PNEUMONIA"),
        md5={
            28: "28209eda62fecd6e6a2d98b1501bb15f",
            64: "8f4eceb4ccffa70c672198ea285246c6",
            128: "05b46931834c231683c68f40c47b2971",
            224: "d6a3c71de1b945ea11211b03746c1fe1",
        },
    ),
    "aptos": MedMNISTInfo(
        flag="retinamnist",
        classes=("0", "1", "2", "3", "4"),
        md5={
            28: "bd4c0672f1bba3e3a89f0e4e876791e4",
            64: "afda852cc34dcda56f86ad2b2457dbcc",
            128: "e48e916a24454daf90583d4e6efb1a18",
            224: "eae7e3b6f3fcbda4ae613ebdcbe35348",
        },
    ),
}


def load_npz(path: str, n_classes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images uint8 (N, H, W, C), labels int64 (N,))}`` from a MedMNIST ``.npz``."""
    try:
        npz = np.load(path)
    except Exception as exc:
        raise LayoutError(f"{path}: not a readable .npz file ({exc})") from exc
    out = {}
    with npz:
        for split in SPLITS:
            keys = (f"{split}_images", f"{split}_labels")
            if missing := [k for k in keys if k not in npz.files]:
                raise LayoutError(f"{path}: not a MedMNIST file: missing {missing}; found {npz.files}")
            images, labels = npz[keys[0]], npz[keys[1]].reshape(-1).astype(np.int64)
            if images.ndim == 3:
                images = images[..., None]
            if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
                raise LayoutError(
                    f"{path}: {keys[0]} must be uint8 (N, H, W[, C]) matching {keys[1]}; "
                    f"got {images.dtype} {images.shape} and {labels.shape}"
                )
            if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
                raise LayoutError(f"{path}: {keys[1]} holds labels outside 0..{n_classes - 1}")
            out[split] = (images, labels)
    return out
