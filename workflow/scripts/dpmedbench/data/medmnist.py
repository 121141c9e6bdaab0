"""MedMNIST+ stand-ins: PneumoniaMNIST for chest X-rays, RetinaMNIST for fundus photographs.

The addresses and MD5s below are those the ``medmnist`` package (3.0.2, ``medmnist/info.py``) publishes;
``tests/data/test_sources.py`` checks them against that file when the package can be fetched.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import LayoutError
from ..core.names import SPLITS

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


#: What each MedMNIST+ file holds, beyond its classes: for the message that names a file given as the wrong dataset.
TITLES = {"pneumoniamnist": "PneumoniaMNIST", "retinamnist": "RetinaMNIST"}
CHANNELS = {"pneumoniamnist": 1, "retinamnist": 3}


#: The largest array read from a MedMNIST file (1 GiB; the largest of the 224-pixel files, PneumoniaMNIST's
#: training images, is 236 MB): a larger one is refused from the size the file declares, before it is read.
MAX_ARRAY_BYTES = 1 << 30


def _refuse_large_arrays(path: str) -> None:
    """An ``.npz`` is a zip: refuse a member whose declared size is over :data:`MAX_ARRAY_BYTES` before any
    byte of it is decompressed."""
    try:
        with zipfile.ZipFile(path) as zf:
            large = [(i.filename, i.file_size) for i in zf.infolist() if i.file_size > MAX_ARRAY_BYTES]
    except (zipfile.BadZipFile, OSError) as exc:
        raise LayoutError(f"{path}: not a readable .npz file ({exc}); download it again") from None
    if large:
        name, size = large[0]
        raise LayoutError(
            f"{path}: array {name} declares {size:,} bytes, more than the {MAX_ARRAY_BYTES >> 30} GiB an array may "
            f"be (no MedMNIST array comes near it); it is refused before it is read: download the file again"
        )


def _array(npz: Any, path: str, key: str) -> np.ndarray:
    """One array of an open ``.npz``; a damaged one (bad CRC, cut short) or one of Python objects (which would need
    pickle, never loaded) is a :class:`LayoutError` naming the file and the array."""
    try:
        return np.asarray(npz[key])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise LayoutError(
            f"{path}: array {key} cannot be read ({exc}); MedMNIST arrays are plain numbers, and the file is "
            f"damaged or not MedMNIST's: download it again"
        ) from None


def load_npz(path: str, n_classes: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images uint8 (N, H, W, C), labels int64 (N,))}`` from a MedMNIST ``.npz``; with ``n_classes``,
    labels outside ``0..n_classes - 1`` are refused (:func:`load_dataset` checks more, and says more). Labels must
    be stored as integers (a label 0.6 is not truncated to 0) and images must have at least one pixel."""
    _refuse_large_arrays(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise LayoutError(f"{path}: not a readable .npz file ({exc})") from exc
    out = {}
    with npz:
        for split in SPLITS:
            keys = (f"{split}_images", f"{split}_labels")
            if missing := [k for k in keys if k not in npz.files]:
                raise LayoutError(f"{path}: not a MedMNIST file: missing {missing}; found {npz.files}")
            images, raw = _array(npz, path, keys[0]), _array(npz, path, keys[1])
            if not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_):
                raise LayoutError(
                    f"{path}: {keys[1]} are stored as {raw.dtype}, not integers; a class label must be a whole "
                    f"number (none is rounded or truncated): download the file again"
                )
            labels = raw.reshape(-1).astype(np.int64)
            if images.ndim == 3:
                images = images[..., None]
            if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
                raise LayoutError(
                    f"{path}: {keys[0]} must be uint8 (N, H, W[, C]) matching {keys[1]}; "
                    f"got {images.dtype} {images.shape} and {labels.shape}"
                )
            if 0 in images.shape[1:]:
                raise LayoutError(f"{path}: {keys[0]} has shape {images.shape}: images without a pixel")
            if len(labels) and (labels.min() < 0 or (n_classes is not None and labels.max() >= n_classes)):
                upper = "" if n_classes is None else f"..{n_classes - 1}"
                raise LayoutError(f"{path}: {keys[1]} holds labels outside 0{upper}")
            out[split] = (images, labels)
    return out


def _channels(n: int) -> str:
    return {1: "greyscale (1 channel)", 3: "RGB (3 channels)"}.get(n, f"{n} channels")


def _shape(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[set[int], list[int]]:
    """The channel counts and the sorted labels found in a loaded file."""
    channels = {int(images.shape[-1]) for images, _ in data.values()}
    labels = sorted(set(np.concatenate([labels for _, labels in data.values()]).tolist()))
    return channels, labels


def _refuse_other_dataset(dataset: str, path: str, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Refuse a file whose channels or classes are not those of ``dataset``'s MedMNIST file, naming the dataset
    it looks like: PneumoniaMNIST given as ``aptos`` would otherwise become 5 grades, 3 of them empty."""
    meta = MEDMNIST[dataset]
    channels, labels = _shape(data)
    if channels == {CHANNELS[meta.flag]} and labels == list(range(len(meta.classes))):
        return
    found = f"{' and '.join(_channels(c) for c in sorted(channels))} images of {len(labels)} classes (labels {labels})"
    expected = f"{_channels(CHANNELS[meta.flag])}, {len(meta.classes)} classes {list(meta.classes)}"
    like = [
        other
        for other, info in MEDMNIST.items()
        if other != dataset and channels == {CHANNELS[info.flag]} and labels == list(range(len(info.classes)))
    ]
    right = f"{TITLES[meta.flag]} ({meta.filename(224)} or another size)"
    what = (
        f"this looks like {TITLES[MEDMNIST[like[0]].flag]}: give it as {like[0]} (datasets.{like[0]}), "
        f"and {right} as {dataset}"
        if like
        else f"give {right} as {dataset} (datasets.{dataset})"
    )
    raise LayoutError(f"{path}: {found}, but the {dataset} dataset is {TITLES[meta.flag]} ({expected}); {what}")


def load_dataset(dataset: str, path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`load_npz` for ``dataset``, refusing a file of the other dataset and an official split without an
    image of some class."""
    data = load_npz(path)
    _refuse_other_dataset(dataset, path, data)
    classes = MEDMNIST[dataset].classes
    for split, (_, labels) in data.items():
        counts = np.bincount(labels, minlength=len(classes))
        if missing := [cls for cls, n in zip(classes, counts, strict=True) if n == 0]:
            per_class = ", ".join(f"{cls}: {n}" for cls, n in zip(classes, counts.tolist(), strict=True))
            raise LayoutError(
                f"{path}: class {missing[0]} has no image in the {split} split (images per class: {per_class}); "
                f"the official {TITLES[MEDMNIST[dataset].flag]} splits hold every class: download the file again"
            )
    return data
