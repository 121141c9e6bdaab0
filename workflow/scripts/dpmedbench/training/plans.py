"""Training plans: everything a privacy mechanism changes about training, behind one small interface, so that
the loop (:mod:`dpmedbench.training.loop`) never asks which mechanism it runs.

A plan says which normalisation layers the model needs, builds its optimiser, draws the logical batches of an
epoch, takes one step on a batch (physical chunks included), keeps its own resumable state, and writes the
privacy record of what it trained. Plans are registered by mechanism (:func:`register_plan`); :func:`plan_for`
imports the module that defines one on first use (``names.PLAN_MODULES``), so that each cell's code digest covers
its own plan only.

* ``none``: the non-private baseline (BatchNorm, shuffled batches, as the authors).
* ``ldp``: the same training on a Local-DP copy of the images; only the privacy record differs: the copy's.
* ``dpsgd``: :mod:`dpmedbench.training.dpsgd.plan`.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import TrainingError
from ..core.names import PLAN_MODULES, family, ldp_mechanism
from ..core.noisekey import NoiseKeyError, keyed_seed
from ..core.privacy import CLEAN_CELL_OUTPUTS, NO_PRIVACY, PrivacyRecord
from ..core.runtime import derive_seed
from ..core.settings import CellConfig

#: fetch(indices) -> (preprocessed inputs, labels) of those training images.
Fetch = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Streams:
    """The random streams of one training run, each derived from the run's full identity (dataset, mechanism,
    beta, seed, and for a reference model its index) and its purpose: two cells that differ in any part of
    their identity share no stream.

    >>> s = Streams("chest_xray", "dpsgd", 1.0, 0)
    >>> s.seed_for(1, "noise") == Streams("chest_xray", "dpsgd", 1.0, 0).seed_for(1, "noise")
    True
    >>> s.seed_for(1, "noise") != Streams("chest_xray", "dpsgd", 2.0, 0).seed_for(1, "noise") != s.seed_for(1, "sample")
    True

    With the secret noise ``key``, :meth:`secret_seed` gives the streams a guarantee depends on (DP-SGD's noise
    and Poisson masks, the canaries), which nobody without the key can recreate:

    >>> k = Streams("chest_xray", "dpsgd", 1.0, 0, key=bytes(32))
    >>> k.secret_seed(1, "noise") == Streams("chest_xray", "dpsgd", 1.0, 0, key=bytes(32)).secret_seed(1, "noise")
    True
    >>> k.secret_seed(1, "noise") != Streams("chest_xray", "dpsgd", 1.0, 0, key=b"x" * 32).secret_seed(1, "noise")
    True
    """

    def __init__(self, *identity: object, key: bytes | None = None) -> None:
        self.identity, self.key = identity, key

    def seed_for(self, *purpose: object) -> int:
        return derive_seed(*self.identity, *purpose)

    def secret_seed(self, *purpose: object) -> int:
        """A 63-bit seed from the noise key, the run's identity and ``purpose`` (HMAC-SHA256)."""
        if self.key is None:
            raise NoiseKeyError("noise_source 'keyed' needs the noise key (noise_key), and none was given")
        return keyed_seed(self.key, "training", *self.identity, *purpose)

    def noise_seed(self, source: str, *purpose: object) -> int:
        """The seed of a draw a guarantee depends on, from its noise source: the key (``keyed``), fresh
        operating-system entropy recorded nowhere (``os``), or the published seed (``seeded``)."""
        if source == "os":
            return secrets.randbits(63)
        return self.secret_seed(*purpose) if source == "keyed" else self.seed_for(*purpose)

    def generator(self, *purpose: object, device: torch.device | str = "cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed_for(*purpose))


class RunningStats:
    """Loss and accuracy over an epoch's training batches, summed on the device (one synchronisation per
    epoch, not one per batch; in float64 except on Apple MPS, which has none)."""

    def __init__(self, device: torch.device) -> None:
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.loss = torch.zeros((), dtype=self.dtype, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss_sum.detach().to(self.dtype)
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += len(labels)

    def summary(self) -> dict[str, float | None]:
        """Mean loss and accuracy; ``None`` for both when nothing was recorded (an epoch of empty batches, or a
        plan that does not publish them)."""
        if not self.seen:
            return {"train_loss": None, "train_acc": None}
        return {"train_loss": float(self.loss) / self.seen, "train_acc": int(self.correct) / self.seen}


@dataclass(frozen=True)
class TrainingData:
    """What a plan may know about the training split: its size, each image's group (the manifest's ``group``
    column), whether those groups are patients, and, for Local-DP, the noisy copy's ``privacy.json``."""

    n: int
    groups: np.ndarray | None = None
    groups_are_patients: bool = False
    ldp_privacy: str | os.PathLike[str] | None = None


class Plan:
    """The non-private plan, and the interface every plan keeps."""

    mechanism = "none"

    def __init__(self, config: CellConfig, *, data: TrainingData, streams: Streams) -> None:
        self.config, self.data, self.streams = config, data, streams
        self.n_train = data.n
        self.model: nn.Module | None = None
        self.optimizer: Any = None

    @property
    def norm(self) -> str:
        """The normalisation layers the model needs (``batch``, ``group`` or ``frozen``)."""
        return "batch"

    def describe(self) -> str:
        return f"{self.mechanism}: batches of {self.config.batch_size}, shuffled{self._precision_note()}"

    def _precision_note(self) -> str:
        return ", bf16 autocast" if self.config.precision == "bf16" else ""

    def autocast(self, device: torch.device) -> torch.autocast:
        """The arithmetic of the training forward pass (``model.precision``): bfloat16 autocast, or none."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def attach(self, model: nn.Module) -> None:
        """Build the optimiser for ``model`` (already on its device)."""
        self.model = model
        c = self.config
        self.optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def start_epoch(self, epoch: int) -> list[torch.Tensor]:
        """The logical batches of ``epoch`` (indices into the training split)."""
        order = torch.randperm(self.n_train, generator=self.streams.generator(epoch, "sample"))
        return list(order.split(self.config.batch_size))

    def step(self, batch: torch.Tensor, fetch: Fetch, stats: RunningStats) -> None:
        """One optimiser step on ``batch``, accumulated over chunks of ``max_physical_batch``."""
        assert self.model is not None
        self.optimizer.zero_grad(set_to_none=True)
        for chunk in batch.split(self.config.max_physical_batch):
            x, y = fetch(chunk)
            with self.autocast(x.device):
                logits = self.model(x)
                loss = F.cross_entropy(logits, y, reduction="sum")
            (loss / len(batch)).backward()
            stats.add(loss, logits, y)
        self.optimizer.step()

    def end_epoch(self) -> dict[str, Any]:
        """Figures of the plan to add to the epoch's history row."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def privacy(self) -> PrivacyRecord:
        return NO_PRIVACY


_PLANS: dict[str, type[Plan]] = {}


def register_plan(plan: type[Plan]) -> type[Plan]:
    _PLANS[plan.mechanism] = plan
    return plan


def plan_for(mechanism: str) -> type[Plan]:
    """The plan class of a cell ``mechanism`` (its family's: every ``ldp-*`` cell trains on its copy the same way),
    importing the module that defines it if need be."""
    kind = family(mechanism)
    if kind not in _PLANS:
        importlib.import_module(f"{__name__.partition('.')[0]}.{PLAN_MODULES[kind]}")
    return _PLANS[kind]


register_plan(Plan)


@register_plan
class LocalDPPlan(Plan):
    """Non-private training on a Local-DP copy; the guarantee is the copy's (its ``privacy.json``)."""

    mechanism = "ldp"

    def __init__(self, config: CellConfig, *, data: TrainingData, streams: Streams) -> None:
        super().__init__(config, data=data, streams=streams)
        ldp_privacy = data.ldp_privacy
        if ldp_privacy is None:
            raise TrainingError("a Local-DP cell needs the privacy.json of its noisy copy")
        try:
            self.copy_record = PrivacyRecord.from_json(json.loads(Path(ldp_privacy).read_text()))
        except (OSError, ValueError) as exc:
            raise TrainingError(
                f"{ldp_privacy}: not the privacy record of a Local-DP copy ({exc}); rebuild it"
            ) from exc
        expected = ldp_mechanism(config.mechanism)
        if self.copy_record.mechanism != expected:
            raise TrainingError(
                f"{ldp_privacy}: a {self.copy_record.mechanism} copy, but this cell is {config.mechanism} "
                f"(expects a {expected} copy); rebuild the copy or fix the cell's inputs"
            )

    def describe(self) -> str:
        return (
            f"ldp: {self.copy_record.mechanism} copy, batches of {self.config.batch_size}, shuffled"
            f"{self._precision_note()}"
        )

    def privacy(self) -> PrivacyRecord:
        outside = {**self.copy_record.details.get("outside_guarantee", {}), **CLEAN_CELL_OUTPUTS}
        return replace(
            self.copy_record,
            scope="local: each noisy training and validation image is released; the model is post-processing "
            "of the noisy copies (what is computed from the clean images is listed in outside_guarantee)",
            details={**self.copy_record.details, "outside_guarantee": outside},
        )
