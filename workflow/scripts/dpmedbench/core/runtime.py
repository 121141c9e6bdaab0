"""Where and how a job runs: device, CPU threads, seeds, the batch system's record, library versions, and
SIGTERM handling. Used by training, evaluation and the benchmarks alike."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
from typing import Any

import numpy as np
import torch

from .. import __version__
from .errors import TrainingError
from .seeds import derive_seed as derive_seed  # re-exported: the training stage's streams use it


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


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that compute a result."""
    import torchvision

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "dpmedbench": __version__,
    }
    with contextlib.suppress(ImportError):
        import opacus

        found["opacus"] = opacus.__version__
    return found


class Interrupted(Exception):
    """SIGTERM (a scheduler's time limit) or SIGINT arrived; the last completed epoch is saved."""


class StopFlag:
    """Turns SIGTERM/SIGINT into :class:`Interrupted` at the next :meth:`check` (a step boundary)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
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
