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
from dpmedbench.core.noisekey import key_id
from dpmedbench.data.weights import WeightsError, check_weights
from dpmedbench.training.cell import CellConfig, TrainingError, train_cell
from dpmedbench.training.models import build_resnet18

from ..conftest import REPO
from ..support.cells import TEST_KEY, make_split, tiny

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def read_history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    return {s: make_split(folder, s, n, seed=i) for i, (s, n) in enumerate((("train", 24), ("val", 8), ("test", 8)))}


@pytest.mark.parametrize("mechanism", ["none", "ldp-laplace_pixel", "dpsgd"])
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
        val_clean=data["val"] if mechanism == "ldp-laplace_pixel" else None,
        ldp_privacy=privacy if mechanism == "ldp-laplace_pixel" else None,
        key=TEST_KEY,
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
        # Changing pixels of one image replaces it: the replace-one epsilon, between the add/remove one and the
        # RDP group-of-2 bound.
        assert p["epsilon_m_pixels"] == p["epsilon_replace"] and "replace-one" in p["epsilon_replace_derivation"]
        assert p["epsilon"] < p["epsilon_replace"] < p["epsilon_replace_group_rdp"]
    elif mechanism == "ldp-laplace_pixel":
        assert metrics["privacy"]["epsilon_per_image"] == 784 and metrics["val_clean_acc"] is not None
        # what the cell computes from clean private images is listed outside the copy's guarantee
        assert {"val_clean", "clean_members"} <= set(metrics["privacy"]["outside_guarantee"])
    else:
        assert metrics["privacy"]["epsilon"] is None


def test_same_seed_same_results(data, tmp_path):
    a = train_cell(
        tiny("none"), train=data["train"], val=data["val"], test=data["test"], out_dir=tmp_path / "a", key=TEST_KEY
    )
    b = train_cell(
        tiny("none"), train=data["train"], val=data["val"], test=data["test"], out_dir=tmp_path / "b", key=TEST_KEY
    )
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
from dpmedbench.training.cell import CellConfig, DPSettings, train_cell, exit_on_interrupt
cfg = CellConfig(**json.loads({config!r}))
cfg = CellConfig(**{{**cfg.__dict__, "dpsgd": DPSettings(**cfg.dpsgd)}})
data = json.loads({data!r})
exit_on_interrupt(train_cell, config=cfg, train=data["train"], val=data["val"], test=data["test"],
                  out_dir={out!r}, fingerprint="fp", key=bytes(range(32)))
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
        key=TEST_KEY,
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
        key=TEST_KEY,
    )
    assert len(read_history(tmp_path / "history.csv")) == 2 and metrics["best_epoch"] in (1, 2)


def test_one_class_and_nan_inputs_are_refused(tmp_path, data):
    one = make_split(tmp_path / "one", "train", 10, classes=1)
    with pytest.raises(TrainingError, match=r"train.npy: the training split holds only class \[0\]"):
        train_cell(tiny("none"), train=one, val=data["val"], test=data["test"], out_dir=tmp_path / "o", key=TEST_KEY)
    nan_train = make_split(tmp_path / "nan", "train", 12, dtype=np.float16)
    arr = np.load(nan_train[0])
    arr[5, 3, 3, 0] = np.nan
    np.save(nan_train[0], arr)
    with pytest.raises(TrainingError, match=r"train.npy: image 5 holds NaN or infinite values"):
        train_cell(
            tiny("ldp-laplace_pixel"),
            train=nan_train,
            val=data["val"],
            test=data["test"],
            out_dir=tmp_path / "n",
            key=TEST_KEY,
        )
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
            tiny("none"),
            train=data["train"],
            val=data["val"],
            test=data["test"],
            out_dir=out,
            fingerprint="fp",
            key=TEST_KEY,
        )
    assert not marker.exists(), "unpickling the resume file ran its payload"
    assert "cannot be read safely" in caplog.text and metrics["best_epoch"] >= 1
    assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2]


def test_a_resume_file_from_another_kind_of_device_is_not_used(data, tmp_path, caplog):
    from dpmedbench.training.checkpoint import RunState, load_resume, save_resume
    from dpmedbench.training.plans import Plan, Streams, TrainingData

    model = build_resnet18(num_classes=2, weights=None, norm="batch")
    plan = Plan(tiny("none"), data=TrainingData(n=24), streams=Streams("chest_xray", "none", 0.0, 0))
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


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=True)["model"]


