"""The statistics of the audits and intervals, in one place: the area under an ROC curve and the true-positive
rate at a false-positive rate, exact (Clopper-Pearson) bounds of a binomial proportion, the empirical epsilon lower
bound of a membership test (Jagielski et al. 2020, Nasr et al. 2021) and the one-run audit's bound (Steinke, Nasr &
Jagielski 2023). Numpy and scipy only: the attacks (:mod:`.attacks`) and the classification metrics
(:mod:`.metrics`) both build on it, and it imports neither.
"""

from __future__ import annotations

import math

import numpy as np


def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half): the Mann-Whitney U statistic over n1 * n0."""
    labels = np.asarray(labels).astype(bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=float)
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 0.01) -> float:
    """Largest true-positive rate among thresholds whose false-positive rate is at most ``fpr``."""
    labels = np.asarray(labels).astype(bool)
    negatives = np.sort(np.asarray(scores)[~labels])[::-1]
    allowed = int(np.floor(fpr * len(negatives)))  # false positives we may accept
    # a threshold strictly above the (allowed+1)-th highest non-member score admits at most `allowed` of them
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return float(np.mean(np.asarray(scores)[labels] > threshold))


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


# ------------------------------------------------------------------------------------- empirical epsilon
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


def exact_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a proportion k/n at ``level`` (each side at (1 - level)/2).

    >>> [round(v, 4) for v in exact_interval(12, 12)]  # all right on 12 images: not "100-100 %"
    [0.7354, 1.0]
    >>> [round(v, 4) for v in exact_interval(5, 10)]
    [0.1871, 0.8129]
    """
    alpha = (1 - level) / 2
    return clopper_pearson(k, n, alpha, "lower"), clopper_pearson(k, n, alpha, "upper")
