"""Membership-inference audit: how well can an attacker tell the training images of a model from images of
the same distribution it never saw?

The loss-threshold attack (Yeom et al. 2018) scores each image by minus the model's loss on it: members tend to
have lower loss. Its ROC over an equal number of members and non-members gives the attack AUC (0.5 = no
better than chance) and the true-positive rate at a 1% false-positive rate (Carlini et al. 2022).
"""

from __future__ import annotations

import numpy as np

from .metrics import binary_auc


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 0.01) -> float:
    """Largest true-positive rate among thresholds whose false-positive rate is at most ``fpr``."""
    labels = np.asarray(labels).astype(bool)
    negatives = np.sort(np.asarray(scores)[~labels])[::-1]
    allowed = int(np.floor(fpr * len(negatives)))  # false positives we may accept
    # a threshold strictly above the (allowed+1)-th highest non-member score admits at most `allowed` of them
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return float(np.mean(np.asarray(scores)[labels] > threshold))


def loss_attack(member_losses: np.ndarray, nonmember_losses: np.ndarray, *, seed: int = 0) -> dict:
    """The loss-threshold attack on equal numbers of members and non-members (the larger side is subsampled
    with ``seed``)."""
    rng = np.random.default_rng(seed)
    n = min(len(member_losses), len(nonmember_losses))
    if n == 0:
        return {"attack": "loss threshold", "n_members": 0, "n_nonmembers": 0, "auc": None, "tpr_at_1pct_fpr": None}
    members = rng.choice(np.asarray(member_losses), n, replace=False)
    nonmembers = rng.choice(np.asarray(nonmember_losses), n, replace=False)
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    scores = -np.r_[members, nonmembers]
    return {
        "attack": "loss threshold (score = -cross-entropy)",
        "n_members": n,
        "n_nonmembers": n,
        "auc": binary_auc(labels, scores),
        "tpr_at_1pct_fpr": tpr_at_fpr(labels, scores, 0.01),
    }
