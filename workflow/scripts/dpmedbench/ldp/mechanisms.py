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
from fractions import Fraction
from typing import Any

import numpy as np

from ..core.privacy import PrivacyRecord
from .discrete import discrete_laplace
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
    #: perturb(values, generators, beta, params): add the noise to an int32 (N, H, W, C) batch of grey levels
    #: (the clean 0-255 values), in place, with ``generators[i]`` for image i.
    perturb: Callable[[np.ndarray, list[np.random.Generator], float, LdpParams], None]
    #: privacy(beta, (H, W, C), params): the guarantee of one noisy image.
    privacy: Callable[[float, tuple[int, int, int], LdpParams], PrivacyRecord]
    description: str


MECHANISMS: dict[str, Mechanism] = {}


def register(mechanism: Mechanism) -> Mechanism:
    MECHANISMS[mechanism.name] = mechanism
    return mechanism


#: Grey levels per unit of the [0, 1] scale: a pixel value changes by at most this much.
GREY_LEVELS = 255


def _add_discrete_laplace(target: np.ndarray, gens: list[np.random.Generator], scale: Fraction) -> None:
    """Add exact discrete Laplace noise of ``scale`` (:mod:`.discrete`) to every integer of ``target[i]`` in
    place, from ``gens[i]``."""
    sampler, per_image = discrete_laplace(scale), target[0].size
    for i, g in enumerate(gens):
        target[i] += sampler.sample(g, per_image).reshape(target.shape[1:]).astype(target.dtype)


def pixel_scale(beta: float) -> Fraction:
    """The per-pixel mechanism's discrete Laplace scale in grey levels: 255 beta, exactly (beta's binary value).

    >>> pixel_scale(1.0), pixel_scale(0.5)
    (Fraction(255, 1), Fraction(255, 2))
    """
    return GREY_LEVELS * Fraction(beta)


def _pixel_noise(values: np.ndarray, gens: list[np.random.Generator], beta: float, params: LdpParams) -> None:
    _add_discrete_laplace(values, gens, pixel_scale(beta))


#: What draws the noise of the Laplace-based mechanisms, for their privacy records.
SAMPLER = (
    "exact discrete Laplace (two-sided geometric) on integers: inversion of uniform 64-bit words against the "
    "cumulative distribution known to 128 bits, refined bit by bit where a word meets a boundary, and the tails "
    "beyond the table sampled exactly by memorylessness; no floating point, no truncation"
)


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
        accountant="discrete Laplace mechanism, per pixel value",
        formal_guarantee=True,
        unit="pixel value",
        scope=LOCAL_SCOPE,
        details={
            "epsilon_per_value": 1.0 / beta,
            "epsilon_per_image": values_per_image / beta,
            **_neighbourhood(params, m * channels / beta),
            "sensitivity": 1.0,
            "sensitivity_grey_levels": GREY_LEVELS,
            "noise_scale_grey_levels": float(pixel_scale(beta)),
            "sampler": SAMPLER,
            "derivation": "Discrete Laplace mechanism on the integer grey levels 0-255, pure epsilon-DP with delta = "
            "0 exactly (the noise's support is every integer, whatever the input): noise of scale 255*beta, "
            "P(z) proportional to exp(-|z| / (255 beta)). Per value: a grey level changes by at most 255, epsilon = "
            "255 / (255 beta) = 1/beta. Per image: L1 sensitivity 255*d over d = H*W*C values, epsilon = d / beta. "
            f"Any change to at most m = {m} pixels ({channels} value(s) each): L1 sensitivity 255*m*C, epsilon = "
            "m*C / beta. Clipping to 0-255, clamping to int16 and reading a value as value/255 are post-processing "
            "and change none of these.",
        },
    )


def _shift_noise(values: np.ndarray, gens: list[np.random.Generator], beta: float, params: LdpParams) -> None:
    shifts = np.array([laplace_from_bits(random_words(g, 1), beta)[0] for g in gens], np.float64)
    values += np.rint(GREY_LEVELS * shifts).astype(values.dtype).reshape(-1, *([1] * (values.ndim - 1)))
    # The authors' continuous Laplace (there is no epsilon to keep exact), rounded to a grey level; saturation to
    # 0-255, as their 8-bit JPEG write did, happens in storage: always uint8 (storage_of).


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


register(
    Mechanism(
        "laplace_pixel",
        _pixel_noise,
        _pixel_privacy,
        "exact discrete Laplace noise of scale 255 beta per grey level (beta on [0, 1])",
    )
)
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


def dp_pix_sum_scale(beta: float, neighbourhood: int, channels: int) -> Fraction:
    """DP-Pix's discrete Laplace scale on the integer cell sums (grey levels): 255 C m beta, exactly, for
    epsilon = 1/beta under the m-pixel neighbourhood (its L1 sensitivity is 255 C m).

    >>> dp_pix_sum_scale(1.0, 16, 1), dp_pix_sum_scale(0.5, 16, 3)
    (Fraction(4080, 1), Fraction(6120, 1))
    """
    return GREY_LEVELS * channels * neighbourhood * Fraction(beta)


