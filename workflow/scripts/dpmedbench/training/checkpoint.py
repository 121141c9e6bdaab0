"""A training run's state between epochs: what it has done, the best model so far, resuming after an
interruption, and writing a finished cell's outputs atomically."""

from __future__ import annotations

import contextlib
import csv
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.fileio import atomic_outputs, json_text
from .plans import Plan

log = logging.getLogger(__name__)

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
    "train_outside_guarantee",
    "seconds",
)
RESUME, RESUME_BEST = "resume.pt", "resume_best.pt"
OUTPUTS = ("history.csv", "best.pt", "last.pt", "metrics.json")


@dataclass
class RunState:
    """Epochs done, their history rows, and the best epoch by validation accuracy (earliest on ties)."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # {"epoch": ..., "val_acc": ...}
    best_model: dict[str, torch.Tensor] | None = None

    def record(self, row: dict[str, Any], model: nn.Module) -> None:
        self.history.append(row)
        self.epoch = row["epoch"]
        if self.best is None or row["val_acc"] > self.best["val_acc"]:
            self.best = {"epoch": row["epoch"], "val_acc": row["val_acc"]}
            self.best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @property
    def best_row(self) -> dict[str, Any]:
        assert self.best is not None, "no epoch was trained"
        return self.history[self.best["epoch"] - 1]


def save_resume(out: Path, state: RunState, model: nn.Module, plan: Plan, fingerprint: str) -> None:
    """Everything needed to continue after ``state.epoch``, written atomically (tensors and plain data only)."""
    with atomic_outputs(out / RESUME, out / RESUME_BEST) as (tmp, best_tmp):
        torch.save(state.best_model, best_tmp)
        payload = {"fingerprint": fingerprint, "device": _device_of(model), "model": model.state_dict()}
        payload["plan"] = plan.state_dict()
        torch.save({**payload, "epoch": state.epoch, "history": state.history, "best": state.best}, tmp)


def load_resume(out: Path, *, fingerprint: str, model: nn.Module, plan: Plan, device: torch.device) -> RunState:
    """The state saved by an interrupted run of the same settings and code, loaded into ``model`` and ``plan``;
    a fresh state if there is none. Files are read with ``weights_only=True``: no code in them runs. A state
    saved on another kind of device is not used either: its random streams (DP-SGD noise) differ there, and a
    resumed run must end exactly as an uninterrupted one."""
    path, best_path = out / RESUME, out / RESUME_BEST
    if not path.exists():
        return RunState()
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        usable = saved.get("fingerprint") == fingerprint and best_path.exists()
        usable = usable and saved.get("device") == _device_of(model)
        best = torch.load(best_path, map_location=device, weights_only=True) if usable else None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, KeyError) as exc:
        log.warning("ignoring %s: it cannot be read safely (%s); training starts afresh", path, exc)
        return RunState()
    if not usable:
        log.warning(
            "ignoring %s: it was written with other settings or code, on another kind of device, or is "
            "incomplete; training starts afresh",
            path,
        )
        return RunState()
    model.load_state_dict(saved["model"])
    plan.load_state_dict(saved["plan"])
    log.info("resuming after epoch %d from %s", saved["epoch"], path)
    return RunState(epoch=saved["epoch"], history=saved["history"], best=saved["best"], best_model=best)


def write_outputs(
    out: Path, *, state: RunState, model: nn.Module, plan: Plan, meta: Mapping[str, Any], metrics: Mapping[str, Any]
) -> None:
    """``history.csv``, ``best.pt``, ``last.pt`` and ``metrics.json``, all or none; then the resume files go."""
    with atomic_outputs(*(out / name for name in OUTPUTS)) as (hist_tmp, best_tmp, last_tmp, metrics_tmp):
        with open(hist_tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(state.history)
        torch.save({"model": state.best_model, "epoch": state.best_row["epoch"], **meta}, best_tmp)
        last = {"model": model.state_dict(), "accountant": [], **plan.state_dict(), "epoch": state.epoch}
        torch.save({**last, **meta}, last_tmp)
        metrics_tmp.write_text(json_text(metrics))
    for name in (RESUME, RESUME_BEST):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def _device_of(model: nn.Module) -> str:
    return next(model.parameters()).device.type
