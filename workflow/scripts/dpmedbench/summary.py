"""``results/summary.csv``: one row per cell, built only from each cell's ``metrics.json`` and
``evaluation.json``. Columns are documented in the README (section Results)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fileio import atomic_outputs
from .privacy import PrivacyRecord

COLUMNS = (
    "dataset",
    "mechanism",
    "beta",
    "seed",
    "data_source",
    "data_synthetic",
    "data_sha256",
    "epsilon",
    "delta",
    "accountant",
    "privacy_unit",
    "epsilon_patient",
    "epsilon_rdp",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "epochs",
    "train_acc",
    "train_outside_guarantee",
    "val_acc",
    "test_acc",
    "best_epoch",
    "test_acc_max",
    "test_acc_max_epoch",
    "test_accuracy_ci_low",
    "test_accuracy_ci_high",
    "test_balanced_accuracy",
    "test_macro_f1",
    "test_auroc",
    "test_auroc_ci_low",
    "test_auroc_ci_high",
    "test_quadratic_kappa",
    "val_clean_acc",
    "audit_auc",
    "audit_tpr_at_1pct_fpr",
    "audit_n",
    "audit_members",
    "audit_clean_auc",
    "audit_clean_tpr_at_1pct_fpr",
    "audit_lira_auc",
    "audit_lira_tpr_at_1pct_fpr",
    "audit_lira_n",
    "audit_lira_references",
)


def summary_row(metrics: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    privacy = PrivacyRecord.from_json(metrics["privacy"]).summary_view()
    test = evaluation["test"]
    headline = evaluation["audit"][evaluation["audit_headline"]]
    clean = evaluation["audit"].get("clean_members", {})
    lira = evaluation["audit"].get("lira", {})
    return {
        **metrics["cell"],
        "data_source": (metrics.get("data") or {}).get("source"),
        "data_synthetic": (metrics.get("data") or {}).get("synthetic"),
        "data_sha256": (metrics.get("data") or {}).get("sha256"),
        **privacy,
        "epochs": metrics["config"]["epochs"],
        "train_acc": metrics["train_acc"],
        "train_outside_guarantee": "train_acc" in metrics["privacy"].get("outside_guarantee", {}),
        "val_acc": metrics["val_acc"],
        "test_acc": metrics["test_acc"],
        "best_epoch": metrics["best_epoch"],
        "test_acc_max": metrics["test_acc_max"],
        "test_acc_max_epoch": metrics["test_acc_max_epoch"],
        "test_accuracy_ci_low": (test.get("accuracy_ci") or [None, None])[0],
        "test_accuracy_ci_high": (test.get("accuracy_ci") or [None, None])[1],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_auroc": test["auroc"],
        "test_auroc_ci_low": (test.get("auroc_ci") or [None, None])[0],
        "test_auroc_ci_high": (test.get("auroc_ci") or [None, None])[1],
        "test_quadratic_kappa": test.get("quadratic_kappa"),
        "val_clean_acc": metrics.get("val_clean_acc"),
        "audit_auc": headline["auc"],
        "audit_tpr_at_1pct_fpr": headline["tpr_at_1pct_fpr"],
        "audit_n": headline["n_members"],
        "audit_members": headline["members"],
        "audit_clean_auc": clean.get("auc"),
        "audit_clean_tpr_at_1pct_fpr": clean.get("tpr_at_1pct_fpr"),
        "audit_lira_auc": lira.get("auc"),
        "audit_lira_tpr_at_1pct_fpr": lira.get("tpr_at_1pct_fpr"),
        "audit_lira_n": lira.get("n_members"),
        "audit_lira_references": lira.get("reference_models"),
    }


def write_summary(
    *,
    metrics: Sequence[str | os.PathLike[str]],
    evaluations: Sequence[str | os.PathLike[str]],
    out_csv: str | os.PathLike[str],
) -> list[dict[str, Any]]:
    """One row per cell, ordered by dataset, mechanism, beta, seed."""
    rows = [
        summary_row(json.loads(Path(m).read_text()), json.loads(Path(e).read_text()))
        for m, e in zip(metrics, evaluations, strict=True)
    ]
    order = {"none": 0, "ldp": 1, "dpsgd": 2}
    rows.sort(key=lambda r: (r["dataset"], order[r["mechanism"]], r["beta"], r["seed"]))
    with atomic_outputs(out_csv) as (tmp,), open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows
