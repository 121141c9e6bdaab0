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

import math

import numpy as np

from .metrics import binary_auc

LIRA = (
    "offline LiRA (Carlini et al. 2022): logit-scaled confidence against reference models that did not train on "
    "the image"
)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 0.01) -> float:
    """Largest true-positive rate among thresholds whose false-positive rate is at most ``fpr``."""
    labels = np.asarray(labels).astype(bool)
    negatives = np.sort(np.asarray(scores)[~labels])[::-1]
    allowed = int(np.floor(fpr * len(negatives)))  # false positives we may accept
    # a threshold strictly above the (allowed+1)-th highest non-member score admits at most `allowed` of them
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return float(np.mean(np.asarray(scores)[labels] > threshold))


#: Non-members needed before a 1 % false-positive rate means anything (one false positive in 100).
MIN_NONMEMBERS_1PCT = 100


def score_attack(member_scores: np.ndarray, nonmember_scores: np.ndarray, *, seed: int = 0) -> dict:
    """AUC and TPR at 1% FPR of any membership score (higher = more likely a member), on equal numbers of
    members and non-members (the larger side is subsampled with ``seed``)."""
    rng = np.random.default_rng(seed)
    n = min(len(member_scores), len(nonmember_scores))
    if n == 0:
        return {"n_members": 0, "n_nonmembers": 0, "auc": None, "tpr_at_1pct_fpr": None}
    members = rng.choice(np.asarray(member_scores, dtype=float), n, replace=False)
    nonmembers = rng.choice(np.asarray(nonmember_scores, dtype=float), n, replace=False)
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    scores = np.r_[members, nonmembers]
    resolved = n >= MIN_NONMEMBERS_1PCT
    return {
        "n_members": n,
        "n_nonmembers": n,
        "auc": binary_auc(labels, scores),
        "tpr_at_1pct_fpr": tpr_at_fpr(labels, scores, 0.01) if resolved else None,
        **({} if resolved else {"tpr_at_1pct_fpr_note": f"n too small: a 1 % false-positive rate needs at least "
                                f"{MIN_NONMEMBERS_1PCT} non-members, this audit has {n}"}),
    }  # fmt: skip


def loss_attack(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, *, seed: int = 0, delta: float | None = None
) -> dict:
    """The loss-threshold attack on equal numbers of members and non-members (the larger side is subsampled
    with ``seed``); with ``delta``, also its empirical epsilon lower bound (:func:`epsilon_lower_bound`)."""
    members, nonmembers = -np.asarray(member_losses, float), -np.asarray(nonmember_losses, float)
    result = {"attack": "loss threshold (score = -cross-entropy)", **score_attack(members, nonmembers, seed=seed)}
    if delta is not None:
        result["epsilon"] = epsilon_lower_bound(members, nonmembers, delta=delta, seed=seed)
    return result


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
        result["epsilon"] = epsilon_lower_bound(members, nonmembers, delta=delta, seed=seed)
    return result


# ------------------------------------------------------------------------------------- empirical epsilon
def clopper_pearson(k: int, n: int, alpha: float, side: str) -> float:
    """One-sided Clopper-Pearson bound at level ``1 - alpha`` of a binomial proportion k/n: ``"lower"`` or
    ``"upper"``.

    >>> round(clopper_pearson(0, 10, 0.05, "upper"), 4), clopper_pearson(0, 10, 0.05, "lower")
    (0.2589, 0.0)
    """
    from scipy.stats import beta

    if side == "lower":
        return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
    if side == "upper":
        return 1.0 if k == n else float(beta.ppf(1 - alpha, k + 1, n - k))
    raise ValueError(f"side must be 'lower' or 'upper', got {side!r}")


def epsilon_from_rates(tpr: float, fpr: float, delta: float) -> float:
    """The smallest epsilon an (epsilon, delta)-DP mechanism needs for a membership test to reach (tpr, fpr):
    max of ln((TPR - delta) / FPR) and ln((1 - FPR - delta) / (1 - TPR)), infinite where a denominator is 0 (point
    estimates of a perfect test), 0 if neither is positive.

    >>> round(epsilon_from_rates(0.5, 0.05, 0.0), 4)  # ln(0.5 / 0.05)
    2.3026
    >>> epsilon_from_rates(0.3, 0.3, 1e-5)
    0.0
    """
    bounds = [0.0]
    if tpr - delta > 0:
        bounds.append(math.log((tpr - delta) / fpr) if fpr > 0 else math.inf)
    if 1 - fpr - delta > 0:
        bounds.append(math.log((1 - fpr - delta) / (1 - tpr)) if tpr < 1 else math.inf)
    return max(bounds)


