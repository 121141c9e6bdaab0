"""The paper's Figure 2: one image of a dataset and its Local-DP copies at every β, built from the files the
Local-DP stage wrote."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..core.fileio import read_json
from ..core.names import data_provenance, ldp_cell_mechanism, mechanism_label
from ..core.plotting import save_figure
from .mechanisms import MECHANISMS, decode_stored
from .quality import psnr, quality_indices, ssim

_NAMES = {"chest_xray": "chest X-ray", "aptos": "fundus"}


def _panel_title(beta: float, privacy: dict) -> str:
    """β and every ε the copy has: per value, per m pixels (the common scale), per whole image.

    >>> print(_panel_title(1.0, {"epsilon_per_value": None, "epsilon_m_pixels": 1.0, "neighbourhood_pixels": 16,
    ...                          "epsilon_per_image": 144.0}))
    β = 1
    ε = 1 per 16 pixels
    ε = 144 per image
    """
    if privacy.get("epsilon_m_pixels") is None and privacy.get("epsilon_per_value") is None:
        why = "seeded noise" if privacy.get("noise_source") == "seeded" else "no formal guarantee"
        return f"β = {beta:g}\nno ε ({why})"
    lines = [f"β = {beta:g}"]
    if privacy.get("epsilon_per_value") is not None:
        lines.append(f"ε = {privacy['epsilon_per_value']:g} per value")
    if privacy.get("epsilon_m_pixels") is not None:
        lines.append(f"ε = {privacy['epsilon_m_pixels']:.3g} per {privacy['neighbourhood_pixels']} pixels")
    lines.append(f"ε = {privacy['epsilon_per_image']:.3g} per image")
    return "\n".join(lines)


def saturated_share(stored: np.ndarray) -> float:
    """The share of a noisy image's values that are 0 or 1 as shown (clipped): how much of it the copy wipes out.
    Computed from the noisy copy alone (post-processing of what is released), never from the clean image.

    >>> saturated_share(np.array([[[0], [300], [255], [77]]], np.int16))
    0.75
    """
    shown = np.clip(decode_stored(np.asarray(stored)), 0.0, 1.0)
    return float(np.mean((shown == 0) | (shown == 1)))


def representative_index(copies: Sequence[np.ndarray], sample: int = 256) -> int:
    """The training image whose noisy copies are the most typical, chosen from the copies alone (no statistic of
    the clean training images). Over ``sample`` evenly spaced images, every copy (mechanism, beta) is ranked by
    :func:`saturated_share` (ties share their mean rank), and the image whose rank is closest to the median in its
    least typical copy is chosen; then the smallest total distance, then the lowest index. No panel is then a lucky
    or an unlucky draw: a brightness shift at beta = 1 saturates about half of a fundus photograph in the median
    copy, and the image shown is not one it turned all black.

    >>> copy = np.stack([np.where(np.arange(4).reshape(2, 2, 1) < k, 255, 100) for k in (4, 0, 2, 1, 3)])
    >>> representative_index([copy.astype(np.int16)])  # saturated shares 1, 0, .5, .25, .75: median .5
    2
    """
    from scipy.stats import rankdata

    indices = quality_indices(len(copies[0]), sample)
    distances = np.array(
        [np.abs(rankdata([saturated_share(copy[i]) for i in indices]) - (len(indices) + 1) / 2) for copy in copies]
    )
    order = np.lexsort((indices, distances.sum(axis=0), distances.max(axis=0)))
    return int(indices[order[0]])


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


def _chosen(index: int | None, clean: np.ndarray, arrays: Sequence[np.ndarray], dataset: str) -> tuple[int, str]:
    """The training image to show, and how it was chosen: ``index``, or the most typical one."""
    if index is None:
        return representative_index(arrays), "the most typical: its copies saturate as much as the median copy"
    if not 0 <= index < len(clean):
        raise ValueError(f"ldp.figure_index {index} is outside the {len(clean)} training images of {dataset}")
    return index, "chosen by ldp.figure_index"


#: The clean panel's title: the clean image is a private training image, shown outside every guarantee.
CLEAN_TITLE = "clean training image\n(outside the guarantee:\nnot released)"


def _row_panels(
    found: dict[float, tuple[dict, np.ndarray]],
    betas: Sequence[float],
    index: int,
    clean: np.ndarray | None,
    *,
    what: str,
) -> tuple[list[np.ndarray], list[str]]:
    """One mechanism's panels (the clean image unless ``clean`` is None, then its copy at each beta) and their
    titles (epsilon; with the clean image, PSNR and SSIM against it); ``found``: its copies by beta (a missing
    beta is an error that starts with ``what``)."""
    panels, titles = ([clean], [CLEAN_TITLE]) if clean is not None else ([], [])
    for beta in betas:
        if beta not in found:
            raise ValueError(f"{what} copy at beta {beta:g} among its inputs")
        record, array = found[beta]
        noisy = decode_stored(np.asarray(array[index]))
        panels.append(noisy)
        title = _panel_title(beta, record)
        titles.append(f"{title}\n{quality_label(clean, noisy)}" if clean is not None else title)
    return panels, titles


def figure2(
    *,
    dataset: str,
    clean_npy: str | os.PathLike[str],
    copies: Sequence[str | os.PathLike[str]],
    privacy_jsons: Sequence[str | os.PathLike[str]],
    index: int | None,
    outputs: Sequence[str | os.PathLike[str]],
    data_info: str | os.PathLike[str] | None = None,
    show_clean: bool = True,
) -> int:
    """The paper's Figure 2 for one dataset: one training image clean and in each materialised Local-DP copy,
    one row per mechanism, one column per beta, with PSNR and SSIM against the clean image in every panel. The
    clean panel and the PSNR/SSIM figures are computed from a private training image: they are labelled as
    outside the guarantee, and ``show_clean=False`` (``ldp.figure_clean: false``, for a release) leaves them out.

    ``copies``: the train ``.npy`` of every copy, in the order of ``privacy_jsons``. ``index``: the image to show,
    or ``None`` for the most typical one (:func:`representative_index`). Noisy values are shown clipped to
    [0, 1]. ``data_info``: the prepared data's ``info.json``, whose source the title names (synthetic demo images
    are never called Kermany's). Returns the index shown.
    """
    clean = np.load(clean_npy, mmap_mode="r")
    records = [read_json(p) for p in privacy_jsons]
    arrays = [np.load(copy, mmap_mode="r") for copy in copies]
    for path, array in zip(copies, arrays, strict=True):
        if array.shape != clean.shape:
            raise ValueError(f"{path}: shape {array.shape} is not the clean training split's {clean.shape}")
    index, how = _chosen(index, clean, arrays, dataset)
    mechanisms = [m for m in MECHANISMS if any(r["mechanism"] == m for r in records)]
    betas = sorted({float(r["beta"]) for r in records})
    image = np.asarray(clean[index])
    columns = len(betas) + int(show_clean)
    fig, axes = plt.subplots(
        len(mechanisms), columns, figsize=(2.3 * max(columns, 2), 3.3 * len(mechanisms) + 0.9), squeeze=False
    )
    cmap = "gray" if image.shape[-1] == 1 else None
    clean_panel = image.astype(np.float32) / 255.0 if show_clean else None
    for row, mechanism in enumerate(mechanisms):
        found = {float(r["beta"]): (r, a) for r, a in zip(records, arrays, strict=True) if r["mechanism"] == mechanism}
        panels, titles = _row_panels(found, betas, index, clean_panel, what=f"Figure 2 of {dataset}: no {mechanism}")
        _draw_row(axes[row], panels, titles, mechanism_label(ldp_cell_mechanism(mechanism)), cmap)
    what = data_provenance(dataset, read_json(data_info))["description"] if data_info else dataset
    fig.suptitle(
        textwrap.fill(
            f"{_NAMES.get(dataset, dataset)} training image {index} of {len(clean)} ({how})"
            f"{', clean and' if show_clean else ''} in each Local-DP copy. Data: {what}",
            100,
        )
        + "\nnoisy values shown clipped to [0, 1]; ε, where one exists, is pure ε-DP with δ = 0",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, outputs, dpi=150)
    logging.getLogger(__name__).info(
        "Figure 2 of %s: training image %d (%s), %d mechanism(s) x %d beta(s)",
        dataset, index, how, len(mechanisms), len(betas),
    )  # fmt: skip
    return index
