"""The data stage: an archive in, clean split and resized arrays out.

For a dataset it writes, into one folder, and only once everything has succeeded:

* ``{train,val,test}.npy`` - packed ``uint8`` arrays of shape ``(N, size, size, C)`` (C = 1 for chest
  X-rays, 3 for fundus photographs), loadable with ``numpy.load(path, mmap_mode="r")``;
* ``{train,val,test}.csv`` - the manifest, one row per array row, in the same order: ``index``, ``source``
  (the file inside the archive), ``label`` (integer class), ``class_name``, ``group`` (patient or image id)
  and ``origin`` (the split the image had in the archive as shipped);
* ``info.json`` - classes, counts, image geometry, the split settings, notes on every decision taken about the
  data, the ``source.json`` of the fetch and the SHA-256 of the archive as read (``read``).
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import logging
import multiprocessing
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import __version__
from .archive import Archive
from .errors import ChecksumError, ImageError, LayoutError
from .fileio import atomic_outputs, source_digest
from .imaging import ResizeMode, decode_resized, resize_loaded
from .layouts import READERS, Inventory, Record
from .medmnist import MEDMNIST, load_dataset
from .names import CHANNELS, SPLITS, is_medmnist
from .splits import stratified_group_holdout, stratified_holdout

log = logging.getLogger(__name__)

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


def _chest_splits(
    records: list[Record], *, seed: int, val_fraction: float, official_val: str
) -> dict[str, list[Record]]:
    """The official test folder; the official val folder or a patient-grouped part of the training pool."""
    test = [r for r in records if r.origin == "test"]
    if official_val == "val":
        train, val = [r for r in records if r.origin == "train"], [r for r in records if r.origin == "val"]
        return {"train": train, "val": val, "test": test}
    pool = [r for r in records if r.origin in {"train", "val"}]
    train, val = _carve_validation(pool, fraction=val_fraction, seed=seed, what="chest_xray training pool")
    return {"train": train, "val": val, "test": test}


def _aptos_splits(
    records: list[Record], *, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[Record]]:
    """A stratified test part of ``train.csv`` (scikit-learn, as the authors), then a stratified val part."""
    is_test = stratified_holdout(
        [r.label for r in records], fraction=test_fraction, seed=seed, what=f"aptos test split ({test_fraction})"
    )
    test = [r for r, t in zip(records, is_test, strict=True) if t]
    pool = [r for r, t in zip(records, is_test, strict=True) if not t]
    train, val = _carve_validation(pool, fraction=val_fraction, seed=seed, what="aptos training pool")
    return {"train": train, "val": val, "test": test}


def _refuse_rare_grades(records: Sequence[Record], classes: Sequence[str]) -> None:
    """A grade with fewer images than there are splits cannot be in all of them (scikit-learn's own error for a
    single image names no grade and no file)."""
    counts = Counter(r.label for r in records)
    if rare := [label for label in range(len(classes)) if counts[label] < len(SPLITS)]:
        per_grade = ", ".join(f"{cls}: {counts[i]}" for i, cls in enumerate(classes))
        grade, n = classes[rare[0]], counts[rare[0]]
        raise LayoutError(
            f"aptos: grade {grade} has {n} image{'' if n == 1 else 's'} in train.csv, but each of the splits "
            f"{', '.join(SPLITS)} needs every grade, so every grade needs at least {len(SPLITS)} images "
            f"(images per grade: {per_grade}); add images of grade {grade} to train.csv and train_images/"
        )


def _split_hint(dataset: str, classes: Sequence[str], official_val: str) -> str:
    """What a user can change when a split would lack a class."""
    names = ", ".join(f"{i} = {cls}" for i, cls in enumerate(classes))
    if dataset == "aptos":
        return (
            "every split needs each grade: add images of that grade to train.csv, or change "
            "datasets.aptos.test_fraction / val_fraction"
        )
    if official_val == "val":
        return (
            "with datasets.chest_xray.official_val: val the archive's val folder is the validation split as it is; "
            "set datasets.chest_xray.official_val: train to carve a validation split with every class from the "
            f"training pool (classes: {names})"
        )
    return f"add images of that class, or change datasets.chest_xray.val_fraction (classes: {names})"


def _refuse_missing_classes(
    dataset: str, splits: Mapping[str, Sequence[Record]], classes: Sequence[str], hint: str
) -> None:
    """No split may lack a class: a model validated or tested without one is measured on another task."""
    per_split = {s: Counter(r.label for r in splits[s]) for s in SPLITS}
    for label, cls in enumerate(classes):
        if missing := [s for s in SPLITS if per_split[s][label] == 0]:
            counts = ", ".join(f"{s} {per_split[s][label]}" for s in SPLITS)
            what = "grade" if dataset == "aptos" else "class"
            raise LayoutError(
                f"{dataset}: {what} {cls} would be missing from the {missing[0]} split "
                f"(images of {what} {cls} per split: {counts}); {hint}"
            )


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

    Every split holds every class, or :class:`LayoutError` names the class, its images per split and what to change.
    """
    records = inventory.records
    if dataset == "chest_xray" and official_val == "val" and not any(r.origin == "val" for r in records):
        raise LayoutError(
            "datasets.chest_xray.official_val is 'val' but the archive has no val folder (the Mendeley "
            "archive has none); set it to 'train' to carve a validation split from train"
        )
    if dataset not in CHANNELS:
        raise ValueError(f"unknown dataset {dataset!r}")
    if dataset == "aptos":
        _refuse_rare_grades(records, inventory.classes)
    hint = _split_hint(dataset, inventory.classes, official_val)
    try:
        if dataset == "chest_xray":
            splits = _chest_splits(records, seed=seed, val_fraction=val_fraction, official_val=official_val)
        else:
            splits = _aptos_splits(records, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    except LayoutError as exc:
        raise LayoutError(f"{exc}; {hint}") from None
    _refuse_missing_classes(dataset, splits, inventory.classes, hint)
    return splits


# ----------------------------------------------------------------------------------------------- resizing
_worker_archive: Archive | None = None

#: Per-image decisions the decoder reports (``decode_resized(..., events=Counter())``), as notes for info.json.
EVENT_NOTES = {
    "exif_orientation_applied": "{n} {images} rotated or mirrored upright by their EXIF orientation",
    "scaled_16bit_by_sbit": "{n} {images} of 16 bits scaled to 8 by their significant bits (PNG sBIT)",
    "scaled_16bit_full_range": "{n} {images} of 16 bits scaled to 8 from the full 16-bit range (no sBIT chunk)",
}
_BYTESIO = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _init_worker(archive: Archive, reopen: bool) -> None:
    """Worker processes open the archive themselves: a forked zip handle shares its file offset with
    every other process, and concurrent reads through it return corrupt data."""
    global _worker_archive
    _worker_archive = Archive(archive.path) if reopen else archive


@functools.cache
def _accepts_events(decoder: Callable[..., np.ndarray]) -> bool:
    """Whether ``decoder`` takes the ``events`` keyword (imaging.decode_resized gains it; older ones do not)."""
    try:
        return "events" in inspect.signature(decoder).parameters
    except (TypeError, ValueError):
        return False


def _decode_member(task: tuple[str, int, int, str], events: Counter[str]) -> np.ndarray:
    """One member, decoded and resized; the decoder's per-image decisions are counted into ``events``."""
    member, size, channels, mode = task
    assert _worker_archive is not None
    where = _worker_archive.describe(member)
    try:
        data = _worker_archive.read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ImageError(f"{where}: cannot read from the archive: {exc}") from None
    if not data:
        raise ImageError(
            f"{where}: the file is empty (0 bytes): the archive is incomplete or damaged; download it again, "
            f"or delete this image (and, for APTOS, its train.csv row) if it is meant to be left out"
        )
    decoder = decode_resized  # looked up at each call: tests replace it
    extra = {"events": events} if _accepts_events(decoder) else {}
    try:
        return decoder(data, size=size, channels=channels, mode=mode, **extra)  # type: ignore[arg-type]
    except ImageError as exc:
        message = _BYTESIO.sub("", str(exc))  # PIL names the in-memory file object: no help to anyone
        raise ImageError(
            f"{where}: {message}; the file ({len(data)} bytes) is damaged or not an image: download the archive "
            f"again, or delete the file (and, for APTOS, its train.csv row) if it is meant to be left out"
        ) from None


def _decode_chunk(tasks: Sequence[tuple[str, int, int, str]]) -> tuple[np.ndarray, dict[str, int]]:
    """The images of ``tasks`` and the decoder's event counts (a plain dict: it travels back from a worker)."""
    events: Counter[str] = Counter()
    return np.stack([_decode_member(t, events) for t in tasks]), dict(events)


#: Images per task sent to a worker process.
CHUNK = 8


def decode_members(
    archive: Archive, members: Sequence[str], out: np.ndarray, *, mode: ResizeMode, threads: int
) -> Counter[str]:
    """Decode and resize ``members`` into the rows of ``out`` (``(N, size, size, C)`` uint8), in order,
    on ``threads`` processes; return how many images each decoder event (:data:`EVENT_NOTES`) concerned.

    At most ``2 * threads`` chunks of :data:`CHUNK` images are in flight. After a failure no new chunk is sent;
    those in flight finish, the workers shut down normally, and the error of the earliest failed chunk is
    raised. (``multiprocessing.Pool`` left by an exception calls ``terminate()``, which deadlocked here about
    once in a few hundred runs: CPython's pool threads waited on a queue lock a killed worker held.)
    """
    size, channels = out.shape[1], out.shape[3]
    tasks = [(m, size, channels, mode) for m in members]
    events: Counter[str] = Counter()
    if threads <= 1 or len(tasks) < 2 * threads:
        _init_worker(archive, reopen=False)
        for i, task in enumerate(tasks):
            out[i] = _decode_member(task, events)
        return events
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    failures: dict[int, BaseException] = {}
    with ProcessPoolExecutor(threads, mp_context=ctx, initializer=_init_worker, initargs=(archive, True)) as ex:
        in_flight: dict[Future[tuple[np.ndarray, dict[str, int]]], int] = {}
        todo = iter(range(0, len(tasks), CHUNK))
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
                    arrays, chunk_events = future.result()
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the pool has shut down
                    failures[start] = exc
                    continue
                out[start : start + len(arrays)] = arrays
                events.update(chunk_events)
                done += len(arrays)
                if done // 1000 > (done - len(arrays)) // 1000:
                    log.info("  %d / %d images", done, len(tasks))
    if failures:
        raise failures[min(failures)]
    return events


def event_notes(per_split: Mapping[str, Counter[str]]) -> list[str]:
    """One note per decoder event that concerned any image, with its count per split.

    >>> for note in event_notes({"train": Counter(exif_orientation_applied=2), "val": Counter(), "test": Counter(x=1)}):
    ...     print(note)
    2 images rotated or mirrored upright by their EXIF orientation (train 2, val 0, test 0)
    1 image: x (train 0, val 0, test 1)
    """
    notes = []
    keys = sorted({k for c in per_split.values() for k, n in c.items() if n}, key=lambda k: (k not in EVENT_NOTES, k))
    for key in keys:
        n = sum(c[key] for c in per_split.values())
        text = EVENT_NOTES.get(key, "{n} {images}: " + key).format(n=n, images="image" if n == 1 else "images")
        notes.append(f"{text} ({', '.join(f'{s} {c[key]}' for s, c in per_split.items())})")
    return notes


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


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten or replaced (``None`` for a folder or nothing)."""
    if not path.is_file():
        return None
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def read_identity(source: Mapping[str, Any], source_json: str | os.PathLike[str]) -> dict[str, str]:
    """The SHA-256 of the archive as prepare reads it now (:func:`fileio.source_digest`); a
    :class:`ChecksumError` when ``source.json`` recorded another one when it was fetched."""
    if not Path(source["path"]).exists():
        raise LayoutError(
            f"{source['path']}: no such file or folder, but {source_json} records it as the archive; rerun the "
            f"workflow, which fetches it again (delete {source_json} first if Snakemake does not rerun the fetch step)"
        )
    digest = source_digest(source["path"])
    fetched = source.get("sha256")
    if fetched and fetched != digest["sha256"]:
        raise ChecksumError(
            f"{source['path']}: the archive changed since it was fetched: its SHA-256 ({digest['sha256_of']}) is now "
            f"{digest['sha256']}, but {source_json} recorded {fetched}; rerun the workflow, which fetches it again "
            f"(delete {source_json} first if Snakemake does not rerun the fetch step on its own)"
        )
    return digest


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
    """Run the data stage for one dataset; return what was written to ``info.json``.

    ``info.json`` records ``source`` (the ``source.json`` of the fetch) and ``read``: the SHA-256 of the archive
    as it was read here, computed again, so it describes the data in the arrays whatever happened since the fetch.
    """
    source = json.loads(Path(source_json).read_text())
    channels = CHANNELS[dataset]
    paths = output_paths(out_dir)
    log.info("%s: preparing from %s (%s)", dataset, source["path"], source["source"])
    before = _stat_key(Path(source["path"]))
    read = read_identity(source, source_json)
    log.info("%s: read %s sha256=%s (%s)", dataset, source["path"], read["sha256"], read["sha256_of"])
    split = (
        {"official": True}
        if is_medmnist(source)
        else {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "official_val": official_val}
    )
    with atomic_outputs(*paths) as tmps:
        tmp = dict(zip((p.name for p in paths), tmps, strict=True))
        if is_medmnist(source):
            info = _prepare_medmnist(dataset, source, tmp, image_size=image_size, channels=channels, mode=resize_mode)
        else:
            settings = {k: v for k, v in split.items() if k != "seed"}
            info = _prepare_archive(
                dataset, source, tmp, image_size=image_size, mode=resize_mode, seed=seed, threads=threads, **settings
            )
        if _stat_key(Path(source["path"])) != before:
            raise ChecksumError(
                f"{source['path']}: the archive changed while it was being prepared; nothing was written: run again"
            )
        info = {
            "dataset": dataset,
            "format": "uint8 (N, H, W, C) .npy per split; manifest CSV rows in array order",
            "image_size": image_size,
            "channels": channels,
            "resize_mode": resize_mode,
            **info,
            "split": split,
            "source": source,
            "read": read,
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
        archive.check_readable(r.source for r in inventory.records)  # encrypted or Deflate64: before decoding
        for note in inventory.notes:
            log.info("%s: %s", dataset, note)
        splits = assign_splits(dataset, inventory, seed=seed, **split_settings)
        events: dict[str, Counter[str]] = {}
        for split in SPLITS:
            records = sorted(splits[split], key=lambda r: r.source)
            log.info("%s/%s: %d images %s", dataset, split, len(records), _counts(records, inventory.classes))
            shape = (len(records), image_size, image_size, CHANNELS[dataset])
            arr = np.lib.format.open_memmap(tmp[f"{split}.npy"], mode="w+", dtype=np.uint8, shape=shape)
            events[split] = decode_members(archive, [r.source for r in records], arr, mode=mode, threads=threads)
            arr.flush()
            del arr
            _write_manifest(tmp[f"{split}.csv"], records, inventory.classes)
            splits[split] = records
    notes = event_notes(events)
    for note in notes:
        log.info("%s: %s", dataset, note)
    return {
        "classes": list(inventory.classes),
        "counts": {s: _counts(splits[s], inventory.classes) for s in SPLITS},
        "notes": inventory.notes + notes,
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
    data = load_dataset(dataset, source["path"])
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
