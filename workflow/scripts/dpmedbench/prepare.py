"""The data stage: an archive in, clean split and resized arrays out.

For a dataset it writes, into one folder, and only once everything has succeeded:

* ``{train,val,test}.npy`` - packed ``uint8`` arrays of shape ``(N, size, size, C)`` (C = 1 for chest
  X-rays, 3 for fundus photographs), loadable with ``numpy.load(path, mmap_mode="r")``;
* ``{train,val,test}.csv`` - the manifest, one row per array row, in the same order: ``index``, ``source``
  (the file inside the archive), ``label`` (integer class), ``class_name``, ``group`` (patient or image id)
  and ``origin`` (the split the image had in the archive as shipped);
* ``info.json`` - classes, counts, image geometry, the archive's SHA-256 and the split settings.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import __version__
from .archive import Archive
from .errors import ImageError, LayoutError
from .fileio import atomic_outputs
from .imaging import ResizeMode, decode_resized, resize_loaded
from .layouts import READERS, Inventory, Record
from .medmnist import MEDMNIST, load_npz
from .names import SPLITS, is_medmnist
from .splits import stratified_group_holdout, stratified_holdout

log = logging.getLogger(__name__)

CHANNELS = {"chest_xray": 1, "aptos": 3}
MANIFEST_COLUMNS = ("index", "source", "label", "class_name", "group", "origin")


# ----------------------------------------------------------------------------------------------- splitting
def _carve_validation(
    pool: list[Record], *, fraction: float, seed: int, what: str
) -> tuple[list[Record], list[Record]]:
    """(train, val): a stratified, group-respecting ``fraction`` of ``pool`` held out for validation."""
    held = stratified_group_holdout(
        [r.label for r in pool], [r.group for r in pool], fraction=fraction, seed=seed, what=what
    )
    return [r for r, h in zip(pool, held, strict=True) if not h], [r for r, h in zip(pool, held, strict=True) if h]


def assign_splits(
    dataset: str,
    inventory: Inventory,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float = 0.2,
    official_val: str = "train",
) -> dict[str, list[Record]]:
    """Split the records of an archive into train / val / test, deterministically.

    * chest X-rays: the official test folder is the test split; validation is carved from the training
      pool (official train, plus the official val folder when ``official_val == "train"``), stratified and
      grouped by patient; with ``official_val == "val"`` the official val folder is the validation split.
    * APTOS: a stratified ``test_fraction`` of ``train.csv`` is the test split (scikit-learn, ``seed``);
      validation is a stratified ``val_fraction`` of the rest.
    """
    records = inventory.records
    if dataset == "chest_xray":
        test = [r for r in records if r.origin == "test"]
        if official_val == "val":
            val = [r for r in records if r.origin == "val"]
            if not val:
                raise LayoutError(
                    "datasets.chest_xray.official_val is 'val' but the archive has no val folder (the Mendeley "
                    "archive has none); set it to 'train' to carve a validation split from train"
                )
            train = [r for r in records if r.origin == "train"]
        else:
            pool = [r for r in records if r.origin in {"train", "val"}]
            train, val = _carve_validation(pool, fraction=val_fraction, seed=seed, what="chest_xray training pool")
    elif dataset == "aptos":
        is_test = stratified_holdout([r.label for r in records], fraction=test_fraction, seed=seed)
        test = [r for r, t in zip(records, is_test, strict=True) if t]
        pool = [r for r, t in zip(records, is_test, strict=True) if not t]
        train, val = _carve_validation(pool, fraction=val_fraction, seed=seed, what="aptos training pool")
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    return {"train": train, "val": val, "test": test}


# ----------------------------------------------------------------------------------------------- resizing
_worker_archive: Archive | None = None


def _init_worker(archive: Archive, reopen: bool) -> None:
    """Worker processes open the archive themselves: a forked zip handle shares its file offset with
    every other process, and concurrent reads through it return corrupt data."""
    global _worker_archive
    _worker_archive = Archive(archive.path) if reopen else archive


def _decode_member(task: tuple[str, int, int, str]) -> np.ndarray:
    member, size, channels, mode = task
    assert _worker_archive is not None
    try:
        return decode_resized(_worker_archive.read(member), size=size, channels=channels, mode=mode)  # type: ignore[arg-type]
    except ImageError as exc:
        raise ImageError(f"{_worker_archive.describe(member)}: {exc}") from None
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ImageError(f"{_worker_archive.describe(member)}: cannot read from the archive: {exc}") from None


def _decode_chunk(tasks: Sequence[tuple[str, int, int, str]]) -> np.ndarray:
    return np.stack([_decode_member(t) for t in tasks])


#: Images per task sent to a worker process.
CHUNK = 8


def decode_members(
    archive: Archive, members: Sequence[str], out: np.ndarray, *, mode: ResizeMode, threads: int
) -> None:
    """Decode and resize ``members`` into the rows of ``out`` (``(N, size, size, C)`` uint8), in order,
    on ``threads`` processes.

    At most ``2 * threads`` chunks of :data:`CHUNK` images are in flight. After a failure no new chunk is sent;
    those in flight finish, the workers shut down normally, and the error of the earliest failed chunk is
    raised. (``multiprocessing.Pool`` left by an exception calls ``terminate()``, which deadlocked here about
    once in a few hundred runs: CPython's pool threads waited on a queue lock a killed worker held.)
    """
    size, channels = out.shape[1], out.shape[3]
    tasks = [(m, size, channels, mode) for m in members]
    if threads <= 1 or len(tasks) < 2 * threads:
        _init_worker(archive, reopen=False)
        for i, task in enumerate(tasks):
            out[i] = _decode_member(task)
        return
    starts = range(0, len(tasks), CHUNK)
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    failures: dict[int, BaseException] = {}
    with ProcessPoolExecutor(threads, mp_context=ctx, initializer=_init_worker, initargs=(archive, True)) as ex:
        in_flight: dict[Future[np.ndarray], int] = {}
        todo = iter(starts)
        done = 0
        while True:
            while not failures and len(in_flight) < 2 * threads and (start := next(todo, None)) is not None:
                in_flight[ex.submit(_decode_chunk, tasks[start : start + CHUNK])] = start
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                start = in_flight.pop(future)
                try:
                    arrays = future.result()
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the pool has shut down
                    failures[start] = exc
                    continue
                out[start : start + len(arrays)] = arrays
                done += len(arrays)
                if done // 1000 > (done - len(arrays)) // 1000:
                    log.info("  %d / %d images", done, len(tasks))
    if failures:
        raise failures[min(failures)]


def resize_array(images: np.ndarray, *, size: int, channels: int, mode: ResizeMode) -> np.ndarray:
    """Resize already decoded images (MedMNIST) to ``(N, size, size, channels)``."""
    out = np.empty((len(images), size, size, channels), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = resize_loaded(
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img), size=size, channels=channels, mode=mode
        )
    return out


# ----------------------------------------------------------------------------------------------- writing
def _write_manifest(path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for i, r in enumerate(records):
            writer.writerow([i, r.source, r.label, classes[r.label], r.group, r.origin])


def _counts(records: Sequence[Record], classes: Sequence[str]) -> dict[str, int]:
    c = Counter(r.label for r in records)
    return {cls: c[i] for i, cls in enumerate(classes)}


def output_paths(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Every file :func:`prepare_dataset` writes, in a fixed order."""
    out_dir = Path(out_dir)
    return [out_dir / f"{s}.{ext}" for s in SPLITS for ext in ("npy", "csv")] + [out_dir / "info.json"]


def prepare_dataset(
    *,
    dataset: str,
    source_json: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    image_size: int,
    resize_mode: ResizeMode,
    seed: int,
    val_fraction: float,
    test_fraction: float = 0.2,
    official_val: str = "train",
    threads: int = 1,
) -> dict[str, Any]:
    """Run the data stage for one dataset; return what was written to ``info.json``."""
    source = json.loads(Path(source_json).read_text())
    channels = CHANNELS[dataset]
    paths = output_paths(out_dir)
    log.info("%s: preparing from %s (%s)", dataset, source["path"], source["source"])
    with atomic_outputs(*paths) as tmps:
        tmp = dict(zip((p.name for p in paths), tmps, strict=True))
        if is_medmnist(source):
            info = _prepare_medmnist(dataset, source, tmp, image_size=image_size, channels=channels, mode=resize_mode)
        else:
            split_settings = {
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "official_val": official_val,
            }
            info = _prepare_archive(
                dataset,
                source,
                tmp,
                image_size=image_size,
                mode=resize_mode,
                seed=seed,
                threads=threads,
                **split_settings,
            )
        info = {
            "dataset": dataset,
            "format": "uint8 (N, H, W, C) .npy per split; manifest CSV rows in array order",
            "image_size": image_size,
            "channels": channels,
            "resize_mode": resize_mode,
            **info,
            "split": {"official": True}
            if is_medmnist(source)
            else {
                "seed": seed,
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "official_val": official_val,
            },
            "source": source,
            "dpmedbench_version": __version__,
        }
        tmp["info.json"].write_text(json.dumps(info, indent=2) + "\n")
    log.info("%s: wrote %s", dataset, ", ".join(str(p) for p in paths))
    return info


def _prepare_archive(
    dataset: str,
    source: dict[str, Any],
    tmp: dict[str, Path],
    *,
    image_size: int,
    mode: ResizeMode,
    seed: int,
    threads: int,
    **split_settings: Any,
) -> dict[str, Any]:
    """Split an archive's images and write each split's array and manifest to ``tmp``; classes, counts, notes."""
    with Archive(source["path"]) as archive:
        inventory = READERS[dataset](archive)
        for note in inventory.notes:
            log.info("%s: %s", dataset, note)
        splits = assign_splits(dataset, inventory, seed=seed, **split_settings)
        for split in SPLITS:
            records = sorted(splits[split], key=lambda r: r.source)
            log.info("%s/%s: %d images %s", dataset, split, len(records), _counts(records, inventory.classes))
            shape = (len(records), image_size, image_size, CHANNELS[dataset])
            arr = np.lib.format.open_memmap(tmp[f"{split}.npy"], mode="w+", dtype=np.uint8, shape=shape)
            decode_members(archive, [r.source for r in records], arr, mode=mode, threads=threads)
            arr.flush()
            del arr
            _write_manifest(tmp[f"{split}.csv"], records, inventory.classes)
            splits[split] = records
    return {
        "classes": list(inventory.classes),
        "counts": {s: _counts(splits[s], inventory.classes) for s in SPLITS},
        "notes": inventory.notes,
    }


def _prepare_medmnist(
    dataset: str,
    source: Mapping[str, Any],
    tmp: Mapping[str, Path],
    *,
    image_size: int,
    channels: int,
    mode: ResizeMode,
) -> dict[str, Any]:
    meta = MEDMNIST[dataset]
    data = load_npz(source["path"], len(meta.classes))
    counts = {}
    name = Path(source["path"]).name
    for split in SPLITS:
        images, labels = data[split]
        arr = resize_array(images, size=image_size, channels=channels, mode=mode)
        _save_npy(tmp[f"{split}.npy"], arr)
        records = [
            Record(source=f"{name}:{split}_images[{i}]", label=int(lab), group=f"{split}-{i}", origin=split)
            for i, lab in enumerate(labels)
        ]
        _write_manifest(tmp[f"{split}.csv"], records, meta.classes)
        counts[split] = _counts(records, meta.classes)
        log.info("%s/%s: %d images %s", dataset, split, len(records), counts[split])
    return {"classes": list(meta.classes), "counts": counts, "notes": [f"MedMNIST {meta.flag} official splits"]}


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save(path) would append ".npy" to the temporary name
        np.save(fh, arr)
