"""DP-SGD's accounting: the noise calibrated to a target epsilon, the accountants' epsilon after the steps that
ran (RDP and PRV, Opacus's), epsilon for groups of examples by RDP group privacy (a patient's images, a replaced
image), and the figures of a DP-SGD cell's privacy record built from them.

A run's accountant history is Opacus's: [(noise multiplier, sample rate, steps)].
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Smallest noise multiplier (to Opacus's 0.01 tolerance in epsilon) reaching ``target_epsilon`` at
    ``delta`` after ``steps`` Poisson-sampled steps, by ``accountant`` ("prv" or "rdp")."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01,
        )
    )


def epsilon(history: list[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    """Epsilon spent by the steps in ``history`` ([(noise_multiplier, sample_rate, steps)]); infinite once a
    step with a noise multiplier of 0 (no noise: no guarantee) has run.

    >>> epsilon([(0.0, 0.1, 10)], delta=1e-5, accountant="prv")
    inf
    """
    if not history:
        return 0.0
    if any(sigma == 0 and rate > 0 and steps > 0 for sigma, rate, steps in history):
        return math.inf  # the accountants divide by sigma (PRV fails outright)
    acc = ACCOUNTANTS[accountant]()
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta=delta))


def group_epsilon(history: list[tuple[float, float, int]], *, delta: float, group_size: int) -> float:
    """Epsilon at ``delta`` for any group of ``group_size`` examples (a patient with that many images), from the
    run's RDP by RDP group privacy (Mironov 2017, Proposition 2): an (alpha, eps)-RDP mechanism is
    (alpha / 2^c, 3^c eps)-RDP for groups of 2^c >= ``group_size`` when alpha >= 2^(c+1); converted to
    (epsilon, delta) as Opacus's RDP accountant converts (Balle et al. 2020), minimised over the orders. A group of
    one gets the RDP accountant's epsilon.

    >>> history = [(1.0, 0.01, 1000)]
    >>> one, two = group_epsilon(history, delta=1e-5, group_size=1), group_epsilon(history, delta=1e-5, group_size=2)
    >>> abs(one - epsilon(history, delta=1e-5, accountant="rdp")) < 0.05 and two > 2 * one
    True
    >>> group_epsilon([], delta=1e-5, group_size=4)
    0.0
    """
    if not history:
        return 0.0
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    c = math.ceil(math.log2(max(1, group_size)))
    orders = np.concatenate([np.linspace(1.25, 10.0, 36), np.arange(11.0, 257.0)])  # alpha / 2^c
    if c:
        orders = orders[orders >= 2.0]  # alpha >= 2^(c+1)
    rdp = np.zeros_like(orders)
    with warnings.catch_warnings():  # large orders overflow to inf/nan, dropped below; the bound stays valid
        warnings.simplefilter("ignore")
        for sigma, q, steps in history:
            rdp += compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders * 2**c)
        finite = np.isfinite(rdp)
        if not finite.any():
            return math.inf
        eps, _ = get_privacy_spent(orders=orders[finite], rdp=3**c * rdp[finite], delta=delta)
    return float(eps)


def account(history: list, sigma: float, q: float) -> list:
    """The accountant history after one more step ([(sigma, q, steps)], as Opacus keeps it).

    >>> account(account([], 1.0, 0.1), 1.0, 0.1)
    [(1.0, 0.1, 2)]
    """
    history = [list(h) for h in history]
    if history and history[-1][0] == sigma and history[-1][1] == q:
        history[-1][2] += 1
    else:
        history.append([sigma, q, 1])
    return [tuple(h) for h in history]


# ------------------------------------------------------------------------------------- the privacy record
NORM_LAYERS = {
    "group": "GroupNorm(min(32, C), C) instead of BatchNorm",
    "frozen": "BatchNorm frozen at ImageNet statistics (not trained)",
}
#: What every DP-SGD record says of its Gaussian noise, whatever the noise source.
GAUSSIAN_SAMPLER = (
    "the Gaussian noise is drawn by PyTorch's floating-point normal sampler, not an exact one: the accountants "
    "assume exact Gaussians; floating-point attacks on Gaussian noise are far weaker than on Laplace noise (Jin et "
    "al. 2022) but the guarantee is not exact in the way the Local-DP copies' discrete noise is"
)
RANDOMNESS = {
    "keyed": "keyed: the noise and the Poisson batches come from PyTorch generators seeded every epoch with "
    "HMAC-SHA256(secret key, the cell's identity, epoch, purpose); the key is kept outside every released folder "
    "(the record names only its key_id), so nobody without it can recreate them, and a rerun with the key gives "
    "identical weights. The generators themselves (Mersenne Twister on the CPU, Philox on CUDA) are not "
    "cryptographic; " + GAUSSIAN_SAMPLER,
    "seeded": "seeded: the noise and the Poisson batches are derived from the cell's identity (dataset, mechanism, "
    "beta, seed) and the published seed: anyone with the configuration can recreate the noise, so no epsilon "
    "holds; " + GAUSSIAN_SAMPLER,
    "os": "os: the noise and the Poisson batches come from PyTorch generators (Mersenne Twister on the CPU, "
    "Philox on CUDA; not cryptographic themselves) seeded every epoch with 63 bits from the operating system's "
    "CSPRNG (Python's secrets module), recorded nowhere; a rerun gives other weights. Opacus's secure_mode needs "
    "torchcsprng, which has no release for this PyTorch; " + GAUSSIAN_SAMPLER,
}
TRAIN_METRICS_NOTE = (
    "computed exactly on each epoch's Poisson batches and published without noise: outside the DP-SGD guarantee"
)


def group_sizes(groups: np.ndarray) -> dict[str, Any]:
    """How many images each group (patient) has in the training split.

    >>> group_sizes(np.array(["a", "a", "b", "c", "c", "c"], dtype=object))
    {'groups': 3, 'largest': 3, 'mean': 2.0, 'histogram': {'1': 1, '2': 1, '3': 1}}
    """
    counts = Counter(Counter(groups.tolist()).values())
    sizes = np.array(list(Counter(groups.tolist()).values()))
    return {
        "groups": len(sizes),
        "largest": int(sizes.max()),
        "mean": round(float(sizes.mean()), 3),
        "histogram": {str(k): counts[k] for k in sorted(counts)},
    }


def outside_guarantee(train_metrics: str) -> dict[str, str]:
    """What is published about the training data beside the model, and not covered by epsilon."""
    outside = {
        "audit": "the membership-inference figures (evaluation.json, summary.csv audit_*) are computed from the "
        "model's losses on the training images: they measure the guarantee and are not covered by it",
        "counts": "n_train and the images per patient (hence epsilon_patient) are exact counts of the training "
        "data; the accountant treats them as public (q and the number of steps are computed from them)",
    }
    if train_metrics == "exact":
        outside |= {"train_loss": TRAIN_METRICS_NOTE, "train_acc": TRAIN_METRICS_NOTE}
    return outside


def replace_epsilon(history: list[tuple[float, float, int]], *, delta: float) -> float:
    """Epsilon at ``delta`` for replacing one unit's record by another (the replace-one neighbouring relation),
    by Google's dp_accounting: its PLD accountant on the run's Poisson-subsampled Gaussian steps. Infinite once a
    step without noise has run.

    >>> round(replace_epsilon([(1.0, 0.01, 1000)], delta=1e-5), 2) > round(epsilon([(1.0, 0.01, 1000)],
    ...     delta=1e-5, accountant="prv"), 2)
    True
    """
    if not history:
        return 0.0
    if any(sigma == 0 and rate > 0 and steps > 0 for sigma, rate, steps in history):
        return math.inf
    import dp_accounting
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    accountant = PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    for sigma, q, steps in history:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), int(steps))
    return float(accountant.get_epsilon(delta))


def replacement_figures(history: list, eps: float, *, delta: float, unit: str) -> dict[str, Any]:
    """Epsilon for changing one training image (any m of its pixels, or all): a replacement of that unit's
    record (at the patient unit, the changed image's patient's), computed directly for the replace-one relation
    (:func:`replace_epsilon`); the RDP group-of-2 bound (Mironov 2017, Prop. 2), about 1.5 times larger, beside it
    for reference."""
    noiseless = math.isinf(eps)
    replace = math.inf if noiseless else replace_epsilon(history, delta=delta)
    return {
        "epsilon_replace": replace,
        "epsilon_replace_derivation": f"replacing one training {unit}'s record by another: the PLD accountant of "
        f"Google's dp_accounting with the replace-one neighbouring relation, on the same Poisson-subsampled "
        f"Gaussian steps, at delta {delta:g}",
        "epsilon_replace_group_rdp": math.inf if noiseless else group_epsilon(history, delta=delta, group_size=2),
        "epsilon_m_pixels": replace,
        "epsilon_m_pixels_derivation": f"changing pixels of one training image replaces that {unit}'s record: "
        "epsilon_replace; it holds for any change to one image, so for any m of its pixels too",
    }


def patient_figures(
    history: list, eps: float, *, delta: float, unit: str, groups: np.ndarray | None, patients: bool
) -> dict[str, Any]:
    """What a patient gets: epsilon itself at the patient unit; by group privacy over the largest patient at
    the image unit; nothing computable where the groups are not patients (``patients``: they are)."""
    if not patients or groups is None:
        return {
            "epsilon_patient": None,
            "epsilon_patient_reason": "this source publishes no patient ids (the groups are image ids), so what "
            "a patient with several images gets cannot be computed",
        }
    sizes = group_sizes(groups)
    if unit == "patient":
        return {"images_per_patient": sizes, "epsilon_patient": eps, "epsilon_patient_conversion": "none needed"}
    return {
        "images_per_patient": sizes,
        "epsilon_patient": group_epsilon(history, delta=delta, group_size=sizes["largest"]),
        "epsilon_patient_conversion": f"RDP group privacy (Mironov 2017, Prop. 2) for the largest patient "
        f"({sizes['largest']} images, as a group of {2 ** math.ceil(math.log2(sizes['largest']))}), at delta "
        f"{delta:g}",
    }