def _dp_cell(data: dict, out: Path, **kw) -> dict:
    dp = {"noise_multiplier": 1.0, **kw.pop("dp", {})}
    return train_cell(
        tiny("dpsgd", dp=dp, **kw), train=data["train"], val=data["val"], test=data["test"], out_dir=out, key=TEST_KEY
    )


def test_cells_that_differ_only_in_beta_share_no_randomness(data, tmp_path):
    """The same given noise multiplier at beta 1 and 2: different noise, batches and initial weights."""
    from dpmedbench.training.plans import Streams, TrainingData, plan_for

    _dp_cell(data, tmp_path / "b1", beta=1.0)
    _dp_cell(data, tmp_path / "b2", beta=2.0)
    w1, w2 = _weights(tmp_path / "b1"), _weights(tmp_path / "b2")
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    draws, masks = [], []
    for beta in (1.0, 2.0):
        config = tiny("dpsgd", beta=beta, dp={"noise_multiplier": 1.0})
        plan = plan_for("dpsgd")(
            config, data=TrainingData(n=24), streams=Streams("chest_xray", "dpsgd", beta, 0, key=TEST_KEY)
        )
        plan.attach(build_resnet18(num_classes=2, weights=None, norm="group"))
        masks.append(torch.cat(plan.start_epoch(1)))
        draws.append(torch.randn(20_000, generator=plan.noise))
    assert abs(float(torch.corrcoef(torch.stack(draws))[0, 1])) < 0.05  # independent: |r| ~ 0.007
    assert not torch.equal(masks[0], masks[1])


def test_secret_noise_differs_between_runs_and_is_recorded_nowhere(data, tmp_path):
    a = _dp_cell(data, tmp_path / "a", dp={"noise_source": "os"})
    _dp_cell(data, tmp_path / "b", dp={"noise_source": "os"})
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    assert a["privacy"]["randomness"].startswith("os:") and "secrets" in a["privacy"]["randomness"]
    keyed = _dp_cell(data, tmp_path / "k")
    assert keyed["privacy"]["randomness"].startswith("keyed:") and keyed["privacy"]["key_id"] == key_id(TEST_KEY)
    assert keyed["privacy"]["formal_guarantee"] and keyed["privacy"]["noise_source"] == "keyed"
    assert TEST_KEY.hex() not in (tmp_path / "k" / "metrics.json").read_text()


def test_train_metrics_of_dp_sgd_are_marked_or_not_published(data, tmp_path):
    exact = _dp_cell(data, tmp_path / "exact")
    assert set(exact["privacy"]["outside_guarantee"]) == {"train_loss", "train_acc", "audit", "counts"}
    rows = read_history(tmp_path / "exact" / "history.csv")
    assert all(r["train_outside_guarantee"] == "True" and r["train_acc"] for r in rows)
    hidden = _dp_cell(data, tmp_path / "none", dp={"train_metrics": "none"})
    assert hidden["train_acc"] is None and set(hidden["privacy"]["outside_guarantee"]) == {"audit", "counts"}
    rows = read_history(tmp_path / "none" / "history.csv")
    assert all(r["train_acc"] == r["train_loss"] == r["train_outside_guarantee"] == "" for r in rows)
    baseline = train_cell(
        tiny("none"), train=data["train"], val=data["val"], test=data["test"], out_dir=tmp_path / "n", key=TEST_KEY
    )
    assert baseline["train_acc"] is not None and "outside_guarantee" not in baseline["privacy"]


def _patient_data(tmp_path: Path) -> dict:
    """Splits whose training images belong to 9 patients with 1 to 4 images each, and an info.json that says the
    groups are patient ids (a Kaggle chest X-ray archive)."""
    data = {s: make_split(tmp_path, s, n, seed=i) for i, (s, n) in enumerate((("train", 24), ("val", 8), ("test", 8)))}
    sizes = [1, 2, 3, 4, 1, 2, 3, 4, 4]
    groups = [f"person{p}" for p, k in enumerate(sizes) for _ in range(k)]
    with open(data["train"][1], newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(data["train"][1], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "group": group} for row, group in zip(rows, groups, strict=True))
    (tmp_path / "info.json").write_text(json.dumps({"source": {"source": "kaggle", "path": "chest.zip"}}))
    return {**data, "info": str(tmp_path / "info.json")}


