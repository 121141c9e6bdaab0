from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from dataclasses import replace

import pytest
from dpmedbench.core.config import validate_config
from dpmedbench.core.errors import ChecksumError, ConfigError
from dpmedbench.core.fileio import tree_digest
from dpmedbench.data import sources
from dpmedbench.data.medmnist import MEDMNIST, MedMNISTInfo
from dpmedbench.data.sources import fetch
from dpmedbench.data.synth import make_medmnist_npz

from ..conftest import extract
from ..support.http import Server


def _settings(dataset, **kw):
    cfg = validate_config({"datasets": {dataset: kw}})
    return cfg["datasets"][dataset]


def test_local_zip_is_recorded_with_its_sha256(aptos_zip, tmp_path):
    rec = fetch(
        dataset="aptos",
        settings=_settings("aptos", source="local", archive=str(aptos_zip)),
        seed=1,
        out_json=tmp_path / "raw" / "source.json",
    )
    assert rec["sha256"] == hashlib.sha256(aptos_zip.read_bytes()).hexdigest()
    assert rec["sha256_of"] == "file" and rec["size_bytes"] == aptos_zip.stat().st_size
    assert json.loads((tmp_path / "raw" / "source.json").read_text()) == rec


def test_local_folder_is_recorded_with_a_listing_digest(aptos_zip, tmp_path):
    folder = extract(aptos_zip, tmp_path / "aptos")
    rec = fetch(
        dataset="aptos",
        settings=_settings("aptos", source="local", archive=str(folder)),
        seed=1,
        out_json=tmp_path / "source.json",
    )
    assert rec["sha256"] == tree_digest(folder) and rec["sha256_of"].startswith("folder listing")
    (folder / "train.csv").write_text("changed")
    assert tree_digest(folder) != rec["sha256"]


def test_expected_sha256_is_enforced(aptos_zip, tmp_path):
    settings = _settings("aptos", source="local", archive=str(aptos_zip), sha256="a" * 64)
    with pytest.raises(ChecksumError, match=f"but datasets.aptos.sha256 expects {'a' * 64}"):
        fetch(dataset="aptos", settings=settings, seed=1, out_json=tmp_path / "source.json")
    assert not (tmp_path / "source.json").exists()


def test_missing_local_archive_names_the_key(tmp_path):
    settings = _settings("chest_xray", source="local", archive=str(tmp_path / "nope.zip"))
    with pytest.raises(ConfigError, match=r"datasets.chest_xray.archive: .*nope.zip does not exist"):
        fetch(dataset="chest_xray", settings=settings, seed=1, out_json=tmp_path / "source.json")


@pytest.mark.parametrize("layout", ["kaggle", "mendeley"])
def test_demo_archives_are_reproducible(tmp_path, layout):
    settings = _settings("chest_xray", source="demo", demo={"layout": layout, "patients_per_class": 3})
    a = fetch(dataset="chest_xray", settings=settings, seed=5, out_json=tmp_path / "a" / "source.json")
    b = fetch(dataset="chest_xray", settings=settings, seed=5, out_json=tmp_path / "b" / "source.json")
    assert a["sha256"] == b["sha256"]
    with zipfile.ZipFile(tmp_path / "a" / f"demo-{layout}.zip") as zf:
        assert any(n.startswith("chest_xray/val/") for n in zf.namelist()) == (layout == "kaggle")


def test_medmnist_download_is_md5_checked(tmp_path, monkeypatch):
    npz = make_medmnist_npz(tmp_path / "retinamnist_64.npz", dataset="aptos", n=(5, 5, 5))
    srv = Server(payload=npz.read_bytes())
    try:
        good = replace(MEDMNIST["aptos"], md5={64: hashlib.md5(npz.read_bytes()).hexdigest()})

        class Local(MedMNISTInfo):
            def url(self, size: int) -> str:
                return srv.url

        monkeypatch.setitem(sources.MEDMNIST, "aptos", Local(good.flag, good.classes, good.md5))
        rec = fetch(
            dataset="aptos",
            settings=_settings("aptos", source="medmnist", medmnist_size=64),
            seed=0,
            out_json=tmp_path / "raw" / "source.json",
        )
        assert rec["path"].endswith("retinamnist_64.npz") and "MD5" in rec["origin"]

        monkeypatch.setitem(sources.MEDMNIST, "aptos", Local(good.flag, good.classes, {64: "0" * 32}))
        with pytest.raises(ChecksumError, match="md5 is"):
            fetch(
                dataset="aptos",
                settings=_settings("aptos", source="medmnist", medmnist_size=64),
                seed=0,
                out_json=tmp_path / "raw2" / "source.json",
            )
        assert not list((tmp_path / "raw2").glob("*.npz*"))
    finally:
        srv.close()


def test_medmnist_table_matches_the_medmnist_package(tmp_path):
    """Our MD5s and addresses must be the ones the medmnist package publishes (medmnist/info.py)."""
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "medmnist==3.0.2", "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    wheels = list(tmp_path.glob("medmnist-*.whl"))
    if got.returncode != 0 or not wheels:
        pytest.skip(f"cannot fetch the medmnist wheel from the package index: {got.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        code = zf.read("medmnist/info.py").decode()
    namespace: dict = {}
    exec(compile(code, "medmnist/info.py", "exec"), namespace)  # the file only defines constants
    info = namespace["INFO"]
    for dataset, ours in MEDMNIST.items():
        theirs = info[ours.flag]
        assert len(ours.classes) == len(theirs["label"])
        for size, md5 in ours.md5.items():
            suffix = "" if size == 28 else f"_{size}"
            assert theirs[f"MD5{suffix}"] == md5, (dataset, size)
            assert theirs[f"url{suffix}"] == ours.url(size), (dataset, size)
