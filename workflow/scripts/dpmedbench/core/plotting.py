"""The one way figures are written: every format of a figure at once, atomically, and logged."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

log = logging.getLogger(__name__)


def save_figure(fig: plt.Figure, outputs: Sequence[str | os.PathLike[str]], dpi: int) -> None:
    """Write ``fig`` to every path of ``outputs`` (the format from each suffix), renamed into place only when
    all are written, then close it."""
    from .fileio import atomic_outputs

    with atomic_outputs(*outputs) as tmps:
        for tmp, final in zip(tmps, outputs, strict=True):
            fig.savefig(tmp, format=Path(final).suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", ", ".join(map(str, outputs)))
