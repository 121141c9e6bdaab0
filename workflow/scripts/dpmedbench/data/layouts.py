"""Turn a real dataset archive into a list of labelled records.

Each reader knows one real layout and refuses anything else with an error that names the archive:

* Kermany chest X-rays, Kaggle ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (with the nested
  duplicate ``chest_xray/chest_xray/`` tree, which is skipped) or Mendeley ``chest_xray/{train,test}/...``;
* APTOS 2019, ``train.csv`` (``id_code,diagnosis``) beside ``train_images/<id_code>.png``; ``test_images/``
  has no labels and is ignored;
* MedMNIST+ ``.npz`` files (PneumoniaMNIST, RetinaMNIST) with their official splits.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from ..core.errors import LayoutError
from .archive import Archive, shown

CHEST_CLASSES = ("NORMAL", "PNEUMONIA")
APTOS_CLASSES = ("0", "1", "2", "3", "4")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SPLIT_FOLDERS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One labelled image: where it is in the archive, its class, its patient (or image) id, and the
    split it had in the archive as shipped (``origin``)."""

    source: str
    label: int
    group: str
    origin: str


@dataclass
class Inventory:
    """What an archive holds, ready for splitting."""

    records: list[Record]
    classes: tuple[str, ...]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- chest X-ray
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^(.*IM-\d+)-\d+", re.IGNORECASE)


def chest_patient_id(filename: str) -> str:
    """Patient id from a Kermany file name.

    >>> chest_patient_id("person1003_bacteria_2934.jpeg")
    'person1003'
    >>> chest_patient_id("NORMAL2-IM-1427-0001.jpeg"), chest_patient_id("IM-0115-0001.jpeg")
    ('NORMAL2-IM-1427', 'IM-0115')
    """
    stem = PurePosixPath(filename).stem
    for pattern in (_PERSON, _IM):
        if m := pattern.match(stem):
            return m.group(1)
    return stem


def _chest_trees(archive: Archive) -> dict[str, list[tuple[str, str, str]]]:
    """``{root: [(member, split, CLASS), ...]}`` of every ``<root>/<split>/<CLASS>/<image>`` in the archive."""
    by_root: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for member in archive.members:
        p = PurePosixPath(member)
        if p.suffix.lower() not in IMAGE_SUFFIXES or len(p.parts) < 3:
            continue
        split, cls = p.parts[-3].lower(), p.parts[-2].upper()
        if split in SPLIT_FOLDERS and cls in CHEST_CLASSES:
            root = "/".join(p.parts[:-3])
            by_root[root].append((member, split, cls))
    return by_root


def _refuse_strays(archive: Archive, root: str) -> None:
    """Refuse files under ``<root>/<split>/`` that are not an image of a known class: an image of another format
    (``.bmp``, ``.tif``), a folder of another class (``COVID/``), a file beside the class folders or below them.
    Reading around them would change the dataset without a word."""
    prefix = f"{root}/" if root else ""
    strays = []
    for member in archive.members:
        if not member.startswith(prefix):
            continue
        rel = PurePosixPath(member.removeprefix(prefix)).parts
        if len(rel) < 2 or rel[0].lower() not in SPLIT_FOLDERS:
            continue  # outside the split folders, e.g. the nested duplicate tree chest_xray/chest_xray/
        if len(rel) == 3 and rel[1].upper() in CHEST_CLASSES and PurePosixPath(rel[2]).suffix.lower() in IMAGE_SUFFIXES:
            continue
        strays.append(member)
    if strays:
        n = len(strays)
        raise LayoutError(
            f"{archive.path}: {n} {'file is' if n == 1 else 'files are'} not a {'/'.join(sorted(IMAGE_SUFFIXES))} "
            f"image in a {' or '.join(CHEST_CLASSES)} folder under '{prefix}{{train,val,test}}/' ({shown(strays)}); "
            f"the chest X-ray dataset has these two classes only, and no file is left out silently: delete them "
            f"(or convert other image formats to .jpeg) and run again"
        )


def _tree_contents(archive: Archive, items: list[tuple[str, str, str]], root: str) -> dict[str, str]:
    """``{path below root: SHA-256}`` of a tree's images."""
    prefix = f"{root}/" if root else ""
    return {m.removeprefix(prefix): archive.sha256(m) for m, _, _ in items}


def _check_other_trees(archive: Archive, by_root: dict[str, list[tuple[str, str, str]]], root: str) -> list[str]:
    """A second tree is skipped only when it holds exactly the images of the one read (same paths below their roots,
    same SHA-256); any other second tree is an ambiguity that names both. Returns the notes."""
    others = sorted(r for r in by_root if r != root)
    if not others:
        return []
    chosen = _tree_contents(archive, by_root[root], root)
    notes = []
    for other in others:
        contents = _tree_contents(archive, by_root[other], other)
        if contents != chosen:
            differ = sorted(set(contents) ^ set(chosen)) + sorted(
                k for k in set(contents) & set(chosen) if contents[k] != chosen[k]
            )
            raise LayoutError(
                f"{archive.path}: two chest X-ray trees with different images, '{root or '.'}/' "
                f"({len(chosen)} images) and '{other or '.'}/' ({len(contents)} images; they differ in "
                f"{shown(differ)}): which one is the dataset cannot be known; delete the tree you do not mean (or "
                f"give a folder that holds only one) and run again"
            )
        notes.append(f"skipped duplicate tree '{other}/' ({len(contents)} images, identical by SHA-256)")
    return notes


def _group_patients(records: list[Record]) -> tuple[list[Record], list[str]]:
    """One group per patient whatever the letter case of its id (``person50`` and ``PERSON50`` are one patient,
    so one privacy unit on one side of the split): each group takes the first spelling in sort order. Returns the
    records and a note when spellings were merged."""
    spellings: dict[str, set[str]] = defaultdict(set)
    for r in records:
        spellings[r.group.casefold()].add(r.group)
    merged = {k: v for k, v in spellings.items() if len(v) > 1}
    if not merged:
        return records, []
    first = {k: min(v) for k, v in merged.items()}
    records = [replace(r, group=first.get(r.group.casefold(), r.group)) for r in records]
    n = len(merged)
    return records, [
        f"{n} patient {'id is' if n == 1 else 'ids are'} spelt in more than one letter case "
        f"({shown(' = '.join(sorted(v)) for v in merged.values())}): grouped as one patient each"
    ]


def read_chest_xray(archive: Archive) -> Inventory:
    """Records of a Kaggle or Mendeley chest X-ray archive.

    The images sit under ``<root>/<split>/<CLASS>/``. The Kaggle zip holds the same tree twice
    (``chest_xray/`` and ``chest_xray/chest_xray/``); the root with the most images is read (the outermost
    one on a tie), and every other tree is skipped, with a note, only when its images are the same files
    (:func:`_check_other_trees`), so no image is counted twice and no different image is left out. Any
    other file in the split folders of the tree that is read is refused (:func:`_refuse_strays`).
    """
    by_root = _chest_trees(archive)
    complete = {root: items for root, items in by_root.items() if {"train", "test"} <= {split for _, split, _ in items}}
    if not complete:
        top = sorted({m.split("/")[0] for m in archive.members})[:10]
        raise LayoutError(
            f"{archive.path}: unknown layout for the chest X-ray dataset: expected folders "
            f"<root>/train/{{NORMAL,PNEUMONIA}}/ and <root>/test/{{NORMAL,PNEUMONIA}}/ with .jpeg images "
            f"(Kaggle chest-xray-pneumonia or Mendeley ChestXRay2017.zip); top-level entries found: {top}"
        )
    root = min(complete, key=lambda r: (-len(complete[r]), r.count("/") if r else -1, r))
    _refuse_strays(archive, root)
    items = complete[root]
    counts = Counter((split, cls) for _, split, cls in items)
    for split in ("train", "test"):
        for cls in CHEST_CLASSES:
            if counts[(split, cls)] == 0:
                where = f"{root}/{split}/{cls}/" if root else f"{split}/{cls}/"
                raise LayoutError(f"{archive.describe(where)}: class {cls} has no images in the {split} folder")
    notes = _check_other_trees(archive, by_root, root)
    if archive.debris:
        notes.append(f"skipped {len(archive.debris)} macOS metadata files (__MACOSX/, ._*, .DS_Store)")
    records = [
        Record(source=m, label=CHEST_CLASSES.index(cls), group=chest_patient_id(m), origin=split)
        for m, split, cls in sorted(items)
    ]
    records, merged = _group_patients(records)
    return Inventory(records=records, classes=CHEST_CLASSES, notes=notes + merged)


# --------------------------------------------------------------------------------------------- APTOS 2019
def _aptos_root(archive: Archive) -> str:
    """The folder (``""`` for the top) that holds ``train.csv`` beside ``train_images/``."""
    csvs = [m for m in archive.members if PurePosixPath(m).name == "train.csv"]
    roots = [str(PurePosixPath(m).parent) for m in csvs]
    roots = [("" if r == "." else r) for r in roots]
    candidates = [
        r for r in roots if any(m.startswith(f"{r}/train_images/" if r else "train_images/") for m in archive.members)
    ]
    if len(candidates) != 1:
        top = sorted({m.split("/")[0] for m in archive.members})[:10]
        what = "no" if not candidates else f"{len(candidates)} ({candidates})"
        raise LayoutError(
            f"{archive.path}: unknown layout for APTOS 2019: expected train.csv beside a train_images/ folder "
            f"(the Kaggle competition archive aptos2019-blindness-detection), found {what}; "
            f"top-level entries: {top}"
        )
    return candidates[0]


