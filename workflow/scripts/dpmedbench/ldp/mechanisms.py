"""The Local-DP mechanisms: how each perturbs a batch of images, how its output is stored, and its privacy.

Mechanisms live in a small registry (:data:`MECHANISMS`): a new one is one function that takes a clean batch in
[0, 1] and a generator per image and returns the noisy batch, plus its privacy figures.

* ``laplace_pixel`` (the paper's text): Laplace noise of scale beta added independently to every value of the
  [0, 1]-scaled image. The Laplace mechanism with sensitivity 1 per value gives epsilon = 1/beta per value,
  and epsilon = d/beta for a whole image of d values (L1 sensitivity d).
* ``laplace_image_shift`` (the authors' ``Adding_Noise.ipynb``): one Laplace draw of scale beta per image,
  added to every pixel, then saturated to [0, 1] as their 8-bit JPEG write did. A brightness shift: two
  images that differ in one pixel stay distinguishable, so no epsilon bounds it.
* ``dp_pix`` (Fan, "Image pixelization with differential privacy", DBSec 2018): the image is cut into b x b
  cells, each cell replaced by its mean per channel, and Laplace noise added to every cell mean. Two images are
  neighbours when they differ in at most m pixels (a pixel: all C values at one place); the C cell means of an
  image then move by at most C m / b^2 in L1, so noise of scale C m beta / b^2 on [0, 1] gives epsilon = 1/beta
  per image under that neighbourhood (Fan's greyscale scale 255 m / (b^2 epsilon), times C for colour).

Every mechanism also states its epsilon under the same m-pixel neighbourhood (``epsilon_m_pixels``): the one
scale on which Local-DP mechanisms can be compared. Per-pixel Laplace: m C / beta (m C values change by at most 1
each); DP-Pix: 1/beta; the shift: none.

Each image's noise comes from its own generator (:mod:`.noise`); :mod:`.copies` streams a whole copy to disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.privacy import PrivacyRecord
from .noise import NoiseSource, image_generators, laplace_from_bits, random_words

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- mechanisms
#: Fan (2018)'s setting: 16 x 16 cells, neighbours differ in up to 16 pixels.
DEFAULT_BLOCK = 16
DEFAULT_NEIGHBOURHOOD = 16


@dataclass(frozen=True)
class LdpParams:
    """A dataset's Local-DP settings (``datasets.<name>.ldp``): storage, DP-Pix's cell side b, and the
    neighbourhood m (pixels) under which every mechanism's ``epsilon_m_pixels`` is stated."""

    clip: bool = False
    block: int = DEFAULT_BLOCK
    neighbourhood: int = DEFAULT_NEIGHBOURHOOD

    @classmethod
    def from_record(cls, privacy: dict[str, Any]) -> LdpParams:
        """The settings a copy was made with, from its ``privacy.json``."""
        return cls(
            clip=bool(privacy.get("clipped", False)),
            block=int(privacy.get("block") or DEFAULT_BLOCK),
            neighbourhood=int(privacy.get("neighbourhood_pixels") or DEFAULT_NEIGHBOURHOOD),
        )


@dataclass(frozen=True)
class Mechanism:
    """A Local-DP mechanism: how it perturbs a batch, how its output is stored, and its privacy."""

    name: str
    #: perturb(values, generators, beta, params): add the noise to a float32 (N, H, W, C) batch of [0, 1] values,
    #: in place, with ``generators[i]`` for image i.
    perturb: Callable[[np.ndarray, list[np.random.Generator], float, LdpParams], None]
    #: privacy(beta, (H, W, C), params): the guarantee of one noisy image.
    privacy: Callable[[float, tuple[int, int, int], LdpParams], PrivacyRecord]
    description: str


MECHANISMS: dict[str, Mechanism] = {}


def register(mechanism: Mechanism) -> Mechanism:
    MECHANISMS[mechanism.name] = mechanism
    return mechanism


def _add_laplace(target: np.ndarray, gens: list[np.random.Generator], scale: float) -> None:
    """Add Laplace(0, ``scale``) noise to every value of ``target[i]`` in place, from ``gens[i]``."""
    per_image = target[0].size
    for i, g in enumerate(gens):
        target[i] += laplace_from_bits(random_words(g, per_image), scale).reshape(target.shape[1:])


def _pixel_noise(values: np.ndarray, gens: list[np.random.Generator], beta: float, params: LdpParams) -> None:
    _add_laplace(values, gens, beta)


LOCAL_SCOPE = "local: each noisy image is released on its own; whatever is computed from it is post-processing"


