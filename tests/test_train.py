"""Training on tiny arrays: every mechanism, kill-and-resume, DP-SGD calibration and per-example gradients."""

from __future__ import annotations

import copy
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
import torch.nn.functional as F
from dpmedbench.dpsgd import GRAD_SAMPLE_MODES, calibrate_noise, epsilon, make_grad_sampler, make_optimizer
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
import json, sys
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


def test_calibrated_noise_meets_the_target():
    for beta in (1.0, 2.0, 4.0):
        sigma = calibrate_noise(
            target_epsilon=1 / beta, delta=1e-4, sample_rate=128 / 4700, steps=37 * 50, accountant="prv"
        )
        eps = epsilon([(sigma, 128 / 4700, 37 * 50)], delta=1e-4, accountant="prv")
        assert 1 / beta - 0.02 < eps <= 1 / beta + 1e-9, (beta, sigma, eps)
        assert epsilon([(sigma, 128 / 4700, 37 * 50)], delta=1e-4, accountant="rdp") > eps


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_with_zero_noise_every_mode_clips_like_the_reference(mode):
    """sigma = 0: the update must be the sum of per-example gradients, each clipped to C, over the expected
    batch size, exactly as a one-example-at-a-time loop computes it (float64), across two physical chunks."""
    torch.manual_seed(0)
    base = build_resnet18(num_classes=3, weights=None, norm="group").double()
    x = torch.randn(6, 3, 20, 20, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    clip, expected_batch = 0.5, 8
    ref = copy.deepcopy(base)
    params = [p for p in ref.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    clipped = 0
    for i in range(len(x)):
        ref.zero_grad()
        F.cross_entropy(ref(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in params]
        norm = torch.sqrt(sum((g**2).sum() for g in grads)).item()
        clipped += norm > clip
        for t, g in zip(total, grads, strict=True):
            t += min(1.0, clip / (norm + 1e-6)) * g
    assert clipped >= 3, "the test must exercise clipping"
    model = copy.deepcopy(base)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    _, sample = make_grad_sampler(model, mode, max_grad_norm=clip)
    opt = make_optimizer(
        model,
        lr=1.0,
        momentum=0,
        weight_decay=0,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=expected_batch,
        generator=torch.Generator().manual_seed(0),
        grad_sample_mode=mode,
    )
    sample(x[:4], y[:4])
    opt.signal_skip_step(True)
    opt.step()
    opt.zero_grad()
    sample(x[4:], y[4:])
    opt.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    for a, b, t in zip(after, before, total, strict=True):
        torch.testing.assert_close(a - b, -t / expected_batch, rtol=1e-9, atol=1e-12)


def test_book_keeping_noises_exactly_like_opacus():
    """sigma > 0: with the same generator, 'bk' and Opacus's 'ew' make the same noisy update (same clip factors,
    the same noise drawn for the same parameters in the same order), so the accountant's guarantee carries over."""
    torch.manual_seed(1)
    base = build_resnet18(num_classes=2, weights=None, norm="group").double()
    x, y = torch.randn(5, 3, 24, 24, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])
    updates = {}
    for mode in ("ew", "bk"):
        model = copy.deepcopy(base)
        before = [p.detach().clone() for p in model.parameters()]
        _, sample = make_grad_sampler(model, mode, max_grad_norm=0.3)
        opt = make_optimizer(
            model,
            lr=1.0,
            momentum=0,
            weight_decay=0,
            noise_multiplier=1.3,
            max_grad_norm=0.3,
            expected_batch_size=4,
            generator=torch.Generator().manual_seed(7),
            grad_sample_mode=mode,
        )
        sample(x, y)
        opt.step()
        updates[mode] = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    for a, b in zip(updates["ew"], updates["bk"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(float(u.abs().sum()) for u in updates["bk"]) > 1.0  # the noise is really there


def test_book_keeping_takes_the_cheaper_norm_route_per_layer():
    """At 224 px the early convolutions (many positions) instantiate per-example gradients and the late ones
    (few positions, many weights) use ghost norms; at the 20 px of the zero-noise test above both routes run."""
    from dpmedbench.dpsgd import _conv_uses_ghost

    model = build_resnet18(num_classes=2, weights=None, norm="group")
    assert not _conv_uses_ghost(model.conv1, 112 * 112)
    assert not _conv_uses_ghost(model.layer1[0].conv1, 56 * 56)
    assert _conv_uses_ghost(model.layer3[1].conv2, 14 * 14)
    assert _conv_uses_ghost(model.layer4[0].conv2, 7 * 7)
    assert not _conv_uses_ghost(model.conv1, 10 * 10) and _conv_uses_ghost(model.layer1[0].conv1, 5 * 5)
    with pytest.raises(ValueError, match="needs max_grad_norm"):
        make_grad_sampler(model, "bk")
    with pytest.raises(ValueError, match="does not support trainable BatchNorm2d"):
        make_grad_sampler(build_resnet18(num_classes=2, weights=None, norm="batch"), "bk", max_grad_norm=1.0)


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False),
        torch.nn.Conv2d(4, 5, 3, stride=1, padding=2, dilation=2),
        torch.nn.Conv2d(4, 6, 1, stride=2, bias=False),
        torch.nn.Conv2d(3, 2, (3, 5), stride=(2, 1), padding=(0, 2)),
    ],
    ids=["stem", "dilated", "downsample", "rectangular"],
)
def test_both_per_example_conv_routes_give_each_examples_own_gradient(conv):
    """The per-example weight gradients of 'bk' (one conv2d_weight per example on the CPU; one bmm over the
    unfolded input elsewhere) equal the gradient of each example's loss alone, computed by autograd."""
    from dpmedbench.dpsgd import _per_example_conv_grads

    torch.manual_seed(3)
    conv = conv.double()
    a = torch.randn(3, conv.in_channels, 13, 11, dtype=torch.float64)
    out = conv(a)
    g = torch.randn_like(out)
    expected = []
    for i in range(len(a)):
        conv.zero_grad()
        (conv(a[i : i + 1]) * g[i : i + 1]).sum().backward()
        expected.append(conv.weight.grad.flatten(1).clone())
    for batched in (False, True):
        got = _per_example_conv_grads(conv, a, g.detach(), batched=batched)
        torch.testing.assert_close(got, torch.stack(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False),
        torch.nn.Conv2d(4, 5, 3, stride=1, padding=2, dilation=2),
        torch.nn.Conv2d(4, 6, 1, stride=2, bias=False),
        torch.nn.Conv2d(3, 2, (3, 5), stride=(2, 1), padding=(0, 2)),
    ],
    ids=["stem", "dilated", "downsample", "rectangular"],
)
def test_strided_unfold_equals_torchs_unfold(conv):
    """The GPU route's unfold (one copy of a strided view) gives exactly F.unfold's numbers, whatever the memory
    layout of the input."""
    from dpmedbench.dpsgd import _unfold

    a = torch.randn(3, conv.in_channels, 13, 11)
    for x in (a, a.contiguous(memory_format=torch.channels_last), a[:, :, 1:, :]):
        expected = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        assert torch.equal(_unfold(x, conv, strided=True), expected)
        assert torch.equal(_unfold(x, conv), expected)


