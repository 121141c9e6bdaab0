"""Metrics against scikit-learn, and the membership-inference audit on models that did and did not memorise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from dpmedbench.results.attacks import lira_attack, logit_confidence, loss_attack
from dpmedbench.results.metrics import (
    auroc,
    balanced_accuracy,
    binary_auc,
    classification_report,
    confusion,
    macro_f1,
    quadratic_kappa,
)
from dpmedbench.results.stats import tpr_at_fpr
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


def _simulated_audit(n: int, k: int, effect: float, seed: int):
    """Logit-scaled confidences with a per-image difficulty much wider than the effect of training on an image,
    as losses: target members (IN), target non-members (OUT), k reference models on random halves."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 3, 2 * n)  # image i's confidence when no model trained on it

    def confidence(trained_on: np.ndarray) -> np.ndarray:
        return difficulty + effect * trained_on + rng.normal(0, 0.5, 2 * n)

    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    target = confidence(member)
    ref_in = np.zeros((k, 2 * n), bool)
    ref_in[:, :n] = rng.random((k, n)) < 0.5  # reference models never train on the target's non-members
    refs = np.stack([confidence(r) for r in ref_in])
    loss = lambda phi: np.logaddexp(0, -phi)  # noqa: E731  cross-entropy of a binary logit phi
    return (
        (loss(target[:n]), loss(refs[:, :n]), ~ref_in[:, :n]),
        (loss(target[n:]), loss(refs[:, n:]), ~ref_in[:, n:]),
    )


def test_logit_confidence_inverts_the_cross_entropy():
    p = np.array([1e-12, 0.01, 0.5, 0.99, 1 - 1e-9])
    np.testing.assert_allclose(logit_confidence(-np.log(p)), np.log(p / (1 - p)), rtol=1e-6, atol=1e-9)


def test_lira_sees_through_per_image_difficulty_and_stays_at_chance_without_signal():
    member, nonmember = _simulated_audit(2000, 8, effect=1.0, seed=0)
    lira = lira_attack(member, nonmember, seed=1)
    loss = loss_attack(member[0], nonmember[0], seed=1)
    # Difficulty (sd 3) hides the effect (1) from a global loss threshold; per-image calibration recovers it.
    assert loss["auc"] < 0.65 and lira["auc"] > 0.85, (loss["auc"], lira["auc"])
    assert lira["tpr_at_1pct_fpr"] > 5 * max(loss["tpr_at_1pct_fpr"], 0.01)
    assert lira["reference_models"] == 8 and lira["n_members"] == lira["n_nonmembers"] <= 2000
    member, nonmember = _simulated_audit(2000, 8, effect=0.0, seed=2)
    assert abs(lira_attack(member, nonmember, seed=1)["auc"] - 0.5) < 0.04


def test_lira_scores_only_images_with_an_out_reference():
    member, nonmember = _simulated_audit(50, 2, effect=1.0, seed=3)
    no_out = ~member[2].any(0)  # both references trained on these members
    assert no_out.any()
    result = lira_attack(member, nonmember, seed=0)
    assert result["n_members"] == min(50 - int(no_out.sum()), 50)


