"""The DP-SGD training plan: noise calibrated to the target epsilon, Poisson batches, the noisy step over physical
chunks (:func:`dpmedbench.dpsgd.noisy_step`), and accounting.

Poisson sampling at rate q = batch/N, clipping to ``max_grad_norm``, Gaussian noise of multiplier sigma
calibrated to epsilon = 1/beta at ``delta`` after all steps (or given); BatchNorm replaced (GroupNorm) or frozen.
Logical batches are processed in physical chunks of ``dpsgd.max_physical_batch``; the analysis is that of the
logical batch.

The privacy unit (``dpsgd.privacy_unit``) is one training image, or one patient: then patients are
Poisson-sampled at rate q, all their images enter the batch, each patient's per-image gradients are summed and
the sum is clipped (user-level DP-SGD), so the accountant's epsilon holds per patient.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn

from . import dpsgd as dpm
from .errors import TrainingError
from .plans import Fetch, Plan, RunningStats, Streams, TrainingData, register_plan
from .privacy import PrivacyRecord
from .settings import CellConfig

NORM_LAYERS = {
    "group": "GroupNorm(min(32, C), C) instead of BatchNorm",
    "frozen": "BatchNorm frozen at ImageNet statistics (not trained)",
}
RANDOMNESS = {
    "seeded": "seeded: the noise and the Poisson batches are derived from the cell's identity (dataset, mechanism, "
    "beta, seed) and the seed, so the guarantee assumes the seed is secret; with the published configuration the "
    "noise can be recreated",
    "os": "os: the noise and the Poisson batches come from PyTorch generators (Mersenne Twister on the CPU, "
    "Philox on CUDA; not cryptographic themselves) seeded every epoch with 63 bits from the operating system's "
    "CSPRNG (Python's secrets module), recorded nowhere; a rerun gives other weights. Opacus's secure_mode needs "
    "torchcsprng, which has no release for this PyTorch",
}
TRAIN_METRICS_NOTE = (
    "computed exactly on each epoch's Poisson batches and published without noise: outside the DP-SGD guarantee"
)


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


def group_sizes(groups: np.ndarray) -> dict[str, Any]:
    """How many images each group (patient) has in the training split.

    >>> group_sizes(np.array(["a", "a", "b", "c", "c", "c"], dtype=object))
    {'groups': 3, 'largest': 3, 'mean': 2.0, 'histogram': {'1': 1, '2': 1, '3': 1}}
    """
    counts = Counter(Counter(groups.tolist()).values())
    sizes = np.array(list(Counter(groups.tolist()).values()))
    return {
        "groups": len(sizes),
        "largest": int(sizes.max()),
        "mean": round(float(sizes.mean()), 3),
        "histogram": {str(k): counts[k] for k in sorted(counts)},
    }


@register_plan
class DPSGDPlan(Plan):
    mechanism = "dpsgd"

    def __init__(self, config: CellConfig, *, data: TrainingData, streams: Streams) -> None:
        super().__init__(config, data=data, streams=streams)
        self.dp = config.dpsgd
        self.q = config.batch_size / data.n
        if self.q >= 1:
            raise TrainingError(f"batch_size {config.batch_size} is not smaller than the {data.n} training images")
        self.steps_per_epoch = math.ceil(data.n / config.batch_size)
        self.expected_batch: float = config.batch_size
        if self.dp.privacy_unit == "patient":
            self._by_patient(data)
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

    def _by_patient(self, data: TrainingData) -> None:
        """User-level DP-SGD: patients are the units sampled at rate q and clipped."""
        if not data.groups_are_patients or data.groups is None:
            raise TrainingError(
                "dpsgd.privacy_unit 'patient' needs patient ids, and this training split has none (its groups are "
                "image ids: APTOS and MedMNIST publish no patient ids); use privacy_unit 'image'"
            )
        if self.dp.grad_sample_mode == "bk":
            raise TrainingError(
                "dpsgd.privacy_unit 'patient' clips each patient's summed gradient; 'bk' clips per image and cannot "
                "(the ghost norm of a sum needs the cross terms between its images): use 'ew', 'hooks' or 'vmap'"
            )
        patients, self.patient_of = np.unique(data.groups, return_inverse=True)
        self.images_of = [np.flatnonzero(self.patient_of == p) for p in range(len(patients))]
        self.expected_batch = self.q * len(patients)

    @property
    def norm(self) -> str:
        return self.dp.norm

    def describe(self) -> str:
        target = "given" if self.dp.noise_multiplier is not None else f"target epsilon {1.0 / self.config.beta:.4g}"
        return (
            f"dpsgd: unit {self.dp.privacy_unit}, q={self.q:.5f}, {self.steps_per_epoch * self.config.epochs} steps, "
            f"sigma={self.sigma:.4f} ({target} at delta {self.dp.delta:g}, {self.dp.accountant} accountant), clip "
            f"{self.dp.max_grad_norm:g}, {self.dp.grad_sample_mode} per-example gradients, {self.dp.noise_source} noise"
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
            expected_batch_size=self.expected_batch,  # type: ignore[arg-type]  # patients: q * patients
            generator=self.noise,
            grad_sample_mode=self.dp.grad_sample_mode,
        )

    def _seed(self, epoch: int, purpose: str) -> int:
        return secrets.randbits(63) if self.dp.noise_source == "os" else self.streams.seed_for(epoch, purpose)

    def start_epoch(self, epoch: int) -> list[torch.Tensor]:
        self.noise.manual_seed(self._seed(epoch, "noise"))
        sample = torch.Generator().manual_seed(self._seed(epoch, "sample"))
        if self.dp.privacy_unit == "image":
            return [
                torch.nonzero(torch.rand(self.n_train, generator=sample) < self.q).flatten()
                for _ in range(self.steps_per_epoch)
            ]
        batches = []
        for _ in range(self.steps_per_epoch):
            chosen = torch.nonzero(torch.rand(len(self.images_of), generator=sample) < self.q).flatten().tolist()
            images = [self.images_of[p] for p in chosen]
            batches.append(torch.from_numpy(np.concatenate(images) if images else np.zeros(0, np.int64)))
        return batches

    def step(self, batch: torch.Tensor, fetch: Fetch, stats: RunningStats) -> None:
        assert self.model is not None
        if self.dp.privacy_unit == "image":
            chunks = list(batch.split(self.dp.max_physical_batch)) if len(batch) else [batch]
            after = None
        else:
            chunks, after = self._patient_chunks(batch), self._sum_by_patient
        for losses, logits, labels in dpm.noisy_step(self.optimizer, self.sampler, self.model, chunks, fetch, after):
            if self.dp.train_metrics == "exact":
                stats.add(losses.sum(), logits, labels)
        self.history = account(self.history, self.sigma, self.q)

    def _patient_chunks(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Physical chunks of whole patients (a patient's images are never split between chunks), each of at most
        ``max_physical_batch`` images unless one patient has more."""
        if not len(batch):
            return [batch]
        patients = self.patient_of[batch.cpu().numpy()]
        starts = [0, *np.flatnonzero(patients[1:] != patients[:-1]) + 1, len(batch)]
        chunks, begin = [], 0
        for start, end in itertools.pairwise(starts):
            if end - begin > self.dp.max_physical_batch and start > begin:
                chunks.append(batch[begin:start])
                begin = start
        chunks.append(batch[begin:])
        return chunks

    def _sum_by_patient(self, chunk: torch.Tensor) -> None:
        """Replace each parameter's per-image gradients by per-patient sums, which the optimizer then clips."""
        patients = torch.as_tensor(self.patient_of[chunk.cpu().numpy()], device=chunk.device)
        _, inverse = torch.unique_consecutive(patients, return_inverse=True)
        count = int(inverse.max()) + 1
        for p in self.optimizer.params:
            per_image = p.grad_sample
            summed = torch.zeros((count, *per_image.shape[1:]), dtype=per_image.dtype, device=per_image.device)
            p.grad_sample = summed.index_add_(0, inverse.to(per_image.device), per_image)

    def end_epoch(self) -> dict[str, Any]:
        row: dict[str, Any] = {"epsilon_rdp": dpm.epsilon(self.history, delta=self.dp.delta, accountant="rdp")}
        if self.dp.train_metrics == "exact":
            row["train_outside_guarantee"] = True
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "accountant": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = [tuple(h) for h in state["accountant"]]

    def privacy(self) -> PrivacyRecord:
        spent = {acc: dpm.epsilon(self.history, delta=self.dp.delta, accountant=acc) for acc in dpm.ACCOUNTANTS}
        given = self.dp.noise_multiplier is not None
        unit = self.dp.privacy_unit
        return PrivacyRecord(
            mechanism="dpsgd",
            epsilon=spent[self.dp.accountant],
            delta=self.dp.delta,
            accountant=self.dp.accountant,
            formal_guarantee=True,
            unit=unit,
            scope=f"{unit}-level (add/remove one training {unit} with all its images), the whole training run"
            if unit == "patient"
            else "image-level (add/remove one training image), the whole training run",
            randomness=RANDOMNESS[self.dp.noise_source],
            details={
                "target_epsilon": None if given else 1.0 / self.config.beta,
                "epsilon_prv": spent["prv"],
                "epsilon_rdp": spent["rdp"],
                **self._patient_figures(spent[self.dp.accountant]),
                **self._replacement(spent[self.dp.accountant]),
                "noise_multiplier": self.sigma,
                "noise_multiplier_source": "given"
                if given
                else f"calibrated with the {self.dp.accountant} accountant to epsilon = 1/beta",
                "sample_rate": self.q,
                "sampled_units": "patients" if unit == "patient" else "images",
                "expected_batch": self.expected_batch,
                "steps": sum(h[2] for h in self.history),
                "epochs": self.config.epochs,
                "max_grad_norm": self.dp.max_grad_norm,
                "sampling": f"Poisson (each {unit} independently with probability q per step)",
                "norm_layers": NORM_LAYERS[self.dp.norm],
                "grad_sample_mode": self.dp.grad_sample_mode,
                "outside_guarantee": self._outside_guarantee(),
            },
        )

    def _outside_guarantee(self) -> dict[str, str]:
        """What is published about the training data beside the model, and not covered by epsilon."""
        outside = {
            "audit": "the membership-inference figures (evaluation.json, summary.csv audit_*) are computed from the "
            "model's losses on the training images: they measure the guarantee and are not covered by it",
            "counts": "n_train and the images per patient (hence epsilon_patient) are exact counts of the training "
            "data; the accountant treats them as public (q and the number of steps are computed from them)",
        }
        if self.dp.train_metrics == "exact":
            outside |= {"train_loss": TRAIN_METRICS_NOTE, "train_acc": TRAIN_METRICS_NOTE}
        return outside

    def _replacement(self, eps: float) -> dict[str, Any]:
        """Epsilon for changing one training image (any m of its pixels, or all): a replacement, which the
        add/remove accountant covers only as a group of two units (remove the old, add the new) - about twice its
        epsilon. At the patient unit, the changed image's patient is the group's unit."""
        value = math.inf if math.isinf(eps) else dpm.group_epsilon(self.history, delta=self.dp.delta, group_size=2)
        return {
            "epsilon_m_pixels": value,
            "epsilon_m_pixels_derivation": "changing pixels of one training image replaces that "
            f"{self.dp.privacy_unit}'s record: add/remove epsilon for a group of 2 by RDP group privacy (Mironov "
            f"2017, Prop. 2), at delta {self.dp.delta:g}; it holds for any change to one image, so for any m of its "
            "pixels too",
        }

    def _patient_figures(self, eps: float) -> dict[str, Any]:
        """What a patient gets: epsilon itself at the patient unit; by group privacy over the largest patient at
        the image unit; nothing computable where the groups are not patients."""
        if not self.data.groups_are_patients or self.data.groups is None:
            return {
                "epsilon_patient": None,
                "epsilon_patient_reason": "this source publishes no patient ids (the groups are image ids), so what "
                "a patient with several images gets cannot be computed",
            }
        sizes = group_sizes(self.data.groups)
        if self.dp.privacy_unit == "patient":
            return {"images_per_patient": sizes, "epsilon_patient": eps, "epsilon_patient_conversion": "none needed"}
        return {
            "images_per_patient": sizes,
            "epsilon_patient": dpm.group_epsilon(self.history, delta=self.dp.delta, group_size=sizes["largest"]),
            "epsilon_patient_conversion": f"RDP group privacy (Mironov 2017, Prop. 2) for the largest patient "
            f"({sizes['largest']} images, as a group of {2 ** math.ceil(math.log2(sizes['largest']))}), at delta "
            f"{self.dp.delta:g}",
        }
