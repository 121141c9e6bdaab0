"""The random draws of the Local-DP copies: a generator per image, and Laplace noise from its raw bits.

Noise is secret, reproducible and independent: every image of every (dataset, mechanism, beta, split) copy has its
own PCG64 generator, seeded with HMAC-SHA256(secret key, (dataset, mechanism, beta, split, image index))
(``noise_source: keyed``, the default; :mod:`dpmedbench.core.noisekey`). Copies at different beta or of different
mechanisms never share a draw (sharing one draw scaled by beta would let anyone holding two copies solve for the
clean image), rebuilds in the same checkout give identical bytes whatever the chunk size, changing one beta touches
one copy, and nobody without the key can regenerate the noise. ``seeded`` derives the generators from the
published seed instead (teaching and tests: no guarantee), ``os`` from fresh operating-system entropy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Literal

import numpy as np

from ..core.noisekey import NoiseKeyError, keyed_entropy

NoiseSource = Literal["keyed", "seeded", "os"]


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
    key: bytes | None = None,
) -> Iterator[np.random.Generator]:
    """One generator per image ``start .. start + count - 1`` of a copy.

    ``keyed``: seeded with HMAC-SHA256(``key``, (dataset, mechanism, beta, split, index)): reproducible with the
    key, unknown without it. ``seeded``: derived from (seed, dataset, mechanism, beta, split, index), which anyone
    with the configuration can recreate. ``os``: fresh operating-system entropy for every image, never reproducible.
    """
    if noise_source == "os":
        for _ in range(count):
            yield np.random.Generator(np.random.PCG64(np.random.SeedSequence()))
        return
    if noise_source == "keyed":
        if key is None:
            raise NoiseKeyError("noise_source 'keyed' needs the noise key (noise_key), and none was given")
        for index in range(start, start + count):
            entropy = keyed_entropy(key, "ldp", dataset, mechanism, float(beta), split, index)
            yield np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
        return
    key = (_key(dataset), _key(mechanism), _key(repr(float(beta))), _key(split))
    for index in range(start, start + count):
        yield np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(*key, index))))


def randomness(noise_source: NoiseSource) -> str:
    """What the noise source means for the guarantee, in words (the privacy record's ``randomness``)."""
    if noise_source == "keyed":
        return (
            "keyed: every image's noise is derived from a secret 256-bit key (kept outside every released folder; "
            "the record names only its key_id) by HMAC-SHA256, so nobody without the key can recreate it; a "
            "rebuild with the same key gives identical bytes. PCG64 generators, not cryptographic themselves, "
            "draw from the keyed seeds"
        )
    if noise_source == "seeded":
        return (
            "seeded: every image's noise is derived from the configuration's published seed, so anyone with the "
            "configuration can recreate and subtract it: no formal guarantee"
        )
    return "os: every image's noise comes from fresh operating-system entropy, recorded nowhere; not reproducible"


def seed_policy(seed: int, noise_source: NoiseSource) -> str:
    if noise_source == "keyed":
        return (
            "keyed: numpy SeedSequence(HMAC-SHA256(key, (dataset, mechanism, beta, split, image index))) -> PCG64 "
            "per image; a rebuild with the same key rebuilds identical bytes"
        )
    if noise_source == "seeded":
        return (
            f"seeded: numpy SeedSequence({seed}, spawn_key=(dataset, mechanism, beta, split, image index)) -> "
            "PCG64 per image; a rerun rebuilds identical bytes"
        )
    return "os: fresh operating-system entropy per image; not reproducible"
