"""Deterministic, stratified and grouped data splits.

No group (a patient for chest X-rays) ever appears on both sides of a split, every class appears on both
sides, and the same inputs and seed always give the same split.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from .errors import LayoutError


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

    >>> check_both_sides([0, 0, 1, 1], np.array([True, False, True, True]), what="demo")
    Traceback (most recent call last):
    ...
    dpmedbench.errors.LayoutError: demo: class 1 would be missing from the kept side of the split (kept 0, held out 2)
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
