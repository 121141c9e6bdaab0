"""The training loop: epochs of a plan's steps, validation after each, and a callback to save progress. It knows
nothing about privacy mechanisms (the plan does) and reads or writes no file."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .checkpoint import RunState
from .plans import Plan, RunningStats, Streams
from .runtime import StopFlag
from .tensors import Preprocess, Split, infer

log = logging.getLogger(__name__)


def train_one_epoch(
    plan: Plan, train: Split, prep: Preprocess, *, epoch: int, augment: torch.Generator, stop: StopFlag
) -> dict[str, float | None]:
    """One epoch of the plan's steps; the mean training loss and accuracy over the images it stepped on.

    Every training image gets this epoch's augmentation draws in advance, from ``augment``: an image is augmented
    the same way whichever batch it lands in and whichever images share it (so adding or removing one image
    changes no other image's input, as DP-SGD's analysis needs)."""
    stats = RunningStats(train.labels.device)
    draws = torch.rand((len(train), 3), generator=augment)

    def fetch(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return prep(train.images[indices], train=True, draws=draws[indices.cpu()]), train.labels[indices]

    for batch in plan.start_epoch(epoch):
        stop.check()
        plan.step(batch.to(train.labels.device), fetch, stats)
    return stats.summary()


def validate(model: nn.Module, splits: Mapping[str, Split], prep: Preprocess, batch: int) -> dict[str, float]:
    """``<split>_loss`` and ``<split>_acc`` of each split, in eval mode."""
    row = {}
    for name, split in splits.items():
        result = infer(model, split, prep, batch)
        row[f"{name}_loss"], row[f"{name}_acc"] = result.loss, result.accuracy
    return row


def fit(
    model: nn.Module,
    plan: Plan,
    *,
    train: Split,
    holdout: Mapping[str, Split],
    prep: Preprocess,
    epochs: int,
    eval_batch: int,
    streams: Streams,
    state: RunState,
    on_epoch_end: Callable[[RunState], None],
    stop: StopFlag,
) -> RunState:
    """Train from ``state.epoch + 1`` to ``epochs``; after each epoch, record it and call ``on_epoch_end``."""
    model.train()
    for epoch in range(state.epoch + 1, epochs + 1):
        started = time.perf_counter()
        augment = streams.generator(epoch, "augment")
        row: dict[str, Any] = {"epoch": epoch}
        row.update(train_one_epoch(plan, train, prep, epoch=epoch, augment=augment, stop=stop))
        row.update(validate(model, holdout, prep, eval_batch))
        row.update(plan.end_epoch())
        row["seconds"] = round(time.perf_counter() - started, 3)
        state.record(row, model)
        on_epoch_end(state)
        log.info("epoch %d/%d  %s", epoch, epochs, format_row(row))
    return state


def format_row(row: Mapping[str, Any]) -> str:
    """A history row for people.

    >>> format_row({"epoch": 3, "train_loss": 0.51234, "train_acc": 0.5593, "val_acc": 0.6, "seconds": 12.25})
    'train loss 0.5123  train acc 0.5593  val acc 0.6000  12.2 s'
    """
    parts = []
    for key, value in row.items():
        if key == "epoch" or value is None or isinstance(value, bool):
            continue
        if key == "seconds":
            parts.append(f"{value:.1f} s")
        else:
            parts.append(f"{key.replace('_', ' ')} {value:.4f}")
    return "  ".join(parts)