def test_image_unit_records_what_a_patient_gets_by_group_privacy(tmp_path):
    data = _patient_data(tmp_path)
    m = train_cell(
        tiny("dpsgd", dp={"noise_multiplier": 2.0}),
        train=data["train"],
        val=data["val"],
        test=data["test"],
        out_dir=tmp_path / "cell",
        data_info=data["info"],
        key=TEST_KEY,
    )
    p = m["privacy"]
    assert p["unit"] == "image" and p["images_per_patient"]["largest"] == 4 and p["images_per_patient"]["groups"] == 9
    assert p["epsilon_patient"] > p["epsilon"] and "group privacy" in p["epsilon_patient_conversion"]
    without_ids = _dp_cell({k: data[k] for k in ("train", "val", "test")}, tmp_path / "no-ids")
    assert without_ids["privacy"]["epsilon_patient"] is None and without_ids["privacy"]["epsilon_patient_reason"]


def test_patient_unit_is_refused_without_patient_ids_or_with_bk(data, tmp_path):
    with pytest.raises(TrainingError, match="needs patient ids"):
        _dp_cell(data, tmp_path / "a", dp={"privacy_unit": "patient", "grad_sample_mode": "ew"})
    patients = _patient_data(tmp_path / "p")
    with pytest.raises(TrainingError, match="'bk' clips per image"):
        train_cell(
            tiny("dpsgd", dp={"privacy_unit": "patient"}),
            train=patients["train"],
            val=patients["val"],
            test=patients["test"],
            out_dir=tmp_path / "b",
            data_info=patients["info"],
            key=TEST_KEY,
        )


@pytest.mark.parametrize("mode", ["ew", "hooks", "vmap"])
def test_patient_unit_clips_each_patients_summed_gradient(tmp_path, mode):
    """sigma = 0, float64: the update is the sum over sampled patients of each patient's summed gradient clipped
    to C, over the expected number of patients, exactly as a one-patient-at-a-time loop computes it; physical
    chunks never split a patient."""
    import copy

    import torch.nn.functional as F
    from dpmedbench.training.plans import RunningStats, Streams, TrainingData, plan_for

    groups = np.array(["a", "a", "a", "b", "c", "c", "d", "e", "e", "e"], dtype=object)
    config = tiny(
        "dpsgd",
        lr=0.0,
        batch_size=3,
        dp={
            "noise_multiplier": 0.0,
            "privacy_unit": "patient",
            "grad_sample_mode": mode,
            "max_grad_norm": 0.05,
            "max_physical_batch": 4,
        },
    )
    data = TrainingData(n=len(groups), groups=groups, groups_are_patients=True)
    plan = plan_for("dpsgd")(config, data=data, streams=Streams("chest_xray", "dpsgd", 1.0, 0, key=TEST_KEY))
    torch.manual_seed(0)
    base = build_resnet18(num_classes=2, weights=None, norm="group").double()
    model = copy.deepcopy(base)
    plan.attach(model)
    x = torch.randn(len(groups), 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0, 1])
    batch = torch.arange(len(groups))  # every patient sampled: a, b, c, d, e
    assert [len(c) for c in plan.batches.chunks(batch, 4)] == [4, 3, 3]  # a+b, c+d, e
    plan.step(batch, lambda idx: (x[idx], y[idx]), RunningStats(torch.device("cpu")))
    params = [p for p in base.parameters() if p.requires_grad]
    expected = [torch.zeros_like(p) for p in params]
    clipped = 0
    for patient in np.unique(groups):
        base.zero_grad()
        idx = torch.as_tensor(np.flatnonzero(groups == patient))
        F.cross_entropy(base(x[idx]), y[idx], reduction="sum").backward()
        norm = torch.sqrt(sum((p.grad**2).sum() for p in params)).item()
        clipped += norm > 0.05
        for e, p in zip(expected, params, strict=True):
            e += min(1.0, 0.05 / (norm + 1e-6)) * p.grad
    assert clipped >= 3
    got = [p.grad for p in model.parameters() if p.requires_grad]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g * plan.batches.expected_batch, e, rtol=1e-9, atol=1e-12)
    assert plan.batches.expected_batch == pytest.approx(3 / 10 * 5)


