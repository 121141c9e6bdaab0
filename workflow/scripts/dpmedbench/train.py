"""Train one cell of the grid: (dataset, mechanism, beta, seed).

* ``none``: the non-private baseline on the clean arrays (BatchNorm, shuffled batches, as the authors).
* ``ldp``: the same training on a Local-DP copy of train and val; model selection on the noisy val (all the
  data holder has); clean val accuracy is recorded beside it for reference, never used.
* ``dpsgd``: DP-SGD on the clean arrays: Poisson sampling at rate q = batch/N, per-example clipping, Gaussian
  noise calibrated to epsilon = 1/beta at ``delta`` after all steps (or a given noise multiplier), BatchNorm
  replaced (GroupNorm) or frozen; logical batches processed in physical chunks of ``max_physical_batch``.

Every random choice (sampling, augmentation, DP noise) comes from a generator derived from (seed, epoch, purpose),
so an epoch replays identically after a restart. After each epoch the full state (model, optimiser, accountant
history, history rows, best model) is saved atomically to ``resume.pt`` beside the outputs; a rerun of a killed
job continues from there and ends with the same result as an uninterrupted run. The declared outputs
(``history.csv``, ``best.pt``, ``last.pt``, ``metrics.json``) are written only when training is complete.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from . import dpsgd as dpm
from .errors import DPMedBenchError
from .fileio import atomic_outputs
from .models import build_resnet18

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_clean_acc",
    "test_loss",
    "test_acc",
    "epsilon_rdp",
    "seconds",
)


class TrainingError(DPMedBenchError):
    """The data or the settings of a cell cannot be trained on."""


class Interrupted(Exception):
    """SIGTERM (a scheduler's time limit) or SIGINT arrived; the last completed epoch is saved."""


@dataclass(frozen=True)
class DPSettings:
    delta: float = 1e-4
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    accountant: str = "prv"
    norm: str = "group"
    grad_sample_mode: str = "bk"
    max_physical_batch: int = 32


@dataclass(frozen=True)
class CellConfig:
    dataset: str
    mechanism: str
    beta: float
    seed: int
    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 1e-3
    crop: int = 224
    augment: bool = True
    normalize: bool = True
    pretrained: bool = True
    device: str = "auto"
    eval_batch: int = 256
    max_physical_batch: int = 128
    dpsgd: DPSettings = field(default_factory=DPSettings)


# ------------------------------------------------------------------------------------------------- helpers
def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and platforms."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def cpu_threads(requested: int) -> int:
    """The threads a job asked for, but never more than the CPUs this process may run on (a scheduler's cgroup or
    affinity mask, or the machine), so an oversized ``--set-threads`` cannot oversubscribe a node."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        available = os.cpu_count() or 1
    return max(1, min(requested, available))


def scheduler_record() -> dict[str, str]:
    """Where the job ran, when a batch system ran it: the SLURM job id, node and GPUs granted (empty otherwise)."""
    keys = {
        "slurm_job_id": "SLURM_JOB_ID",
        "slurm_node": "SLURMD_NODENAME",
        "slurm_partition": "SLURM_JOB_PARTITION",
        "slurm_gpus": "SLURM_JOB_GPUS",
        "cuda_visible_devices": "CUDA_VISIBLE_DEVICES",
    }
    return {name: os.environ[var] for name, var in keys.items() if var in os.environ}


def pick_device(requested: str) -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU; otherwise exactly what was asked (and it must exist)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {requested!r} requested but CUDA is not available here")
    return torch.device(requested)


@dataclass
class Split:
    """A split held in memory on the training device: packed images and integer labels."""

    name: str
    images: torch.Tensor  # (N, H, W, C) uint8 or float16
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def read_labels(manifest: str | os.PathLike[str]) -> np.ndarray:
    with open(manifest, newline="") as fh:
        return np.array([int(row["label"]) for row in csv.DictReader(fh)], dtype=np.int64)


def load_split(
    name: str, array: str | os.PathLike[str], manifest: str | os.PathLike[str], device: torch.device
) -> Split:
    """Load a packed array and its manifest's labels; refuse non-finite values and mismatched lengths."""
    data = np.load(array, mmap_mode="r")
    labels = read_labels(manifest)
    if data.ndim != 4 or len(data) != len(labels):
        raise TrainingError(f"{array}: shape {data.shape} does not match the {len(labels)} rows of {manifest}")
    if data.dtype not in (np.uint8, np.float16, np.float32):
        raise TrainingError(f"{array}: unsupported dtype {data.dtype} (expected uint8, float16 or float32)")
    if data.dtype != np.uint8:
        for start in range(0, len(data), 256):
            chunk = np.asarray(data[start : start + 256])
            if not np.isfinite(chunk).all():
                bad = start + int(np.flatnonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1))[0])
                raise TrainingError(f"{array}: image {bad} holds NaN or infinite values; rebuild this file")
    images = torch.from_numpy(np.array(data)).to(device)  # a writable in-memory copy of the memory map
    return Split(name=name, images=images, labels=torch.from_numpy(labels).to(device))


