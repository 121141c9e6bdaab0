"""The result figures, built only from ``results/summary.csv`` and the cells' ``history.csv``: Figures 3 and 4 of
the paper, privacy-utility and audit-AUC against epsilon (the audit figures in epsilon: :mod:`.auditfigures`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from ..core.names import CONFIGURATION, dataset_order, family, mechanism_label, mechanism_order
from ..core.plotting import save_figure
from .auditfigures import COLOURS, MEMBERSHIP_AXIS, audit_epsilon, ldp_reidentification, read_summary

log = logging.getLogger(__name__)

_save = save_figure  # one writer for every figure (tests replace it to inspect a figure)


def _cell_label(mechanism: str, beta: float) -> str:
    return mechanism_label(mechanism) if mechanism == "none" else f"{mechanism_label(mechanism)} β={beta:g}"


def figure3(*, histories: Mapping[tuple[str, str, float, int], str], outputs: Sequence[str], dpi: int) -> None:
    """Learning curves: train and test accuracy per epoch, one panel per (dataset, mechanism), one line per β
    (mean over seeds)."""
    frames, outside = [], False
    for (dataset, mechanism, beta, seed), path in histories.items():
        h = pd.read_csv(path)
        if "train_outside_guarantee" in h:
            outside |= bool(h["train_outside_guarantee"].astype(str).str.lower().eq("true").any())
        for split in ("train", "test"):
            frames.append(
                pd.DataFrame(
                    {
                        "dataset": dataset,
                        "mechanism": mechanism_label(mechanism),
                        "β": "–" if mechanism == "none" else f"{beta:g}",
                        "seed": seed,
                        "epoch": h["epoch"],
                        "split": split,
                        "accuracy": 100 * h[f"{split}_acc"],
                    }
                )
            )
    data = pd.concat(frames, ignore_index=True)
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(
        data=data,
        x="epoch",
        y="accuracy",
        hue="β",
        hue_order=sorted(set(data["β"]), key=lambda b: -1.0 if b == "–" else float(b)),
        style="split",
        row="dataset",
        col="mechanism",
        kind="line",
        errorbar=None,
        height=2.6,
        aspect=1.25,
        col_order=[mechanism_label(m) for m in sorted({k[1] for k in histories}, key=mechanism_order)],
        row_order=dataset_order(data["dataset"]),
    )
    grid.set_axis_labels("epoch", "accuracy (%)")
    grid.set_titles("{row_name} · {col_name}")
    for ax in grid.axes.flat:
        if not ax.lines:  # a Local-DP mechanism that only the other dataset lists
            ax.text(0.5, 0.5, "not in this dataset's grid", ha="center", va="center", color="0.5",
                    transform=ax.transAxes)  # fmt: skip
            ax.grid(False)
    note = "; DP-SGD train accuracy is published outside the DP guarantee" if outside else ""
    grid.figure.suptitle(f"Figure 3: learning curves (mean over seeds){note}", y=1.02)
    _save(grid.figure, outputs, dpi)


def figure4(*, summary_csv: str, outputs: Sequence[str], dpi: int) -> None:
    """Train and test accuracy (best-validation epoch, mean ± sd over seeds) by mechanism and β, per dataset;
    each panel shows its own dataset's cells (datasets may list different Local-DP mechanisms)."""
    summary = pd.read_csv(summary_csv)
    summary["cell"] = [_cell_label(m, b) for m, b in zip(summary["mechanism"], summary["beta"], strict=True)]
    long = summary.melt(
        id_vars=["dataset", "cell"], value_vars=["train_acc", "test_acc"], var_name="split", value_name="accuracy"
    )
    long["accuracy"] *= 100
    long["split"] = long["split"].map({"train_acc": "train", "test_acc": "test"})
    sns.set_theme(style="whitegrid", context="paper")
    datasets = dataset_order(long["dataset"])
    widths = [max(3.0, 0.45 * summary.loc[summary["dataset"] == d, "cell"].nunique()) for d in datasets]
    fig, axes = plt.subplots(1, len(datasets), figsize=(sum(widths) + 1.5, 4.6), squeeze=False, sharey=True,
                             gridspec_kw={"width_ratios": widths})  # fmt: skip
    for ax, dataset in zip(axes[0], datasets, strict=True):
        cells = summary[summary["dataset"] == dataset]
        order = [
            _cell_label(m, b)
            for m, b in sorted(
                {(m, b) for m, b in zip(cells["mechanism"], cells["beta"], strict=True)},
                key=lambda t: (mechanism_order(t[0]), t[1]),
            )
        ]
        sns.barplot(
            data=long[long["dataset"] == dataset],
            x="cell",
            y="accuracy",
            hue="split",
            hue_order=["train", "test"],
            order=order,
            errorbar="sd",
            ax=ax,
        )
        _figure4_intervals(ax, cells, order)
        ax.set(xlabel="", ylabel="accuracy (%)", title=dataset, ylim=(0, 105))
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        if ax is not axes[0, -1]:
            ax.get_legend().remove()
    sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.0, 1.0), title="split", frameon=False)
    marked = summary.get("train_outside_guarantee", pd.Series(dtype=object)).astype(str).str.lower().eq("true")
    note = "; DP-SGD train accuracy: outside the DP guarantee" if marked.any() else ""
    fig.suptitle(f"Figure 4: accuracy by mechanism and β (model chosen on validation data){note}")
    fig.tight_layout()
    _save(fig, outputs, dpi)