def _neighbourhood(params: LdpParams, epsilon: float | None) -> dict[str, Any]:
    return {"neighbourhood_pixels": params.neighbourhood, "epsilon_m_pixels": epsilon}


def _pixel_privacy(beta: float, shape: tuple[int, int, int], params: LdpParams) -> PrivacyRecord:
    values_per_image = int(np.prod(shape))
    m, channels = params.neighbourhood, shape[2]
    return PrivacyRecord(
        mechanism="laplace_pixel",
        epsilon=1.0 / beta,
        delta=0.0,
        accountant="Laplace mechanism, per pixel value",
        formal_guarantee=True,
        unit="pixel value",
        scope=LOCAL_SCOPE,
        details={
            "epsilon_per_value": 1.0 / beta,
            "epsilon_per_image": values_per_image / beta,
            **_neighbourhood(params, m * channels / beta),
            "sensitivity": 1.0,
            "derivation": "Laplace mechanism, pure epsilon-DP (Dwork et al. 2006): epsilon = sensitivity / beta. "
            "Per value: each [0, 1] pixel value changes by at most 1. Per image: L1 sensitivity d = H*W*C values, "
            f"epsilon = d / beta. Any change to at most m = {m} pixels ({channels} value(s) each): L1 sensitivity "
            f"m*C = {m * channels}, epsilon = m*C / beta. Clipping, rounding and storage are post-processing and "
            "change none of these.",
        },
    )


def _shift_noise(values: np.ndarray, gens: list[np.random.Generator], beta: float, params: LdpParams) -> None:
    shifts = np.array([laplace_from_bits(random_words(g, 1), beta)[0] for g in gens], np.float32)
    values += shifts.reshape(-1, *([1] * (values.ndim - 1)))
    # Saturation to [0, 1], as the authors' 8-bit JPEG write did, happens in storage: always uint8 (storage_of).


def _shift_privacy(beta: float, shape: tuple[int, int, int], params: LdpParams) -> PrivacyRecord:
    return PrivacyRecord(
        mechanism="laplace_image_shift",
        epsilon=None,
        formal_guarantee=False,
        scope=LOCAL_SCOPE,
        details={
            "epsilon_per_value": None,
            "epsilon_per_image": None,
            **_neighbourhood(params, None),
            "sensitivity": None,
        },
        epsilon_reason="No epsilon is derived: one Laplace draw per image is added to every pixel (a "
        "brightness shift, then saturated to [0, 1]). Two images that differ in a single pixel keep that "
        "difference exactly in every output, so no finite epsilon bounds the mechanism. This reproduces the "
        "authors' Adding_Noise.ipynb (b = 255/epsilon on 0-255 pixels, i.e. scale beta on [0, 1]); the "
        "epsilon they assigned (1/beta) is not a guarantee of this mechanism.",
    )


register(Mechanism("laplace_pixel", _pixel_noise, _pixel_privacy, "Laplace noise of scale beta per [0,1] value"))
register(
    Mechanism(
        "laplace_image_shift",
        _shift_noise,
        _shift_privacy,
        "one Laplace draw of scale beta per image added to every pixel, saturated to [0,1] (authors' code)",
    )
)


def dp_pix_scale(beta: float, block: int, neighbourhood: int, channels: int) -> float:
    """DP-Pix's Laplace scale on [0, 1] for epsilon = 1/beta per image under the m-pixel neighbourhood:
    C m beta / b^2 (Fan's 255 m / (b^2 epsilon) on 0-255 greyscale, times C channels).

    >>> dp_pix_scale(1.0, 16, 16, 1), dp_pix_scale(2.0, 16, 16, 3)  # 16 grey levels at beta 1 on a chest X-ray
    (0.0625, 0.375)
    """
    return channels * neighbourhood * beta / block**2


def _check_block(shape: tuple[int, ...], block: int) -> None:
    height, width = shape[-3], shape[-2]
    if height % block or width % block:
        raise ValueError(
            f"dp_pix: the cell side b = {block} must divide the image's {height} x {width} pixels "
            "(datasets.<name>.ldp.block and image_size)"
        )


