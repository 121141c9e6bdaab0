"""Tiny archives laid out exactly like the real ones, with synthetic images, for the demo and the tests.

The images carry a learnable class signal (bright consolidations for pneumonia, more lesions for higher
retinopathy grades) so that later stages have something to learn, but they are not medical data.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.fileio import atomic_outputs

_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


def chest_image(rng: np.random.Generator, width: int, height: int, pneumonia: bool) -> np.ndarray:
    """A greyscale 'chest X-ray': body, two dark lungs, ribs; pneumonia adds bright consolidations."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width / 2, height / 2
    img = 90 + 60 * np.exp(-(((x - cx) / (0.45 * width)) ** 2 + ((y - cy) / (0.55 * height)) ** 2))
    for side in (-1, 1):
        lx = cx + side * 0.2 * width
        lung = ((x - lx) / (0.15 * width)) ** 2 + ((y - cy) / (0.32 * height)) ** 2 < 1
        img[lung] -= 55
    img += 12 * (np.sin(y / max(height, 1) * 40) > 0.8)
    if pneumonia:
        for _ in range(rng.integers(2, 5)):
            bx = cx + rng.choice([-1, 1]) * rng.uniform(0.1, 0.28) * width
            by = cy + rng.uniform(-0.25, 0.25) * height
            r = rng.uniform(0.05, 0.1) * min(width, height)
            img += 70 * np.exp(-(((x - bx) ** 2 + (y - by) ** 2) / (2 * r * r)))
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def fundus_image(rng: np.random.Generator, width: int, height: int, grade: int) -> np.ndarray:
    """An RGB 'fundus photograph': orange disc on black, a few vessels, 3 lesions per grade."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, radius = width / 2, height / 2, 0.46 * min(width, height)
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    disc = d < radius
    img = np.zeros((height, width, 3), np.float32)
    shade = 1 - 0.4 * (d / radius) ** 2
    img[disc] = np.array([200, 90, 40], np.float32) * shade[disc, None]
    for angle in rng.uniform(0, np.pi, 4):
        line = np.abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle)) < max(1, radius / 40)
        img[line & disc] = [120, 30, 20]
    for _ in range(3 * grade):
        a, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.8) * radius
        sx, sy, sr = cx + r * np.cos(a), cy + r * np.sin(a), max(1.5, radius / 18)
        spot = (x - sx) ** 2 + (y - sy) ** 2 < sr * sr
        img[spot & disc] = [250, 240, 120] if rng.random() < 0.5 else [140, 10, 10]
    img += rng.normal(0, 4, img.shape) * disc[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray, rgb: bool) -> bytes:
    im = Image.fromarray(arr, "L")
    if rgb:
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _size(rng: np.random.Generator, sides: tuple[int, int], aspect: tuple[float, float]) -> tuple[int, int]:
    short = int(rng.integers(sides[0], sides[1] + 1))
    long = min(sides[1] * 2, max(short, int(short * rng.uniform(*aspect))))
    return (long, short) if rng.random() < 0.5 else (short, long)


def chest_files(
    *, patients_per_class: int, test_per_class: int, val_per_class: int, sides: tuple[int, int], seed: int
) -> dict[str, bytes]:
    """``{"<split>/<CLASS>/<file>": jpeg bytes}`` with Kermany-style names and several images per patient."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    serial = 0

    def add(split: str, cls: str, name: str) -> None:
        w, h = _size(rng, sides, (1.0, 1.3))
        files[f"{split}/{cls}/{name}"] = _jpeg(chest_image(rng, w, h, cls == "PNEUMONIA"), rgb=rng.random() < 0.15)

    pid = 1
    for split, n_patients, per_patient in (
        ("train", patients_per_class, (1, 3)),
        ("val", val_per_class, (1, 1)),
        ("test", test_per_class, (1, 1)),
    ):
        for _ in range(n_patients):
            for k in range(int(rng.integers(per_patient[0], per_patient[1] + 1))):
                prefix = "NORMAL2-IM" if pid % 3 == 0 else "IM"
                add(split, "NORMAL", f"{prefix}-{pid:04d}-{k + 1:04d}.jpeg")
                serial += 1
                add(split, "PNEUMONIA", f"person{pid}_{'bacteria' if pid % 2 else 'virus'}_{serial}.jpeg")
            pid += 1
    return files