def _figure4_intervals(ax: plt.Axes, cells: pd.DataFrame, order: Sequence[str]) -> None:
    """Exact 95 % intervals on the test bars of single-seed cells (the test bar is the right one of each
    pair; seaborn draws the spread over seeds where there are several)."""
    for _, cell in single_seed_intervals(cells).iterrows():
        _accuracy_interval(ax, order.index(_cell_label(cell["mechanism"], cell["beta"])) + 0.2, cell, "black")


def _accuracy_interval(ax: plt.Axes, x: float, cell: pd.Series, colour: Any, alpha: float = 1.0) -> None:
    """One cell's test accuracy interval (``low``, ``high``: :func:`single_seed_intervals`) at ``x``, in %."""
    value, low, high = (100 * cell[c] for c in ("test_acc", "low", "high"))
    ax.errorbar(x, value, yerr=[[max(value - low, 0)], [max(high - value, 0)]], fmt="none", ecolor=colour,
                elinewidth=1, capsize=3, alpha=alpha)  # fmt: skip


def _epsilon_label(cells: pd.DataFrame) -> str:
    """Axis label of the common ε axis: any change to at most m pixels of one training image, and what each
    family's ε is on it (the DP-SGD cells' δ, read from the cells).

    >>> print(_epsilon_label(pd.DataFrame({"mechanism": ["dpsgd", "ldp-dp_pix"], "delta": [1e-4, 0],
    ...                                    "neighbourhood_pixels": [None, 16]})))
    ε for any change to ≤ 16 pixels of one training image
    Local-DP: pure ε of each noisy image
    DP-SGD: the model's ε for replacing one image (replace-one PLD), δ = 0.0001
    """
    m = sorted({int(v) for v in pd.to_numeric(cells.get("neighbourhood_pixels"), errors="coerce").dropna()})
    families = set(cells["mechanism"].map(family))
    head = f"ε for any change to ≤ {'/'.join(map(str, m)) or 'm'} pixels of one training image"
    parts = []
    if "ldp" in families:
        parts.append("Local-DP: pure ε of each noisy image")
    dp = cells[cells["mechanism"] == "dpsgd"]
    if not dp.empty:
        deltas = sorted(pd.to_numeric(dp["delta"], errors="coerce").dropna().unique())
        record = f", δ = {'/'.join(f'{d:g}' for d in deltas)}" if deltas else ""
        parts.append(f"DP-SGD: the model's ε for replacing one image (replace-one PLD){record}")
    return "\n".join([head, *parts])


