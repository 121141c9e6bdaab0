"""The results tables, built only from ``results/summary.csv`` (and the data table from each dataset's
``info.json``): mean ± sd over seeds per (dataset, mechanism, β), and our accuracies beside the paper's."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.fileio import atomic_outputs, read_json
from ..core.names import CONFIGURATION, dataset_order, family, mechanism_label, mechanism_order
from .formats import html_table, write_table

log = logging.getLogger(__name__)


#: Numbers the paper's text reports (Singh et al. 2020, section "Experimental Result"): the non-private
#: baselines' train/test accuracy in %. LDP and DP-SGD values appear only as bars in its Figure 4.
PAPER_BASELINES = {"chest_xray": (99.76, 90.22), "aptos": (98.39, 80.21)}


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
    "audit_tpr_at_01pct_fpr": "MIA TPR at 0.1% FPR",
    "audit_epsilon_estimate": "MIA ε estimate",
    "audit_epsilon_estimate_ceiling": "estimate ceiling",
    "audit_lira_auc": "LiRA AUC",
    "audit_lira_tpr_at_1pct_fpr": "LiRA TPR at 1% FPR",
    "audit_lira_epsilon_estimate": "LiRA ε estimate",
    "audit_canary_epsilon_lb": "canary ε lower bound",
}


#: Columns left out of the formatted tables when no cell has them (the calibrated attack is optional).
OPTIONAL_METRICS = (
    "audit_lira_auc",
    "audit_lira_tpr_at_1pct_fpr",
    "audit_lira_epsilon_estimate",
    "audit_tpr_at_01pct_fpr",
    "epsilon_patient",
    "audit_epsilon_estimate",
    "audit_epsilon_estimate_ceiling",
    "audit_canary_epsilon_lb",
)


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of every table metric, per (dataset, mechanism, beta)."""
    rows = []
    for key, group in summary.groupby(CONFIGURATION, sort=False):
        row = dict(zip(CONFIGURATION, key, strict=True))
        row["seeds"] = len(group)
        outside = group["train_outside_guarantee"] if "train_outside_guarantee" in group else pd.Series(dtype=bool)
        row["train_outside_guarantee"] = bool(outside.astype(str).str.lower().eq("true").any())
        units = group["privacy_unit"].dropna().unique() if "privacy_unit" in group else []
        row["privacy_unit"] = "/".join(sorted(map(str, units))) or "–"
        sources = group["noise_source"] if "noise_source" in group else pd.Series(dtype=str)
        row["seeded"] = bool(sources.astype(str).eq("seeded").any())
        secret = pd.to_numeric(group.get("epsilon_if_seed_secret", pd.Series(dtype=float)), errors="coerce")
        row["epsilon_if_seed_secret_mean"] = secret.mean() if secret.notna().any() else np.nan
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
    out["ε"] = [
        f"none: seeded ({secret:.3g} if the seed were secret){SEEDED_MARK}" if seeded and not pd.isna(secret) else text
        for text, seeded, secret in zip(out["ε"], table["seeded"], table["epsilon_if_seed_secret_mean"], strict=True)
    ]
    out.insert(out.columns.get_loc("ε") + 1, "ε per", table["privacy_unit"])
    out["train acc (%)"] = [
        text + (OUTSIDE_MARK if outside and text != "–" else "")
        for text, outside in zip(out["train acc (%)"], table["train_outside_guarantee"], strict=True)
    ]
    return out


OUTSIDE_MARK = " †"
SEEDED_MARK = " ‡"
SEEDED_NOTE = (
    "‡ noise drawn from the published seed (noise_source: seeded): anyone with the configuration can recreate and "
    "remove it, so the cell has no guarantee."
)


OUTSIDE_NOTE = (
    "† DP-SGD train accuracy: computed exactly on the training batches and published without noise, outside the "
    "DP-SGD guarantee."
)


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
    write_table(
        table,
        formatted(table),
        "Results per dataset, mechanism and β: mean ± sd over seeds; accuracies at the epoch of best "
        f"validation accuracy, except the authors' max test accuracy over epochs. {_epsilon_caption(summary)} "
        "The membership-inference (MIA, LiRA) figures use the training images: they measure the guarantee and are "
        "not covered by it. Their ε estimates (the 95 % Clopper-Pearson statistic, threshold chosen on half of the "
        "images) are not lower bounds: membership was not randomised, and training and held-out images may differ in "
        "population; the ceiling is the most the sample sizes could show, whatever the attack. TPR at 1 % (0.1 %) FPR "
        "is left empty where fewer than 100 (1,000) non-members cannot resolve that false-positive rate. The canary "
        "ε lower bound (one-run audit, when canaries ran: membership randomised, a valid bound) is for a model "
        "trained with canaries, not the released one. "
        + OUTSIDE_NOTE
        + (" " + SEEDED_NOTE if table["seeded"].any() else ""),
        [Path(p) for p in main],
    )
    comparison = paper_comparison(table)
    write_table(
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

    from ..core.names import data_provenance

    rows = []
    for dataset, path in infos.items():
        info = read_json(path)
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
