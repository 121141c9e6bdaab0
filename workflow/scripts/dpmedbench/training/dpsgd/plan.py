"""The DP-SGD training plan: noise calibrated to the target epsilon (:mod:`.accounting`), Poisson batches
(:mod:`.sampling`), the noisy step over physical chunks (:func:`.step.noisy_step`), and the accounting of the steps
that ran.

Poisson sampling at rate q = batch/N, clipping to ``max_grad_norm``, Gaussian noise of multiplier sigma
calibrated to epsilon = 1/beta at ``delta`` after all steps (or given); BatchNorm replaced (GroupNorm) or frozen.
Logical batches are processed in physical chunks of ``dpsgd.max_physical_batch``; the analysis is that of the
logical batch.

The privacy unit (``dpsgd.privacy_unit``) is one training image, or one patient: then patients are
Poisson-sampled at rate q, all their images enter the batch, each patient's per-image gradients are summed and
the sum is clipped (user-level DP-SGD), so the accountant's epsilon holds per patient.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...core.errors import TrainingError
from ...core.noisekey import NoiseKeyError, key_id
from ...core.privacy import PrivacyRecord, guarantee_of
from ...core.settings import CellConfig
from ..plans import Fetch, Plan, RunningStats, Streams, TrainingData, register_plan
from . import accounting as acc
from .gradsample import make_grad_sampler, validate_for_dp
from .sampling import PoissonBatches
from .step import make_optimizer, noisy_step

#: Why a DP-SGD cell has no epsilon: a step ran with noise multiplier 0 (its figures are null in every record).
NOISELESS = "a step ran with noise multiplier 0: no noise, so no epsilon bounds the model (it is unbounded)"


@register_plan
class DPSGDPlan(Plan):
    mechanism = "dpsgd"

    def __init__(self, config: CellConfig, *, data: TrainingData, streams: Streams) -> None:
        super().__init__(config, data=data, streams=streams)
        self.dp = config.dpsgd
        self.batches = PoissonBatches(data, batch_size=config.batch_size, unit=self.dp.privacy_unit)
        if self.dp.privacy_unit == "patient" and self.dp.grad_sample_mode == "bk":
            raise TrainingError(
                "dpsgd.privacy_unit 'patient' clips each patient's summed gradient; 'bk' clips per image and cannot "
                "(the ghost norm of a sum needs the cross terms between its images): use 'ew', 'hooks' or 'vmap'"
            )
        if config.precision == "bf16" and self.dp.grad_sample_mode != "bk":
            raise TrainingError(
                f"model.precision 'bf16' with grad_sample_mode {self.dp.grad_sample_mode!r}: only 'bk' keeps the "
                f"per-example norms and clipping in float32 under autocast; use 'bk' or precision 'float32'"
            )
        if self.dp.noise_source == "keyed" and streams.key is None:
            raise NoiseKeyError("dpsgd.noise_source 'keyed' needs the noise key (noise_key), and none was given")
        self.q, self.steps_per_epoch = self.batches.q, self.batches.steps_per_epoch
        self.sigma = self.dp.noise_multiplier
        if self.sigma is None:
            self.sigma = acc.calibrate_noise(
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
            f"dpsgd: unit {self.dp.privacy_unit}, q={self.q:.5f}, {self.steps_per_epoch * self.config.epochs} steps, "
            f"sigma={self.sigma:.4f} ({target} at delta {self.dp.delta:g}, {self.dp.accountant} accountant), clip "
            f"{self.dp.max_grad_norm:g}, {self.dp.grad_sample_mode} per-example gradients, {self.dp.noise_source} noise"
            f"{self._precision_note()}"
        )

    def attach(self, model: nn.Module) -> None:
        validate_for_dp(model)
        self.model = model
        _, self.sampler = make_grad_sampler(
            model,
            self.dp.grad_sample_mode,  # type: ignore[arg-type]
            max_grad_norm=self.dp.max_grad_norm,
            autocast_dtype=torch.bfloat16 if self.config.precision == "bf16" else None,
        )
        self.noise = torch.Generator(device=next(model.parameters()).device)
        c = self.config
        self.optimizer = make_optimizer(
            model,
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            noise_multiplier=self.sigma,
            max_grad_norm=self.dp.max_grad_norm,
            expected_batch_size=self.batches.expected_batch,  # type: ignore[arg-type]  # patients: q * patients
            generator=self.noise,
            grad_sample_mode=self.dp.grad_sample_mode,
        )

    def start_epoch(self, epoch: int) -> list[torch.Tensor]:
        self.noise.manual_seed(self.streams.noise_seed(self.dp.noise_source, epoch, "noise"))
        return self.batches.epoch(
            torch.Generator().manual_seed(self.streams.noise_seed(self.dp.noise_source, epoch, "sample"))
        )

    def step(self, batch: torch.Tensor, fetch: Fetch, stats: RunningStats) -> None:
        assert self.model is not None
        chunks = self.batches.chunks(batch, self.dp.max_physical_batch)
        after = None
        if self.dp.privacy_unit == "patient":

            def after(chunk: torch.Tensor) -> None:
                self.batches.sum_by_patient(self.optimizer.params, chunk)

        for losses, logits, labels in noisy_step(self.optimizer, self.sampler, self.model, chunks, fetch, after):
            if self.dp.train_metrics == "exact":
                stats.add(losses.sum(), logits, labels)
        self.history = acc.account(self.history, self.sigma, self.q)

    def end_epoch(self) -> dict[str, Any]:
        seeded = self.dp.noise_source == "seeded"  # noise anyone can recreate: no epsilon so far either
        row: dict[str, Any] = {
            "epsilon_rdp": None if seeded else acc.epsilon(self.history, delta=self.dp.delta, accountant="rdp")
        }
        if self.dp.train_metrics == "exact":
            row["train_outside_guarantee"] = True
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "accountant": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = [tuple(h) for h in state["accountant"]]

    def privacy(self) -> PrivacyRecord:
        spent = {a: acc.epsilon(self.history, delta=self.dp.delta, accountant=a) for a in acc.ACCOUNTANTS}
        eps, given, unit = spent[self.dp.accountant], self.dp.noise_multiplier is not None, self.dp.privacy_unit
        figures = {"delta": self.dp.delta, "unit": unit}
        bounded = math.isfinite(eps)
        record = PrivacyRecord(
            mechanism="dpsgd",
            epsilon=eps if bounded else None,
            epsilon_reason=None if bounded else NOISELESS,
            delta=self.dp.delta,
            accountant=self.dp.accountant,
            formal_guarantee=bounded,
            unit=unit,
            scope=f"{unit}-level (add/remove one training {unit} with all its images), the whole training run"
            if unit == "patient"
            else "image-level (add/remove one training image), the whole training run",
            randomness=acc.RANDOMNESS[self.dp.noise_source],
            details={
                "target_epsilon": None if given else 1.0 / self.config.beta,
                "epsilon_prv": spent["prv"],
                "epsilon_rdp": spent["rdp"],
                **acc.patient_figures(
                    self.history, eps, **figures, groups=self.data.groups, patients=self.data.groups_are_patients
                ),
                **acc.replacement_figures(self.history, eps, **figures),
                "noise_multiplier": self.sigma,
                "noise_multiplier_source": "given"
                if given
                else f"calibrated with the {self.dp.accountant} accountant to epsilon = 1/beta",
                "sample_rate": self.q,
                "sampled_units": "patients" if unit == "patient" else "images",
                "expected_batch": self.batches.expected_batch,
                "steps": sum(h[2] for h in self.history),
                "epochs": self.config.epochs,
                "max_grad_norm": self.dp.max_grad_norm,
                "sampling": f"Poisson (each {unit} independently with probability q per step)",
                "norm_layers": acc.NORM_LAYERS[self.dp.norm],
                "grad_sample_mode": self.dp.grad_sample_mode,
                "outside_guarantee": acc.outside_guarantee(self.dp.train_metrics),
            },
        )
        keyed = self.dp.noise_source == "keyed" and self.streams.key is not None
        return guarantee_of(record, self.dp.noise_source, key_id(self.streams.key) if keyed else None)