def pixelate(values: np.ndarray, block: int) -> np.ndarray:
    """Cell means of a float32 (N, H, W, C) batch: (N, H/b, W/b, C), averaged in float64."""
    _check_block(values.shape, block)
    n, h, w, c = values.shape
    cells = values.reshape(n, h // block, block, w // block, block, c).mean(axis=(2, 4), dtype=np.float64)
    return cells.astype(np.float32)


def _pix_noise(values: np.ndarray, gens: list[np.random.Generator], beta: float, params: LdpParams) -> None:
    cells = pixelate(values, params.block)
    _add_laplace(cells, gens, dp_pix_scale(beta, params.block, params.neighbourhood, values.shape[-1]))
    values[...] = np.repeat(np.repeat(cells, params.block, axis=1), params.block, axis=2)


def _pix_privacy(beta: float, shape: tuple[int, int, int], params: LdpParams) -> PrivacyRecord:
    height, width, channels = shape
    _check_block((height, width, channels), params.block)
    b, m = params.block, params.neighbourhood
    scale = dp_pix_scale(beta, b, m, channels)
    return PrivacyRecord(
        mechanism="dp_pix",
        epsilon=1.0 / beta,
        delta=0.0,
        accountant="Laplace mechanism on b x b cell means (DP-Pix)",
        formal_guarantee=True,
        unit=f"image, up to {m} pixels changed",
        scope=LOCAL_SCOPE,
        details={
            "epsilon_per_value": None,
            "epsilon_per_image": height * width / (m * beta),
            **_neighbourhood(params, 1.0 / beta),
            "block": b,
            "noise_scale": scale,
            "noise_scale_grey_levels": 255 * scale,
            "sensitivity": channels * m / b**2,
            "derivation": f"DP-Pix (Fan, DBSec 2018): each {b} x {b} cell is replaced by its mean per channel and "
            f"Laplace noise of scale C*m*beta/b^2 = {scale:.6g} on [0, 1] ({255 * scale:.4g} grey levels) is added to "
            f"every cell mean. Changing at most m = {m} pixels ({channels} value(s) each, each by at most 1) moves the "
            f"C cell means by at most C*m/b^2 = {channels * m / b**2:.6g} in L1, so epsilon = 1/beta for that "
            f"neighbourhood. Any change to the whole image moves the cell means by at most C*H*W/b^2 in L1: "
            f"epsilon = H*W / (m*beta) per image. Clipping and storage are post-processing.",
        },
    )


register(
    Mechanism(
        "dp_pix",
        _pix_noise,
        _pix_privacy,
        "DP-Pix: b x b cell means per channel plus Laplace noise, epsilon per image for any m pixels (Fan 2018)",
    )
)


# ------------------------------------------------------------------------------------------------- storage
def storage_of(mechanism: str, clip: bool) -> str:
    """``float16`` (unclipped noisy values) or ``uint8`` (values in [0, 1] times 255, rounded)."""
    return "uint8" if clip or mechanism == "laplace_image_shift" else "float16"


def store(values: np.ndarray, out: np.ndarray) -> None:
    """Write float32 noisy values into the stored copy's rows ``out`` (float16, or uint8 of [0, 1] x 255).
    Clips ``values`` in place for uint8 storage."""
    if out.dtype == np.uint8:
        np.clip(values, 0.0, 1.0, out=values)
        values *= np.float32(255.0)
        np.rint(values, out=values)
    out[...] = values  # float32 -> float16 / uint8 conversion straight into the memory map


def decode_stored(stored: np.ndarray) -> np.ndarray:
    """Stored copy -> float32 values on the [0, 1] scale (uint8 copies are divided by 255)."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255.0)
    return stored.astype(np.float32)


def perturb_into(
    work: np.ndarray,
    clean_uint8: np.ndarray,
    *,
    mechanism: str,
    beta: float,
    seed: int,
    dataset: str,
    split: str,
    start: int,
    noise_source: NoiseSource,
    params: LdpParams,
) -> None:
    np.divide(clean_uint8, np.float32(255.0), out=work, dtype=np.float32)
    gens = list(
        image_generators(
            seed=seed,
            dataset=dataset,
            mechanism=mechanism,
            beta=beta,
            split=split,
            start=start,
            count=len(work),
            noise_source=noise_source,
        )
    )
    MECHANISMS[mechanism].perturb(work, gens, beta, params)


def noisy_batch(
    clean_uint8: np.ndarray,
    *,
    mechanism: str,
    beta: float,
    seed: int,
    dataset: str,
    split: str,
    start: int,
    noise_source: NoiseSource = "seeded",
    params: LdpParams | None = None,
) -> np.ndarray:
    """Noisy float32 values of images ``start ..`` of a split (before storage encoding): exactly the values
    :func:`materialise_copy` stores for them."""
    work = np.empty(clean_uint8.shape, dtype=np.float32)
    perturb_into(
        work,
        clean_uint8,
        mechanism=mechanism,
        beta=beta,
        seed=seed,
        dataset=dataset,
        split=split,
        start=start,
        noise_source=noise_source,
        params=params or LdpParams(),
    )
    return work
