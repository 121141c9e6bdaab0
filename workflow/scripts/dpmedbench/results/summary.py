"""``results/summary.csv``: one row per cell, built only from each cell's ``metrics.json`` and
``evaluation.json``. Columns are documented in the README (section Results)."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from typing import Any

from ..core.fileio import atomic_outputs, read_json

log = logging.getLogger(__name__)
from ..core.names import LDP_PREFIX, dataset_order, family, mechanism_order
from ..core.privacy import PrivacyRecord

COLUMNS = (
    "dataset",
    "mechanism",
    "beta",
    "seed",
    "data_source",
    "data_synthetic",
    "data_sha256",
    "privacy_mechanism",
    "epsilon",
    "epsilon_per_image",
    "epsilon_m_pixels",
    "epsilon_replace",
    "neighbourhood_pixels",
    "epsilon_membership",
    "delta",
    "accountant",
    "privacy_unit",
    "epsilon_patient",
    "epsilon_rdp",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "formal_guarantee",
    "outside_guarantee",
    "epsilon_if_seed_secret",
    "noise_source",
    "noise_key_id",
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
    "audit_tpr_at_01pct_fpr",
    "audit_n",
    "audit_members",
    "audit_epsilon_estimate",
    "audit_epsilon_estimate_ceiling",
    "audit_clean_auc",
    "audit_clean_tpr_at_1pct_fpr",
    "audit_lira_auc",
    "audit_lira_tpr_at_1pct_fpr",
    "audit_lira_tpr_at_01pct_fpr",
    "audit_lira_n",
    "audit_lira_references",
    "audit_lira_epsilon_estimate",
    "audit_canaries",
    "audit_canary_guesses",
    "audit_canary_correct",
    "audit_canary_epsilon_lb",
    "audit_canary_epsilon_ceiling",
    "ldp_reid_top1",
    "ldp_reid_top5",
    "ldp_reid_chance_top1",
    "ldp_reid_queries",
    "ldp_psnr_db_noisy",
    "ldp_ssim_noisy",
    "ldp_psnr_db_denoised",
    "ldp_ssim_denoised",
    "ldp_denoiser",
)


def summary_row(metrics: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    privacy = PrivacyRecord.from_json(metrics["privacy"]).summary_view()
    test = evaluation["test"]
    headline = evaluation["audit"][evaluation["audit_headline"]]
    clean = evaluation["audit"].get("clean_members", {})
    lira = evaluation["audit"].get("lira", {})
    canaries = evaluation["audit"].get("canaries", {})
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
        "audit_tpr_at_01pct_fpr": headline.get("tpr_at_01pct_fpr"),
        "audit_n": headline["n_members"],
        "audit_members": evaluation["audit_headline"],  # a code: members | noisy_members (README, Results)
        # Fixed members against held-out images: an estimate, not a lower bound (membership is not randomised).
        "audit_epsilon_estimate": (headline.get("epsilon") or {}).get("epsilon_estimate"),
        "audit_epsilon_estimate_ceiling": (headline.get("epsilon") or {}).get("epsilon_estimate_ceiling"),
        "audit_clean_auc": clean.get("auc"),
        "audit_clean_tpr_at_1pct_fpr": clean.get("tpr_at_1pct_fpr"),
        "audit_lira_auc": lira.get("auc"),
        "audit_lira_tpr_at_1pct_fpr": lira.get("tpr_at_1pct_fpr"),
        "audit_lira_tpr_at_01pct_fpr": lira.get("tpr_at_01pct_fpr"),
        "audit_lira_n": lira.get("n_members"),
        "audit_lira_references": lira.get("reference_models"),
        "audit_lira_epsilon_estimate": (lira.get("epsilon") or {}).get("epsilon_estimate"),
        "audit_canaries": canaries.get("canaries"),
        "audit_canary_guesses": canaries["guesses_in"] + canaries["guesses_out"] if canaries else None,
        "audit_canary_correct": canaries.get("correct"),
        # Randomised membership (each canary kept with probability 1/2): a lower bound on epsilon.
        "audit_canary_epsilon_lb": canaries.get("epsilon_lb"),
        "audit_canary_epsilon_ceiling": canaries.get("epsilon_ceiling"),
    }


def attack_columns(attack: dict[str, Any] | None) -> dict[str, Any]:
    """The summary's ``ldp_*`` columns from a Local-DP copy's ``attack.json`` (its training split); empty
    values for cells without a copy."""
    found = (attack or {}).get("splits", {}).get("train")
    if not found:
        return {}
    reid, rec = found["reidentification"], found["reconstruction"]
    return {
        "ldp_reid_top1": reid["top1"],
        "ldp_reid_top5": reid["top5"],
        "ldp_reid_chance_top1": reid["chance_top1"],
        "ldp_reid_queries": reid["queries"],
        "ldp_psnr_db_noisy": rec["psnr_db_noisy"],
        "ldp_ssim_noisy": rec["ssim_noisy"],
        "ldp_psnr_db_denoised": rec["psnr_db_denoised"],
        "ldp_ssim_denoised": rec["ssim_denoised"],
        "ldp_denoiser": found["denoiser"]["description"],
    }


def write_summary(
    *,
    metrics: Sequence[str | os.PathLike[str]],
    evaluations: Sequence[str | os.PathLike[str]],
    out_csv: str | os.PathLike[str],
    attacks: Sequence[str | os.PathLike[str]] = (),
) -> list[dict[str, Any]]:
    """One row per cell, ordered by dataset, mechanism, beta, seed; Local-DP cells carry their copy's attack
    figures (``attacks``: the copies' ``attack.json``)."""
    copies = {}
    for path in attacks:
        attack = read_json(path)
        copies[(attack["dataset"], LDP_PREFIX + attack["mechanism"], float(attack["beta"]))] = attack
    rows = []
    for m, e in zip(metrics, evaluations, strict=True):
        row = summary_row(read_json(m), read_json(e))
        if family(row["mechanism"]) == "ldp":
            row.update(attack_columns(copies.get((row["dataset"], row["mechanism"], float(row["beta"])))))
        rows.append(row)
    datasets = {d: i for i, d in enumerate(dataset_order(r["dataset"] for r in rows))}
    rows.sort(key=lambda r: (datasets[r["dataset"]], mechanism_order(r["mechanism"]), r["beta"], r["seed"]))
    with atomic_outputs(out_csv) as (tmp,), open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    log.info(
        "wrote %s: %d cells (%s), %d columns; %d Local-DP cells with their copy's attack figures",
        out_csv, len(rows), ", ".join(sorted({f"{r['dataset']}/{r['mechanism']}" for r in rows})), len(COLUMNS),
        sum(r.get("ldp_reid_top1") is not None for r in rows),
    )  # fmt: skip
    return rows