def _aptos_rows(archive: Archive, csv_member: str) -> list[tuple[int, str, str]]:
    """``(line, id_code, diagnosis)`` of every row of ``train.csv``; refuses a file with no rows."""
    try:
        text = archive.read(csv_member).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{archive.describe(csv_member)}: not a UTF-8 CSV file ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    try:
        if reader.fieldnames is None or not {"id_code", "diagnosis"} <= set(reader.fieldnames):
            raise LayoutError(
                f"{archive.describe(csv_member)}: expected the columns id_code,diagnosis, found {reader.fieldnames}"
            )
        rows = [
            (line, (row["id_code"] or "").strip(), (row["diagnosis"] or "").strip())
            for line, row in enumerate(reader, start=2)
        ]
    except csv.Error as exc:
        raise LayoutError(
            f"{archive.describe(csv_member)} line {reader.line_num}: not a readable CSV row ({exc}); the file is "
            f"damaged or not the competition's: download the archive again"
        ) from None
    if not rows:
        raise LayoutError(
            f"{archive.describe(csv_member)}: the file has a header but no rows, so no image has a grade; "
            f"the archive is truncated or not the competition's: download it again"
        )
    return rows


def _aptos_images(archive: Archive, prefix: str) -> dict[str, str]:
    """``{id_code (case-folded): member}`` of the files in ``train_images/``; refuses two files with one id code
    and any file that is not an image of the formats both datasets accept."""
    folder = f"{prefix}train_images/"
    by_id: dict[str, list[str]] = defaultdict(list)
    strays = []
    for m in archive.members:
        if m.startswith(folder):
            if PurePosixPath(m).suffix.lower() not in IMAGE_SUFFIXES:
                strays.append(m)
            by_id[PurePosixPath(m).stem.casefold()].append(m)
    if strays:
        raise LayoutError(
            f"{archive.describe(folder)}: {len(strays)} {'file is' if len(strays) == 1 else 'files are'} not a "
            f"{'/'.join(sorted(IMAGE_SUFFIXES))} image ({shown(strays)}); both datasets accept these formats only, "
            f"and no file is left out silently: convert or delete them and run again"
        )
    for id_code, members in sorted(by_id.items()):
        if len(members) > 1:
            raise LayoutError(
                f"{archive.describe(folder)}: id_code {id_code} has {len(members)} files ({shown(members)}): "
                f"which one is the graded image cannot be known; delete the others"
            )
    return {id_code: members[0] for id_code, members in by_id.items()}


def read_aptos(archive: Archive) -> Inventory:
    """Records of the APTOS 2019 competition archive (``train.csv`` + ``train_images/``).

    Every row of ``train.csv`` must have its image; images without a row are reported and skipped.
    """
    root = _aptos_root(archive)
    prefix = f"{root}/" if root else ""
    csv_member = f"{prefix}train.csv"
    rows = _aptos_rows(archive, csv_member)
    images = _aptos_images(archive, prefix)
    records, seen = [], set()
    for line, id_code, diagnosis in rows:
        if diagnosis not in APTOS_CLASSES:
            raise LayoutError(
                f"{archive.describe(csv_member)} line {line}: diagnosis {diagnosis!r} of {id_code!r} is not a grade 0-4"
            )
        if id_code.casefold() in seen:
            raise LayoutError(
                f"{archive.describe(csv_member)} line {line}: id_code {id_code!r} appears twice (letter case aside)"
            )
        seen.add(id_code.casefold())
        member = images.get(id_code.casefold())
        if member is None:
            raise LayoutError(
                f"{archive.describe(csv_member)} line {line}: id_code {id_code!r} has no image "
                f"{prefix}train_images/{id_code}.png in the archive"
            )
        records.append(Record(source=member, label=int(diagnosis), group=id_code, origin="train"))
    counts = Counter(r.label for r in records)
    for label, cls in enumerate(APTOS_CLASSES):
        if counts[label] == 0:
            raise LayoutError(f"{archive.describe(csv_member)}: grade {cls} has no images")
    notes = []
    if unlisted := len(set(images) - seen):
        notes.append(f"skipped {unlisted} images in train_images/ that train.csv does not list")
    if n_test := sum(m.startswith(f"{prefix}test_images/") for m in archive.members):
        notes.append(f"ignored {n_test} unlabelled images in test_images/")
    if archive.debris:
        notes.append(f"skipped {len(archive.debris)} macOS metadata files")
    return Inventory(records=records, classes=APTOS_CLASSES, notes=notes)


READERS = {"chest_xray": read_chest_xray, "aptos": read_aptos}
