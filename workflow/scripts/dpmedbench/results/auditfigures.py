"""The audit figures that speak in epsilon: accounted epsilon against what the audits show (the one-run canary
audit's lower bound, and the membership tests' estimates, which bound nothing), and what an attacker recovers from
the Local-DP copies. Built only from ``results/summary.csv``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..core.names import dataset_order, family, mechanism_label, mechanism_order
from ..core.plotting import save_figure

#: What is drawn, summary column -> (legend label, marker, its ceiling's column): the canary audit's lower bound
#: (membership randomised), and the membership tests' estimates (fixed members against held-out images).
BOUNDS = {
    "audit_epsilon_estimate": ("loss threshold: estimate, not a bound", "o", "audit_epsilon_estimate_ceiling"),
    "audit_lira_epsilon_estimate": ("LiRA: estimate, not a bound", "s", None),
    "audit_canary_epsilon_lb": ("one-run canaries: lower bound", "^", "audit_canary_epsilon_ceiling"),
}
#: Side by side, so that no marker hides another.
OFFSETS = {"audit_epsilon_estimate": 1.0, "audit_lira_epsilon_estimate": 1.25, "audit_canary_epsilon_lb": 0.8}
#: One colour per cell mechanism, the same in every audit figure.
COLOURS = {
    "none": "0.45",
    "ldp-laplace_pixel": "tab:blue",
    "ldp-laplace_image_shift": "tab:green",
    "ldp-dp_pix": "tab:purple",
    "dpsgd": "tab:orange",
}
FLOOR = 1e-2  # where a bound of 0 is drawn on the log axis


#: The summary column of the accounted epsilon for one training image's membership (written from each cell's
#: privacy record by :meth:`PrivacyRecord.membership_epsilon`): the x of every audit figure.
MEMBERSHIP_AXIS = "epsilon_membership"


def read_summary(summary_csv: str | os.PathLike[str], *columns: str) -> pd.DataFrame:
    """``summary.csv``, refused with a clear message when a column a figure needs is missing (a summary written by
    an older version)."""
    summary = pd.read_csv(summary_csv)
    missing = [c for c in columns if c not in summary]
    if missing:
        raise ValueError(f"{summary_csv}: no {', '.join(missing)} column (written by an older version); rerun summary")
    return summary


def accounted_epsilon(summary: pd.DataFrame) -> pd.Series:
    """The accounted epsilon each cell's guarantee gives one training image's membership (the summary's
    :data:`MEMBERSHIP_AXIS`), NaN where there is none or it is not positive (a log axis).

    >>> accounted_epsilon(pd.DataFrame({MEMBERSHIP_AXIS: [0.5, None, 0.0, 2304.0]})).tolist()
    [0.5, nan, nan, 2304.0]
    """
    return pd.to_numeric(summary[MEMBERSHIP_AXIS], errors="coerce").where(lambda x: x > 0).rename(None)


def spread(x: pd.Series, width: float = 0.6) -> np.ndarray:
    """Multiplicative offsets that spread the cells sharing an x position over +-``width`` / 2 (log scale),
    so that no point hides another.

    >>> spread(pd.Series([1.0, 5.0, 5.0])).round(3).tolist()
    [1.0, 0.741, 1.35]
    """
    offsets = np.ones(len(x))
    values = x.to_numpy()
    for value in np.unique(values):
        where = np.flatnonzero(values == value)
        if len(where) > 1:
            offsets[where] = np.exp(np.linspace(-width / 2, width / 2, len(where)))
    return offsets


def top_of(summary: pd.DataFrame) -> float:
    """The y axis's top: three times the largest bound or ceiling drawn, at least 10."""
    columns = [c for column, (_, _, ceiling) in BOUNDS.items() for c in (column, ceiling) if c and c in summary]
    values = pd.to_numeric(summary[columns].stack(), errors="coerce") if columns else pd.Series(dtype=float)
    return max(10.0, 3 * float(values.max())) if values.notna().any() else 10.0


