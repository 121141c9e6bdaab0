"""The random draws of the Local-DP copies: a generator per image, and Laplace noise from its raw bits.

Noise is reproducible and independent: every image of every (dataset, mechanism, beta, split) copy has its own
PCG64 generator, derived with ``numpy.random.SeedSequence`` from (seed, dataset, mechanism, beta, split, image
index). Copies at different beta or of different mechanisms never share a draw (sharing one draw scaled by beta
would let anyone holding two copies solve for the clean image), reruns rebuild identical bytes whatever the chunk
size, and changing one beta touches one copy. ``noise_source: os`` draws fresh operating-system entropy instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Literal

import numpy as np

NoiseSource = Literal["seeded", "os"]


_ONE_MINUS_HALF_ULP = np.float32(1.0 - 2.0**-24)  # exactly representable


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


def randomness(noise_source: NoiseSource) -> str:
    """What the noise source means for the guarantee, in words (the privacy record's ``randomness``)."""
    if noise_source == "seeded":
        return (
            "seeded: every image's noise is derived from the configuration's seed, so the guarantee assumes the "
            "seed is secret; with the published configuration the noise can be recreated"
        )
    return "os: every image's noise comes from fresh operating-system entropy, recorded nowhere; not reproducible"


def seed_policy(seed: int, noise_source: NoiseSource) -> str:
    if noise_source == "seeded":
        return (
            f"seeded: numpy SeedSequence({seed}, spawn_key=(dataset, mechanism, beta, split, image index)) -> "
            "PCG64 per image; a rerun rebuilds identical bytes"
        )
    return "os: fresh operating-system entropy per image; not reproducible"