def single_seed_intervals(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, mechanism, beta) with exactly one seed: its test accuracy and exact 95 % interval
    (with several seeds the spread over seeds is drawn instead).

    >>> cells = pd.DataFrame({"dataset": ["d"] * 3, "mechanism": ["dpsgd"] * 3, "beta": [1, 2, 2],
    ...                       "epsilon": [1.0, 0.5, 0.5], "test_acc": [0.8, 0.7, 0.6],
    ...                       "test_accuracy_ci_low": [0.7, 0.6, 0.5], "test_accuracy_ci_high": [0.9, 0.8, 0.7]})
    >>> single_seed_intervals(cells)[["beta", "test_acc", "low", "high"]].values.tolist()
    [[1.0, 0.8, 0.7, 0.9]]
    """
    counts = cells.groupby(CONFIGURATION)["test_acc"].transform("size")
    one = cells[(counts == 1) & cells["test_accuracy_ci_low"].notna() & cells["test_accuracy_ci_high"].notna()]
    return one.assign(low=one["test_accuracy_ci_low"], high=one["test_accuracy_ci_high"]).astype({"beta": float})


def _interval_bars(ax: plt.Axes, group: pd.DataFrame, palette: Mapping[str, Any]) -> None:
    """Exact 95 % intervals of the test accuracy of single-seed points, at their plotted ε (``x``), in the
    mechanism's colour."""
    for _, cell in single_seed_intervals(group).iterrows():
        _accuracy_interval(ax, cell["x"], cell, palette.get(mechanism_label(cell["mechanism"]), "grey"), alpha=0.7)


def tick_text(value: float) -> str:
    """A short tick label: two significant digits, thousands as k.

    >>> [tick_text(v) for v in (0.244, 1.0, 36.0, 144.0, 2304.0, 196608.0)]
    ['0.24', '1', '36', '144', '2.3k', '197k']
    """
    if value >= 1000:
        return f"{value / 1000:.2g}k" if value < 10000 else f"{value / 1000:.0f}k"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def distinct_ticks(values: pd.Series, gap: float = 1.15) -> list[float]:
    """The sorted values, leaving out any within a factor ``gap`` of the last one kept (their labels would
    overlap on a log axis).

    >>> distinct_ticks(pd.Series([0.25, 0.248, 0.5, 0.49, 1.0, 0.99]))
    [0.248, 0.49, 0.99]
    """
    kept: list[float] = []
    for value in sorted(set(values)):
        if not kept or value > kept[-1] * gap:
            kept.append(float(value))
    return kept


#: The ε of the privacy-utility plot: under "any change to at most m pixels of one training image", the one
#: neighbourhood every Local-DP mechanism and DP-SGD can state an ε for (summary.csv).
EPSILON_AXIS = "epsilon_m_pixels"
WHOLE_IMAGE_LABEL = (
    "ε for one whole training image\nLocal-DP: the noisy copy's ε for any change to the image (d/β, H·W/(m·β))\n"
    "DP-SGD: ε for adding or removing one image (patient unit: for replacing its patient's record)"
)
GUARANTEE_NAMES = {"ldp": "ε of each noisy image (Local-DP)", "dpsgd": "ε of the model (DP-SGD)"}


@dataclass(frozen=True)
class EpsilonPlot:
    """What one figure against epsilon draws. ``ys``: summary columns (column -> label); columns no cell has are
    left out. ``whole_image``: x is the epsilon for one whole training image (what a membership test asks about,
    the summary's :data:`.auditfigures.MEMBERSHIP_AXIS`), else the common m-pixel axis (:data:`EPSILON_AXIS`).
    ``chance``: a dotted line there, on the whole 0-1 axis. ``percent``: the columns are fractions, drawn in % on a
    0-100 axis with the non-private baseline (mean over seeds) dashed and exact intervals on single seeds."""

    ys: Mapping[str, str]
    ylabel: str
    title: str
    chance: float | None = None
    percent: bool = False
    whole_image: bool = False


