"""Shared fixtures: small archives in the real layouts, generated once per test session."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from dpmedbench.data import synth

REPO = Path(__file__).resolve().parents[1]


def clone(tmp_path: Path) -> Path:
    """A copy of what a clone holds: Snakefile, configs, workflow, envs, profiles."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for name in ("config", "workflow", "envs", "profiles"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.fixture(scope="session")
def chest_kaggle_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.make_chest_archive(
        tmp_path_factory.mktemp("chest") / "chest-xray-pneumonia.zip",
        layout="kaggle",
        patients_per_class=10,
        test_per_class=4,
        image_sides=(40, 90),
        seed=1,
    )


@pytest.fixture(scope="session")
def chest_mendeley_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.make_chest_archive(
        tmp_path_factory.mktemp("chest") / "ChestXRay2017.zip",
        layout="mendeley",
        patients_per_class=10,
        test_per_class=4,
        image_sides=(40, 90),
        seed=2,
    )


@pytest.fixture(scope="session")
def aptos_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.make_aptos_archive(
        tmp_path_factory.mktemp("aptos") / "aptos2019-blindness-detection.zip",
        images_per_grade=10,
        unlabelled_test_images=3,
        image_sides=(40, 90),
        seed=3,
    )


def extract(zip_path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
    return dest


def rewrite_zip(src: Path, dest: Path, replace: dict[str, bytes | None]) -> Path:
    """Copy ``src`` to ``dest`` replacing (or, with ``None``, dropping) some members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            if info.filename in replace:
                if replace[info.filename] is not None:
                    zout.writestr(info, replace[info.filename])
            else:
                zout.writestr(info, zin.read(info.filename))
    return dest
