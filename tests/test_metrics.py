"""Metrics against scikit-learn, and the membership-inference audit on models that did and did not memorise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dpmedbench.audit import loss_attack, tpr_at_fpr
from dpmedbench.metrics import (
    auroc,
    balanced_accuracy,
    binary_auc,
    classification_report,
    confusion,
    macro_f1,
    quadratic_kappa,
)
from sklearn import metrics as skm
from torch import nn


def _fixture(k: int, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba, proba.argmax(1)


@pytest.mark.parametrize("k", [2, 5])
def test_metrics_match_scikit_learn(k):
    y, proba, pred = _fixture(k)
    assert np.array_equal(confusion(y, pred, k), skm.confusion_matrix(y, pred, labels=range(k)))
    assert balanced_accuracy(y, pred, k) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(y, pred, k) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    expected_auc = skm.roc_auc_score(y, proba[:, 1]) if k == 2 else skm.roc_auc_score(y, proba, multi_class="ovr")
    assert auroc(y, proba) == pytest.approx(expected_auc)
    assert quadratic_kappa(y, pred, k) == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))


def test_auc_with_ties_and_missing_class():
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.5, 0.5, 0.9, 0.1, 0.5, 0.5])
    assert binary_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores))
    y, proba, _ = _fixture(5)
    keep = y != 3  # a class absent from the sample: averaged over the classes present
    sub = proba[keep]
    assert auroc(y[keep], sub) == pytest.approx(
        np.mean([skm.roc_auc_score(y[keep] == c, sub[:, c]) for c in (0, 1, 2, 4)])
    )


def test_report_has_every_figure_and_sane_intervals():
    y, proba, _ = _fixture(5, n=200)
    r = classification_report(y, proba, kappa=True, bootstrap=200)
    assert set(r) >= {
        "n",
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "auroc",
        "quadratic_kappa",
        "confusion_matrix",
        "accuracy_ci",
        "auroc_ci",
        "ci",
    }
    assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
    assert r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1]
    assert "quadratic_kappa" not in classification_report(y, proba, kappa=False, bootstrap=0)


def test_tpr_at_fpr_against_the_roc_curve():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    scores = np.r_[rng.normal(1, 1, 500), rng.normal(0, 1, 500)]
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    assert tpr_at_fpr(labels, scores, 0.01) == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-9)


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y, reduction="none").numpy()


def test_audit_memorised_model_is_exposed_and_an_unseen_one_is_not():
    torch.manual_seed(0)
    x = torch.randn(200, 500)  # high-dimensional: what is memorised of one point says nothing about another
    y = torch.randint(0, 2, (200,))  # random labels: only memorisation can fit them
    members, outsiders = slice(0, 100), slice(100, 200)
    model = nn.Sequential(nn.Linear(500, 256), nn.ReLU(), nn.Linear(256, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3000):  # until the random labels are memorised
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[members]), y[members])
        if loss.item() < 1e-3:
            break
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3
    memorised = loss_attack(_losses(model, x[members], y[members]), _losses(model, x[outsiders], y[outsiders]))
    assert memorised["auc"] > 0.95 and memorised["tpr_at_1pct_fpr"] > 0.5 and memorised["n_members"] == 100
    # A model that never saw either half: 1000 per side, so chance AUC has a standard deviation of ~0.013.
    fresh = nn.Sequential(nn.Linear(500, 256), nn.ReLU(), nn.Linear(256, 2))
    x2, y2 = torch.randn(2000, 500), torch.randint(0, 2, (2000,))
    unseen = loss_attack(_losses(fresh, x2[:1000], y2[:1000]), _losses(fresh, x2[1000:], y2[1000:]))
    assert abs(unseen["auc"] - 0.5) < 0.05 and unseen["n_members"] == 1000