def _epsilon_data(summary_csv: str, plot: EpsilonPlot) -> tuple[pd.DataFrame, pd.Series, str]:
    """The long table drawn (one row per cell and column: ``x``, ``value``, ``measure``, ``ε is``), the non-private
    baseline per dataset, and what the marker shows (``ε is``, or ``measure`` with several columns)."""
    axis = MEMBERSHIP_AXIS if plot.whole_image else EPSILON_AXIS
    summary = read_summary(summary_csv, axis)
    summary["x"] = pd.to_numeric(summary[axis], errors="coerce")
    scale = 100.0 if plot.percent else 1.0
    first = next(iter(plot.ys))
    baselines = summary[summary["mechanism"] == "none"].groupby("dataset")[first].mean() * scale
    data = summary[summary["x"] > 0].copy()
    data["ε is"] = data["mechanism"].map(family).map(GUARANTEE_NAMES)
    present = [c for c in plot.ys if c in data and pd.to_numeric(data[c], errors="coerce").notna().any()] or [first]
    data = pd.concat(
        [data.assign(value=scale * pd.to_numeric(data[c], errors="coerce"), measure=plot.ys[c]) for c in present],
        ignore_index=True,
    )
    return data, baselines, "measure" if len(present) > 1 else "ε is"


def _epsilon_plot(summary_csv: str, plot: EpsilonPlot, outputs: Sequence[str], dpi: int) -> None:
    """One panel per dataset of ``plot``'s columns against epsilon (log axis). The colour is the cell mechanism; the
    marker is the family (Local-DP or DP-SGD), or with several columns the column."""
    data, baselines, style = _epsilon_data(summary_csv, plot)
    sns.set_theme(style="whitegrid", context="paper")
    panels = max(1, data["dataset"].nunique())
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 4.8), squeeze=False)
    labels = [mechanism_label(m) for m in sorted(set(data["mechanism"]), key=mechanism_order)]
    groups = [(d, data[data["dataset"] == d]) for d in dataset_order(data["dataset"])]
    for ax, (dataset, group) in zip(axes[0], groups, strict=False):
        _epsilon_panel(ax, group, plot, style=style, labels=labels)
        ax.set_title(dataset)
        if plot.percent:
            _interval_bars(ax, group, PALETTE)
            ax.set_ylim(0, 102)
            if dataset in baselines and pd.notna(baselines[dataset]):
                ax.axhline(baselines[dataset], color="0.3", linestyle="--", linewidth=1, label="no privacy (baseline)")
                ax.legend()
        _sectioned_legend(ax, ("mechanism", "ε is", "measure"))
    if data.empty:
        axes[0, 0].text(0.5, 0.5, "no cell with a computed ε", ha="center", va="center")
    fig.suptitle(plot.title)
    fig.tight_layout()
    _save(fig, outputs, dpi)


#: One colour per cell mechanism, as in the audit figures, keyed by the mechanism's label.
PALETTE = {mechanism_label(m): colour for m, colour in COLOURS.items()}