def make_chest_archive(
    path: str | os.PathLike[str],
    *,
    layout: str = "kaggle",
    patients_per_class: int = 16,
    test_per_class: int = 6,
    image_sides: tuple[int, int] = (64, 160),
    seed: int = 0,
) -> Path:
    """A zip laid out like Kaggle's ``chest-xray-pneumonia`` or Mendeley's ``ChestXRay2017.zip``.

    Kaggle: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/`` (val: 2 per class here, 8 in the real one),
    the whole tree again under ``chest_xray/chest_xray/``, AppleDouble files under ``chest_xray/__MACOSX/``
    and beside images, ``.DS_Store`` files. Mendeley: ``chest_xray/{train,test}/...`` and ``__MACOSX/``.
    """
    if layout not in {"kaggle", "mendeley"}:
        raise ValueError(f"unknown chest X-ray layout {layout!r}")
    files = chest_files(
        patients_per_class=patients_per_class,
        test_per_class=test_per_class,
        val_per_class=2 if layout == "kaggle" else 0,
        sides=tuple(image_sides),
        seed=seed,  # type: ignore[arg-type]
    )
    entries: dict[str, bytes] = {f"chest_xray/{k}": v for k, v in files.items()}
    debris_root = "chest_xray/__MACOSX/chest_xray" if layout == "kaggle" else "__MACOSX/chest_xray"
    for k in list(files)[::5]:
        d, name = k.rsplit("/", 1)
        entries[f"{debris_root}/{d}/._{name}"] = _APPLEDOUBLE
    first = next(iter(files)).rsplit("/", 1)
    entries[f"chest_xray/{first[0]}/._{first[1]}"] = _APPLEDOUBLE
    entries["chest_xray/.DS_Store"] = b"\x00\x00\x00\x01Bud1" + bytes(32)
    entries["chest_xray/train/.DS_Store"] = b"\x00\x00\x00\x01Bud1" + bytes(32)
    if layout == "kaggle":
        entries.update({f"chest_xray/chest_xray/{k}": v for k, v in files.items()})
        entries["chest_xray/chest_xray/.DS_Store"] = b"\x00\x00\x00\x01Bud1" + bytes(32)
    return _write_zip(path, entries)


def make_aptos_archive(
    path: str | os.PathLike[str],
    *,
    images_per_grade: int = 12,
    unlabelled_test_images: int = 3,
    image_sides: tuple[int, int] = (64, 160),
    seed: int = 0,
) -> Path:
    """A zip laid out like the APTOS 2019 competition download: ``train.csv``, ``train_images/*.png``,
    ``test.csv``, ``test_images/*.png`` (no labels) and ``sample_submission.csv``, all at the top."""
    rng = np.random.default_rng(seed)
    entries: dict[str, bytes] = {}
    rows = []
    ids: set[str] = set()

    def new_id() -> str:
        while (i := bytes(rng.integers(0, 256, 6, dtype=np.uint8)).hex()) in ids:
            pass
        ids.add(i)
        return i

    grades = [g for g in range(5) for _ in range(images_per_grade)]
    rng.shuffle(grades)
    for g in grades:
        i = new_id()
        w, h = _size(rng, tuple(image_sides), (1.2, 1.5))  # type: ignore[arg-type]
        entries[f"train_images/{i}.png"] = _png(fundus_image(rng, max(w, h), min(w, h), int(g)))
        rows.append((i, int(g)))
    test_ids = [new_id() for _ in range(unlabelled_test_images)]
    for i in test_ids:
        w, h = _size(rng, tuple(image_sides), (1.2, 1.5))  # type: ignore[arg-type]
        entries[f"test_images/{i}.png"] = _png(fundus_image(rng, max(w, h), min(w, h), int(rng.integers(0, 5))))
    entries["train.csv"] = _csv(["id_code", "diagnosis"], rows)
    entries["test.csv"] = _csv(["id_code"], [(i,) for i in test_ids])
    entries["sample_submission.csv"] = _csv(["id_code", "diagnosis"], [(i, 0) for i in test_ids])
    return _write_zip(path, entries)


def make_medmnist_npz(
    path: str | os.PathLike[str], *, dataset: str, n: tuple[int, int, int] = (20, 6, 6), side: int = 28, seed: int = 0
) -> Path:
    """An ``.npz`` with MedMNIST's keys: PneumoniaMNIST-like (greyscale, 2 classes) for ``chest_xray``,
    RetinaMNIST-like (RGB, 5 grades) for ``aptos``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        if dataset == "chest_xray":
            labels = np.arange(count) % 2
            images = np.stack([chest_image(rng, side, side, bool(lab)) for lab in labels])
        else:
            labels = np.arange(count) % 5
            images = np.stack([fundus_image(rng, side, side, int(lab)) for lab in labels])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1).astype(np.uint8)
    path = Path(path)
    with atomic_outputs(path) as (tmp,), open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def _csv(header: list[str], rows: list[tuple]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def _write_zip(path: str | os.PathLike[str], entries: dict[str, bytes]) -> Path:
    path = Path(path)
    with atomic_outputs(path) as (tmp,), zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=(2018, 1, 6, 0, 0, 0))  # fixed: same bytes every run
            zf.writestr(info, entries[name])
    return path
