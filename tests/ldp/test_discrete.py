"""The exact discrete Laplace sampler: its tables are the distribution's cumulative function bit for bit, its draws
follow the exact pmf, nothing is truncated, and the mechanisms built on it are pure epsilon-DP on the integer grid
(the support of an output never depends on the input)."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from dpmedbench.ldp.discrete import boundary_value, discrete_laplace
from dpmedbench.ldp.noise import laplace_from_bits, random_words
from scipy import stats


def _pmf(scale: float, z: np.ndarray) -> np.ndarray:
    q = math.exp(-1 / scale)
    return (1 - q) / (1 + q) * q ** np.abs(z)


def _cdf_exact(scale: Fraction, z: int, bits: int) -> int:
    """floor(F(z) 2^bits) by an independent route: the pmf summed term by term in decimal arithmetic."""
    with localcontext() as ctx:
        ctx.prec = 80
        q = (-(Decimal(scale.denominator) / Decimal(scale.numerator))).exp()
        c = (1 - q) / (1 + q)
        # the sum over k >= -z of c q^k, or one minus the sum over k > z
        value = c * q ** (-z) / (1 - q) if z < 0 else 1 - c * q ** (z + 1) / (1 - q)
        return int(value * Decimal(2) ** bits)


@pytest.mark.parametrize("scale", [Fraction(3, 2), Fraction(2), Fraction(7, 3)])
def test_every_boundary_of_the_table_is_the_cdf_to_128_bits(scale):
    d = discrete_laplace(scale)
    for position in range(len(d.hi)):
        z = position - d.half - 1
        table = (int(d.hi[position]) << 64) | int(d.lo[position])
        assert table == _cdf_exact(scale, z, 128) == boundary_value(scale, z, 128), z


def test_the_boundaries_of_the_per_pixel_scale_match_too():
    """Scale 255 (beta = 1): 14,146 boundaries, checked at the centre, the ends and every 97th."""
    d = discrete_laplace(Fraction(255))
    positions = sorted(
        {*range(0, 6), *range(d.half - 5, d.half + 7), *range(len(d.hi) - 6, len(d.hi)), *range(0, len(d.hi), 97)}
    )
    for position in positions:
        z = position - d.half - 1
        assert (int(d.hi[position]) << 64) | int(d.lo[position]) == _cdf_exact(Fraction(255), z, 128), z


@pytest.mark.parametrize("scale", [Fraction(2), Fraction(255, 2)])
def test_draws_follow_the_exact_pmf(scale):
    """Chi-square against the exact pmf, 2 million draws in 26 or 98 bins: a 1 % error in the probabilities
    would add about 200 to a chi-square of about its bins, far beyond p = 1e-4 (checked below with a tilted pmf)."""
    n = 2_000_000
    z = discrete_laplace(scale).sample(np.random.default_rng(11), n)
    step = math.ceil(float(scale) / 8)  # integers per bin
    width = step * math.ceil(6 * float(scale) / step)  # bins over +-6 scales, then the two tails
    inner = np.arange(-width, width)
    kept = z[(z >= -width) & (z < width)]
    observed = np.array([np.sum(z < -width), *np.bincount((kept + width) // step, minlength=2 * width // step),
                         np.sum(z >= width)])  # fmt: skip
    q = math.exp(-1 / float(scale))
    expected = n * np.array([q ** (width + 1) / (1 + q), *_pmf(float(scale), inner).reshape(-1, step).sum(axis=1),
                             q**width / (1 + q)])  # fmt: skip
    assert len(observed) == len(expected) > 20 and expected.sum() == pytest.approx(n)
    assert stats.chisquare(observed, expected).pvalue > 1e-4
    # and the test can see a 1 % error: the same draws against a pmf 1 % off (tilted) are rejected
    tilted = expected * (1 + 0.01 * np.sign(np.arange(len(expected)) - len(expected) // 2 + 0.5))
    assert stats.chisquare(observed, tilted * n / tilted.sum()).pvalue < 1e-4


def test_nothing_is_truncated_the_tails_go_on():
    """A uniform number below the table's first boundary or above its last gives a draw beyond the table, from
    the exact tail: the support is every integer."""
    d = discrete_laplace(Fraction(2))
    gen = np.random.default_rng(3)
    lowest, highest = np.array([0] * 200, np.uint64), np.array([2**64 - 1] * 200, np.uint64)
    left = d.invert(lowest, lambda n: gen.bit_generator.random_raw(n), gen)
    right = d.invert(highest, lambda n: gen.bit_generator.random_raw(n), gen)
    assert (left <= -d.half - 1).all() and (right >= d.half + 1).all()
    # beyond the table, memorylessness: (Z - L - 1 | Z > L) is geometric with parameter exp(-1/scale)
    q = math.exp(-1 / 2)
    assert np.mean(right - d.half - 1) == pytest.approx(q / (1 - q), rel=0.2)
    assert len(set(right.tolist())) > 5


def test_a_word_on_a_boundary_is_decided_by_more_bits():
    """A first word equal to a boundary's first 64 bits: the next word decides, as the exact comparison says."""
    d = discrete_laplace(Fraction(2))
    position = d.half + 1  # F(0)
    word = np.array([d.hi[position]], np.uint64)
    below = [int(d.lo[position]) - 1]  # U just under F(0): z = 0 is not reached, the draw is 0 (U < F(0))
    above = [int(d.lo[position]) + 1]  # U just over F(0): the draw is 1
    gen = np.random.default_rng(0)
    assert d.invert(word, lambda n: np.array(below, np.uint64), gen)[0] == 0
    assert d.invert(word, lambda n: np.array(above, np.uint64), gen)[0] == 1


