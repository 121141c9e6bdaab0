"""Membership-inference audit: how well can an attacker tell the training images of a model from images of
the same distribution it never saw?

The loss-threshold attack (Yeom et al. 2018) scores each image by minus the model's loss on it: members tend to
have lower loss. Its ROC over an equal number of members and non-members gives the attack AUC (0.5 = no
better than chance) and the true-positive rate at a 1% false-positive rate (Carlini et al. 2022).

The calibrated attack is offline LiRA (Carlini et al. 2022, "Membership inference attacks from first
principles"): reference models trained like the target on random halves of the training split tell how
confident a model is on each image when it has *not* trained on it. An image's score is how far the target's
logit-scaled confidence lies above that image's own OUT distribution (a Gaussian; one variance pooled over all
images, as the paper recommends for few reference models), so images that are easy for every model no longer
look like members.
"""

from __future__ import annotations

import numpy as np

from .stats import binary_auc, epsilon_lower_bound, one_run_epsilon, tpr_at_fpr

LIRA = (
    "offline LiRA (Carlini et al. 2022): logit-scaled confidence against reference models that did not train on "
    "the image"
)


#: Non-members needed before a false-positive rate means anything (one false positive among them).
MIN_NONMEMBERS_1PCT = 100
MIN_NONMEMBERS_01PCT = 1000
#: What a membership test on a model's own training images against held-out ones can say in epsilon.
NOT_A_BOUND = (
    "an estimate, not a lower bound on the mechanism's epsilon: membership was not randomised (the members are "
    "the model's training images, the non-members held-out images, which may come from another population), so "
    "the figure measures how well these two fixed sets can be told apart. Only randomised membership (the "
    "one-run canary audit) bounds epsilon"
)


def score_attack(member_scores: np.ndarray, nonmember_scores: np.ndarray, *, seed: int = 0) -> dict:
    """AUC and TPR at 1 % and 0.1 % FPR (LiRA's convention) of any membership score (higher = more likely a
    member), on equal numbers of members and non-members (the larger side is subsampled with ``seed``); a rate
    the sample cannot resolve is ``None`` with a note."""
    rng = np.random.default_rng(seed)
    n = min(len(member_scores), len(nonmember_scores))
    if n == 0:
        return {"n_members": 0, "n_nonmembers": 0, "auc": None, "tpr_at_1pct_fpr": None, "tpr_at_01pct_fpr": None}
    members = rng.choice(np.asarray(member_scores, dtype=float), n, replace=False)
    nonmembers = rng.choice(np.asarray(nonmember_scores, dtype=float), n, replace=False)
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    scores = np.r_[members, nonmembers]
    out = {"n_members": n, "n_nonmembers": n, "auc": binary_auc(labels, scores)}
    for key, rate, needed in (("tpr_at_1pct_fpr", 0.01, MIN_NONMEMBERS_1PCT),
                              ("tpr_at_01pct_fpr", 0.001, MIN_NONMEMBERS_01PCT)):  # fmt: skip
        out[key] = tpr_at_fpr(labels, scores, rate) if n >= needed else None
        if n < needed:
            out[f"{key}_note"] = (
                f"n too small: a {100 * rate:g} % false-positive rate needs at least {needed} non-members, this "
                f"audit has {n}"
            )
    return out


def loss_attack(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, *, seed: int = 0, delta: float | None = None
) -> dict:
    """The loss-threshold attack on equal numbers of members and non-members (the larger side is subsampled
    with ``seed``); with ``delta``, also its empirical epsilon estimate (:func:`epsilon_estimate`)."""
    members, nonmembers = -np.asarray(member_losses, float), -np.asarray(nonmember_losses, float)
    result = {"attack": "loss threshold (score = -cross-entropy)", **score_attack(members, nonmembers, seed=seed)}
    if delta is not None:
        result["epsilon"] = epsilon_estimate(members, nonmembers, delta=delta, seed=seed)
    return result


def epsilon_estimate(members: np.ndarray, nonmembers: np.ndarray, *, delta: float, seed: int = 0) -> dict:
    """The epsilon a membership test of fixed members against fixed non-members estimates: the statistic of
    :func:`.stats.epsilon_lower_bound` (threshold chosen on one half of each side, Clopper-Pearson bounded on the
    other), named for what it is here (:data:`NOT_A_BOUND`): ``epsilon_estimate`` and its ceiling."""
    found = epsilon_lower_bound(members, nonmembers, delta=delta, seed=seed)
    out = {k: v for k, v in found.items() if k not in ("epsilon_lb", "epsilon_ceiling", "method")}
    return {
        "epsilon_estimate": found["epsilon_lb"],
        "epsilon_estimate_ceiling": found["epsilon_ceiling"],
        **out,
        "method": "the Clopper-Pearson statistic of Jagielski et al. 2020 (threshold chosen on a random half of "
        "each side, rates bounded on the other half); " + NOT_A_BOUND,
    }


