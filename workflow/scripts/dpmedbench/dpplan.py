"""The DP-SGD training plan: noise calibrated to the target epsilon, Poisson batches, the noisy step over physical
chunks (:func:`dpmedbench.dpsgd.noisy_step`), and accounting.

Poisson sampling at rate q = batch/N, per-example clipping to ``max_grad_norm``, Gaussian noise of multiplier
sigma calibrated to epsilon = 1/beta at ``delta`` after all steps (or given); BatchNorm replaced (GroupNorm) or
frozen. Logical batches are processed in physical chunks of ``dpsgd.max_physical_batch``; the analysis is that
of the logical batch.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from . import dpsgd as dpm
from .errors import TrainingError
from .plans import Fetch, Plan, RunningStats, Streams, register_plan
from .privacy import PrivacyRecord
from .settings import CellConfig

NORM_LAYERS = {
    "group": "GroupNorm(min(32, C), C) instead of BatchNorm",
    "frozen": "BatchNorm frozen at ImageNet statistics (not trained)",
}


def account(history: list, sigma: float, q: float) -> list:
    """The accountant history after one more step ([(sigma, q, steps)], as Opacus keeps it).

    >>> account(account([], 1.0, 0.1), 1.0, 0.1)
    [(1.0, 0.1, 2)]
    """
    history = [list(h) for h in history]
    if history and history[-1][0] == sigma and history[-1][1] == q:
        history[-1][2] += 1
    else:
        history.append([sigma, q, 1])
    return [tuple(h) for h in history]


@register_plan
class DPSGDPlan(Plan):
    mechanism = "dpsgd"

    def __init__(
        self, config: CellConfig, *, n_train: int, streams: Streams, ldp_privacy: str | os.PathLike[str] | None
    ) -> None:
        super().__init__(config, n_train=n_train, streams=streams, ldp_privacy=ldp_privacy)
        self.dp = config.dpsgd
        self.q = config.batch_size / n_train
        if self.q >= 1:
            raise TrainingError(f"batch_size {config.batch_size} is not smaller than the {n_train} training images")
        self.steps_per_epoch = math.ceil(n_train / config.batch_size)
        self.sigma = self.dp.noise_multiplier
        if self.sigma is None:
            self.sigma = dpm.calibrate_noise(
                target_epsilon=1.0 / config.beta,
                delta=self.dp.delta,
                sample_rate=self.q,
                steps=self.steps_per_epoch * config.epochs,
                accountant=self.dp.accountant,
            )
        self.history: list = []

    @property
    def norm(self) -> str:
        return self.dp.norm

    def describe(self) -> str:
        target = "given" if self.dp.noise_multiplier is not None else f"target epsilon {1.0 / self.config.beta:.4g}"
        return (
            f"dpsgd: q={self.q:.5f}, {self.steps_per_epoch * self.config.epochs} steps, sigma={self.sigma:.4f} "
            f"({target} at delta {self.dp.delta:g}, {self.dp.accountant} accountant), clip {self.dp.max_grad_norm:g}, "
            f"{self.dp.grad_sample_mode} per-example gradients"
        )

    def attach(self, model: nn.Module) -> None:
        dpm.validate_for_dp(model)
        self.model = model
        _, self.sampler = dpm.make_grad_sampler(
            model,
            self.dp.grad_sample_mode,  # type: ignore[arg-type]
            max_grad_norm=self.dp.max_grad_norm,
        )
        self.noise = torch.Generator(device=next(model.parameters()).device)
        c = self.config
        self.optimizer = dpm.make_optimizer(
            model,
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            noise_multiplier=self.sigma,
            max_grad_norm=self.dp.max_grad_norm,
            expected_batch_size=c.batch_size,
            generator=self.noise,
            grad_sample_mode=self.dp.grad_sample_mode,
        )

    def start_epoch(self, epoch: int) -> list[torch.Tensor]:
        self.noise.manual_seed(self.streams.seed_for(epoch, "noise"))
        sample = self.streams.generator(epoch, "sample")
        return [
            torch.nonzero(torch.rand(self.n_train, generator=sample) < self.q).flatten()
            for _ in range(self.steps_per_epoch)
        ]

    def step(self, batch: torch.Tensor, fetch: Fetch, stats: RunningStats) -> None:
        assert self.model is not None
        chunks = list(batch.split(self.dp.max_physical_batch)) if len(batch) else [batch]
        for losses, logits, labels in dpm.noisy_step(self.optimizer, self.sampler, self.model, chunks, fetch):
            stats.add(losses.sum(), logits, labels)
        self.history = account(self.history, self.sigma, self.q)

    def end_epoch(self) -> dict[str, Any]:
        return {"epsilon_rdp": dpm.epsilon(self.history, delta=self.dp.delta, accountant="rdp")}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "accountant": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = [tuple(h) for h in state["accountant"]]

    def privacy(self) -> PrivacyRecord:
        spent = {acc: dpm.epsilon(self.history, delta=self.dp.delta, accountant=acc) for acc in dpm.ACCOUNTANTS}
        given = self.dp.noise_multiplier is not None
        return PrivacyRecord(
            mechanism="dpsgd",
            epsilon=spent[self.dp.accountant],
            delta=self.dp.delta,
            accountant=self.dp.accountant,
            formal_guarantee=True,
            scope="example-level (add/remove one training image), whole training run",
            details={
                "target_epsilon": None if given else 1.0 / self.config.beta,
                "epsilon_prv": spent["prv"],
                "epsilon_rdp": spent["rdp"],
                "noise_multiplier": self.sigma,
                "noise_multiplier_source": "given"
                if given
                else f"calibrated with the {self.dp.accountant} accountant to epsilon = 1/beta",
                "sample_rate": self.q,
                "steps": sum(h[2] for h in self.history),
                "epochs": self.config.epochs,
                "max_grad_norm": self.dp.max_grad_norm,
                "sampling": "Poisson (each example independently with probability q per step)",
                "norm_layers": NORM_LAYERS[self.dp.norm],
                "grad_sample_mode": self.dp.grad_sample_mode,
            },
        )
