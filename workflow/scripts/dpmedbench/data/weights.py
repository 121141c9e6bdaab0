"""torchvision's ImageNet weights for ResNet-18: where they come from, how they are checked, and the download
that the ``weights`` rule runs on the machine with internet access. Nothing here imports PyTorch."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import DPMedBenchError

#: torchvision's ImageNet weights for ResNet-18 (ResNet18_Weights.IMAGENET1K_V1); the file name carries the
#: first 8 hex digits of the file's SHA-256, which :func:`check_weights` verifies.
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
RESNET18_SHA256_PREFIX = "f37072fd"


#: What to do when the weights cannot be downloaded here.
OFFLINE_FIX = (
    "No internet here? Download resnet18-f37072fd.pth elsewhere (" + RESNET18_URL + ") and set model.weights: "
    "<its path>, or set model.pretrained: false to train from scratch"
)


class WeightsError(DPMedBenchError):
    """Pretrained weights are missing or unusable."""


def check_weights(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a weights file; raises :class:`WeightsError` unless it starts as torchvision publishes."""
    from ..core.fileio import file_digest

    digest = file_digest(path)
    if not digest.startswith(RESNET18_SHA256_PREFIX):
        raise WeightsError(
            f"{path}: SHA-256 {digest} does not start with {RESNET18_SHA256_PREFIX}, the prefix torchvision "
            f"publishes for {RESNET18_URL}; delete the file and download it again"
        )
    return digest


def fetch_weights(*, url: str, dest: str | os.PathLike[str], retries: int = 2, backoff: float = 2.0) -> Path:
    """Download the weights to ``dest`` (resumable) and check them; a bad file is deleted, never kept. Offline,
    the error says how to run without a download (a local file, or no pretraining)."""
    from ..core.errors import DownloadError
    from .download import http_download

    try:
        path = http_download(url, Path(dest).with_name(Path(dest).name + ".download"), retries=retries, backoff=backoff)
    except DownloadError as exc:
        raise WeightsError(f"{exc}. {OFFLINE_FIX}") from exc
    try:
        check_weights(path)
    except WeightsError:
        path.unlink()
        raise
    os.replace(path, dest)
    return Path(dest)