def logit_confidence(losses: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence log(p / (1 - p)) of the true class, from the cross-entropy loss -log p
    (stable for p near 0 and 1).

    >>> np.round(logit_confidence(np.array([np.log(2.0)])), 12)  # p = 1/2
    array([0.])
    """
    losses = np.asarray(losses, dtype=np.float64)
    return -losses - np.log(-np.expm1(-np.maximum(losses, 1e-300)))


def lira_scores(target: np.ndarray, references: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offline LiRA with a pooled variance.

    ``target``: (n,) the target model's logit-scaled confidences; ``references``: (k, n) the same for k reference
    models; ``out``: (k, n) True where reference j did not train on image i. Returns the scores (the target's
    confidence in standard deviations above the image's mean OUT confidence) and a mask of the images that have
    at least one OUT reference (the others cannot be scored).
    """
    target = np.asarray(target, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    out = np.asarray(out, dtype=bool)
    if references.shape != out.shape or references.shape[1:] != target.shape:
        raise ValueError(f"shapes differ: target {target.shape}, references {references.shape}, out {out.shape}")
    counts = out.sum(0)
    scored = counts > 0
    mean = np.where(scored, (references * out).sum(0) / np.maximum(counts, 1), 0.0)
    residuals = (references - mean)[out & scored]
    std = float(np.sqrt(np.mean(residuals**2))) if residuals.size > 1 else 1.0
    return (target - mean) / max(std, 1e-12), scored


def lira_attack(
    member: tuple[np.ndarray, np.ndarray, np.ndarray],
    nonmember: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    seed: int = 0,
    delta: float | None = None,
) -> dict:
    """Offline LiRA on members and non-members, each given as (target losses (n,), reference losses (k, n), OUT
    mask (k, n)); the OUT distribution is pooled over both sides, and the scores go to :func:`score_attack`."""
    n_members = len(member[0])
    target = logit_confidence(np.r_[member[0], nonmember[0]])
    references = logit_confidence(np.concatenate([member[1], nonmember[1]], axis=1))
    out = np.concatenate([member[2], nonmember[2]], axis=1)
    scores, scored = lira_scores(target, references, out)
    members, nonmembers = scores[:n_members][scored[:n_members]], scores[n_members:][scored[n_members:]]
    result = {"attack": LIRA, "reference_models": int(out.shape[0]), **score_attack(members, nonmembers, seed=seed)}
    if delta is not None:
        result["epsilon"] = epsilon_estimate(members, nonmembers, delta=delta, seed=seed)
    return result


# ------------------------------------------------------------------------------------- one-run canary audit


def guess_counts(m: int, fraction: float) -> tuple[int, int]:
    """(k+, k-): guesses "in" and "out" for ``m`` canaries, ``fraction`` of them in all, split evenly.

    >>> guess_counts(1000, 0.1), guess_counts(10, 0.1)
    ((50, 50), (1, 1))
    """
    half = max(1, round(m * fraction / 2))
    return min(half, m // 2), min(half, m - m // 2)


def one_run_audit(
    scores: np.ndarray, included: np.ndarray, *, delta: float, fraction: float = 0.1, alpha: float = 0.05, seed: int = 0
) -> dict:
    """The one-run audit: guess "in" for the k+ canaries with the highest ``scores`` (higher = more likely
    trained on) and "out" for the k- lowest, count the correct guesses against ``included``, and bound epsilon
    at ``delta`` (:func:`one_run_epsilon`). Ties between scores are broken at random with ``seed``."""
    scores, included = np.asarray(scores, float), np.asarray(included, bool)
    m = len(scores)
    if m < 2 or len(included) != m:
        raise ValueError(f"{m} canary scores and {len(included)} inclusion flags: need at least 2 of each, as many")
    k_in, k_out = guess_counts(m, fraction)
    shuffle = np.random.default_rng(seed).permutation(m)
    order = shuffle[np.argsort(scores[shuffle], kind="stable")]  # ascending, ties in random order
    correct = int(included[order[m - k_in :]].sum()) + int((~included[order[:k_out]]).sum())
    return {
        "canaries": m,
        "included": int(included.sum()),
        "guesses_in": k_in,
        "guesses_out": k_out,
        "correct": correct,
        "delta": delta,
        "confidence": 1 - alpha,
        "epsilon_lb": one_run_epsilon(m, k_in + k_out, correct, delta, alpha),
        "epsilon_ceiling": one_run_epsilon(m, k_in + k_out, k_in + k_out, delta, alpha),
        "method": "one-run audit (Steinke, Nasr & Jagielski 2023, Appendix D): canaries included with "
        "probability 1/2 each, scored by minus the loss on their wrong label",
    }
