"""Local-DP noisy copies of the training images.

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

Noise is reproducible and independent: every image of every (dataset, mechanism, beta, split) copy has its own
PCG64 generator, derived with ``numpy.random.SeedSequence`` from (seed, dataset, mechanism, beta, split, image
index). Copies at different beta or of different mechanisms never share a draw (sharing one draw scaled by beta
would let anyone holding two copies solve for the clean image), reruns rebuild identical bytes whatever the chunk
size, and changing one beta touches one copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import __version__
from .fileio import atomic_outputs
from .names import beta_label as beta_label  # re-exported: paths use it beside the copies
from .privacy import PrivacyRecord
from .quality import psnr, ssim

log = logging.getLogger(__name__)

NoiseSource = Literal["seeded", "os"]
_ONE_MINUS_HALF_ULP = np.float32(1.0 - 2.0**-24)  # exactly representable


# ------------------------------------------------------------------------------------------------- sampler
def laplace_from_bits(words: np.ndarray, beta: float) -> np.ndarray:
    """Laplace(0, ``beta``) float32 samples from uniform random 32-bit words, by inversion.

    The top 23 bits of a word give ``u = (k + 1/2) * 2**-23``, built exactly (a float in [1, 2) from the bits,
    minus 1 - 2**-24) and strictly inside (0, 1), so ``-log(u)`` is finite for every input: at most
    24 ln 2 ~ 16.6, at u = 2**-24. The lowest bit becomes the sign bit. The distribution is the exponential's
    inverse CDF on a 2**23-point grid: exact to float32 resolution, tails cut at 16.6 beta (probability 2**-24).

    >>> laplace_from_bits(np.array([0, 1], dtype=np.uint32), 1.0)  # u = 2**-24, both signs
    array([ 16.635532, -16.635532], dtype=float32)
    """
    words = np.asarray(words, dtype=np.uint32)
    u = ((words >> np.uint32(9)) | np.uint32(0x3F800000)).view(np.float32) - _ONE_MINUS_HALF_ULP
    magnitude = np.log(u)
    np.multiply(magnitude, np.float32(-beta), out=magnitude)
    return (magnitude.view(np.uint32) | ((words & np.uint32(1)) << np.uint32(31))).view(np.float32)


def random_words(generator: np.random.Generator, count: int) -> np.ndarray:
    """``count`` uniform uint32 words: the generator's raw 64-bit output, both halves used."""
    return generator.bit_generator.random_raw((count + 1) // 2).view(np.uint32)[:count]


def _key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def image_generators(
    *,
    seed: int,
    dataset: str,
    mechanism: str,
    beta: float,
    split: str,
    start: int,
    count: int,
    noise_source: NoiseSource,
) -> Iterator[np.random.Generator]:
    """One generator per image ``start .. start + count - 1`` of a copy.

    ``seeded``: derived from (seed, dataset, mechanism, beta, split, index), so a rerun gives identical bytes.
    ``os``: fresh operating-system entropy for every image, never reproducible (for real releases).
    """
    if noise_source == "os":
        for _ in range(count):
            yield np.random.Generator(np.random.PCG64(np.random.SeedSequence()))
        return
    key = (_key(dataset), _key(mechanism), _key(repr(float(beta))), _key(split))
    for index in range(start, start + count):
        yield np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(*key, index))))


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


# --------------------------------------------------------------------------------------------- materialise
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


