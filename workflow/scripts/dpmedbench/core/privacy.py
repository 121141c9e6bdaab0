"""The privacy record: what guarantee a released artefact carries, defined once.

The Local-DP stage writes one per noisy copy (inside its ``privacy.json``), each training plan produces one per
cell (``metrics.json`` → ``privacy``), and the summary table reads its columns from :meth:`summary_view`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class PrivacyRecord:
    """One privacy guarantee (or the documented absence of one).

    ``mechanism``: what produced it (``none``, ``dpsgd``, or a Local-DP mechanism such as ``laplace_pixel``).
    ``epsilon``/``delta``: the headline guarantee, ``None`` when there is none (``epsilon_reason`` says why).
    ``accountant``: how ``epsilon`` was obtained, short (``prv``, ``rdp``, ``Laplace mechanism, per pixel
    value``). ``unit``: what one epsilon protects (``image``, ``patient``, ``pixel value``). ``scope``: what is
    released. ``randomness``: where the noise came from and what that means for the guarantee. ``details``:
    mechanism-specific figures (noise multiplier, sample rate, steps, epsilon per image, ...), kept flat in the
    JSON form.

    >>> r = PrivacyRecord("dpsgd", 0.99, 1e-4, "prv", True, details={"steps": 10, "epsilon_rdp": 1.1})
    >>> PrivacyRecord.from_json(r.to_json()) == r
    True
    >>> r.summary_view()["epsilon_rdp"], r.summary_view()["accountant"]
    (1.1, 'prv')
    """

    mechanism: str
    epsilon: float | None
    delta: float | None = None
    accountant: str | None = None
    formal_guarantee: bool = False
    unit: str | None = None
    scope: str | None = None
    randomness: str | None = None
    epsilon_reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A flat JSON object: the fields above, then the details."""
        core = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}
        clash = set(core) & set(self.details)
        if clash:
            raise ValueError(f"privacy details may not redefine {sorted(clash)}")
        return {**core, **self.details}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> PrivacyRecord:
        """The record in a flat JSON object; keys that are not fields become details, except ``ignore``."""
        names = {f.name for f in fields(cls)} - {"details"}
        if "mechanism" not in data or "epsilon" not in data:
            raise ValueError(f"not a privacy record (needs 'mechanism' and 'epsilon'): keys {sorted(data)}")
        details = {k: v for k, v in data.items() if k not in names and k not in ignore}
        return cls(**{k: data[k] for k in names if k in data}, details=details)

    def epsilon_per_image(self) -> float | None:
        """The epsilon of one whole training image where the record states one: the headline epsilon at the image
        unit, else the record's own ``epsilon_per_image`` (a Local-DP copy's whole-image epsilon)."""
        return self.epsilon if self.unit == "image" else self.details.get("epsilon_per_image")

    def membership_epsilon(self, *, own_unit: bool = False) -> float | None:
        """The accounted epsilon that bounds one training image's membership: what a membership audit of the
        training images is held to, and the x of the audit figures. ``None`` where there is no guarantee.

        The per-image epsilon where the record states one (DP-SGD at the image unit, a Local-DP copy's whole-image
        epsilon). At the patient unit an image joining or leaving changes its patient's record (the patient's other
        images stay): a replacement, bounded by the replace-one epsilon (``epsilon_replace``).
        ``own_unit``: the audited images are each a privacy unit of their own (the one-run audit's canaries), held
        to the unit's epsilon.

        >>> dp = PrivacyRecord("dpsgd", 1.0, 1e-4, unit="patient", details={"epsilon_replace": 2.3})
        >>> dp.membership_epsilon(), dp.membership_epsilon(own_unit=True)
        (2.3, 1.0)
        >>> PrivacyRecord("dpsgd", 1.0, 1e-4, unit="image").membership_epsilon()
        1.0
        >>> PrivacyRecord("dp_pix", 0.5, 0.0, unit="image (any change to at most 16 pixels)",
        ...               details={"epsilon_per_image": 2304.0}).membership_epsilon()
        2304.0
        >>> NO_PRIVACY.membership_epsilon() is None
        True
        """
        if self.epsilon is None:
            return None
        if own_unit:
            return float(self.epsilon)
        if self.unit == "patient":
            return float(self.details.get("epsilon_replace") or self.epsilon)
        per_image = self.epsilon_per_image()
        return float(per_image if per_image is not None else self.epsilon)

    def without_guarantee(self, reason: str, *, suffix: str = "_if_seed_secret") -> PrivacyRecord:
        """The record of an output whose randomness anyone can recreate (a published seed): no formal guarantee.
        Every epsilon it states (the headline and each ``epsilon_*`` figure) becomes ``None``, its value kept
        under the same name plus ``suffix``; ``reason`` says why.

        >>> r = PrivacyRecord("dp_pix", 0.5, 0.0, formal_guarantee=True, details={"epsilon_per_image": 9.0,
        ...                   "epsilon_m_pixels_derivation": "text"}).without_guarantee("seeded")
        >>> r.epsilon, r.formal_guarantee, r.details["epsilon_if_seed_secret"], r.details["epsilon_per_image"]
        (None, False, 0.5, None)
        >>> r.details["epsilon_per_image_if_seed_secret"], r.details["epsilon_m_pixels_derivation"]
        (9.0, 'text')
        """
        figures = {k: v for k, v in self.details.items() if k.startswith("epsilon_") and _is_number(v)}
        details = {**self.details, **dict.fromkeys(figures)}
        details |= {f"{k}{suffix}": v for k, v in figures.items()} | {f"epsilon{suffix}": self.epsilon}
        return replace(self, epsilon=None, formal_guarantee=False, epsilon_reason=reason, details=details)

    def summary_view(self) -> dict[str, Any]:
        """The privacy columns of ``results/summary.csv``."""
        return {
            "privacy_mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "epsilon_per_image": self.epsilon_per_image(),
            # Under "any change to at most m pixels of one image" (a replacement): every Local-DP copy and every
            # DP-SGD cell records it; none where a mechanism states none.
            "epsilon_m_pixels": self.details.get("epsilon_m_pixels"),
            # DP-SGD: epsilon for replacing one unit's record by another (the replace-one relation).
            "epsilon_replace": self.details.get("epsilon_replace"),
            "neighbourhood_pixels": self.details.get("neighbourhood_pixels"),
            # What the audits of the training images and the audit figures hold the cell to.
            "epsilon_membership": self.membership_epsilon(),
            "delta": self.delta,
            "accountant": self.accountant if self.epsilon is not None else None,
            "privacy_unit": self.unit,
            **{
                key: self.details.get(key)
                for key in ("epsilon_patient", "epsilon_rdp", "noise_multiplier", "sample_rate", "steps")
            },
            "formal_guarantee": self.formal_guarantee,
            # What the cell publishes beside its guarantee, computed from private data (keys of the record's
            # outside_guarantee, ";"-separated; the README says which columns each covers).
            "outside_guarantee": ";".join(sorted(self.details.get("outside_guarantee") or {})) or None,
            "epsilon_if_seed_secret": self.details.get("epsilon_if_seed_secret"),
            "noise_source": self.details.get("noise_source"),
            "noise_key_id": self.details.get("key_id"),
        }