def cell_sums(values: np.ndarray, block: int) -> np.ndarray:
    """Integer cell sums of an integer (N, H, W, C) batch: (N, H/b, W/b, C), int64."""
    _check_block(values.shape, block)
    n, h, w, c = values.shape
    return values.reshape(n, h // block, block, w // block, block, c).sum(axis=(2, 4), dtype=np.int64)


def _pix_noise(values: np.ndarray, gens: list[np.random.Generator], beta: float, params: LdpParams) -> None:
    sums = cell_sums(values, params.block)
    _add_discrete_laplace(sums, gens, dp_pix_sum_scale(beta, params.neighbourhood, values.shape[-1]))
    area = params.block**2
    means = np.floor_divide(2 * sums + area, 2 * area)  # the noisy sum's mean grey level, rounded half up
    values[...] = np.repeat(np.repeat(means, params.block, axis=1), params.block, axis=2)


def _pix_privacy(beta: float, shape: tuple[int, int, int], params: LdpParams) -> PrivacyRecord:
    height, width, channels = shape
    _check_block((height, width, channels), params.block)
    b, m = params.block, params.neighbourhood
    scale = dp_pix_scale(beta, b, m, channels)
    return PrivacyRecord(
        mechanism="dp_pix",
        epsilon=1.0 / beta,
        delta=0.0,
        accountant="discrete Laplace mechanism on b x b cell sums (DP-Pix)",
        formal_guarantee=True,
        unit=f"image, up to {m} pixels changed",
        scope=LOCAL_SCOPE,
        details={
            "epsilon_per_value": None,
            "epsilon_per_image": height * width / (m * beta),
            **_neighbourhood(params, 1.0 / beta),
            "block": b,
            "noise_scale": scale,
            "noise_scale_grey_levels": GREY_LEVELS * scale,
            "noise_scale_cell_sum": float(dp_pix_sum_scale(beta, m, channels)),
            "sensitivity": channels * m / b**2,
            "sampler": SAMPLER,
            "derivation": f"DP-Pix (Fan, DBSec 2018) on the integer grey levels: each {b} x {b} cell's integer sum "
            f"per channel gets exact discrete Laplace noise of scale 255*C*m*beta = "
            f"{float(dp_pix_sum_scale(beta, m, channels)):g}, and the cell is replaced by the noisy sum's mean, "
            f"rounded to a grey level (C*m*beta/b^2 = {scale:.6g} on [0, 1], {GREY_LEVELS * scale:.4g} grey levels "
            f"on the mean). Changing at most m = {m} pixels ({channels} value(s) each, each by at most 255) moves the "
            "cell sums by at most 255*C*m in L1, so epsilon = 1/beta for that neighbourhood, pure (delta = 0 "
            "exactly: the noise's support is every integer). Any change to the whole image moves them by at most "
            "255*C*H*W: epsilon = H*W / (m*beta) per image. The mean, its rounding, clipping and storage are "
            "post-processing.",
        },
    )


register(
    Mechanism(
        "dp_pix",
        _pix_noise,
        _pix_privacy,
        "DP-Pix: b x b cell sums per channel plus exact discrete Laplace noise, their means; epsilon per image for "
        "any m pixels (Fan 2018)",
    )
)


# ------------------------------------------------------------------------------------------------- storage
def storage_of(mechanism: str, clip: bool) -> str:
    """``int16`` (unclipped noisy grey levels) or ``uint8`` (clipped to 0-255); both read as value/255."""
    return "uint8" if clip or mechanism == "laplace_image_shift" else "int16"


#: The range an int16 copy holds; a noisy grey level beyond it is clamped (post-processing; at beta 4 a value
#: lands there with probability below 1e-13).
INT16_RANGE = (-32768, 32767)


def store(values: np.ndarray, out: np.ndarray) -> int:
    """Write integer noisy grey levels into the stored copy's rows ``out``: uint8 clipped to 0-255, or int16
    clamped to its range (both post-processing). Clips ``values`` in place; returns how many values were
    clamped to the int16 range (0 for uint8)."""
    if out.dtype == np.uint8:
        np.clip(values, 0, GREY_LEVELS, out=values)
        clamped = 0
    elif out.dtype == np.int16:
        low, high = INT16_RANGE
        clamped = int(np.count_nonzero(values < low)) + int(np.count_nonzero(values > high))
        np.clip(values, low, high, out=values)
    else:
        raise ValueError(f"a Local-DP copy is stored as uint8 or int16, not {out.dtype}")
    out[...] = values  # int32 -> int16 / uint8 straight into the memory map
    return clamped


def decode_stored(stored: np.ndarray) -> np.ndarray:
    """Stored copy (grey levels, uint8 or int16) -> float32 values on the [0, 1] scale: value / 255."""
    if stored.dtype not in (np.uint8, np.int16):
        raise ValueError(f"a Local-DP copy holds uint8 or int16 grey levels, not {stored.dtype}")
    return stored.astype(np.float32) / np.float32(GREY_LEVELS)


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
    key: bytes | None = None,
) -> None:
    work[...] = clean_uint8
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
            key=key,
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
    key: bytes | None = None,
) -> np.ndarray:
    """Noisy grey levels (int32) of images ``start ..`` of a split (before storage): exactly the values
    :func:`.copies.materialise_copy` stores for them."""
    work = np.empty(clean_uint8.shape, dtype=np.int32)
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
        key=key,
    )
    return work
