from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from dpmedbench.core.errors import ChecksumError, ImageError, LayoutError
from dpmedbench.core.fileio import file_digest, source_digest
from dpmedbench.data.archive import Archive
from dpmedbench.data.imaging import decode_resized
from dpmedbench.data.prepare import MANIFEST_COLUMNS, output_paths, prepare_dataset
from dpmedbench.data.synth import make_medmnist_npz

from ..conftest import extract, rewrite_zip
from ..support.zips import patch_zip_member


def _source_json(tmp_path, archive, source="local", sha256=None):
    """A source.json as fetch writes it: the archive's digest as it was when fetched (``sha256``, by default the
    archive's digest now)."""
    path = tmp_path / "source.json"
    sha256 = sha256 or source_digest(archive)["sha256"]
    path.write_text(json.dumps({"dataset": "x", "source": source, "path": str(archive), "sha256": sha256}))
    return path


def _prepare(tmp_path, dataset, archive, threads=1, out="out", sha256=None, **kw):
    kw = {"image_size": 32, "resize_mode": "center_crop", "seed": 42, "val_fraction": 0.2, **kw}
    return prepare_dataset(
        dataset=dataset,
        source_json=_source_json(tmp_path, archive, sha256=sha256),
        out_dir=tmp_path / out,
        threads=threads,
        **kw,
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
    assert info["channels"] == 1 and info["image_size"] == 32
    assert info["source"]["sha256"] == info["read"]["sha256"] == file_digest(chest_kaggle_zip)
    assert info["read"]["sha256_of"] == "file"
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
    copy = victim.replace("chest_xray/", "chest_xray/chest_xray/", 1)  # the nested tree must stay identical
    bad = rewrite_zip(chest_kaggle_zip, tmp_path / "bad.zip", {m: data[: len(data) // 3] for m in (victim, copy)})
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
    with pytest.raises(LayoutError, match=r"pneumoniamnist.npz: not a MedMNIST file: missing \['train_labels'\]"):
        _prepare(tmp_path, "chest_xray", path)


def _npz(path, **replace):
    """A PneumoniaMNIST-shaped file with some arrays replaced."""
    arrays = {}
    for split, n in zip(("train", "val", "test"), (6, 2, 2), strict=True):
        arrays[f"{split}_images"] = np.full((n, 8, 8), 100, np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    arrays.update(replace)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"train_labels": np.array([0.6, 1.7, 0, 1, 0, 1])}, r"train_labels are stored as float64, not integers"),
        (
            {"test_images": np.zeros((2, 0, 0), np.uint8)},
            r"test_images has shape \(2, 0, 0, 1\): images without a pixel",
        ),
        ({"val_labels": np.array([0, "1"], dtype=object)}, r"array val_labels cannot be read \(Object arrays"),
    ],
    ids=["float-labels", "empty-images", "object-array"],
)
def test_damaged_medmnist_arrays_are_named(tmp_path, replace, message):
    path = _npz(tmp_path / "pneumoniamnist.npz", **replace)
    with pytest.raises(LayoutError, match=rf"pneumoniamnist.npz: {message}"):
        _prepare(tmp_path, "chest_xray", path)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_medmnist_file_with_a_bad_crc_is_named(tmp_path):
    path = _npz(
        tmp_path / "pneumoniamnist.npz",
        train_images=np.arange(6 * 64 * 64, dtype=np.uint32).astype(np.uint8).reshape(6, 64, 64),
    )
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("train_images.npy")
    data[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF  # inside the compressed data
    path.write_bytes(bytes(data))
    with pytest.raises(LayoutError, match=r"pneumoniamnist.npz: array train_images cannot be read \(.*\).*download"):
        _prepare(tmp_path, "chest_xray", path)


def test_medmnist_array_declared_too_large_is_refused_before_reading(tmp_path, monkeypatch):
    from dpmedbench.data import medmnist

    monkeypatch.setattr(medmnist, "MAX_ARRAY_BYTES", 1000)
    path = _npz(tmp_path / "pneumoniamnist.npz", train_images=np.zeros((6, 16, 16), np.uint8))
    with pytest.raises(LayoutError, match=r"array train_images.npy declares 1,664 bytes, more than"):
        _prepare(tmp_path, "chest_xray", path)


FILE_SIZE_LIMIT = """
import json, resource, sys
from pathlib import Path
from dpmedbench.core.errors import OutputSpaceError
from dpmedbench.data.prepare import prepare_dataset

limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    prepare_dataset(dataset="chest_xray", source_json=sys.argv[1], out_dir=sys.argv[2], image_size=64,
                    resize_mode="center_crop", seed=42, val_fraction=0.2)
except OutputSpaceError as exc:
    print(exc)
    raise SystemExit(3)
"""


def test_a_write_failure_is_named_and_leaves_nothing(chest_kaggle_zip, tmp_path):
    """A file-size limit (what a full disk looks like to the writer: the write fails) during prepare."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("unrelated")
    source = _source_json(tmp_path, chest_kaggle_zip)
    run = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, str(source), str(out), "20000"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
    )
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert f"{out / 'train.npy'}: cannot be written: the file would be larger than" in run.stdout
    assert "ulimit -f" in run.stdout and "bytes needed for it" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_too_little_free_space_is_named_before_anything_is_written(chest_kaggle_zip, tmp_path, monkeypatch):
    import shutil

    from dpmedbench.core import fileio
    from dpmedbench.core.errors import OutputSpaceError

    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 5000, 5000))
    with pytest.raises(
        OutputSpaceError, match=r"chest_xray: the prepared arrays and manifests: [\d,]+ bytes needed, only 5,000 free"
    ):
        _prepare(tmp_path, "chest_xray", chest_kaggle_zip)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


STRESS = """
import sys
import numpy as np
from dpmedbench.data.archive import Archive
from dpmedbench.core.errors import ChecksumError, ImageError, LayoutError
from dpmedbench.core.fileio import file_digest, source_digest
from dpmedbench.data.prepare import decode_members

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


def test_an_archive_changed_since_it_was_fetched_is_refused(aptos_zip, tmp_path):
    with pytest.raises(ChecksumError, match=r"changed since it was fetched.*rerun the workflow") as err:
        _prepare(tmp_path, "aptos", aptos_zip, sha256="0" * 64)
    assert str(aptos_zip) in str(err.value) and file_digest(aptos_zip) in str(err.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_info_records_the_digest_of_what_was_read(aptos_zip, tmp_path):
    folder = extract(aptos_zip, tmp_path / "aptos")
    info = _prepare(tmp_path, "aptos", folder)
    assert info["read"] == source_digest(folder) and info["read"]["sha256_of"].startswith("folder listing")
    written = json.loads((tmp_path / "out" / "info.json").read_text())
    assert written["read"] == info["read"]
    (tmp_path / "source.json").write_text(json.dumps({"dataset": "aptos", "source": "local", "path": str(folder)}))
    info = prepare_dataset(  # a source.json without a digest: nothing to compare, the digest is still recorded
        dataset="aptos",
        source_json=tmp_path / "source.json",
        out_dir=tmp_path / "again",
        image_size=16,
        resize_mode="squash",
        seed=1,
        val_fraction=0.2,
    )
    assert info["read"] == source_digest(folder)


def test_empty_image_is_named_as_empty(aptos_zip, tmp_path):
    with zipfile.ZipFile(aptos_zip) as zf:
        victim = sorted(n for n in zf.namelist() if n.startswith("train_images/"))[5]
    bad = rewrite_zip(aptos_zip, tmp_path / "empty.zip", {victim: b""})
    with pytest.raises(ImageError, match=rf"empty.zip:{victim}: the file is empty \(0 bytes\)") as err:
        _prepare(tmp_path, "aptos", bad)
    assert "BytesIO" not in str(err.value)


def test_unrecognised_image_bytes_name_no_python_object(aptos_zip, tmp_path):
    with zipfile.ZipFile(aptos_zip) as zf:
        victim = sorted(n for n in zf.namelist() if n.startswith("train_images/"))[5]
    bad = rewrite_zip(aptos_zip, tmp_path / "junk.zip", {victim: b"this is no image"})
    with pytest.raises(ImageError, match=rf"junk.zip:{victim}: cannot decode image") as err:
        _prepare(tmp_path, "aptos", bad)
    assert "BytesIO" not in str(err.value) and "0x" not in str(err.value)


@pytest.mark.parametrize("threads", [1, 2])
def test_encrypted_member_is_refused_before_decoding(chest_mendeley_zip, tmp_path, monkeypatch, threads):
    import dpmedbench.data.decode as decode

    with zipfile.ZipFile(chest_mendeley_zip) as zf:
        member = sorted(n for n in zf.namelist() if n.startswith("chest_xray/test/NORMAL/"))[1]
    locked = patch_zip_member(chest_mendeley_zip, tmp_path / "locked.zip", member, flag_bits=0x1)
    calls = []
    monkeypatch.setattr(decode, "decode_resized", lambda *a, **k: calls.append(1))
    with pytest.raises(LayoutError, match=rf"locked.zip: 1 member is encrypted.*{member}.*password"):
        _prepare(tmp_path, "chest_xray", locked, threads=threads)
    assert not calls


def test_deflate64_member_is_refused_before_decoding(chest_mendeley_zip, tmp_path):
    with zipfile.ZipFile(chest_mendeley_zip) as zf:
        member = sorted(n for n in zf.namelist() if n.startswith("chest_xray/train/PNEUMONIA/"))[0]
    d64 = patch_zip_member(chest_mendeley_zip, tmp_path / "d64.zip", member, compress_type=9)
    with pytest.raises(LayoutError, match=rf"d64.zip: 1 member is compressed with deflate64.*{member}"):
        _prepare(tmp_path, "chest_xray", d64, threads=2)


@pytest.mark.parametrize(
    ("given_as", "made_as", "message"),
    [
        ("aptos", "chest_xray", r"pneumoniamnist.npz: .*1 channel.*2 classes.*PneumoniaMNIST.*as chest_xray"),
        ("chest_xray", "aptos", r"retinamnist.npz: .*3 channels.*5 classes.*RetinaMNIST.*as aptos"),
    ],
)
def test_medmnist_file_of_the_other_dataset_is_refused(tmp_path, given_as, made_as, message):
    flag = {"chest_xray": "pneumoniamnist", "aptos": "retinamnist"}[made_as]
    npz = make_medmnist_npz(tmp_path / f"{flag}.npz", dataset=made_as, n=(10, 5, 5))
    with pytest.raises(LayoutError, match=message):
        _prepare(tmp_path, given_as, npz)


def test_medmnist_split_without_a_class_is_refused(tmp_path):
    path = tmp_path / "retinamnist.npz"
    rng = np.random.default_rng(0)
    arrays = {}
    for split, labels in (("train", [0, 1, 2, 3, 4]), ("val", [0, 1, 2, 3, 4]), ("test", [0, 1, 2, 0, 1])):
        arrays[f"{split}_images"] = rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array(labels, np.uint8).reshape(-1, 1)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(LayoutError, match=r"retinamnist.npz: class 3 has no image in the test split"):
        _prepare(tmp_path, "aptos", path)


def _events_decoder(real):
    """A decoder that reports per-image decisions, as imaging.decode_resized does with ``events``: every image
    'rotated by EXIF', the images whose encoded size is even 'scaled by sBIT'."""

    def decode(data, *, size, channels, mode="center_crop", events=None):
        if events is not None:
            events["exif_orientation_applied"] += 1
            if len(data) % 2 == 0:
                events["scaled_16bit_by_sbit"] += 1
        return real(data, size=size, channels=channels, mode=mode)

    return decode


@pytest.mark.parametrize("threads", [1, 3])
def test_decoder_events_are_counted_into_the_notes(chest_kaggle_zip, tmp_path, monkeypatch, threads):
    import dpmedbench.data.decode as decode

    real = decode_resized
    monkeypatch.setattr(decode, "decode_resized", _events_decoder(real))
    info = _prepare(tmp_path, "chest_xray", chest_kaggle_zip, threads=threads)
    sources = [
        s for split in ("train", "val", "test") for s in pd.read_csv(tmp_path / "out" / f"{split}.csv")["source"]
    ]
    with zipfile.ZipFile(chest_kaggle_zip) as zf:
        even = sum(len(zf.read(s)) % 2 == 0 for s in sources)
    assert 0 < even < len(sources)
    notes = json.loads((tmp_path / "out" / "info.json").read_text())["notes"]
    assert notes == info["notes"]
    assert any(
        n.startswith(f"{len(sources)} images rotated or mirrored upright by their EXIF orientation (train ")
        for n in notes
    ), notes
    assert any(n.startswith(f"{even} images of 16 bits scaled to 8 by their significant bits") for n in notes), notes
    assert not any("full range" in n for n in notes)


def test_decoder_without_events_is_tolerated(aptos_zip, tmp_path, monkeypatch):
    import dpmedbench.data.decode as decode

    real = decode_resized

    def old_decoder(data, *, size, channels, mode="center_crop"):
        return real(data, size=size, channels=channels, mode=mode)

    monkeypatch.setattr(decode, "decode_resized", old_decoder)
    info = _prepare(tmp_path, "aptos", aptos_zip, threads=2)
    assert not any("EXIF" in n or "16 bits" in n for n in info["notes"])


def test_real_decoder_events_reach_the_notes(chest_mendeley_zip, tmp_path):
    """With imaging.decode_resized counting its decisions: one JPEG stored sideways with EXIF orientation 6."""
    import inspect
    import io

    from PIL import Image

    if "events" not in inspect.signature(decode_resized).parameters:
        pytest.skip("imaging.decode_resized does not report events yet")
    with zipfile.ZipFile(chest_mendeley_zip) as zf:
        victim = sorted(n for n in zf.namelist() if n.startswith("chest_xray/test/NORMAL/I"))[0]
        im = Image.open(io.BytesIO(zf.read(victim)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.transpose(Image.Transpose.ROTATE_90).save(buf, format="JPEG", exif=exif.tobytes())
    sideways = rewrite_zip(chest_mendeley_zip, tmp_path / "exif.zip", {victim: buf.getvalue()})
    info = _prepare(tmp_path, "chest_xray", sideways, threads=2)
    assert "1 image rotated or mirrored upright by their EXIF orientation (train 0, val 0, test 1)" in info["notes"]


def test_missing_archive_is_named(tmp_path):
    with pytest.raises(LayoutError, match=r"gone.zip: no such file or folder, but .*source.json records it"):
        _prepare(tmp_path, "aptos", tmp_path / "gone.zip", sha256="0" * 64)