def audit_epsilon(*, summary_csv: str | os.PathLike[str], outputs: Sequence[str], dpi: int) -> None:
    """Accounted epsilon (x) against what the audits show (y), log axes, one panel per dataset: the canary
    audit's lower bound (above the line y = x it would contradict the guarantee) and the membership tests'
    estimates (not bounds). Each one's ceiling (what a perfect attack could show with this sample) is the cap of
    the thin line above it. Cells without a guarantee stand right of the axis break, at 'none'."""
    summary = read_summary(summary_csv, MEMBERSHIP_AXIS)
    summary["accounted"] = accounted_epsilon(summary)
    datasets = dataset_order(summary["dataset"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.6), squeeze=False)
    finite = summary["accounted"].dropna()
    right = float(finite.max()) * 30 if len(finite) else 10.0
    left = min(float(finite.min()) / 3, 0.1) if len(finite) else 0.1
    for ax, dataset in zip(axes[0], datasets, strict=True):
        cells = summary[summary["dataset"] == dataset]
        x = cells["accounted"].fillna(right)
        jitter = spread(x)
        for column, (_, marker, ceiling) in BOUNDS.items():
            if column not in cells or pd.to_numeric(cells[column], errors="coerce").isna().all():
                continue
            y = pd.to_numeric(cells[column], errors="coerce")
            for (_, cell), xi, yi, j in zip(cells.iterrows(), x, y, jitter * OFFSETS[column], strict=True):
                if np.isnan(yi):
                    continue
                colour = COLOURS.get(cell["mechanism"], "black")
                top = pd.to_numeric(cell.get(ceiling), errors="coerce") if ceiling else np.nan
                if not np.isnan(top):
                    ax.plot([xi * j] * 2, [max(yi, FLOOR), top], color=colour, linewidth=0.6, alpha=0.5)
                    ax.plot(xi * j, top, marker="_", color=colour, markersize=9, alpha=0.7)
                ax.plot(xi * j, max(yi, FLOOR), marker=marker, color=colour, linestyle="none", markersize=6)
        span = np.array([left, right])
        ax.plot(span, span, color="black", linestyle="--", linewidth=0.8)
        ax.axvline(right / 5, color="0.8", linewidth=4)  # the break before 'none'
        ax.set(xscale="log", yscale="log", xlim=(left, right * 3), ylim=(FLOOR / 1.5, top_of(summary)))
        ticks = [t for t in 10.0 ** np.arange(-2, 7) if left <= t <= right / 10]
        ax.set_xticks([*ticks, right], [f"{t:g}" for t in ticks] + ["none"])
        ax.set_xlabel(
            "accounted ε for one training image's membership\nDP-SGD: ε per image (patient unit: per replaced "
            "patient record)\nLocal-DP: whole image, d/β or H·W/(m·β)",
            fontsize="small",
        )
        ax.set_ylabel("empirical ε (95 %): canary lower bound or MIA estimate\n(0 drawn at 0.01)", fontsize="small")
        ax.set_title(dataset)
    handles = [
        plt.Line2D([], [], color=COLOURS.get(m, "black"), marker="o", linestyle="none", label=mechanism_label(m))
        for m in sorted(set(summary["mechanism"]), key=mechanism_order)
    ]
    handles += [
        plt.Line2D([], [], color="black", marker=mk, linestyle="none", label=lb)
        for col, (lb, mk, _) in BOUNDS.items()
        if col in summary and pd.to_numeric(summary[col], errors="coerce").notna().any()
    ]
    handles += [
        plt.Line2D([], [], color="black", linestyle="--", label="y = x (a canary bound above it breaks the guarantee)"),
        plt.Line2D([], [], color="black", marker="_", linestyle="none", markersize=9, label="ceiling of the audit"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle("Accounted ε against the audits: the canaries' lower bound, the membership tests' estimates", y=1.0)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    save_figure(fig, outputs, dpi)


def ldp_reidentification(*, summary_csv: str | os.PathLike[str], outputs: Sequence[str], dpi: int) -> None:
    """Re-identification of the Local-DP copies' training images against β (log axis): top-1 (solid) and
    top-5 (dashed) rates in %, one colour per Local-DP mechanism, with chance (dotted)."""
    summary = pd.read_csv(summary_csv)
    is_ldp = summary["mechanism"].map(family) == "ldp"
    copies = summary[is_ldp & summary.get("ldp_reid_top1", pd.Series(dtype=float)).notna()]
    copies = copies.drop_duplicates(["dataset", "mechanism", "beta"])  # one copy serves every seed
    datasets = dataset_order(summary["dataset"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        group = copies[copies["dataset"] == dataset].sort_values("beta")
        for mechanism in sorted(set(group["mechanism"]), key=mechanism_order):
            rows = group[group["mechanism"] == mechanism]
            colour, name = COLOURS.get(mechanism, "black"), mechanism_label(mechanism)
            ax.plot(rows["beta"], 100 * rows["ldp_reid_top1"], marker="o", color=colour, label=f"{name}: top-1")
            ax.plot(rows["beta"], 100 * rows["ldp_reid_top5"], marker="o", linestyle="--", color=colour, alpha=0.7,
                    label=f"{name}: top-5")  # fmt: skip
        if len(group):
            chance = 100 * float(group["ldp_reid_chance_top1"].iloc[0])
            ax.axhline(chance, color="grey", linestyle=":", label=f"chance, top-1 ({chance:.2g} %)")
            ax.axhline(min(5 * chance, 100), color="grey", linestyle="-.", linewidth=0.8, label="chance, top-5")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(group["beta"].unique()), [f"{b:g}" for b in sorted(group["beta"].unique())])
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
        else:
            ax.text(0.5, 0.5, "no Local-DP copy", ha="center", va="center", transform=ax.transAxes)
        ax.set(
            ylim=(0, 102),
            xlabel="β (Laplace scale on [0, 1]; DP-Pix: ε = 1/β)",
            ylabel="noisy images re-identified (%)",
        )
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    fig.suptitle("Re-identification: matching a noisy copy to its clean original", y=1.0)
    fig.tight_layout()
    save_figure(fig, outputs, dpi)