class Preprocess:
    """Packed images -> normalised float32 (N, 3, crop, crop) tensors on the device.

    Training: the authors' ``RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(1, 1.1))`` (nearest-neighbour,
    zero fill, as torchvision's default for tensors), then the central ``crop``; evaluation: the central crop
    only. Then ImageNet mean/std normalisation. Greyscale is repeated to three channels.
    """

    def __init__(self, *, crop: int, augment: bool, normalize: bool, device: torch.device) -> None:
        self.crop, self.augment, self.normalize = crop, augment, normalize
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __call__(self, packed: torch.Tensor, *, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        x = packed.permute(0, 3, 1, 2).float()
        if packed.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if train and self.augment and len(x):
            x = self._affine(x, generator)
        h, w = x.shape[-2:]
        if self.crop > min(h, w):
            raise TrainingError(f"crop {self.crop} is larger than the {h}x{w} images; lower model.crop")
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        if self.normalize:
            x = (x - self.mean) / self.std
        return x.contiguous()

    def _affine(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = len(x)
        params = torch.rand((n, 3), generator=generator)  # on the CPU: the same draws on every device
        scale = 1.0 + 0.1 * params[:, 0]
        tx, ty = (params[:, 1] - 0.5) * 0.2, (params[:, 2] - 0.5) * 0.2  # fraction of the side, in [-0.1, 0.1]
        theta = torch.zeros((n, 2, 3))
        theta[:, 0, 0] = 1.0 / scale
        theta[:, 1, 1] = 1.0 / scale
        theta[:, 0, 2] = -2.0 * tx / scale
        theta[:, 1, 2] = -2.0 * ty / scale
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _batches(indices: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    yield from indices.split(size) if len(indices) else [indices]


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, split: Split, prep: Preprocess, batch: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on ``split``."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for idx in torch.arange(len(split), device=split.labels.device).split(batch):
        logits = model(prep(split.images[idx], train=False))
        loss += float(F.cross_entropy(logits, split.labels[idx], reduction="sum"))
        correct += int((logits.argmax(1) == split.labels[idx]).sum())
    model.train(was_training)
    return loss / max(1, len(split)), correct / max(1, len(split))


# ------------------------------------------------------------------------------------------------- training
class _StopFlag:
    """Turns SIGTERM/SIGINT into :class:`Interrupted` at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum

    def check(self) -> None:
        if self.signal is not None:
            raise Interrupted(f"received signal {self.signal}")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_cell(
    config: CellConfig,
    *,
    train: tuple[str, str],
    val: tuple[str, str],
    test: tuple[str, str],
    out_dir: str | os.PathLike[str],
    val_clean: tuple[str, str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    ldp_privacy: str | os.PathLike[str] | None = None,
    fingerprint: str = "",
    threads: int = 1,
    train_subset: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train a cell and write ``history.csv``, ``best.pt``, ``last.pt`` and ``metrics.json`` into ``out_dir``.

    ``train``/``val``/``test``/``val_clean`` are (array .npy, manifest .csv) pairs. ``fingerprint`` identifies
    the settings and code: a ``resume.pt`` left by an interrupted run is used only if it carries the same one.
    ``train_subset``: indices of the training images to use (reference models of the calibrated audit).
    """
    torch.set_num_threads(cpu_threads(threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    dp = config.mechanism == "dpsgd"
    splits = {
        "train": load_split("train", *train, device),
        "val": load_split("val", *val, device),
        "test": load_split("test", *test, device),
    }
    if val_clean is not None:
        splits["val_clean"] = load_split("val_clean", *val_clean, device)
    if train_subset is not None:
        keep = torch.as_tensor(np.asarray(train_subset), dtype=torch.long, device=device)
        splits["train"] = Split("train", splits["train"].images[keep], splits["train"].labels[keep])
    classes = int(max(int(s.labels.max()) for s in splits.values() if len(s)) + 1)
    present = sorted(set(splits["train"].labels.tolist()))
    if len(present) < 2:
        raise TrainingError(
            f"{train[0]}: the training split holds only class {present}; a classifier needs at least two classes"
        )
    if len(splits["val"]) == 0:
        raise TrainingError(f"{val[0]}: the validation split is empty; model selection needs validation data")
    n = len(splits["train"])
    prep = Preprocess(crop=config.crop, augment=config.augment, normalize=config.normalize, device=device)

    torch.manual_seed(derive_seed(config.seed, "init"))
    model = build_resnet18(
        num_classes=classes,
        weights=weights if config.pretrained else None,
        norm=config.dpsgd.norm if dp else "batch",
    ).to(device)
    model.train()

    privacy: dict[str, Any]
    if dp:
        dpm.validate_for_dp(model)
        forward, sampler = dpm.make_grad_sampler(
            model,
            config.dpsgd.grad_sample_mode,  # type: ignore[arg-type]
            max_grad_norm=config.dpsgd.max_grad_norm,
        )
        q = config.batch_size / n
        if q >= 1:
            raise TrainingError(f"batch_size {config.batch_size} is not smaller than the {n} training images")
        steps_per_epoch = math.ceil(n / config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        target = 1.0 / config.beta
        sigma = config.dpsgd.noise_multiplier
        if sigma is None:
            sigma = dpm.calibrate_noise(
                target_epsilon=target,
                delta=config.dpsgd.delta,
                sample_rate=q,
                steps=total_steps,
                accountant=config.dpsgd.accountant,
            )
        noise_gen = torch.Generator(device=device)
        optimizer: Any = dpm.make_optimizer(
            model,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            noise_multiplier=sigma,
            max_grad_norm=config.dpsgd.max_grad_norm,
            expected_batch_size=config.batch_size,
            generator=noise_gen,
            grad_sample_mode=config.dpsgd.grad_sample_mode,
        )
        physical = config.dpsgd.max_physical_batch
        log.info(
            "DP-SGD: q=%.5f, %d steps, sigma=%.4f (target epsilon %.4g at delta %g, %s accountant)",
            q,
            total_steps,
            sigma,
            target,
            config.dpsgd.delta,
            config.dpsgd.accountant,
        )
    else:
        forward, sampler, noise_gen, sigma, q, steps_per_epoch = model, None, None, None, None, None
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        physical = config.max_physical_batch

    # ------------------------------------------------------------------------------------- resume or start
    resume_path, resume_best = out / "resume.pt", out / "resume_best.pt"
    state: dict[str, Any] = {"epoch": 0, "history": [], "accountant": [], "best": None}
    if resume_path.exists():
        saved = torch.load(resume_path, map_location=device, weights_only=False)
        if saved.get("fingerprint") == fingerprint and resume_best.exists():
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = {k: saved[k] for k in ("epoch", "history", "accountant", "best")}
            log.info("resuming after epoch %d from %s", state["epoch"], resume_path)
        else:
            log.info("ignoring %s: it was written with other settings or code, or is incomplete", resume_path)
    best_state = torch.load(resume_best, map_location=device, weights_only=True) if state["best"] else None

    started = time.perf_counter()
    with _StopFlag() as stop:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            t0 = time.perf_counter()
            sample_gen = torch.Generator().manual_seed(derive_seed(config.seed, epoch, "sample"))
            aug_gen = torch.Generator().manual_seed(derive_seed(config.seed, epoch, "augment"))
            if dp:
                noise_gen.manual_seed(derive_seed(config.seed, epoch, "noise"))
                logical = [
                    torch.nonzero(torch.rand(n, generator=sample_gen) < q).flatten() for _ in range(steps_per_epoch)
                ]
            else:
                logical = list(torch.randperm(n, generator=sample_gen).split(config.batch_size))
            loss_sum, correct, seen = 0.0, 0, 0
            for batch in logical:
                stop.check()
                batch = batch.to(device)
                if dp:
                    chunks = list(_batches(batch, physical))
                    for i, chunk in enumerate(chunks):
                        if len(chunk):
                            x = prep(splits["train"].images[chunk], train=True, generator=aug_gen)
                            losses, logits = sampler(x, splits["train"].labels[chunk])
                            loss_sum += float(losses.sum())
                            correct += int((logits.argmax(1) == splits["train"].labels[chunk]).sum())
                            seen += len(chunk)
                        else:
                            dpm.empty_grad_samples(model)
                        if i < len(chunks) - 1:
                            optimizer.signal_skip_step(do_skip=True)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    state["accountant"] = _account(state["accountant"], sigma, q)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    for chunk in batch.split(physical):
                        x = prep(splits["train"].images[chunk], train=True, generator=aug_gen)
                        logits = forward(x)
                        loss = F.cross_entropy(logits, splits["train"].labels[chunk], reduction="sum")
                        (loss / len(batch)).backward()
                        loss_sum += loss.item()
                        correct += int((logits.argmax(1) == splits["train"].labels[chunk]).sum())
                        seen += len(chunk)
                    optimizer.step()
            row = _epoch_row(epoch, model, splits, prep, config, loss_sum, correct, seen)
            if dp:
                row["epsilon_rdp"] = dpm.epsilon(state["accountant"], delta=config.dpsgd.delta, accountant="rdp")
            row["seconds"] = round(time.perf_counter() - t0, 3)
            state["history"].append(row)
            if state["best"] is None or row["val_acc"] > state["best"]["val_acc"]:
                state["best"] = {"epoch": epoch, "val_acc": row["val_acc"]}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state["epoch"] = epoch
            _save_resume(resume_path, resume_best, model, optimizer, state, best_state, fingerprint)
            log.info("epoch %d/%d %s", epoch, config.epochs, {k: row[k] for k in row if k != "epoch"})

    assert best_state is not None
    if dp:
        steps = sum(h[2] for h in state["accountant"])
        delta = config.dpsgd.delta
        spent = {acc: dpm.epsilon(state["accountant"], delta=delta, accountant=acc) for acc in dpm.ACCOUNTANTS}
        privacy = {
            "mechanism": "dpsgd",
            "target_epsilon": 1.0 / config.beta if config.dpsgd.noise_multiplier is None else None,
            "epsilon": spent[config.dpsgd.accountant],
            "accountant": config.dpsgd.accountant,
            "epsilon_prv": spent["prv"],
            "epsilon_rdp": spent["rdp"],
            "delta": config.dpsgd.delta,
            "noise_multiplier": sigma,
            "noise_multiplier_source": "given"
            if config.dpsgd.noise_multiplier is not None
            else f"calibrated with the {config.dpsgd.accountant} accountant to epsilon = 1/beta",
            "sample_rate": q,
            "steps": steps,
            "epochs": config.epochs,
            "max_grad_norm": config.dpsgd.max_grad_norm,
            "sampling": "Poisson (each example independently with probability q per step)",
            "norm_layers": {
                "group": "GroupNorm(min(32, C), C) instead of BatchNorm",
                "frozen": "BatchNorm frozen at ImageNet statistics (not trained)",
            }[config.dpsgd.norm],
            "grad_sample_mode": config.dpsgd.grad_sample_mode,
            "scope": "example-level (add/remove one training image), whole training run",
        }
    elif config.mechanism == "ldp":
        record = json.loads(Path(ldp_privacy).read_text()) if ldp_privacy else {}
        privacy = {
            "mechanism": "ldp",
            "ldp_mechanism": record.get("mechanism"),
            "epsilon": record.get("epsilon_per_value"),
            "epsilon_per_value": record.get("epsilon_per_value"),
            "epsilon_per_image": record.get("epsilon_per_image"),
            "delta": record.get("delta"),
            "accountant": record.get("accountant"),
            "formal_guarantee": record.get("formal_guarantee"),
            "epsilon_reason": record.get("epsilon_reason"),
            "scope": "local: each noisy image is released; the model is post-processing of the noisy copies",
        }
    else:
        privacy = {"mechanism": "none", "epsilon": None, "reason": "non-private baseline: no privacy mechanism"}

    history = state["history"]
    best = history[state["best"]["epoch"] - 1]
    max_test = max(history, key=lambda r: (r["test_acc"], -r["epoch"]))
    metrics = {
        "cell": {"dataset": config.dataset, "mechanism": config.mechanism, "beta": config.beta, "seed": config.seed},
        "config": asdict(config),
        "classes": classes,
        "train_images": n,
        "selection": "best validation accuracy (earliest epoch on ties)"
        + ("; validation = the noisy Local-DP copy" if config.mechanism == "ldp" else ""),
        "best_epoch": best["epoch"],
        "train_acc": best["train_acc"],
        "val_acc": best["val_acc"],
        "val_clean_acc": best.get("val_clean_acc"),
        "test_acc": best["test_acc"],
        "test_acc_max": max_test["test_acc"],
        "test_acc_max_epoch": max_test["epoch"],
        "test_acc_max_note": "the authors' protocol: the best test accuracy over epochs (optimistic; test data "
        "chose the epoch)",
        "final": history[-1],
        "privacy": privacy,
        "n_train": n,
        "train_subset": train_subset is not None,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "scheduler": scheduler_record(),
        "seconds_this_run": round(time.perf_counter() - started, 2),
        "versions": _versions(),
    }
    paths = [out / "history.csv", out / "best.pt", out / "last.pt", out / "metrics.json"]
    with atomic_outputs(*paths) as (hist_tmp, best_tmp, last_tmp, metrics_tmp):
        with open(hist_tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)
        meta = {
            "classes": classes,
            "norm": config.dpsgd.norm if dp else "batch",
            "crop": config.crop,
            "normalize": config.normalize,
        }
        torch.save({"model": best_state, "epoch": best["epoch"], **meta}, best_tmp)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "accountant": state["accountant"],
                "epoch": state["epoch"],
                **meta,
            },
            last_tmp,
        )
        metrics_tmp.write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    for p in (resume_path, resume_best):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    log.info(
        "best epoch %d: val %.4f test %.4f; max test %.4f (epoch %d)",
        best["epoch"],
        best["val_acc"],
        best["test_acc"],
        max_test["test_acc"],
        max_test["epoch"],
    )
    return metrics


def _account(history: list, sigma: float, q: float) -> list:
    """The accountant history after one more step ([(sigma, q, steps)], as Opacus keeps it)."""
    history = [list(h) for h in history]
    if history and history[-1][0] == sigma and history[-1][1] == q:
        history[-1][2] += 1
    else:
        history.append([sigma, q, 1])
    return [tuple(h) for h in history]


def _epoch_row(
    epoch: int,
    model: nn.Module,
    splits: Mapping[str, Split],
    prep: Preprocess,
    config: CellConfig,
    loss_sum: float,
    correct: int,
    seen: int,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": loss_sum / max(1, seen),
        "train_acc": correct / max(1, seen),
    }
    row["val_loss"], row["val_acc"] = evaluate(model, splits["val"], prep, config.eval_batch)
    row["val_clean_acc"] = (
        evaluate(model, splits["val_clean"], prep, config.eval_batch)[1] if "val_clean" in splits else None
    )
    row["test_loss"], row["test_acc"] = evaluate(model, splits["test"], prep, config.eval_batch)
    row["epsilon_rdp"] = None
    return row


def _save_resume(
    path: Path,
    best_path: Path,
    model: nn.Module,
    optimizer: Any,
    state: dict,
    best_state: dict | None,
    fingerprint: str,
) -> None:
    with atomic_outputs(path, best_path) as (tmp, best_tmp):
        torch.save(best_state, best_tmp)
        torch.save(
            {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(), **state}, tmp
        )


def _versions() -> dict[str, str]:
    import torchvision

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "dpmedbench": __version__,
    }
    with contextlib.suppress(ImportError):
        import opacus

        versions["opacus"] = opacus.__version__
    return versions


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def exit_on_interrupt(fn: Any, /, **kwargs: Any) -> Any:
    """Run ``fn``; on SIGTERM/SIGINT log where training stopped and exit with status 143 (128 + SIGTERM)."""
    try:
        return fn(**kwargs)
    except Interrupted as exc:
        log.warning("%s: stopped; the last completed epoch is saved and a rerun resumes from it", exc)
        sys.exit(143)


def reference_members(n: int, *, index: int) -> np.ndarray:
    """Which of ``n`` training images reference model ``index`` trains on: a random half, its own per index.

    >>> m = reference_members(10, index=3)
    >>> int(m.sum()), bool((m == reference_members(10, index=3)).all())
    (5, True)
    >>> bool((m != reference_members(10, index=4)).any())
    True
    """
    members = np.zeros(n, dtype=bool)
    members[np.random.default_rng(derive_seed(index, "reference-members")).permutation(n)[: n // 2]] = True
    return members


def run_reference(
    *,
    settings: Mapping[str, Any],
    code: str,
    inputs: Mapping[str, str],
    out_dir: str | os.PathLike[str],
    index: int,
    threads: int,
) -> dict[str, Any]:
    """Snakemake entry point of a reference model: the cell's training on a random half of its training split
    (:func:`reference_members`), then ``members.npy`` (the mask) beside the usual outputs."""
    n = len(read_labels(inputs["train_csv"]))
    members = reference_members(n, index=index)
    result = run_cell(
        settings=settings,
        code=code,
        inputs=inputs,
        out_dir=out_dir,
        threads=threads,
        train_subset=np.flatnonzero(members),
    )
    with atomic_outputs(Path(out_dir) / "members.npy") as (tmp,), open(tmp, "wb") as fh:
        np.save(fh, members)
    return result


def run_cell(
    *,
    settings: Mapping[str, Any],
    code: str,
    inputs: Mapping[str, str],
    out_dir: str | os.PathLike[str],
    threads: int,
    train_subset: np.ndarray | None = None,
) -> dict[str, Any]:
    """Snakemake entry point: ``settings`` is the rule's ``cell`` param, ``inputs`` its named inputs."""
    settings = dict(settings)
    dp = DPSettings(**settings.pop("dpsgd")) if "dpsgd" in settings else DPSettings()
    config = CellConfig(dpsgd=dp, **settings)
    subset = None if train_subset is None else np.asarray(train_subset).tolist()
    fingerprint = hashlib.sha256(
        json.dumps([settings, asdict(dp), code] + ([subset] if subset is not None else []), sort_keys=True).encode()
    ).hexdigest()

    def pair(split: str, array_key: str | None = None) -> tuple[str, str]:
        return inputs[array_key or split], inputs[f"{split}_csv"]

    return exit_on_interrupt(
        train_cell,
        config=config,
        train_subset=train_subset,
        train=pair("train"),
        val=pair("val"),
        test=pair("test"),
        val_clean=pair("val", "val_clean") if "val_clean" in inputs else None,
        weights=inputs.get("weights"),
        ldp_privacy=inputs.get("privacy"),
        out_dir=out_dir,
        fingerprint=fingerprint,
        threads=threads,
    )