def test_patient_unit_epsilon_matches_an_independent_accountant(tmp_path):
    """The record's q, sigma and steps give its epsilon under Google's dp_accounting (PLD and RDP)."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    data = _patient_data(tmp_path)
    m = train_cell(
        tiny("dpsgd", dp={"privacy_unit": "patient", "grad_sample_mode": "ew"}),
        train=data["train"],
        val=data["val"],
        test=data["test"],
        out_dir=tmp_path / "cell",
        data_info=data["info"],
        key=TEST_KEY,
    )
    p = m["privacy"]
    assert p["unit"] == "patient" and p["sampled_units"] == "patients" and p["epsilon_patient"] == p["epsilon"]
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(p["sample_rate"], dp_accounting.GaussianDpEvent(p["noise_multiplier"])),
        p["steps"],
    )
    pld = pld_privacy_accountant.PLDAccountant().compose(event).get_epsilon(p["delta"])
    rdp = rdp_privacy_accountant.RdpAccountant().compose(event).get_epsilon(p["delta"])
    assert abs(p["epsilon"] - pld) <= 0.03 * pld + 0.01, (p["epsilon"], pld)
    assert abs(p["epsilon_rdp"] - rdp) <= 0.01 * rdp, (p["epsilon_rdp"], rdp)
    assert p["epsilon"] <= 1.0 + 0.02  # calibrated to 1 / beta at the patient unit


def test_secret_noise_survives_a_kill_and_resume(data, tmp_path):
    config = tiny("dpsgd", epochs=4, dp={"noise_source": "os"})
    killed = _run(config, data, tmp_path)
    resume = tmp_path / "resume.pt"
    deadline = time.monotonic() + 300
    while not resume.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "training finished before it could be interrupted"
    killed.send_signal(signal.SIGTERM)
    assert killed.wait(timeout=300) == 143, killed.stderr.read()
    saved_epoch = torch.load(resume, weights_only=True)["epoch"]
    rerun = _run(config, data, tmp_path)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    assert f"resuming after epoch {saved_epoch}" in rerun.stderr.read()
    assert [int(r["epoch"]) for r in read_history(tmp_path / "history.csv")] == [1, 2, 3, 4]
    assert not resume.exists()  # the only place the generator state ever was
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["privacy"]["steps"] == 4 * 3 and metrics["privacy"]["randomness"].startswith("os:")


def _replace_one_epsilon_by_fft(q: float, sigma: float, steps: int, delta: float, step: float = 5e-4) -> float:
    """An independent replace-one accountant: the privacy loss of one Poisson-subsampled Gaussian step under
    replacement, P = (1-q) N(0, s^2) + q N(1, s^2) against Q = (1-q) N(0, s^2) + q N(-1, s^2), discretised on a
    fine grid, composed ``steps`` times by FFT, and delta(eps) = E_P[(1 - e^(eps - L))+] solved for eps."""
    from scipy import optimize
    from scipy import stats as st

    x = np.linspace(-14 * sigma, 14 * sigma, 400_001)
    p = (1 - q) * st.norm.pdf(x, 0, sigma) + q * st.norm.pdf(x, 1, sigma)
    loss = np.log(p) - np.log((1 - q) * st.norm.pdf(x, 0, sigma) + q * st.norm.pdf(x, -1, sigma))
    index = np.rint(loss / step).astype(np.int64)
    pmf = np.bincount(index - index.min(), weights=p / p.sum())
    size = 1 << int(np.ceil(np.log2(len(pmf) * steps)))
    total = np.clip(np.fft.irfft(np.fft.rfft(pmf, size) ** steps, size)[: (len(pmf) - 1) * steps + 1], 0, None)
    values = (np.arange(len(total)) + index.min() * steps) * step

    def excess(eps: float) -> float:
        above = values > eps
        return float(np.sum(total[above] * (1 - np.exp(eps - values[above]))) - delta)

    return optimize.brentq(excess, 0, 50)


@pytest.mark.parametrize(("q", "sigma", "steps"), [(0.05, 1.5, 100), (128 / 4700, 3.867, 1850)])
def test_the_replace_one_epsilon_matches_an_independent_composition(q, sigma, steps):
    """The records' epsilon_replace (dp_accounting's PLD, replace-one) against a composition written here from
    the dominating pair, within 5 %; the second case is the Kermany grid at beta = 1 (2.11, where the RDP
    group-of-2 bound says about 3)."""
    from dpmedbench.training.dpsgd.accounting import group_epsilon, replace_epsilon

    history = [(sigma, q, steps)]
    ours = replace_epsilon(history, delta=1e-4)
    assert ours == pytest.approx(_replace_one_epsilon_by_fft(q, sigma, steps, 1e-4), rel=0.05)
    assert ours < group_epsilon(history, delta=1e-4, group_size=2)


def test_a_seeded_dp_sgd_cell_claims_no_guarantee(data, tmp_path):
    """noise_source 'seeded' (noise and Poisson masks from the published seed): the same training, but no epsilon
    holds; the accountant's figures are kept as *_if_seed_secret, and a keyed cell without the key cannot start."""
    seeded = _dp_cell(data, tmp_path / "s", dp={"noise_source": "seeded"})["privacy"]
    assert (
        seeded["formal_guarantee"] is False
        and seeded["epsilon"] is None
        and "published seed" in seeded["epsilon_reason"]
    )
    assert seeded["epsilon_if_seed_secret"] > 0 and seeded["epsilon_replace"] is None
    assert seeded["epsilon_replace_if_seed_secret"] > seeded["epsilon_if_seed_secret"]
    assert seeded["key_id"] is None and seeded["randomness"].startswith("seeded:")
    assert all(not r["epsilon_rdp"] for r in read_history(tmp_path / "s" / "history.csv"))  # nor per epoch
    from dpmedbench.core.noisekey import NoiseKeyError

    with pytest.raises(NoiseKeyError, match="needs the noise key"):
        train_cell(tiny("dpsgd"), train=data["train"], val=data["val"], test=data["test"], out_dir=tmp_path / "n")
    assert not (tmp_path / "n" / "metrics.json").exists()