def test_book_keeping_refuses_paddings_it_would_get_wrong():
    for conv in (torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), torch.nn.Conv2d(3, 4, 3, padding="same")):
        with pytest.raises(ValueError, match="numeric zero padding only"):
            make_grad_sampler(torch.nn.Sequential(conv), "bk", max_grad_norm=1.0)


def test_book_keeping_clips_biased_convolutions_exactly():
    """'bk' on layers ResNet-18 lacks: convolutions with bias (both norm routes), dilation and stride, before
    GroupNorm and a Linear head. Its clipped sums equal a one-example-at-a-time loop's (float64)."""
    from dpmedbench.dpsgd import BookKeeping, _conv_uses_ghost

    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),  # per-example route (many positions, few weights)
        torch.nn.GroupNorm(4, 16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 64, 3, stride=2, dilation=2, padding=2),  # ghost route (few positions, many weights)
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    ).double()
    assert not _conv_uses_ghost(model[0], 10 * 10) and _conv_uses_ghost(model[3], 5 * 5)
    x, y = torch.randn(5, 3, 10, 10, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    clip = 0.4
    params = list(model.parameters())
    expected = [torch.zeros_like(q) for q in params]
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norm = torch.sqrt(sum((q.grad**2).sum() for q in params)).item()
        for e, q in zip(expected, params, strict=True):
            e += min(1.0, clip / (norm + 1e-6)) * q.grad
    model.zero_grad(set_to_none=True)
    BookKeeping(model, max_grad_norm=clip)(x, y)
    for e, q in zip(expected, params, strict=True):
        torch.testing.assert_close(q.clipped_sum, e, rtol=1e-9, atol=1e-12)
        assert q.grad is None  # 'bk' never fills .grad


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
