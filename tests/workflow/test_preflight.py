"""The pre-flight check: every need of a configured run, checked in seconds, with the fix for each failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dpmedbench import preflight
from dpmedbench.core.config import validate_config

from ..conftest import REPO


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, no Kaggle credentials, no GPU."""
    monkeypatch.setattr(preflight, "reachable", lambda url, timeout=3.0: False)
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / ".kaggle"))


def _rows(config: dict, root: Path) -> dict[str, preflight.Row]:
    return {r.need: r for r in preflight.run_checks(validate_config(config), root)}


def test_the_demo_is_ready_anywhere(offline, tmp_path, capsys):
    assert preflight.main(["--configfile", str(REPO / "config" / "demo.yaml"), "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Ready to run." in out and "✗" not in out and "✓ chest_xray: data (demo)" in out


def test_the_papers_setup_offline_lists_every_missing_need_with_its_fix(offline, tmp_path, capsys):
    rows = _rows({}, tmp_path)
    for dataset in ("chest_xray", "aptos"):
        row = rows[f"{dataset}: data (kaggle)"]
        assert row.status == "fail" and "KAGGLE_API_TOKEN" in row.fix and f"datasets.{dataset}.source: local" in row.fix
    weights = rows["ImageNet weights"]
    assert weights.status == "fail" and "model.weights: <its path>" in weights.fix
    assert "model.pretrained: false" in weights.fix
    assert preflight.main(["--configfile", str(REPO / "config.yaml"), "--root", str(tmp_path)]) == 1
    assert "3 problem(s) to fix" in capsys.readouterr().out


def test_fetched_data_and_local_weights_need_no_network(offline, tmp_path):
    for dataset in ("chest_xray", "aptos"):
        (tmp_path / "data" / "raw" / dataset).mkdir(parents=True)
        (tmp_path / "data" / "raw" / dataset / "source.json").write_text("{}")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not the weights")
    rows = _rows({"model": {"weights": str(weights)}}, tmp_path)
    assert rows["chest_xray: data (kaggle)"].status == rows["aptos: data (kaggle)"].status == "ok"
    assert rows["ImageNet weights"].status == "fail" and "SHA-256" in rows["ImageNet weights"].detail
    missing = _rows({"model": {"weights": str(tmp_path / "nowhere.pth")}}, tmp_path)["ImageNet weights"]
    assert missing.status == "fail" and "does not exist" in missing.detail


def test_disk_plan_counts_every_stage_and_fails_when_short(offline, tmp_path, monkeypatch):
    config = validate_config({})
    plan = preflight.planned_bytes(config, tmp_path)
    # 5,856 greyscale + 3,662 RGB images at 256 px; float16 copies of train + val at 3 betas; 14 cells
    assert plan["prepared arrays"] == pytest.approx((5856 + 3662 * 3) * 256 * 256)
    assert plan["Local-DP copies"] == pytest.approx(2 * 3 * 256 * 256 * (5232 + 0.8 * 3662 * 3))
    assert plan["checkpoints"] == pytest.approx(14 * preflight.CELL_BYTES)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100e9, 99e9, 1e9))
    row = _rows({}, tmp_path)["free disk"]
    assert row.status == "fail" and "free at least" in row.fix


def test_a_gpu_asked_for_but_absent_is_a_failure(offline, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    row = _rows({"device": "cuda"}, tmp_path)["device: cuda"]
    assert row.status == "fail" and "device: auto" in row.fix


def test_a_bad_configuration_is_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"betas": "many"}))
    assert preflight.main(["--configfile", str(bad), "--root", str(tmp_path)]) == 1
    assert "✗ configuration" in capsys.readouterr().out


def test_the_noise_key_is_checked(tmp_path):
    """Missing: the first run creates it; there and private: its id; readable by others: a failure with the fix."""
    from dpmedbench.core.noisekey import create_key, key_id, load_key

    assert (
        _rows({}, tmp_path)["noise key"].status == "info"
        and "first run creates it" in _rows({}, tmp_path)["noise key"].detail
    )
    key = tmp_path / "data" / "secret" / "noise.key"
    create_key(key)
    assert (
        _rows({}, tmp_path)["noise key"].status == "ok"
        and key_id(load_key(key)) in _rows({}, tmp_path)["noise key"].detail
    )
    key.chmod(0o644)
    row = _rows({}, tmp_path)["noise key"]
    assert row.status == "fail" and "chmod 600" in row.detail
    assert _rows({"mechanisms": ["none"]}, tmp_path)["noise key"].status == "info"