def _perturb_into(
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
    _perturb_into(
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


def materialise_copy(
    *,
    dataset: str,
    beta: float,
    mechanism: str,
    clip: bool,
    seed: int,
    noise_source: NoiseSource,
    inputs: dict[str, str | os.PathLike[str]],
    outputs: dict[str, str | os.PathLike[str]],
    privacy_json: str | os.PathLike[str],
    chunk_images: int = 64,
    quality_images: int = 64,
    block: int = DEFAULT_BLOCK,
    neighbourhood: int = DEFAULT_NEIGHBOURHOOD,
) -> dict[str, Any]:
    """Write the noisy copy of each split in ``inputs`` (``{split: prepared .npy}``) to ``outputs``
    (``{split: noisy .npy}``) and the privacy record to ``privacy_json``.

    Streams ``chunk_images`` images at a time: memory stays bounded whatever the dataset size. PSNR and SSIM
    are computed on ``quality_images`` evenly spaced images per split (0: all). Everything is written under
    temporary names and renamed only when every file is complete.
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown Local-DP mechanism {mechanism!r}; known: {sorted(MECHANISMS)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if neighbourhood < 1:
        raise ValueError(f"the neighbourhood m must be at least 1 pixel, got {neighbourhood}")
    params = LdpParams(clip=clip, block=block, neighbourhood=neighbourhood)
    storage = storage_of(mechanism, clip)
    splits = list(inputs)
    finals = [Path(outputs[s]) for s in splits] + [Path(privacy_json)]
    record: dict[str, Any] = {}
    with atomic_outputs(*finals) as tmps:
        for split, tmp in zip(splits, tmps, strict=False):
            clean = np.load(inputs[split], mmap_mode="r")
            if clean.dtype != np.uint8 or clean.ndim != 4:
                raise ValueError(
                    f"{inputs[split]}: expected a uint8 (N, H, W, C) array, got {clean.dtype} {clean.shape}"
                )
            noise = {"mechanism": mechanism, "beta": beta, "seed": seed, "dataset": dataset, "split": split}
            shape = tuple(int(v) for v in clean.shape[1:])
            record[split] = _copy_split(
                clean,
                tmp,
                storage=storage,
                chunk=chunk_images,
                quality=quality_images,
                noise_source=noise_source,
                params=params,
                **noise,
            )
            values = int(np.prod(shape))
            log.info("%s beta=%g %s: %d images, %s", dataset, beta, split, len(clean), record[split])
        privacy = {
            "dataset": dataset,
            "beta": beta,
            "description": MECHANISMS[mechanism].description,
            **replace(
                MECHANISMS[mechanism].privacy(beta, shape, params), randomness=randomness(noise_source)
            ).to_json(),
            "values_per_image": values,
            "storage": storage,
            "clipped": storage == "uint8",
            "noised_splits": splits,
            "clean_splits": ["test"],
            "seed_policy": _seed_policy(seed, noise_source),
            "seed": seed if noise_source == "seeded" else None,
            "splits": record,
            "quality_note": "PSNR and SSIM compare a clean image with its noisy copy as a viewer sees it "
            "(values clipped to [0, 1]), averaged over quality_images evenly spaced images of the split; "
            "saturated_fraction is the share of all noisy values outside [0, 1] (before any clipping).",
            "dpmedbench_version": __version__,
        }
        tmps[-1].write_text(json.dumps(privacy, indent=2) + "\n")
    return privacy


def randomness(noise_source: NoiseSource) -> str:
    """What the noise source means for the guarantee, in words (the privacy record's ``randomness``)."""
    if noise_source == "seeded":
        return (
            "seeded: every image's noise is derived from the configuration's seed, so the guarantee assumes the "
            "seed is secret; with the published configuration the noise can be recreated"
        )
    return "os: every image's noise comes from fresh operating-system entropy, recorded nowhere; not reproducible"


def _seed_policy(seed: int, noise_source: NoiseSource) -> str:
    if noise_source == "seeded":
        return (
            f"seeded: numpy SeedSequence({seed}, spawn_key=(dataset, mechanism, beta, split, image index)) -> "
            "PCG64 per image; a rerun rebuilds identical bytes"
        )
    return "os: fresh operating-system entropy per image; not reproducible"


def _copy_split(
    clean: np.ndarray, tmp: Path, *, storage: str, chunk: int, quality: int, **noise: Any
) -> dict[str, float | int]:
    """Write the noisy copy of one split to ``tmp``, ``chunk`` images at a time; its saturation and quality."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=storage, shape=clean.shape)
    stats = _Stats(quality_indices(len(clean), quality))
    buffer = np.empty((min(chunk, len(clean)), *clean.shape[1:]), dtype=np.float32)  # reused
    for start in range(0, len(clean), chunk):
        batch = np.asarray(clean[start : start + chunk])
        work = buffer[: len(batch)]
        _perturb_into(work, batch, start=start, **noise)
        stats.count_saturated(work)
        store(work, out[start : start + len(batch)])
        stats.add_quality(start, batch, out[start : start + len(batch)])
    out.flush()
    del out
    return stats.summary()


def quality_indices(n: int, sample: int) -> np.ndarray:
    """``sample`` evenly spaced indices of ``range(n)`` (all of them when ``sample`` is 0 or >= n)."""
    if sample <= 0 or sample >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, sample).round().astype(int))


class _Stats:
    """Saturation over every value; PSNR and SSIM means over the images in ``quality``."""

    def __init__(self, quality: np.ndarray) -> None:
        self.quality = set(quality.tolist())
        self.n = 0
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.saturated = 0
        self.values = 0

    def count_saturated(self, noisy: np.ndarray) -> None:
        self.saturated += int(np.count_nonzero(noisy < 0)) + int(np.count_nonzero(noisy > 1))
        self.values += noisy.size
        self.n += len(noisy)

    def add_quality(self, start: int, clean_uint8: np.ndarray, stored: np.ndarray) -> None:
        for offset in range(len(clean_uint8)):
            if start + offset in self.quality:
                clean = clean_uint8[offset].astype(np.float32) / np.float32(255.0)
                shown = np.clip(decode_stored(stored[offset]), 0.0, 1.0)
                self.psnr.append(min(psnr(clean, shown), 100.0))
                self.ssim.append(ssim(clean, shown))

    def summary(self) -> dict[str, float | int]:
        if not self.n:
            return {"images": 0}
        return {
            "images": self.n,
            "quality_images": len(self.psnr),
            "psnr_db_mean": round(float(np.mean(self.psnr)), 3),
            "ssim_mean": round(float(np.mean(self.ssim)), 4),
            "saturated_fraction": round(self.saturated / self.values, 4),
        }