def test_the_output_support_does_not_depend_on_the_input_and_the_ratio_is_bounded():
    """For two neighbouring grey levels x, x' (255 apart at most), every noisy value one can produce the other
    can, with probability ratio at most e^epsilon, epsilon = 255 / scale: checked exactly, on the stored grid of
    a clipped copy (0-255) and of an unclipped one (a window of int16)."""
    scale = Fraction(255)
    eps = float(255 / scale)
    d = discrete_laplace(scale)

    def stored(x: int, clip: bool) -> dict[int, float]:
        """P(stored value = y) for a clean x, from the table's boundaries (the sampler's exact distribution)."""
        cdf = lambda z: (int(d.hi[z + d.half + 1]) << 64 | int(d.lo[z + d.half + 1])) / 2**128  # noqa: E731
        window = range(-300, 300) if not clip else range(0, 256)
        out = {}
        for y in window:
            z = y - x
            if clip and y == 0:
                out[y] = cdf(z)
            elif clip and y == 255:
                out[y] = 1 - cdf(z - 1)
            else:
                out[y] = cdf(z) - cdf(z - 1)
        return out

    for clip in (True, False):
        for x, other in ((0, 255), (128, 129), (255, 0), (17, 200)):
            p, p2 = stored(x, clip), stored(other, clip)
            assert all(v > 0 for v in p.values()) and all(v > 0 for v in p2.values())  # the same support
            worst = max(max(p[y] / p2[y], p2[y] / p[y]) for y in p)
            assert worst <= math.exp(eps) * (1 + 1e-9)


def test_the_float_sampler_kept_for_the_authors_shift_is_not_exact():
    """Why the Laplace-based mechanisms no longer use it: 2^24 equally likely values, tails cut at 16.6 beta, so
    a noisy value near the cut is reachable from one input and not its neighbour."""
    words = random_words(np.random.default_rng(0), 1 << 16)
    x = laplace_from_bits(words, 1.0)
    assert np.abs(laplace_from_bits(np.array([0, 1], np.uint32), 1.0)).max() == pytest.approx(24 * math.log(2))
    assert np.abs(x).max() < 16.7  # a hard cut: the exact sampler has none


def test_a_scale_beyond_the_table_is_still_exact_in_distribution():
    """At a huge scale (beta = 10^5 per pixel) the capped table leaves most draws to the tails, which are drawn by
    a loop, not a recursion: the mean absolute draw is the distribution's, 2q / (1 - q^2)."""
    scale = Fraction(255 * 100_000)
    d = discrete_laplace(scale)
    assert d.half < 2 * float(scale)  # the table covers a small part of the distribution
    z = d.sample(np.random.default_rng(4), 40_000)
    q = math.exp(-1 / float(scale))
    assert np.abs(z).mean() == pytest.approx(2 * q / (1 - q * q), rel=0.03)
    assert abs(z.mean()) < 5 * float(scale) * math.sqrt(2 / len(z))