@pytest.mark.parametrize("mechanism", ["none", "dpsgd"])
def test_a_diverged_run_stops_and_publishes_nothing(data, tmp_path, mechanism):
    """A non-finite loss (here from a NaN learning rate that bypassed the configuration's checks) stops the cell
    after the epoch with a named error; no declared output appears, so no 50 % 'result' is ever recorded."""
    with pytest.raises(TrainingError, match=r"epoch 1: \w+_loss is nan: training diverged"):
        train_cell(tiny(mechanism, lr=float("nan")), train=data["train"], val=data["val"], test=data["test"],
                   out_dir=tmp_path / "cell", key=TEST_KEY)  # fmt: skip
    assert not (tmp_path / "cell" / "metrics.json").exists() and not (tmp_path / "cell" / "best.pt").exists()


@pytest.mark.parametrize("mechanism", ["none", "dpsgd"])
def test_bf16_and_channels_last_cells_train_and_say_so(data, tmp_path, mechanism):
    """bf16 autocast changes the numbers (a result setting, recorded); channels-last changes none of them."""
    runs = {}
    for name, kw in {"plain": {}, "bf16": {"precision": "bf16"}, "nhwc": {"channels_last": True}}.items():
        runs[name] = train_cell(
            tiny(mechanism, dp={"noise_multiplier": 1.0}, **kw),
            train=data["train"],
            val=data["val"],
            test=data["test"],
            out_dir=tmp_path / name,
            key=TEST_KEY,
        )
    assert runs["bf16"]["config"]["precision"] == "bf16" and runs["nhwc"]["config"]["channels_last"] is True
    loss = {name: [float(r["train_loss"]) for r in read_history(tmp_path / name / "history.csv")] for name in runs}
    assert loss["bf16"] != loss["plain"]
    if mechanism == "dpsgd":  # GroupNorm: the rounding differences stay small over two epochs
        assert loss["nhwc"] == pytest.approx(loss["plain"], rel=1e-3)
    # (BatchNorm on batches of 6 from a random start amplifies a 1e-5 rounding difference to a different run
    # within a few steps, as another device's rounding does: speed-only, like `device`.)
