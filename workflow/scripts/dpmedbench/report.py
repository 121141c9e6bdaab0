"""Tables and figures of the results, built only from ``results/summary.csv`` and the cells' ``history.csv``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from .auditfigures import COLOURS, accounted_epsilon, audit_epsilon, ldp_reidentification
from .fileio import atomic_outputs
from .plotting import save_figure

log = logging.getLogger(__name__)
from .names import dataset_order, family, mechanism_label, mechanism_order

#: Numbers the paper's text reports (Singh et al. 2020, section "Experimental Result"): the non-private
#: baselines' train/test accuracy in %. LDP and DP-SGD values appear only as bars in its Figure 4.
PAPER_BASELINES = {"chest_xray": (99.76, 90.22), "aptos": (98.39, 80.21)}
GROUP = ["dataset", "mechanism", "beta"]
TABLE_METRICS = {
    "epsilon": "ε",
    "epsilon_patient": "ε per patient",
    "train_acc": "train acc",
    "val_acc": "val acc",
    "test_acc": "test acc",
    "test_acc_max": "max test acc (authors)",
    "test_balanced_accuracy": "balanced acc",
    "test_macro_f1": "macro-F1",
    "test_auroc": "AUROC",
    "test_quadratic_kappa": "QWK",
    "audit_auc": "MIA AUC",
    "audit_tpr_at_1pct_fpr": "MIA TPR at 1% FPR",
    "audit_epsilon_lb": "MIA ε lower bound",
    "audit_epsilon_ceiling": "ε bound ceiling",
    "audit_lira_auc": "LiRA AUC",
    "audit_lira_tpr_at_1pct_fpr": "LiRA TPR at 1% FPR",
    "audit_lira_epsilon_lb": "LiRA ε lower bound",
    "audit_canary_epsilon_lb": "canary ε lower bound",
}
#: Columns left out of the formatted tables when no cell has them (the calibrated attack is optional).
OPTIONAL_METRICS = (
    "audit_lira_auc",
    "audit_lira_tpr_at_1pct_fpr",
    "audit_lira_epsilon_lb",
    "epsilon_patient",
    "audit_epsilon_lb",
    "audit_epsilon_ceiling",
    "audit_canary_epsilon_lb",
)


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of every table metric, per (dataset, mechanism, beta)."""
    rows = []
    for key, group in summary.groupby(GROUP, sort=False):
        row = dict(zip(GROUP, key, strict=True))
        row["seeds"] = len(group)
        outside = group["train_outside_guarantee"] if "train_outside_guarantee" in group else pd.Series(dtype=bool)
        row["train_outside_guarantee"] = bool(outside.astype(str).str.lower().eq("true").any())
        units = group["privacy_unit"].dropna().unique() if "privacy_unit" in group else []
        row["privacy_unit"] = "/".join(sorted(map(str, units))) or "–"
        for col in TABLE_METRICS:
            values = pd.to_numeric(group[col], errors="coerce").dropna()
            row[f"{col}_mean"] = values.mean() if len(values) else np.nan
            row[f"{col}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out["_order"] = out["mechanism"].map(mechanism_order)
    out["_dataset"] = out["dataset"].map({d: i for i, d in enumerate(dataset_order(out["dataset"]))})
    out = out.sort_values(["_dataset", "_order", "beta"]).drop(columns=["_order", "_dataset"])
    return out.reset_index(drop=True)


def _cell(mean: float, sd: float, percent: bool, digits: int = 3) -> str:
    if pd.isna(mean):
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{mean * scale:.1f}" if percent else f"{mean:.{digits}g}"
    if not pd.isna(sd):
        text += f" ± {sd * scale:.1f}" if percent else f" ± {sd:.2g}"
    return text


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable table: accuracies in %, mean ± sd over seeds."""
    out = pd.DataFrame(
        {
            "dataset": table["dataset"],
            "mechanism": table["mechanism"].map(mechanism_label),
            "β": table["beta"].map(lambda b: "–" if b == 0 else f"{b:g}"),
            "seeds": table["seeds"],
        }
    )
    for col, label in TABLE_METRICS.items():
        if col in OPTIONAL_METRICS and table[f"{col}_mean"].isna().all():
            continue
        percent = col.endswith("acc") or col.endswith("acc_max") or col == "test_balanced_accuracy"
        out[label + (" (%)" if percent else "")] = [
            _cell(m, s, percent) for m, s in zip(table[f"{col}_mean"], table[f"{col}_sd"], strict=True)
        ]
    out.insert(out.columns.get_loc("ε") + 1, "ε per", table["privacy_unit"])
    out["train acc (%)"] = [
        text + (OUTSIDE_MARK if outside and text != "–" else "")
        for text, outside in zip(out["train acc (%)"], table["train_outside_guarantee"], strict=True)
    ]
    return out


OUTSIDE_MARK = " †"
OUTSIDE_NOTE = (
    "† DP-SGD train accuracy: computed exactly on the training batches and published without noise, outside the "
    "DP-SGD guarantee."
)


#: Unicode the tables use, as LaTeX (pdflatex with the default fonts knows none of it).
LATEX = {
    "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "±": r"$\pm$", "ε": r"$\varepsilon$", "β": r"$\beta$",
    "δ": r"$\delta$", "σ": r"$\sigma$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "–": "--",
    "—": "---", "†": r"\textdagger{}", "→": r"$\rightarrow$", "…": r"\ldots{}", "·": r"$\cdot$",
}  # fmt: skip
#: Value columns per LaTeX table: more are split over several tables that repeat the key columns.
LATEX_COLUMNS = 5


def latex_escape(text: object) -> str:
    r"""Text for LaTeX, Unicode symbols included.

    >>> latex_escape("ε at δ = 1e-4, 50 % ± 1")
    '$\\varepsilon$ at $\\delta$ = 1e-4, 50 \\% $\\pm$ 1'
    """
    return "".join(LATEX.get(ch, ch) for ch in str(text))


def _latex(table: pd.DataFrame, caption: str, keys: int = 3) -> str:
    """booktabs tables that fit an article page: the first ``keys`` columns on the left of every part, the
    others :data:`LATEX_COLUMNS` at a time in wrapping ``tabularx`` columns (packages booktabs and tabularx)."""
    cols = list(table.columns)
    values = [cols[i : i + LATEX_COLUMNS] for i in range(keys, len(cols), LATEX_COLUMNS)] or [[]]
    # A long key (a mechanism's name) wraps in a narrow column instead of pushing the table off the page.
    key_specs = [
        "l" if table[c].astype(str).str.len().max() <= 12 else r">{\raggedright\arraybackslash}p{5.5em}"
        for c in cols[:keys]
    ]
    lines = []
    for part, group in enumerate(values, 1):
        shown = cols[:keys] + group
        note = f" (part {part} of {len(values)})" if len(values) > 1 else ""
        lines += [
            r"\begin{table}[tp]",
            r"\centering",
            r"\small",
            r"\setlength{\tabcolsep}{3pt}",
            f"\\caption{{{latex_escape(caption) if part == 1 else 'continued'}{note}}}",
            r"\begin{tabularx}{\linewidth}{"
            + "".join(key_specs)
            + r">{\raggedleft\arraybackslash}X" * len(group)
            + "}",
            r"\toprule",
            " & ".join(latex_escape(c) for c in shown) + r" \\",
            r"\midrule",
            *(" & ".join(latex_escape(v) for v in row) + r" \\" for row in table[shown].itertuples(index=False)),
            r"\bottomrule",
            r"\end{tabularx}",
            r"\end{table}",
            "",
        ]
    return "\n".join(lines)


def html_table(shown: pd.DataFrame, caption: str) -> str:
    """A self-contained HTML page with the table and its caption (shown inside the Snakemake report).

    >>> "<caption>c &amp; d</caption>" in html_table(pd.DataFrame({"a": [1]}), "c & d")
    True
    """
    from html import escape

    body = shown.to_html(index=False, na_rep="–", border=0, classes="results")
    body = body.replace('<table border="0" class="dataframe results">', '<table class="results">', 1)
    body = body.replace("<thead>", f"<caption>{escape(caption)}</caption>\n  <thead>", 1)
    style = (
        "body{font-family:sans-serif;font-size:13px;margin:8px} table{border-collapse:collapse} "
        "caption{caption-side:top;text-align:left;max-width:70em;margin-bottom:6px} "
        "th,td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right} "
        "th{border-bottom:2px solid #333;vertical-align:bottom} "
        "td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}"
    )
    head = f'<head><meta charset="utf-8"><style>{style}</style></head>'
    return f"<!DOCTYPE html>\n<html>{head}\n<body>\n{body}\n</body></html>\n"


def _write_table(table: pd.DataFrame, shown: pd.DataFrame, caption: str, paths: Sequence[Path]) -> None:
    """``paths``: .csv (every column, unformatted), .md, .tex and .html (formatted)."""
    with atomic_outputs(*paths) as (csv_tmp, md_tmp, tex_tmp, html_tmp):
        table.to_csv(csv_tmp, index=False)
        md_tmp.write_text(f"{caption}\n\n{shown.to_markdown(index=False)}\n")
        tex_tmp.write_text(_latex(shown, caption))
        html_tmp.write_text(html_table(shown, caption))
    log.info("wrote %s: %d rows, %d columns", ", ".join(map(str, paths)), len(shown), len(shown.columns))


def paper_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Our accuracies (mean over seeds, %, from :func:`aggregate`'s ``table``) beside the paper's, under both
    selection rules."""
    rows = []
    for r in table.itertuples(index=False):
        paper = PAPER_BASELINES.get(r.dataset) if r.mechanism == "none" else None
        rows.append(
            {
                "dataset": r.dataset,
                "mechanism": mechanism_label(r.mechanism),
                "β": "–" if r.beta == 0 else f"{r.beta:g}",
                "paper train (%)": paper[0] if paper else "not in the text",
                "paper test (%)": paper[1] if paper else "not in the text",
                "ours train, best-val epoch (%)": "–"
                if pd.isna(r.train_acc_mean)
                else f"{100 * r.train_acc_mean:.2f}" + (OUTSIDE_MARK if r.train_outside_guarantee else ""),
                "ours test, best-val epoch (%)": round(100 * r.test_acc_mean, 2),
                "ours test, best-test epoch (authors' protocol, %)": round(100 * r.test_acc_max_mean, 2),
            }
        )
    return pd.DataFrame(rows)


def _epsilon_caption(summary: pd.DataFrame) -> str:
    """What the tables' ε are, read from the cells: accountant, δ and unit of the DP-SGD cells; Local-DP's unit.

    >>> cells = pd.DataFrame({"mechanism": ["dpsgd", "ldp-laplace_pixel", "ldp-laplace_image_shift"],
    ...     "accountant": ["prv", "x", None], "delta": [1e-4, 0, None],
    ...     "privacy_unit": ["patient", "pixel value", None]})
    >>> for part in _epsilon_caption(cells).split("; "):
    ...     print(part)
    ε: DP-SGD at δ = 0.0001 by the prv accountant, per patient
    Local-DP, per-pixel Laplace: per pixel value
    Local-DP, image shift: no ε (no formal guarantee).
    """
    parts = []
    dp = summary[summary["mechanism"] == "dpsgd"]
    if not dp.empty:
        accountants = ", ".join(sorted(dp["accountant"].dropna().astype(str).unique())) or "unrecorded"
        deltas = "/".join(f"{d:g}" for d in sorted(pd.to_numeric(dp["delta"], errors="coerce").dropna().unique()))
        units = " or ".join(sorted(dp.get("privacy_unit", pd.Series(dtype=str)).dropna().astype(str).unique()))
        parts.append(f"DP-SGD at δ = {deltas or '?'} by the {accountants} accountant, per {units or 'image'}")
    ldp = summary[summary["mechanism"].map(family) == "ldp"]
    for mechanism in sorted(ldp["mechanism"].unique(), key=mechanism_order):
        cells = ldp[ldp["mechanism"] == mechanism]
        units = sorted(cells.get("privacy_unit", pd.Series(dtype=str)).dropna().astype(str).unique())
        name = mechanism_label(mechanism)
        parts.append(f"{name}: per {' or '.join(units)}" if units else f"{name}: no ε (no formal guarantee)")
    return f"ε: {'; '.join(parts)}." if parts else ""


def write_tables(*, summary_csv: str | os.PathLike[str], main: Sequence[str], paper: Sequence[str]) -> None:
    """``main`` and ``paper``: (csv, md, tex, html) paths each."""
    summary = pd.read_csv(summary_csv)
    table = aggregate(summary)
    _write_table(
        table,
        formatted(table),
        "Results per dataset, mechanism and β: mean ± sd over seeds; accuracies at the epoch of best "
        f"validation accuracy, except the authors' max test accuracy over epochs. {_epsilon_caption(summary)} "
        "The membership-inference (MIA, LiRA) figures use the training images: they measure the guarantee and are "
        "not covered by it. Their ε lower bounds (95 %, threshold chosen on half of the images) estimate the leakage "
        "the attack shows; the ceiling is the most the sample sizes could show, whatever the attack. TPR at 1 % FPR "
        "is left empty where fewer than 100 non-members cannot resolve a 1 % false-positive rate. The canary "
        "bound (one-run audit, when canaries ran) is for a model trained with canaries, not the released one. "
        + OUTSIDE_NOTE,
        [Path(p) for p in main],
    )
    comparison = paper_comparison(table)
    _write_table(
        comparison,
        comparison,
        "Our accuracies beside the paper's (Singh et al. 2020): the paper reports numbers only for the "
        "baselines; it selected the epoch with the best test accuracy. " + OUTSIDE_NOTE,
        [Path(p) for p in paper],
    )


def write_data_table(*, infos: Mapping[str, str | os.PathLike[str]], outputs: Sequence[str]) -> pd.DataFrame:
    """``results/tables/data`` (.csv, .md): which data each dataset of the run is (synthetic demo images, a
    MedMNIST stand-in or the real archive), where it came from and the SHA-256 of what was read, from each
    prepared dataset's ``info.json``."""
    import json

    from .names import data_provenance

    rows = []
    for dataset, path in infos.items():
        info = json.loads(Path(path).read_text())
        p = data_provenance(dataset, info)
        counts = info.get("counts", {})
        rows.append(
            {
                "dataset": dataset,
                "data": p["description"],
                "source": p["source"],
                "synthetic": p["synthetic"],
                "images (train/val/test)": "/".join(
                    str(sum(counts.get(s, {}).values())) for s in ("train", "val", "test")
                ),
                "sha256": p["sha256"],
                "sha256 of": p["sha256_of"],
                "archive": p["path"],
            }
        )
    table = pd.DataFrame(rows)
    caption = "Data of this run: which images each dataset is, where they came from, and the SHA-256 of what was read."
    with atomic_outputs(*outputs) as (csv_tmp, md_tmp, html_tmp):
        table.to_csv(csv_tmp, index=False)
        md_tmp.write_text(f"{caption}\n\n{table.to_markdown(index=False)}\n")
        html_tmp.write_text(html_table(table, caption))
    log.info("wrote %s: one row per dataset (%s)", ", ".join(map(str, outputs)), ", ".join(map(str, infos)))
    return table


# ------------------------------------------------------------------------------------------------- figures
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
    DP-SGD: the model's ε for replacing one image (RDP, group of 2), δ = 0.0001
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
        parts.append(f"DP-SGD: the model's ε for replacing one image (RDP, group of 2){record}")
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
    counts = cells.groupby(GROUP)["test_acc"].transform("size")
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


def _epsilon_plot(
    summary_csv: str,
    ys: Mapping[str, str],
    ylabel: str,
    title: str,
    outputs: Sequence[str],
    dpi: int,
    chance: float | None = None,
    percent: bool = False,
    whole_image: bool = False,
) -> None:
    """``ys``: summary columns to draw (column -> label) against ε: by default the common m-pixel axis
    (:data:`EPSILON_AXIS`), with ``whole_image`` the ε for one whole training image (what a membership test asks
    about, :func:`auditfigures.accounted_epsilon`). Columns no cell has are left out. The colour is the cell
    mechanism; the marker is the family (Local-DP or DP-SGD), or with several columns the column. ``percent``: the
    columns are fractions, drawn in % on a 0-100 axis with the non-private baseline (mean over seeds) dashed."""
    summary = pd.read_csv(summary_csv)
    if EPSILON_AXIS not in summary:
        raise ValueError(f"{summary_csv}: no {EPSILON_AXIS} column (written by an older version); rerun summary")
    summary["x"] = accounted_epsilon(summary) if whole_image else pd.to_numeric(summary[EPSILON_AXIS], errors="coerce")
    scale = 100.0 if percent else 1.0
    baselines = summary[summary["mechanism"] == "none"].groupby("dataset")[next(iter(ys))].mean() * scale
    data = summary[summary["x"] > 0].copy()
    data["ε is"] = data["mechanism"].map(family).map(GUARANTEE_NAMES)
    present = [c for c in ys if c in data and pd.to_numeric(data[c], errors="coerce").notna().any()] or [next(iter(ys))]
    data = pd.concat(
        [data.assign(value=scale * pd.to_numeric(data[c], errors="coerce"), measure=ys[c]) for c in present],
        ignore_index=True,
    )
    style = "measure" if len(present) > 1 else "ε is"
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(
        1, max(1, data["dataset"].nunique()), figsize=(5.6 * max(1, data["dataset"].nunique()), 4.8), squeeze=False
    )
    labels = [mechanism_label(m) for m in sorted(set(data["mechanism"]), key=mechanism_order)]
    palette = {mechanism_label(m): colour for m, colour in COLOURS.items()}  # the audit figures' colours
    groups = [(d, data[data["dataset"] == d]) for d in dataset_order(data["dataset"])]
    for ax, (dataset, group) in zip(axes[0], groups, strict=False):
        xlabel = WHOLE_IMAGE_LABEL if whole_image else _epsilon_label(group)
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
            palette=palette,
            ax=ax,
        )
        ax.set_xscale("log")
        values = group["x"].dropna()
        # The cells' own ε (not 3×10⁻¹), at most about ten across the panel so that no two labels collide.
        ticks = distinct_ticks(values, gap=max(1.15, (values.max() / values.min()) ** 0.1) if len(values) else 1.15)
        ax.set_xticks(ticks, [tick_text(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel, fontsize="small")
        ax.set_ylabel(ylabel)
        ax.set_title(dataset)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
            ax.set_ylim(0, 1.02)  # the whole AUC range: a small effect looks small
            ax.legend()
        if percent:
            _interval_bars(ax, group, palette)
            ax.set_ylim(0, 102)
            if dataset in baselines and pd.notna(baselines[dataset]):
                ax.axhline(baselines[dataset], color="0.3", linestyle="--", linewidth=1, label="no privacy (baseline)")
                ax.legend()
        _sectioned_legend(ax, ("mechanism", "ε is", "measure"))
    if data.empty:
        axes[0, 0].text(0.5, 0.5, "no cell with a computed ε", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, outputs, dpi)


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
    _epsilon_plot(
        summary_csv,
        {"test_acc": "test accuracy"},
        "test accuracy (%)",
        "Privacy-utility: test accuracy against ε",
        outputs,
        dpi,
        percent=True,
    )


def audit_plot(*, summary_csv: str, outputs: Sequence[str], dpi: int) -> None:
    """Membership-inference attack AUC against ε: what the guarantee is worth against a real attack. The
    calibrated attack (LiRA) is drawn beside the loss threshold when it ran."""
    _epsilon_plot(
        summary_csv,
        {"audit_auc": "loss threshold", "audit_lira_auc": "LiRA (calibrated)"},
        "membership-inference AUC",
        "Audit: attack AUC against ε",
        outputs,
        dpi,
        chance=0.5,
        whole_image=True,
    )


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
