"""Training on tiny arrays: every mechanism, kill-and-resume, DP-SGD calibration and per-example gradients."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dpmedbench.models import build_resnet18
from dpmedbench.synth import chest_image
from dpmedbench.train import CellConfig, DPSettings, TrainingError, train_cell
from dpmedbench.weights import WeightsError, check_weights

from .conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def make_split(folder: Path, name: str, n: int, *, side: int = 32, classes: int = 2, dtype=np.uint8, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = np.stack([chest_image(rng, side, side, bool(lab)) for lab in labels])[..., None]
    if dtype != np.uint8:
        images = (images / 255.0).astype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", images)
    with open(folder / f"{name}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "source", "label", "class_name", "group", "origin"])
        for i, lab in enumerate(labels):
            writer.writerow([i, f"img{i}.jpeg", lab, ["NORMAL", "PNEUMONIA"][lab % 2], f"p{i}", name])
    return str(folder / f"{name}.npy"), str(folder / f"{name}.csv")


def read_history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    return {s: make_split(folder, s, n, seed=i) for i, (s, n) in enumerate((("train", 24), ("val", 8), ("test", 8)))}


def tiny(mechanism: str, **kw) -> CellConfig:
    dp = DPSettings(max_physical_batch=8, **kw.pop("dp", {}))
    base = dict(
        dataset="chest_xray",
        mechanism=mechanism,
        beta=1.0,
        seed=0,
        epochs=2,
        batch_size=8,
        crop=28,
        pretrained=False,
        device="cpu",
        dpsgd=dp,
        max_physical_batch=6,
    )
    return CellConfig(**{**base, **kw})


@pytest.mark.parametrize("mechanism", ["none", "ldp", "dpsgd"])
def test_every_mechanism_trains_and_writes_its_outputs(data, tmp_path, mechanism):
    privacy = tmp_path / "privacy.json"
    privacy.write_text(
        json.dumps(
            {
                "mechanism": "laplace_pixel",
                "epsilon": 1.0,
                "epsilon_per_value": 1.0,
                "epsilon_per_image": 784,
                "delta": 0,
                "accountant": "Laplace",
                "formal_guarantee": True,
            }
        )
    )
    metrics = train_cell(
        tiny(mechanism),
        train=data["train"],
        val=data["val"],
        test=data["test"],
        out_dir=tmp_path / "cell",
        val_clean=data["val"] if mechanism == "ldp" else None,
        ldp_privacy=privacy if mechanism == "ldp" else None,
    )
    files = sorted(p.name for p in (tmp_path / "cell").iterdir())
    assert files == ["best.pt", "history.csv", "last.pt", "metrics.json"]
    history = read_history(tmp_path / "cell" / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert metrics == json.loads((tmp_path / "cell" / "metrics.json").read_text())
    assert 1 <= metrics["best_epoch"] <= 2 and 0 <= metrics["test_acc"] <= 1
    assert metrics["test_acc_max"] >= metrics["test_acc"]
    assert metrics["versions"]["torch"] == torch.__version__ and metrics["device"] == "cpu"
    best = torch.load(tmp_path / "cell" / "best.pt", weights_only=True)
    model = build_resnet18(num_classes=2, weights=None, norm=best["norm"])
    model.load_state_dict(best["model"])
    if mechanism == "dpsgd":
        p = metrics["privacy"]
        assert best["norm"] == "group" and p["accountant"] == "prv" and p["delta"] == 1e-4
        assert p["epsilon"] <= 1.0 + 0.02 and p["epsilon"] > 0.8  # calibrated to epsilon = 1/beta = 1
        assert p["epsilon_rdp"] >= p["epsilon_prv"]
        assert p["steps"] == 2 * 3 and p["sample_rate"] == 8 / 24
        assert history[-1]["epsilon_rdp"] and float(history[0]["epsilon_rdp"]) < float(history[1]["epsilon_rdp"])
    elif mechanism == "ldp":
        assert metrics["privacy"]["epsilon_per_image"] == 784 and metrics["val_clean_acc"] is not None
    else:
        assert metrics["privacy"]["epsilon"] is None


def test_same_seed_same_results(data, tmp_path):
    a = train_cell(tiny("none"), train=data["train"], val=data["val"], test=data["test"], out_dir=tmp_path / "a")
    b = train_cell(tiny("none"), train=data["train"], val=data["val"], test=data["test"], out_dir=tmp_path / "b")
    history = [read_history(tmp_path / d / "history.csv") for d in ("a", "b")]
    for rows in history:
        for row in rows:
            row.pop("seconds")
    assert history[0] == history[1] and a["test_acc"] == b["test_acc"]
    ma, mb = (torch.load(tmp_path / d / "last.pt", weights_only=False)["model"] for d in ("a", "b"))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


_RUNNER = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {scripts!r})
from dpmedbench.train import CellConfig, DPSettings, train_cell, exit_on_interrupt
cfg = CellConfig(**json.loads({config!r}))
cfg = CellConfig(**{{**cfg.__dict__, "dpsgd": DPSettings(**cfg.dpsgd)}})
data = json.loads({data!r})
exit_on_interrupt(train_cell, config=cfg, train=data["train"], val=data["val"], test=data["test"],
                  out_dir={out!r}, fingerprint="fp")
"""


