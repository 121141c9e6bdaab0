"""Deterministic, stratified and grouped data splits, and each dataset's split policy (:func:`assign_splits`).

No group (a patient for chest X-rays) ever appears on both sides of a split, every class appears on both
sides, and the same inputs and seed always give the same split.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from ..core.errors import LayoutError
from ..core.names import CHANNELS, SPLITS
from .layouts import Inventory, Record


def stratified_group_holdout(
    labels: Sequence[int], groups: Sequence[str], *, fraction: float, seed: int, what: str = "data"
) -> np.ndarray:
    """Boolean mask of the held-out items: about ``fraction`` of each class, whole groups only.

    Each group is assigned to the stratum of its most frequent label. Within a stratum the groups are
    shuffled with ``seed`` and taken greedily while that brings the held-out count closer to
    ``fraction`` of the stratum; at least one group is held out and one kept per stratum.

    >>> stratified_group_holdout([0, 0, 1, 1], ["a", "b", "c", "d"], fraction=0.5, seed=0).sum()
    np.int64(2)
    """
    labels = np.asarray(labels)
    if len(labels) != len(groups):
        raise ValueError("labels and groups differ in length")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    stratum_groups: dict[int, list[str]] = defaultdict(list)
    for g in sorted(members):
        label = Counter(labels[members[g]].tolist()).most_common()
        stratum = min(lab for lab, n in label if n == label[0][1])
        stratum_groups[stratum].append(g)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for stratum in sorted(stratum_groups):
        gs = stratum_groups[stratum]
        if len(gs) < 2:
            raise LayoutError(
                f"{what}: class {stratum} has a single patient/group ({gs[0]!r}); cannot hold out a "
                f"validation split without losing the class on one side"
            )
        target = fraction * sum(len(members[g]) for g in gs)
        taken, count = [], 0
        for idx in rng.permutation(len(gs)):
            size = len(members[gs[idx]])
            if not taken or abs(count + size - target) < abs(count - target):
                taken.append(gs[idx])
                count += size
        if len(taken) == len(gs):
            taken.pop()
        for g in taken:
            held[members[g]] = True
    check_both_sides(labels, held, what=what)  # a class only ever in the minority of its groups' images
    return held


def check_both_sides(labels: Sequence[int], held: np.ndarray, *, what: str) -> None:
    """Raise :class:`LayoutError` when a class of ``labels`` is on one side of the ``held`` mask only.

    >>> check_both_sides([0, 0, 1, 1], np.array([True, False, True, True]), what="demo")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dpmedbench.core.errors.LayoutError: demo: class 1 would be missing from the kept side ... (kept 0, held out 2)
    """
    labels = np.asarray(labels)
    for label in sorted(set(labels.tolist())):
        kept, out = int((~held[labels == label]).sum()), int(held[labels == label].sum())
        if not kept or not out:
            side = "kept" if not kept else "held-out"
            raise LayoutError(
                f"{what}: class {label} would be missing from the {side} side of the split "
                f"(kept {kept}, held out {out})"
            )


def stratified_holdout(labels: Sequence[int], *, fraction: float, seed: int, what: str = "data") -> np.ndarray:
    """Boolean mask of a stratified held-out part, exactly as scikit-learn's
    ``train_test_split(range(n), test_size=fraction, stratify=labels, random_state=seed)``: with the
    APTOS ``train.csv`` order, 0.2 and 42 this is the authors' split (2929 train / 733 test).

    Raises :class:`LayoutError` (naming ``what``) when a class has a single item, or when the split would leave
    a class on one side only, as scikit-learn does for a rare class and a small ``fraction``.
    """
    counts = Counter(np.asarray(labels).tolist())
    if single := sorted(label for label, n in counts.items() if n < 2):
        raise LayoutError(
            f"{what}: class {single[0]} has a single item, so a stratified split cannot put it on both sides "
            f"(items per class: {dict(sorted(counts.items()))})"
        )
    idx = np.arange(len(labels))
    _, test_idx = train_test_split(idx, test_size=fraction, stratify=np.asarray(labels), random_state=seed)
    mask = np.zeros(len(labels), dtype=bool)
    mask[test_idx] = True
    check_both_sides(labels, mask, what=what)
    return mask


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
