"""DP-SGD's logical batches: Poisson sampling at rate q = batch / N of training images, or of patients (all of a
patient's images enter the batch together; user-level DP-SGD), and the physical chunks a batch is processed in.

At the patient unit each patient's per-image gradients are summed before clipping (:meth:`PoissonBatches.
sum_by_patient`), so the accountant's epsilon holds per patient.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np
import torch

from ...core.errors import TrainingError
from ..plans import TrainingData


class PoissonBatches:
    """The batches of one DP-SGD run: ``unit`` is ``image`` or ``patient``; ``expected_batch`` is what the noisy
    sum is divided by (q times the number of units)."""

    def __init__(self, data: TrainingData, *, batch_size: int, unit: str) -> None:
        self.q = batch_size / data.n
        if self.q >= 1:
            raise TrainingError(f"batch_size {batch_size} is not smaller than the {data.n} training images")
        self.n, self.unit = data.n, unit
        self.steps_per_epoch = math.ceil(data.n / batch_size)
        self.expected_batch: float = batch_size
        if unit == "patient":
            if not data.groups_are_patients or data.groups is None:
                raise TrainingError(
                    "dpsgd.privacy_unit 'patient' needs patient ids, and this training split has none (its groups "
                    "are image ids: APTOS and MedMNIST publish no patient ids); use privacy_unit 'image'"
                )
            patients, self.patient_of = np.unique(data.groups, return_inverse=True)
            self.images_of = [np.flatnonzero(self.patient_of == p) for p in range(len(patients))]
            self.expected_batch = self.q * len(patients)

    def epoch(self, sample: torch.Generator) -> list[torch.Tensor]:
        """One epoch's batches (indices into the training split), every unit drawn independently with
        probability q at every step, from ``sample``."""
        if self.unit == "image":
            return [
                torch.nonzero(torch.rand(self.n, generator=sample) < self.q).flatten()
                for _ in range(self.steps_per_epoch)
            ]
        batches = []
        for _ in range(self.steps_per_epoch):
            chosen = torch.nonzero(torch.rand(len(self.images_of), generator=sample) < self.q).flatten().tolist()
            images = [self.images_of[p] for p in chosen]
            batches.append(torch.from_numpy(np.concatenate(images) if images else np.zeros(0, np.int64)))
        return batches

    def chunks(self, batch: torch.Tensor, size: int) -> list[torch.Tensor]:
        """Physical chunks of at most ``size`` images (an empty batch is one empty chunk, which still gets its
        noise); at the patient unit whole patients only, a patient's images never split between chunks (a chunk
        is larger only when one patient has more images)."""
        if not len(batch):
            return [batch]
        if self.unit == "image":
            return list(batch.split(size))
        patients = self.patient_of[batch.cpu().numpy()]
        starts = [0, *np.flatnonzero(patients[1:] != patients[:-1]) + 1, len(batch)]
        chunks, begin = [], 0
        for start, end in itertools.pairwise(starts):
            if end - begin > size and start > begin:
                chunks.append(batch[begin:start])
                begin = start
        chunks.append(batch[begin:])
        return chunks

    def sum_by_patient(self, params: Iterable[torch.nn.Parameter], chunk: torch.Tensor) -> None:
        """Replace each parameter's per-image gradients by per-patient sums, which the optimizer then clips."""
        patients = torch.as_tensor(self.patient_of[chunk.cpu().numpy()], device=chunk.device)
        _, inverse = torch.unique_consecutive(patients, return_inverse=True)
        count = int(inverse.max()) + 1
        for p in params:
            per_image = p.grad_sample
            summed = torch.zeros((count, *per_image.shape[1:]), dtype=per_image.dtype, device=per_image.device)
            p.grad_sample = summed.index_add_(0, inverse.to(per_image.device), per_image)
