"""Classification metrics on predicted class probabilities, in numpy (vectorised, so that bootstrap
confidence intervals are cheap). Each is checked against scikit-learn in tests/results/test_metrics.py."""

from __future__ import annotations

import numpy as np

from .stats import binary_auc, exact_interval


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts: rows are true classes, columns predicted ones."""
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(y == pred)) if len(y) else float("nan")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Mean recall over the classes present in ``y``."""
    cm = confusion(y, pred, k)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Unweighted mean F1 over the classes present in ``y`` or ``pred`` (0 where undefined)."""
    cm = confusion(y, pred, k)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    labels = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(np.mean(f1[labels]))


def auroc(y: np.ndarray, proba: np.ndarray) -> float:
    """Binary: AUROC of the positive class' probability. More classes: one-vs-rest macro average over the
    classes present in ``y`` (as scikit-learn's ``roc_auc_score(multi_class="ovr", average="macro")``)."""
    k = proba.shape[1]
    if k == 2:
        return binary_auc(y == 1, proba[:, 1])
    aucs = [binary_auc(y == c, proba[:, c]) for c in range(k) if 0 < np.sum(y == c) < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def quadratic_kappa(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Cohen's kappa with quadratic weights (the APTOS competition metric)."""
    observed = confusion(y, pred, k).astype(float)
    n = observed.sum()
    if n == 0:
        return float("nan")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    denom = (weights * expected).sum()
    return float(1.0 - (weights * observed).sum() / denom) if denom > 0 else float("nan")


def classification_report(
    y: np.ndarray, proba: np.ndarray, *, kappa: bool, bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """Every metric of a cell on one split, with intervals at ``level``: exact (Clopper-Pearson) for accuracy, a
    binomial proportion, and a percentile bootstrap for AUROC.

    The accuracy interval is exact because a percentile bootstrap collapses at 0 and 100 %: 12 of 12 right gives
    "100-100 %" although the truth may well be 80 %. Clopper-Pearson says [73.5, 100] %.
    """
    y = np.asarray(y, dtype=np.int64)
    k = proba.shape[1]
    pred = proba.argmax(axis=1)
    report = {
        "n": len(y),
        "accuracy": accuracy(y, pred),
        "balanced_accuracy": balanced_accuracy(y, pred, k),
        "macro_f1": macro_f1(y, pred, k),
        "auroc": auroc(y, proba),
        "confusion_matrix": confusion(y, pred, k).tolist(),
    }
    if kappa:
        report["quadratic_kappa"] = quadratic_kappa(y, pred, k)
    if len(y):
        report["accuracy_ci"] = list(exact_interval(int(np.sum(y == pred)), len(y), level))
        report["ci"] = f"{level:.0%}: accuracy exact (Clopper-Pearson)"
    if bootstrap and len(y):
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(y), size=(bootstrap, len(y)))
        aucs = np.array([auroc(y[d], proba[d]) for d in draws])
        lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
        aucs = aucs[np.isfinite(aucs)]
        report["auroc_ci"] = [float(np.percentile(aucs, lo)), float(np.percentile(aucs, hi))] if len(aucs) else None
        report["ci"] += f"; AUROC percentile bootstrap, {bootstrap} resamples"
    return report
