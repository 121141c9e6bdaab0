"""The paper's Figure 2: one image of a dataset and its Local-DP copies at every β, built from the files the
Local-DP stage wrote."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .ldp import MECHANISMS, decode_stored, noisy_batch
from .names import data_provenance
from .plotting import save_figure
from .quality import psnr, ssim

_NAMES = {"chest_xray": "chest X-ray", "aptos": "fundus"}


def _panel_title(beta: float, privacy: dict) -> str:
    if privacy["epsilon_per_value"] is None:
        return f"β = {beta:g}\nno ε (no formal guarantee)"
    per_value, per_image = privacy["epsilon_per_value"], privacy["epsilon_per_image"]
    return f"β = {beta:g}\nε = {per_value:g} per value\nε = {per_image:.3g} per image"


def quality_label(clean: np.ndarray, noisy: np.ndarray) -> str:
    """PSNR and SSIM of a noisy panel as shown (clipped to [0, 1]) against the clean image.

    >>> quality_label(np.full((16, 16, 1), 0.5, np.float32), np.full((16, 16, 1), 0.6, np.float32))
    'PSNR 20.0 dB, SSIM 0.984'
    """
    shown = np.clip(noisy, 0.0, 1.0)
    value = psnr(clean, shown)
    return f"PSNR {min(value, 99.9):.1f} dB, SSIM {ssim(clean, shown):.3f}"


def _draw_row(axes: Sequence[Any], panels: list[np.ndarray], titles: list[str], label: str, cmap: str | None) -> None:
    for col, (ax, panel, title) in enumerate(zip(axes, panels, titles, strict=True)):
        shown = np.clip(panel, 0.0, 1.0)
        ax.imshow(shown[..., 0] if cmap else shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)
        if col == 0:
            ax.set_ylabel(label, fontsize=8)


def figure2(
    *,
    dataset: str,
    clean_npy: str | os.PathLike[str],
    copies: Sequence[str | os.PathLike[str]],
    privacy_jsons: Sequence[str | os.PathLike[str]],
    index: int,
    seed: int,
    outputs: Sequence[str | os.PathLike[str]],
    data_info: str | os.PathLike[str] | None = None,
) -> None:
    """The paper's Figure 2 for one dataset: training image ``index`` clean and at each beta, one row per
    Local-DP mechanism.

    The row of the configured mechanism shows the materialised copies (``copies``, one train ``.npy`` per
    beta, in the order of ``privacy_jsons``); the other mechanisms' rows are drawn with the same seeded
    sampler for comparison and say so. Noisy values are shown clipped to [0, 1]. ``data_info``: the prepared
    data's ``info.json``, whose source the title names (synthetic demo images are never called Kermany's).
    """
    clean = np.load(clean_npy, mmap_mode="r")
    if not 0 <= index < len(clean):
        raise ValueError(f"ldp.figure_index {index} is outside the {len(clean)} training images of {dataset}")
    records = [json.loads(Path(p).read_text()) for p in privacy_jsons]
    configured = records[0]["mechanism"]
    betas = [r["beta"] for r in records]
    image = np.asarray(clean[index])
    mechanisms = [configured] + [m for m in MECHANISMS if m != configured]
    fig, axes = plt.subplots(
        len(mechanisms),
        len(betas) + 1,
        figsize=(2.3 * (len(betas) + 1), 3.0 * len(mechanisms) + 0.8),
        squeeze=False,
    )
    cmap = "gray" if image.shape[-1] == 1 else None
    for row, mechanism in enumerate(mechanisms):
        if mechanism == configured:
            noisy = [decode_stored(np.asarray(np.load(copy, mmap_mode="r")[index])) for copy in copies]
            privacy = records
        else:
            common = {"mechanism": mechanism, "seed": seed, "dataset": dataset, "split": "train", "start": index}
            noisy = [noisy_batch(image[None], beta=beta, **common)[0] for beta in betas]
            privacy = [MECHANISMS[mechanism].privacy(beta, int(image.size)).to_json() for beta in betas]
        panels = [image.astype(np.float32) / 255.0, *noisy]
        titles = ["clean"] + [
            f"{_panel_title(beta, record)}\n{quality_label(panels[0], shown)}"
            for beta, record, shown in zip(betas, privacy, noisy, strict=True)
        ]
        source = "materialised copy" if mechanism == configured else "drawn for comparison"
        _draw_row(axes[row], panels, titles, f"{mechanism}\n({source})", cmap)
    what = data_provenance(dataset, json.loads(Path(data_info).read_text()))["description"] if data_info else dataset
    fig.suptitle(
        textwrap.fill(
            f"{_NAMES.get(dataset, dataset)} training image {index} ({what}), clean and with Local-DP noise", 100
        )
        + "\nnoisy values shown clipped to [0, 1]; ε, where one exists, is pure ε-DP with δ = 0",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, outputs, dpi=150)
    logging.getLogger(__name__).info("Figure 2 of %s: training image %d at every beta", dataset, index)
