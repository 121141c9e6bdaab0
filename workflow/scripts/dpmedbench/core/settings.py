"""The settings of one training cell, as typed values (the rule's ``cell`` parameter, validated by the schema).

A few of them change only speed or memory, never results: :data:`SPEED_ONLY` lists them. The workflow keeps
them out of the rules' parameters, so changing them reruns nothing; they reach the job from the configuration
when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Configuration keys that change only speed, memory or where a job runs: (section, key). Not among them:
#: ``model.max_physical_batch``, since BatchNorm's batch statistics (non-private cells) depend on the chunk.
SPEED_ONLY = (
    ("", "device"),
    ("model", "eval_batch"),
    ("model", "channels_last"),
    ("dpsgd", "max_physical_batch"),
    ("ldp", "chunk_images"),
)


@dataclass(frozen=True)
class DPSettings:
    delta: float = 1e-4
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    accountant: str = "prv"
    norm: str = "group"
    grad_sample_mode: str = "bk"
    noise_source: str = "keyed"  # keyed | seeded | os
    train_metrics: str = "exact"  # exact | none
    privacy_unit: str = "image"  # image | patient
    max_physical_batch: int = 32  # speed and memory only (GroupNorm or frozen BatchNorm: no batch statistics)


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
    device: str = "auto"  # where it runs: not a result setting
    eval_batch: int = 256  # speed and memory only
    channels_last: bool = False  # speed and memory only
    precision: str = "float32"  # float32 | bf16 (autocast of the training passes; DP-SGD clips in float32)
    max_physical_batch: int = 128  # chunks of a non-private batch: BatchNorm's statistics depend on it
    canaries: int = 0  # the one-run audit's canaries (evaluation.canaries; DP-SGD cells)
    dpsgd: DPSettings = field(default_factory=DPSettings)


def execution_settings(resources: Any) -> dict[str, object]:
    """The speed-only settings of a training job (``run_cell``'s ``execution``) from its rule's resources,
    where the workflow puts them so that changing them reruns nothing.

    >>> from types import SimpleNamespace
    >>> execution_settings(SimpleNamespace(device="cpu", eval_batch=8, dp_max_physical_batch=2, channels_last=False))
    {'device': 'cpu', 'eval_batch': 8, 'dp_max_physical_batch': 2, 'channels_last': False}
    """
    keys = ("device", "eval_batch", "dp_max_physical_batch", "channels_last")
    return {key: getattr(resources, key) for key in keys}
