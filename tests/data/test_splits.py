from __future__ import annotations

import zipfile
from collections import Counter

import numpy as np
import pytest
from dpmedbench.core.errors import LayoutError
from dpmedbench.data.archive import Archive
from dpmedbench.data.layouts import Inventory, Record, read_aptos, read_chest_xray
from dpmedbench.data.prepare import assign_splits
from dpmedbench.data.splits import stratified_group_holdout, stratified_holdout
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split


def _groups_data(rng, n_groups, n_classes):
    labels, groups = [], []
    for g in range(n_groups):
        label = g % n_classes
        for _ in range(rng.integers(1, 4)):
            labels.append(label)
            groups.append(f"patient{g}")
    return np.array(labels), groups


@settings(max_examples=60, deadline=None)
@given(
    n_groups=st.integers(4, 120),
    n_classes=st.integers(2, 5),
    fraction=st.floats(0.05, 0.5),
    seed=st.integers(0, 2**31),
)
def test_group_holdout_properties(n_groups, n_classes, fraction, seed):
    if n_groups < 2 * n_classes:
        n_groups = 2 * n_classes
    labels, groups = _groups_data(np.random.default_rng(seed), n_groups, n_classes)
    held = stratified_group_holdout(labels, groups, fraction=fraction, seed=seed)
    held_groups = {g for g, h in zip(groups, held, strict=True) if h}
    kept_groups = {g for g, h in zip(groups, held, strict=True) if not h}
    assert not held_groups & kept_groups, "a patient is on both sides"
    for c in range(n_classes):  # every class on both sides
        assert held[labels == c].any() and (~held[labels == c]).any()
    again = stratified_group_holdout(labels, groups, fraction=fraction, seed=seed)
    assert np.array_equal(held, again)


def test_group_holdout_is_close_to_the_fraction_per_class():
    labels, groups = _groups_data(np.random.default_rng(0), 600, 2)
    held = stratified_group_holdout(labels, groups, fraction=0.1, seed=42)
    for c in (0, 1):
        share = held[labels == c].mean()
        assert 0.09 <= share <= 0.11, share


def test_group_holdout_depends_on_the_seed():
    labels, groups = _groups_data(np.random.default_rng(0), 200, 2)
    a = stratified_group_holdout(labels, groups, fraction=0.2, seed=1)
    b = stratified_group_holdout(labels, groups, fraction=0.2, seed=2)
    assert not np.array_equal(a, b)


def test_a_class_with_one_patient_cannot_be_split():
    with pytest.raises(LayoutError, match=r"class 1 has a single patient/group \('p9'\)"):
        stratified_group_holdout([0, 0, 0, 1, 1], ["p1", "p2", "p3", "p9", "p9"], fraction=0.3, seed=0, what="x")


def test_aptos_holdout_reproduces_the_authors_split_sizes():
    # train.csv grade counts 1805/370/999/193/295 -> the authors' 2929 / 733 split with seed 42.
    labels = np.repeat(np.arange(5), [1805, 370, 999, 193, 295])
    np.random.default_rng(7).shuffle(labels)
    test = stratified_holdout(labels, fraction=0.2, seed=42)
    assert test.sum() == 733 and (~test).sum() == 2929
    _, expected = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=42)
    assert set(np.flatnonzero(test)) == set(expected)
    assert abs(Counter(labels[test])[4] / 733 - 295 / 3662) < 0.002


def test_chest_splits_follow_the_protocol(chest_kaggle_zip):
    with Archive(chest_kaggle_zip) as arc:
        inv = read_chest_xray(arc)
    splits = assign_splits("chest_xray", inv, seed=42, val_fraction=0.2)
    assert {r.source for r in splits["test"]} == {r.source for r in inv.records if r.origin == "test"}
    official_val = {r.source for r in inv.records if r.origin == "val"}
    assert official_val <= {r.source for r in splits["train"] + splits["val"]}, "official val goes back to the pool"
    patients = [{r.group for r in splits[s]} for s in ("train", "val")]
    assert not patients[0] & patients[1]
    assert sum(len(v) for v in splits.values()) == len(inv.records)
    assert splits == assign_splits("chest_xray", inv, seed=42, val_fraction=0.2)

    authors = assign_splits("chest_xray", inv, seed=42, val_fraction=0.2, official_val="val")
    assert {r.source for r in authors["val"]} == official_val


def test_mendeley_cannot_use_the_official_val(chest_mendeley_zip):
    with Archive(chest_mendeley_zip) as arc:
        inv = read_chest_xray(arc)
    with pytest.raises(LayoutError, match="official_val is 'val' but the archive has no val folder"):
        assign_splits("chest_xray", inv, seed=42, val_fraction=0.1, official_val="val")


def test_aptos_splits(aptos_zip):
    with Archive(aptos_zip) as arc:
        inv = read_aptos(arc)
    splits = assign_splits("aptos", inv, seed=42, val_fraction=0.2, test_fraction=0.2)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [30, 10, 10]
    for s in ("train", "val", "test"):
        assert set(Counter(r.label for r in splits[s])) == set(range(5))
    ids = [r.group for s in splits.values() for r in s]
    assert len(ids) == len(set(ids)) == 50


def test_official_val_with_one_class_is_refused(chest_kaggle_zip, tmp_path):
    from ..conftest import rewrite_zip

    with zipfile.ZipFile(chest_kaggle_zip) as zf:
        drop = {n: None for n in zf.namelist() if "/val/NORMAL/" in n}  # from the nested duplicate tree too
    with Archive(rewrite_zip(chest_kaggle_zip, tmp_path / "oneval.zip", drop)) as arc:
        inv = read_chest_xray(arc)
    assign_splits("chest_xray", inv, seed=42, val_fraction=0.2)  # carving from the pool still works
    with pytest.raises(LayoutError, match=r"class NORMAL .*val split.*train \d+, val 0, test 4.*official_val: train"):
        assign_splits("chest_xray", inv, seed=42, val_fraction=0.2, official_val="val")


def _aptos_inventory(per_grade):
    records = [
        Record(source=f"train_images/{g}-{i}.png", label=g, group=f"{g}-{i}", origin="train")
        for g, n in enumerate(per_grade)
        for i in range(n)
    ]
    return Inventory(records=records, classes=("0", "1", "2", "3", "4"))


@pytest.mark.parametrize(
    "per_grade",
    [
        [10, 10, 10, 1, 10],  # scikit-learn's raw ValueError before
        [10, 10, 10, 2, 10],  # "single patient/group" before
        [1805, 370, 999, 2, 295],  # silently a test split without grade 3 before
    ],
)
def test_aptos_grade_too_rare_for_three_splits_is_refused(per_grade):
    inv = _aptos_inventory(per_grade)
    rare = per_grade[3]
    with pytest.raises(LayoutError, match=rf"grade 3 has {rare} images? in train.csv.*at least 3 .*3: {rare}, 4:"):
        assign_splits("aptos", inv, seed=42, val_fraction=0.1, test_fraction=0.2)


def test_holdout_that_would_lose_a_class_is_refused():
    labels = [0] * 40 + [1] * 3  # scikit-learn gives class 1 no test image here
    with pytest.raises(LayoutError, match=r"rare: class 1 .*held-out side.*kept 3, held out 0"):
        stratified_holdout(labels, fraction=0.1, seed=0, what="rare")
    with pytest.raises(LayoutError, match=r"rare: class 1 has a single item"):
        stratified_holdout([0, 0, 0, 1], fraction=0.5, seed=0, what="rare")
