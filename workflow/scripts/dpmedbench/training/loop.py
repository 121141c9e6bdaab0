"""The training loop: epochs of a plan's steps, validation after each, and a callback to save progress. It knows
nothing about privacy mechanisms (the plan does) and reads or writes no file."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..core.errors import TrainingError
from ..core.runtime import StopFlag
from ..core.tensors import Preprocess, Split, infer
from .checkpoint import RunState
from .plans import Plan, RunningStats, Streams

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
        check_finite(row)
        row["seconds"] = round(time.perf_counter() - started, 3)
        state.record(row, model)
        on_epoch_end(state)
        spent = [r["seconds"] for r in state.history[-3:]]  # recent epochs (a resume's first epochs are gone)
        log.info("%s", format_row(row, epochs=epochs, left=(epochs - epoch) * sum(spent) / len(spent)))
    return state


def check_finite(row: Mapping[str, Any]) -> None:
    """Stop a run whose epoch produced a non-finite loss or accuracy (a diverged optimiser, a NaN setting or
    input): nothing of it may be published as a result.

    >>> check_finite({"epoch": 2, "train_loss": 0.5, "val_loss": float("nan"), "train_acc": None})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dpmedbench.core.errors.TrainingError: epoch 2: val_loss is nan: training diverged or a setting or input ...
    """
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v) and not k.startswith("epsilon")]
    if bad:
        raise TrainingError(
            f"epoch {row['epoch']}: {bad[0]} is {row[bad[0]]}: training diverged or a setting or input is not finite "
            "(a learning rate too large?); nothing is published for this cell"
        )


def format_row(row: Mapping[str, Any], *, epochs: int | None = None, left: float | None = None) -> str:
    """A history row for people: accuracies in %, losses to 3 decimals, grouped by split; DP-SGD's epsilon so
    far with its accountant; the epoch's time and, with ``left``, the estimated time to the end.

    >>> format_row({"epoch": 3, "train_loss": 0.51234, "train_acc": 0.5593, "val_acc": 0.6, "seconds": 12.25},
    ...            epochs=10, left=85.0)
    'epoch  3/10 | train loss 0.512 acc  55.9 % | val acc  60.0 % | 12.2 s, about 1 min 25 s left'
    >>> format_row({"epoch": 1, "val_acc": 1.0, "epsilon_rdp": 0.4569, "seconds": 4.1})
    'epoch 1 | val acc 100.0 % | ε so far 0.457 (RDP) | 4.1 s'
    """
    head = f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}" if epochs else f"epoch {row['epoch']}"
    groups: dict[str, list[str]] = {}
    tail = []
    for key, value in row.items():
        if key in ("epoch", "seconds") or value is None or isinstance(value, bool):
            continue
        if key.startswith("epsilon_"):
            tail.append(f"ε so far {value:.3f} ({key.split('_', 1)[1].upper()})")
            continue
        split, _, measure = key.rpartition("_")
        text = f"acc {100 * value:5.1f} %" if measure == "acc" else f"{measure} {value:.3f}"
        groups.setdefault(split.replace("_", " "), []).append(text)
    parts = [head, *(f"{split} {' '.join(items)}" for split, items in groups.items()), *tail]
    timing = f"{row['seconds']:.1f} s" if "seconds" in row else ""
    if left is not None:
        timing += f", about {_duration(left)} left"
    return " | ".join(parts + ([timing] if timing else []))


def _duration(seconds: float) -> str:
    """Seconds for people.

    >>> _duration(3725), _duration(85), _duration(4)
    ('1 h 2 min', '1 min 25 s', '4 s')
    """
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"