def _run(config: CellConfig, data: dict, out: Path) -> subprocess.Popen:
    from dataclasses import asdict

    code = _RUNNER.format(
        scripts=str(REPO / "workflow" / "scripts"),
        config=json.dumps(asdict(config)),
        data=json.dumps(data),
        out=str(out),
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )


@pytest.mark.parametrize("mechanism", ["none", "dpsgd"])
def test_sigterm_then_rerun_equals_an_uninterrupted_run(data, tmp_path, mechanism):
    config = tiny(mechanism, epochs=4)
    whole = _run(config, data, tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()

    killed = _run(config, data, tmp_path / "killed")
    resume = tmp_path / "killed" / "resume.pt"
    deadline = time.monotonic() + 300
    while not resume.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "training finished before it could be interrupted"
    killed.send_signal(signal.SIGTERM)
    assert killed.wait(timeout=300) == 143, killed.stderr.read()
    assert not (tmp_path / "killed" / "metrics.json").exists(), "an interrupted run must not write its outputs"
    saved_epoch = torch.load(resume, weights_only=False)["epoch"]
    assert 1 <= saved_epoch < 4

    rerun = _run(config, data, tmp_path / "killed")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    assert f"resuming after epoch {saved_epoch}" in rerun.stderr.read()  # it resumed, not started afresh
    assert not resume.exists()
    rows = [read_history(tmp_path / d / "history.csv") for d in ("whole", "killed")]
    for r in rows:
        for row in r:
            row.pop("seconds")
    assert rows[0] == rows[1]
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in ("whole", "killed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["accountant"] == b["accountant"]


def test_resume_state_with_other_settings_is_ignored(data, tmp_path):
    train_cell(
        tiny("none", epochs=1),
        train=data["train"],
        val=data["val"],
        test=data["test"],
        out_dir=tmp_path,
        fingerprint="old",
    )
    torch.save({"fingerprint": "old", "epoch": 1}, tmp_path / "resume.pt")
    (tmp_path / "resume_best.pt").write_bytes(b"")
    metrics = train_cell(
        tiny("none", epochs=2),
        train=data["train"],
        val=data["val"],
        test=data["test"],
        out_dir=tmp_path,
        fingerprint="new",
    )
    assert len(read_history(tmp_path / "history.csv")) == 2 and metrics["best_epoch"] in (1, 2)


def test_one_class_and_nan_inputs_are_refused(tmp_path, data):
    one = make_split(tmp_path / "one", "train", 10, classes=1)
    with pytest.raises(TrainingError, match=r"train.npy: the training split holds only class \[0\]"):
        train_cell(tiny("none"), train=one, val=data["val"], test=data["test"], out_dir=tmp_path / "o")
    nan_train = make_split(tmp_path / "nan", "train", 12, dtype=np.float16)
    arr = np.load(nan_train[0])
    arr[5, 3, 3, 0] = np.nan
    np.save(nan_train[0], arr)
    with pytest.raises(TrainingError, match=r"train.npy: image 5 holds NaN or infinite values"):
        train_cell(tiny("ldp"), train=nan_train, val=data["val"], test=data["test"], out_dir=tmp_path / "n")
    assert not (tmp_path / "n" / "metrics.json").exists()


def test_weights_are_loaded_safely_and_bad_files_refused(tmp_path):
    state = build_resnet18(num_classes=1000, weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_resnet18(num_classes=2, weights=tmp_path / "resnet18.pth")
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    assert model.fc.out_features == 2
    with pytest.raises(WeightsError, match="ImageNet weights not found.*model.pretrained: false"):
        build_resnet18(num_classes=2, weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(WeightsError, match="junk.pth: not torchvision's ResNet-18 state dict"):
        build_resnet18(num_classes=2, weights=tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="does not start with f37072fd"):
        check_weights(tmp_path / "resnet18.pth")


def test_frozen_batchnorm_keeps_imagenet_statistics(tmp_path):
    state = build_resnet18(num_classes=1000, weights=None).state_dict()
    state["bn1.running_mean"] = torch.arange(64, dtype=torch.float32)
    torch.save(state, tmp_path / "w.pth")
    model = build_resnet18(num_classes=2, weights=tmp_path / "w.pth", norm="frozen")
    assert torch.equal(model.bn1.running_mean, torch.arange(64, dtype=torch.float32))
    assert not any("bn" in n for n, p in model.named_parameters())  # nothing in them is trained


class _Payload:
    """A pickle that, if unpickled, creates a file: what a crafted resume.pt could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_resume_file_runs_nothing_and_training_starts_afresh(data, tmp_path, caplog):
    out, marker = tmp_path / "cell", tmp_path / "pwned"
    out.mkdir()
    torch.save({"fingerprint": "fp", "epoch": 1, "model": _Payload(marker)}, out / "resume.pt")
    torch.save({"x": _Payload(marker)}, out / "resume_best.pt")
    assert not marker.exists()
    with caplog.at_level("WARNING"):
        metrics = train_cell(
            tiny("none"), train=data["train"], val=data["val"], test=data["test"], out_dir=out, fingerprint="fp"
        )
    assert not marker.exists(), "unpickling the resume file ran its payload"
    assert "cannot be read safely" in caplog.text and metrics["best_epoch"] >= 1
    assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2]


def test_a_resume_file_from_another_kind_of_device_is_not_used(data, tmp_path, caplog):
    from dpmedbench.checkpoint import RunState, load_resume, save_resume
    from dpmedbench.plans import Plan, Streams

    model = build_resnet18(num_classes=2, weights=None, norm="batch")
    plan = Plan(tiny("none"), n_train=24, streams=Streams(0), ldp_privacy=None)
    plan.attach(model)
    state = RunState()
    state.record({"epoch": 1, "val_acc": 0.5}, model)
    save_resume(tmp_path, state, model, plan, "fp")
    assert load_resume(tmp_path, fingerprint="fp", model=model, plan=plan, device=torch.device("cpu")).epoch == 1
    saved = torch.load(tmp_path / "resume.pt", weights_only=True)
    torch.save({**saved, "device": "cuda"}, tmp_path / "resume.pt")
    with caplog.at_level("WARNING"):
        fresh = load_resume(tmp_path, fingerprint="fp", model=model, plan=plan, device=torch.device("cpu"))
    assert fresh.epoch == 0 and "another kind of device" in caplog.text