def test_clopper_pearson_matches_scipy_and_the_textbook_extremes():
    from dpmedbench.results.stats import clopper_pearson
    from scipy.stats import binomtest

    for k, n in ((0, 10), (3, 10), (10, 10), (57, 624), (624, 624)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        # a one-sided bound at alpha/2 is the two-sided exact interval's end
        assert clopper_pearson(k, n, 0.025, "lower") == pytest.approx(ci.low, abs=1e-12)
        assert clopper_pearson(k, n, 0.025, "upper") == pytest.approx(ci.high, abs=1e-12)
    assert clopper_pearson(624, 624, 0.025, "lower") == pytest.approx(0.025 ** (1 / 624))


def test_epsilon_lower_bound_cases_worked_by_hand():
    from dpmedbench.results.stats import epsilon_from_rates, epsilon_lower_bound

    assert epsilon_from_rates(0.5, 0.05, 0.0) == pytest.approx(np.log(10))
    assert epsilon_from_rates(0.99, 0.5, 0.0) == pytest.approx(np.log(0.5 / 0.01))  # the second inequality
    assert epsilon_from_rates(0.2, 0.2, 1e-5) == 0.0
    # the ceiling of a perfect attack: 624 per side (after the half split: 1248 images per side), alpha 0.05,
    # delta 1e-5 -> ln((0.025^(1/624) - 1e-5) / (1 - 0.025^(1/624))) = 5.13
    perfect = epsilon_lower_bound(np.ones(1248), np.zeros(1248), delta=1e-5)
    assert perfect["n_members_test"] == 624 and perfect["epsilon_ceiling"] == pytest.approx(5.128, abs=0.01)
    assert perfect["epsilon_lb"] == pytest.approx(perfect["epsilon_ceiling"])
    rng = np.random.default_rng(0)
    chance = epsilon_lower_bound(rng.normal(size=2000), rng.normal(size=2000), delta=1e-5)
    assert chance["epsilon_lb"] < 0.3  # a useless attack certifies (almost) nothing
    assert epsilon_lower_bound(np.ones(3), np.zeros(3), delta=1e-5)["epsilon_lb"] is None


def test_one_run_bound_matches_the_papers_worked_example_and_its_limits():
    """Steinke et al. 2023: 1000 canaries, 100 guesses, 75 right, delta 1e-4 -> about 0.67."""
    from dpmedbench.results.stats import one_run_epsilon, one_run_p_value
    from scipy.stats import binom

    assert one_run_epsilon(1000, 100, 75, 1e-4) == pytest.approx(0.673, abs=0.001)
    # pure DP: the p-value is the binomial tail of epsilon-randomised response, the bound its inverse
    eps = one_run_epsilon(1000, 100, 75, 0.0)
    q = 1 / (1 + np.exp(-eps))
    assert binom.sf(74, 100, q) == pytest.approx(0.05, rel=1e-6)
    assert one_run_p_value(1000, 100, 75, eps, 0.0) == pytest.approx(0.05, rel=1e-6)
    # more right guesses, a larger bound; half right (chance) certifies nothing; delta only lowers it
    bounds = [one_run_epsilon(1000, 100, v, 1e-4) for v in (50, 60, 75, 90, 100)]
    assert bounds[0] == 0.0 and all(a < b for a, b in itertools.pairwise(bounds[1:]))
    assert one_run_epsilon(1000, 100, 75, 1e-2) < one_run_epsilon(1000, 100, 75, 1e-4)
    with pytest.raises(ValueError, match="guesses"):
        one_run_p_value(10, 20, 5, 1.0, 0.0)


def test_one_run_audit_counts_guesses_and_bounds_them():
    from dpmedbench.results.attacks import guess_counts, one_run_audit

    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    perfect = one_run_audit(included.astype(float), included, delta=1e-5)  # scores reveal membership
    assert (perfect["guesses_in"], perfect["guesses_out"]) == guess_counts(1000, 0.1) == (50, 50)
    assert perfect["correct"] == 100 and perfect["epsilon_lb"] == perfect["epsilon_ceiling"] > 3
    blind = one_run_audit(rng.normal(size=1000), included, delta=1e-5)  # scores carry nothing
    assert 30 <= blind["correct"] <= 70 and blind["epsilon_lb"] < 0.5
    tied = one_run_audit(np.zeros(1000), included, delta=1e-5, seed=1)  # all tied: random guesses, not sorted
    assert 30 <= tied["correct"] <= 70
    with pytest.raises(ValueError, match="at least 2"):
        one_run_audit(np.zeros(1), np.ones(1, bool), delta=1e-5)


def test_canaries_relabel_drop_and_isolate_exactly_the_chosen_images():
    from dpmedbench.core.errors import TrainingError
    from dpmedbench.core.tensors import Split
    from dpmedbench.training.canaries import Canaries, choose_canaries

    labels = np.arange(40) % 5
    c = choose_canaries(labels, 12, classes=5, seed=3)
    assert len(set(c.indices.tolist())) == 12 and (c.labels != labels[c.indices]).all()
    assert (c.labels >= 0).all() and (c.labels < 5).all()
    again = choose_canaries(labels, 12, classes=5, seed=3)
    assert (again.indices == c.indices).all() and (again.included == c.included).all()
    split = Split("train", torch.arange(40).reshape(40, 1, 1, 1), torch.as_tensor(labels))
    used = c.apply(split)
    kept = c.kept(40)
    assert len(used) == 40 - int((~c.included).sum())
    assert used.images.flatten().tolist() == kept.tolist()  # left-out canaries are gone, order kept
    trained = c.indices[c.included]
    assert used.labels[np.searchsorted(kept, trained)].tolist() == c.labels[c.included].tolist()
    groups = c.groups(np.array([f"p{i // 2}" for i in range(40)], dtype=object))
    assert len(groups) == len(used) and len(set(g for g in groups if g.startswith("canary-"))) == c.included.sum()
    assert Canaries.from_json(c.to_json()).indices.tolist() == c.indices.tolist()
    with pytest.raises(TrainingError, match="evaluation.canaries"):
        choose_canaries(labels, 21, classes=5, seed=0)


def test_a_strong_attack_gets_a_strong_bound():
    """Members N(2, 1) against non-members N(0, 1), 2,000 each: the bound is far above 0 and below the
    ceiling. (Choosing the threshold by point estimates picked thresholds with no missed member, 'infinitely
    good' on the calibration half, and every such audit ended near 0.)"""
    from dpmedbench.results.stats import epsilon_lower_bound

    rng = np.random.default_rng(0)
    bound = epsilon_lower_bound(rng.normal(2, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5, seed=1)
    assert 2.5 < bound["epsilon_lb"] < bound["epsilon_ceiling"]
    assert bound["fpr_hi"] < 0.1  # a threshold that excludes most non-members


def test_accuracy_interval_is_exact_and_not_degenerate_when_every_image_is_right():
    """A percentile bootstrap says "100-100 %" for 12 of 12 right; the exact interval keeps its width."""
    y = np.array([0, 1] * 6)
    proba = np.eye(2)[y].astype(float)
    r = classification_report(y, proba, kappa=False, bootstrap=200)
    assert r["accuracy"] == 1.0
    assert r["accuracy_ci"][1] == 1.0
    assert r["accuracy_ci"][0] == pytest.approx(0.025 ** (1 / 12), abs=1e-9)  # P(12 of 12 | p) = 2.5 %
    assert "Clopper-Pearson" in r["ci"]
    # Against scipy's exact binomial interval for an ordinary case.
    from scipy.stats import binomtest

    y = np.array([0] * 30 + [1] * 30)
    pred = np.r_[np.zeros(20), np.ones(10), np.ones(25), np.zeros(5)].astype(int)
    r = classification_report(y, np.eye(2)[pred], kappa=False, bootstrap=50)
    exact = binomtest(45, 60).proportion_ci(0.95, method="exact")
    assert r["accuracy_ci"] == pytest.approx([exact.low, exact.high], abs=1e-9)
