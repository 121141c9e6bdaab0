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
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.errors import ChecksumError, LayoutError
from ..core.fileio import atomic_outputs, json_text, read_json, require_space, reserve, source_digest, writing
from ..core.names import CHANNELS, SPLITS, is_medmnist
from .archive import Archive
from .decode import decode_members, event_notes, resize_array
from .imaging import ResizeMode
from .layouts import READERS, Record
from .medmnist import MEDMNIST, load_dataset
from .splits import assign_splits

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("index", "source", "label", "class_name", "group", "origin")


# ----------------------------------------------------------------------------------------------- writing
def _write_manifest(path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for i, r in enumerate(records):
            writer.writerow([i, r.source, r.label, classes[r.label], r.group, r.origin])


#: A generous size of one manifest row, for the space needed before writing.
_MANIFEST_ROW = 256


def _npy_bytes(shape: tuple[int, ...]) -> int:
    """Size of a uint8 ``.npy`` of ``shape``: its 128-byte header and the data."""
    return 128 + int(np.prod(shape))


def _needed(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Bytes the data stage writes for splits of these array shapes (arrays, manifests and info.json)."""
    return sum(_npy_bytes(shape) + _MANIFEST_ROW * shape[0] for shape in shapes.values()) + (1 << 20)


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
    source = read_json(source_json)
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
        text = json_text(info)
        with writing(paths[-1], len(text.encode())):
            tmp["info.json"].write_text(text)
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
        shapes = {s: (len(splits[s]), image_size, image_size, CHANNELS[dataset]) for s in SPLITS}
        require_space(tmp["info.json"].parent, _needed(shapes), f"{dataset}: the prepared arrays and manifests")
        events: dict[str, Counter[str]] = {}
        for split in SPLITS:
            records = sorted(splits[split], key=lambda r: r.source)
            log.info("%s/%s: %d images %s", dataset, split, len(records), _counts(records, inventory.classes))
            npy = tmp[f"{split}.npy"]
            with writing(npy.parent / f"{split}.npy", _npy_bytes(shapes[split])):
                arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=shapes[split])
                reserve(npy, _npy_bytes(shapes[split]))  # a full disk now, not a SIGBUS while decoding
                events[split] = decode_members(archive, [r.source for r in records], arr, mode=mode, threads=threads)
                arr.flush()
                del arr
            with writing(npy.parent / f"{split}.csv", _MANIFEST_ROW * len(records)):
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
        require_space(tmp[f"{split}.npy"].parent, arr.nbytes, f"{dataset}/{split}: the prepared array")
        with writing(tmp[f"{split}.npy"].parent / f"{split}.npy", arr.nbytes):
            _save_npy(tmp[f"{split}.npy"], arr)
        records = [
            Record(source=f"{name}:{split}_images[{i}]", label=int(lab), group=f"{split}-{i}", origin=split)
            for i, lab in enumerate(labels)
        ]
        with writing(tmp[f"{split}.csv"].parent / f"{split}.csv", _MANIFEST_ROW * len(records)):
            _write_manifest(tmp[f"{split}.csv"], records, meta.classes)
        counts[split] = _counts(records, meta.classes)
        log.info("%s/%s: %d images %s", dataset, split, len(records), counts[split])
    return {"classes": list(meta.classes), "counts": counts, "notes": [f"MedMNIST {meta.flag} official splits"]}


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save(path) would append ".npy" to the temporary name
        np.save(fh, arr)