def _best_threshold(members: np.ndarray, nonmembers: np.ndarray, *, delta: float, alpha: float) -> float:
    """The threshold (a score; "member" when the score is at least it) with the largest epsilon bound on these
    scores, every candidate's rates bounded as in :func:`epsilon_lower_bound` (finite for every candidate)."""
    from scipy.stats import beta

    candidates = np.unique(np.r_[members, nonmembers])
    tp = len(members) - np.searchsorted(np.sort(members), candidates, side="left")
    fp = len(nonmembers) - np.searchsorted(np.sort(nonmembers), candidates, side="left")
    n_m, n_n = len(members), len(nonmembers)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr_lo = np.where(tp > 0, beta.ppf(alpha / 2, tp, n_m - tp + 1), 0.0)
        fpr_hi = np.where(fp < n_n, beta.ppf(1 - alpha / 2, fp + 1, n_n - fp), 1.0)
        first = np.log(np.maximum(tpr_lo - delta, 0) / fpr_hi)
        second = np.log(np.maximum(1 - fpr_hi - delta, 0) / (1 - tpr_lo))
    bounds = np.nan_to_num(np.maximum(first, second), nan=0.0, neginf=0.0)
    return float(candidates[int(np.argmax(bounds))])


def epsilon_lower_bound(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, *, delta: float, alpha: float = 0.05, seed: int = 0
) -> dict:
    """An empirical epsilon lower bound from a membership score (higher = more likely a member).

    Each side is split in half at random: the threshold is chosen on one half (the one whose Clopper-Pearson
    bounded epsilon is largest there: point estimates would make every threshold with no false positive, or
    no missed member, look infinitely good), and the bound is computed on the other half with one-sided
    Clopper-Pearson bounds TPR_lo and FPR_hi at ``alpha / 2`` each (``1 - alpha`` overall), so choosing the
    threshold does not bias it upward. ``ceiling``: what a perfect attack would certify with the same sample
    sizes.
    """
    rng = np.random.default_rng(seed)
    members, nonmembers = (rng.permutation(np.asarray(s, dtype=float)) for s in (member_scores, nonmember_scores))
    if min(len(members), len(nonmembers)) < 4:
        return {"epsilon_lb": None, "epsilon_ceiling": None, "reason": "fewer than 4 images on a side"}
    cal_m, test_m = np.array_split(members, 2)
    cal_n, test_n = np.array_split(nonmembers, 2)
    threshold = _best_threshold(cal_m, cal_n, delta=delta, alpha=alpha)
    tp, fp = int(np.sum(test_m >= threshold)), int(np.sum(test_n >= threshold))
    tpr_lo = clopper_pearson(tp, len(test_m), alpha / 2, "lower")
    fpr_hi = clopper_pearson(fp, len(test_n), alpha / 2, "upper")
    ceiling_tpr = clopper_pearson(len(test_m), len(test_m), alpha / 2, "lower")
    ceiling_fpr = clopper_pearson(0, len(test_n), alpha / 2, "upper")
    return {
        "epsilon_lb": epsilon_from_rates(tpr_lo, fpr_hi, delta),
        "epsilon_ceiling": epsilon_from_rates(ceiling_tpr, ceiling_fpr, delta),
        "delta": delta,
        "confidence": 1 - alpha,
        "n_members_test": len(test_m),
        "n_nonmembers_test": len(test_n),
        "threshold": threshold,
        "tpr_lo": tpr_lo,
        "fpr_hi": fpr_hi,
        "method": "threshold chosen on a random half of each side, TPR/FPR bounded on the other half with "
        "one-sided Clopper-Pearson bounds (Jagielski et al. 2020); one trained model and its own training images, "
        "so an estimate of leakage rather than a certified bound",
    }


# ------------------------------------------------------------------------------------- one-run canary audit
def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Steinke, Nasr & Jagielski 2023 ("Privacy auditing with one (1) training run", Appendix D): an upper bound
    on the probability that an auditor making ``r`` guesses about ``m`` canaries, each included with
    probability 1/2, gets ``v`` or more right when the training is (epsilon, delta)-DP."""
    from scipy.stats import binom

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # the accuracy of epsilon-DP randomised response
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha, running = 0.0, 0.0
    for i in range(1, v + 1):
        running += float(binom.pmf(v - i, r, q))
        alpha = max(alpha, running / i)
    return min(tail + alpha * delta * 2 * m, 1.0)


def one_run_epsilon(m: int, r: int, v: int, delta: float, alpha: float = 0.05) -> float:
    """The largest epsilon that :func:`one_run_p_value` rejects at level ``alpha``: an epsilon lower bound with
    confidence ``1 - alpha`` (bisection to ~1e-9, as the paper's code).

    >>> round(one_run_epsilon(1000, 100, 75, 1e-4), 2)  # the paper's worked example
    0.67
    """
    low, high = 0.0, 1.0
    while one_run_p_value(m, r, v, high, delta) < alpha:
        low, high = high, high + 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if one_run_p_value(m, r, v, middle, delta) < alpha:
            low = middle
        else:
            high = middle
    return low


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