def _epsilon_panel(ax: plt.Axes, group: pd.DataFrame, plot: EpsilonPlot, *, style: str, labels: list[str]) -> None:
    """One dataset's lines against epsilon, its log axis with the cells' own epsilon as ticks, and its labels."""
    fixed = {
        "style_order": list(GUARANTEE_NAMES.values()),
        "markers": dict(zip(GUARANTEE_NAMES.values(), "oX", strict=True)),
    }
    sns.lineplot(
        data=group.rename(columns={"mechanism": "cell mechanism"}).assign(
            mechanism=group["mechanism"].map(mechanism_label)
        ),
        x="x",
        y="value",
        hue="mechanism",
        hue_order=[lab for lab in labels if lab in set(group["mechanism"].map(mechanism_label))],
        style=style,
        **(fixed if style == "ε is" else {"markers": True}),
        errorbar="sd",
        palette=PALETTE,
        ax=ax,
    )
    ax.set_xscale("log")
    values = group["x"].dropna()
    # The cells' own ε (not 3×10⁻¹), at most about ten across the panel so that no two labels collide.
    ticks = distinct_ticks(values, gap=max(1.15, (values.max() / values.min()) ** 0.1) if len(values) else 1.15)
    ax.set_xticks(ticks, [tick_text(t) for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(WHOLE_IMAGE_LABEL if plot.whole_image else _epsilon_label(group), fontsize="small")
    ax.set_ylabel(plot.ylabel)
    if plot.chance is not None:
        ax.axhline(plot.chance, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_ylim(0, 1.02)  # the whole AUC range: a small effect looks small
        ax.legend()


def _sectioned_legend(ax: plt.Axes, titles: Sequence[str]) -> None:
    """The panel's legend below it, one column per seaborn section (``titles``: the section headers), padded so
    that no header wraps into another section's column; lines added by hand (baseline, chance) join the last."""
    handles, labels = ax.get_legend_handles_labels()
    sections: list[list[tuple[Any, str]]] = []
    for handle, label in zip(handles, labels, strict=True):
        if label in titles or not sections:
            sections.append([])
        sections[-1].append((handle, label))
    rows = max(len(section) for section in sections)
    blank = plt.Line2D([], [], linestyle="none")
    entries = [entry for section in sections for entry in section + [(blank, "")] * (rows - len(section))]
    ax.legend([h for h, _ in entries], [lb for _, lb in entries], ncol=len(sections), loc="upper center",
              bbox_to_anchor=(0.5, -0.36), frameon=False, fontsize="small")  # fmt: skip
    for text in ax.get_legend().get_texts():
        if text.get_text() in titles:
            text.set_fontweight("bold")


def privacy_utility(*, summary_csv: str, outputs: Sequence[str], dpi: int) -> None:
    """Test accuracy against ε (log axis), both mechanisms; cells without an ε are left out."""
    plot = EpsilonPlot({"test_acc": "test accuracy"}, "test accuracy (%)", "Privacy-utility: test accuracy against ε",
                       percent=True)  # fmt: skip
    _epsilon_plot(summary_csv, plot, outputs, dpi)


def audit_plot(*, summary_csv: str, outputs: Sequence[str], dpi: int) -> None:
    """Membership-inference attack AUC against ε: what the guarantee is worth against a real attack. The
    calibrated attack (LiRA) is drawn beside the loss threshold when it ran."""
    plot = EpsilonPlot(
        {"audit_auc": "loss threshold", "audit_lira_auc": "LiRA (calibrated)"},
        "membership-inference AUC",
        "Audit: attack AUC against ε",
        chance=0.5,
        whole_image=True,
    )
    _epsilon_plot(summary_csv, plot, outputs, dpi)


FIGURES = ("figure3", "figure4", "privacy_utility", "audit", "audit_epsilon", "ldp_reidentification")


def draw_figures(
    *, summary_csv: str, histories: Sequence[str], cells: Sequence[Sequence], outputs: Mapping[str, str], dpi: int
) -> None:
    """All result figures. ``outputs`` names each file: ``<figure>_png`` and ``<figure>_pdf`` for every figure
    of :data:`FIGURES`; ``cells`` are the (dataset, mechanism, beta label, seed) of ``histories``."""
    missing = [f"{f}_{ext}" for f in FIGURES for ext in ("png", "pdf") if f"{f}_{ext}" not in outputs]
    if missing:
        raise ValueError(f"draw_figures: no output path for {missing}")

    def pair(figure: str) -> list[str]:
        return [outputs[f"{figure}_png"], outputs[f"{figure}_pdf"]]

    by_cell = {(d, m, float(b), int(s)): h for (d, m, b, s), h in zip(cells, histories, strict=True)}
    figure3(histories=by_cell, outputs=pair("figure3"), dpi=dpi)
    figure4(summary_csv=summary_csv, outputs=pair("figure4"), dpi=dpi)
    privacy_utility(summary_csv=summary_csv, outputs=pair("privacy_utility"), dpi=dpi)
    audit_plot(summary_csv=summary_csv, outputs=pair("audit"), dpi=dpi)
    audit_epsilon(summary_csv=summary_csv, outputs=pair("audit_epsilon"), dpi=dpi)
    ldp_reidentification(summary_csv=summary_csv, outputs=pair("ldp_reidentification"), dpi=dpi)
