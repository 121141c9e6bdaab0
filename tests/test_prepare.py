from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from dpmedbench.archive import Archive
from dpmedbench.errors import ImageError
from dpmedbench.imaging import decode_resized
from dpmedbench.prepare import MANIFEST_COLUMNS, output_paths, prepare_dataset
from dpmedbench.synth import make_medmnist_npz

from .conftest import rewrite_zip


def _source_json(tmp_path, archive, source="local"):
    path = tmp_path / "source.json"
    path.write_text(json.dumps({"dataset": "x", "source": source, "path": str(archive), "sha256": "0" * 64}))
    return path


def _prepare(tmp_path, dataset, archive, threads=1, out="out", **kw):
    kw = {"image_size": 32, "resize_mode": "center_crop", "seed": 42, "val_fraction": 0.2, **kw}
    return prepare_dataset(
        dataset=dataset, source_json=_source_json(tmp_path, archive), out_dir=tmp_path / out, threads=threads, **kw
    )


def test_chest_outputs_are_consistent(chest_kaggle_zip, tmp_path):
    info = _prepare(tmp_path, "chest_xray", chest_kaggle_zip)
    total = 0
    with Archive(chest_kaggle_zip) as arc:
        for split in ("train", "val", "test"):
            arr = np.load(tmp_path / "out" / f"{split}.npy", mmap_mode="r")
            man = pd.read_csv(tmp_path / "out" / f"{split}.csv")
            assert tuple(man.columns) == MANIFEST_COLUMNS
            assert arr.dtype == np.uint8 and arr.shape == (len(man), 32, 32, 1)
            assert list(man["index"]) == list(range(len(man)))
            assert set(man["label"]) == {0, 1} and set(man["class_name"]) == {"NORMAL", "PNEUMONIA"}
            for i in (0, len(man) // 2, len(man) - 1):  # rows are in manifest order
                expected = decode_resized(arc.read(man["source"][i]), size=32, channels=1)
                assert np.array_equal(arr[i], expected)
            assert info["counts"][split] == man["class_name"].value_counts().to_dict()
            total += len(man)
    assert total == sum(sum(c.values()) for c in info["counts"].values())
    train, val = (set(pd.read_csv(tmp_path / "out" / f"{s}.csv")["group"]) for s in ("train", "val"))
    assert not train & val
    assert info["channels"] == 1 and info["image_size"] == 32 and info["source"]["sha256"] == "0" * 64
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_aptos_outputs_are_rgb(aptos_zip, tmp_path):
    info = _prepare(tmp_path, "aptos", aptos_zip, image_size=24)
    arr = np.load(tmp_path / "out" / "train.npy")
    assert arr.shape[1:] == (24, 24, 3)
    assert info["classes"] == ["0", "1", "2", "3", "4"]
    assert sum(info["counts"]["test"].values()) == 10


def test_parallel_output_is_byte_identical(chest_kaggle_zip, tmp_path):
    _prepare(tmp_path, "chest_xray", chest_kaggle_zip, threads=1, out="one")
    _prepare(tmp_path, "chest_xray", chest_kaggle_zip, threads=3, out="three")
    for a, b in zip(output_paths(tmp_path / "one")[:-1], output_paths(tmp_path / "three")[:-1], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize("threads", [1, 2])
def test_corrupt_image_is_named_and_nothing_is_written(chest_kaggle_zip, tmp_path, threads):
    with zipfile.ZipFile(chest_kaggle_zip) as zf:
        victim = sorted(n for n in zf.namelist() if n.startswith("chest_xray/test/PNEUMONIA/"))[-1]
        data = zf.read(victim)
    bad = rewrite_zip(chest_kaggle_zip, tmp_path / "bad.zip", {victim: data[: len(data) // 3]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("unrelated")
    with pytest.raises(ImageError, match=rf"bad.zip:{victim}: cannot decode image"):
        _prepare(tmp_path, "chest_xray", bad, threads=threads)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_medmnist_npz_keeps_official_splits(tmp_path):
    npz = make_medmnist_npz(tmp_path / "retinamnist_224.npz", dataset="aptos", n=(15, 5, 10), side=28)
    info = _prepare(tmp_path, "aptos", npz, image_size=32)
    assert info["split"] == {"official": True}
    for split, n in zip(("train", "val", "test"), (15, 5, 10), strict=True):
        arr = np.load(tmp_path / "out" / f"{split}.npy")
        man = pd.read_csv(tmp_path / "out" / f"{split}.csv")
        assert arr.shape == (n, 32, 32, 3) and len(man) == n
        assert man["source"][0] == f"retinamnist_224.npz:{split}_images[0]"
        assert list(man["label"]) == [i % 5 for i in range(n)]
    chest = make_medmnist_npz(tmp_path / "pneumoniamnist.npz", dataset="chest_xray", n=(6, 2, 2))
    info = _prepare(tmp_path, "chest_xray", chest, out="chest")
    assert np.load(tmp_path / "chest" / "val.npy").shape == (2, 32, 32, 1)


def test_bad_npz_is_named(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    with open(path, "wb") as fh:
        np.savez(fh, train_images=np.zeros((2, 8, 8), np.uint8))
    from dpmedbench.errors import LayoutError

    with pytest.raises(LayoutError, match=r"pneumoniamnist.npz: not a MedMNIST file: missing \['train_labels'\]"):
        _prepare(tmp_path, "chest_xray", path)


STRESS = """
import sys
import numpy as np
from dpmedbench.archive import Archive
from dpmedbench.errors import ImageError
from dpmedbench.prepare import decode_members

archive = Archive(sys.argv[1])
members = sorted(archive.members)
out = np.zeros((len(members), 16, 16, 1), np.uint8)
for run in range(int(sys.argv[2])):
    try:
        decode_members(archive, members, out, mode="squash", threads=2)
    except ImageError as exc:
        assert "img13.png" in str(exc), exc
    else:
        raise SystemExit("no error")
print("ok")
"""


def test_parallel_decoding_fails_cleanly_every_time(tmp_path):
    """Two corrupt images (in the 2nd and 4th chunks) among 40, decoded on two processes 300 times in a row:
    every run raises the earliest one's error, and none hangs. With ``multiprocessing.Pool`` leaving on the
    exception (``terminate()``), a run deadlocked after 10-310 repetitions here."""
    import io
    import os
    import subprocess
    import sys

    from PIL import Image

    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(40):
            buf = io.BytesIO()
            Image.fromarray(np.full((20, 24), i * 6, np.uint8)).save(buf, format="PNG")
            zf.writestr(f"img{i:02d}.png", buf.getvalue()[:20] if i in (13, 30) else buf.getvalue())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", STRESS, str(path), "300"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