#: Why an output whose noise comes from the published seed has no guarantee (``noise_source: seeded``).
SEEDED = (
    "the noise is reproducible from the published seed (noise_source: seeded): anyone with the configuration can "
    "recreate and remove it, so no epsilon holds; epsilon_if_seed_secret is what would hold were the seed secret"
)


#: What the Local-DP stage computes from the clean private images beside the noisy copies: outside any copy's
#: guarantee, and listed as such in every record (``outside_guarantee``).
CLEAN_DATA_OUTPUTS = {
    "copy_quality": "psnr_db_mean and ssim_mean of each split of privacy.json (and summary.csv ldp_psnr_*, "
    "ldp_ssim_*) compare the clean training images with their noisy copies",
    "ldp_attack": "the re-identification and reconstruction figures (attack.json, summary.csv ldp_reid_*) match the "
    "noisy copies against the clean training images",
    "figure2_clean": "Figure 2's clean panel and its PSNR/SSIM figures show a clean training image (ldp.figure_clean: "
    "false leaves them out)",
}
#: What a Local-DP cell computes from the clean images beside the model trained on the noisy copies.
CLEAN_CELL_OUTPUTS = {
    "val_clean": "val_clean_acc (metrics.json, history.csv, summary.csv) and the val_clean report of "
    "evaluation.json are computed on the clean validation images",
    "clean_members": "the clean_members audit (evaluation.json, summary.csv audit_clean_*) scores the model on the "
    "clean training images",
}


def guarantee_of(record: PrivacyRecord, noise_source: str, key_id: str | None) -> PrivacyRecord:
    """``record`` with where its noise came from (``noise_source``, the key's ``key_id`` for keyed noise) among its
    details, and without a guarantee where that is the published seed (:data:`SEEDED`)."""
    record = replace(record, details={**record.details, "noise_source": noise_source, "key_id": key_id})
    return record.without_guarantee(SEEDED) if noise_source == "seeded" and record.epsilon is not None else record


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


NO_PRIVACY = PrivacyRecord(
    "none", None, epsilon_reason="non-private baseline: no privacy mechanism", scope="nothing is protected"
)
