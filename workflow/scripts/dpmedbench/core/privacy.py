"""The privacy record: what guarantee a released artefact carries, defined once.

The Local-DP stage writes one per noisy copy (inside its ``privacy.json``), each training plan produces one per
cell (``metrics.json`` → ``privacy``), and the summary table reads its columns from :meth:`summary_view`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
        images stay): a replacement, bounded by the replacement epsilon (``epsilon_m_pixels``, a group of 2).
        ``own_unit``: the audited images are each a privacy unit of their own (the one-run audit's canaries), held
        to the unit's epsilon.

        >>> dp = PrivacyRecord("dpsgd", 1.0, 1e-4, unit="patient", details={"epsilon_m_pixels": 2.3})
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
            return float(self.details.get("epsilon_m_pixels") or self.epsilon)
        per_image = self.epsilon_per_image()
        return float(per_image if per_image is not None else self.epsilon)

    def summary_view(self) -> dict[str, Any]:
        """The privacy columns of ``results/summary.csv``."""
        return {
            "privacy_mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "epsilon_per_image": self.epsilon_per_image(),
            # Under "any change to at most m pixels of one image" (a replacement): every Local-DP copy and every
            # DP-SGD cell records it; none where a mechanism states none.
            "epsilon_m_pixels": self.details.get("epsilon_m_pixels"),
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
        }


NO_PRIVACY = PrivacyRecord(
    "none", None, epsilon_reason="non-private baseline: no privacy mechanism", scope="nothing is protected"
)
