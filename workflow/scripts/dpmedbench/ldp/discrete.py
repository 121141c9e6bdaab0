"""Exact discrete Laplace sampling (the two-sided geometric distribution): P(Z = z) = (1 - q) / (1 + q) * q^|z|
on all integers, q = exp(-1 / scale).

The sampler inverts the cumulative distribution function F against a uniform number U in [0, 1) whose binary
expansion is drawn lazily, 64 bits at a time: Z is the smallest z with U < F(z). Every boundary F(z) of a central
range |z| <= L is known to 128 bits (certified: computed in 256-bit fixed point with a bound on its error, and
recomputed with decimal arithmetic at higher precision where that bound leaves a bit in doubt). A first word
decides unless it equals a boundary's first 64 bits; then further words are drawn and compared with as many bits
of that boundary as needed, computed on demand. Outside the central range (probability about 2^-40 per side)
the distribution's memorylessness gives the rest exactly: Z = L + 1 + G on the right, G a geometric variable
(drawn from the same table: a draw >= 0, each one in the right tail adding L + 1), and symmetrically on the left.
Nothing is truncated and no floating-point number is involved: the output distribution is the exact one, up to
the uniformity of the generator's 64-bit words.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

#: Bits of tail probability left outside the central table, per side (the tails are then sampled exactly).
TAIL_BITS = 40
#: The central table's half-width is capped (very large scales: the tails are taken more often, still exactly).
MAX_HALF = 1 << 17
_FIXED = 256  # bits of the fixed-point construction
_MASK64 = (1 << 64) - 1


def boundary_value(scale: Fraction, z: int, bits: int) -> int:
    """floor(F(z) * 2^bits), exactly: decimal arithmetic at a precision raised until the floor is certain.

    F(z) = q^-z / (1 + q) for z < 0 and 1 - q^(z+1) / (1 + q) for z >= 0, q = exp(-1/scale).

    >>> boundary_value(Fraction(1), -1, 8), boundary_value(Fraction(1), 0, 8)  # F(-1) = e^-1/(1+e^-1) = 0.2689
    (68, 187)
    """
    digits = int(bits * 0.30103) + 30
    while True:
        with localcontext() as ctx:
            ctx.prec = digits
            q = (-(Decimal(scale.denominator) / Decimal(scale.numerator))).exp()
            value = q ** (-z) / (1 + q) if z < 0 else 1 - q ** (z + 1) / (1 + q)
            scaled = value * (Decimal(2) ** bits)
            floor = int(scaled)
            # every operation above is correctly rounded: the error is far below 10^-(digits - 10) relative
            margin = scaled.copy_abs() * Decimal(10) ** (-(digits - 10)) + 1 / Decimal(10) ** 10
            if int(scaled - margin) == floor == int(scaled + margin):
                return floor
        digits *= 2


@dataclass(frozen=True)
class DiscreteLaplace:
    """The tables of one scale: ``hi`` and ``lo``, the first and second 64 bits of every boundary F(z),
    z = -L-1 .. L (``half`` = L), in order, and ``guide``, the first boundary at or above each 2^-``guide_bits``
    step of [0, 1) (an index into the boundaries, so that most draws need one comparison)."""

    scale: Fraction
    half: int
    hi: np.ndarray
    lo: np.ndarray
    guide: np.ndarray
    guide_bits: int

    @property
    def epsilon_per_unit(self) -> float:
        """The privacy loss of a change of 1 in the noised integer: 1/scale (pure, delta = 0)."""
        return float(1 / self.scale)

    def sample(self, gen: np.random.Generator, count: int) -> np.ndarray:
        """``count`` independent draws (int64), from ``gen``'s raw 64-bit words."""
        words = gen.bit_generator.random_raw(count)
        return self.invert(words, lambda n: gen.bit_generator.random_raw(n), gen)

    def invert(self, words: np.ndarray, more: Callable[[int], np.ndarray], gen: np.random.Generator) -> np.ndarray:
        """The draws whose uniform numbers start with ``words`` (uint64); ``more(n)`` gives further words where a
        word meets a boundary, ``gen`` the tails' draws."""
        z = self._table(words, more)
        self._tails(z, gen)
        return z

    def _table(self, words: np.ndarray, more: Callable[[int], np.ndarray]) -> np.ndarray:
        """Inversion against the table alone: -L-1 marks a draw in the left tail, L+1 one in the right."""
        words = np.asarray(words, dtype=np.uint64)
        bucket = (words >> np.uint64(64 - self.guide_bits)).astype(np.intp)
        first, after = self.guide[bucket], self.guide[bucket + 1]
        index = first.copy()  # boundaries before the bucket are below every word in it
        one = np.flatnonzero(after - first == 1)
        index[one] += self.hi[first[one]] <= words[one]
        many = np.flatnonzero(after - first > 1)
        if many.size:
            index[many] = np.searchsorted(self.hi, words[many], side="right")
        # a word equal to a boundary's first 64 bits does not decide it: more bits do
        below = np.maximum(index - 1, 0)
        for i in np.flatnonzero((index > 0) & (self.hi[below] == words)):
            index[i] = self._refine(int(words[i]), int(index[i]), more)
        return index.astype(np.int64) - (self.half + 1)

    def _refine(self, word: int, index: int, more: Callable[[int], np.ndarray]) -> int:
        """The number of boundaries below U for a uniform number whose first word equals the first 64 bits of
        the boundaries just below ``index`` (every boundary at and above ``index`` is above it already)."""
        expansion = [word]
        while index > 0 and int(self.hi[index - 1]) == word:
            if self._below(index - 1, expansion, more):
                return index
            index -= 1
        return index

    def _below(self, position: int, expansion: list[int], more: Callable[[int], np.ndarray]) -> bool:
        """Whether boundary ``position`` is at or below U, U's words ``expansion`` drawn as far as needed."""
        z = position - (self.half + 1)
        depth = 1
        while True:
            depth += 1
            while len(expansion) < depth:
                expansion.append(int(more(1)[0]))
            if depth == 2:
                bound = (int(self.hi[position]) << 64) | int(self.lo[position])
            else:
                bound = boundary_value(self.scale, z, 64 * depth)
            drawn = 0
            for w in expansion[:depth]:
                drawn = (drawn << 64) | w
            if drawn != bound:
                return drawn > bound  # U >= drawn / 2^(64 d) > bound / 2^(64 d) ... or below it

    def _tails(self, z: np.ndarray, gen: np.random.Generator) -> None:
        """Replace the draws that fell outside the table (z = -L-1 marks the left tail, L+1 the right) by
        -(L + 1 + G) or L + 1 + G, G geometric with parameter q (:meth:`_geometric`)."""
        for side, edge in ((-1, -self.half - 1), (1, self.half + 1)):
            where = np.flatnonzero(z == edge)
            if where.size:
                z[where] = side * (self.half + 1 + self._geometric(where.size, gen))

    def _geometric(self, count: int, gen: np.random.Generator) -> np.ndarray:
        """``count`` draws of G, P(G = g) = (1 - q) q^g: this distribution given that it is >= 0 (a table draw below
        0 is redrawn). One in the right tail (G >= L + 1, probability q^(L+1)) adds L + 1 and is redrawn: by
        memorylessness the rest is G again. A loop, not a recursion, however often the tails are hit (large
        scales cap the table)."""
        out = np.zeros(count, np.int64)
        pending = np.arange(count)
        more = lambda n: gen.bit_generator.random_raw(n)  # noqa: E731
        while pending.size:
            z = self._table(gen.bit_generator.random_raw(pending.size), more)
            out[pending[z == self.half + 1]] += self.half + 1
            done = (z >= 0) & (z <= self.half)
            out[pending[done]] += z[done]
            pending = pending[~done]
        return out


@functools.lru_cache(maxsize=16)
def discrete_laplace(scale: Fraction) -> DiscreteLaplace:
    """The exact sampler of the discrete Laplace distribution of ``scale`` (P(z) ∝ exp(-|z| / scale)).

    >>> d = discrete_laplace(Fraction(3, 2))
    >>> d.half, d.epsilon_per_unit
    (43, 0.6666666666666666)
    """
    scale = Fraction(scale)
    if scale <= 0:
        raise ValueError(f"the discrete Laplace scale must be positive, got {scale}")
    half = min(MAX_HALF, math.ceil(TAIL_BITS * math.log(2) * scale) + 1)
    hi, lo = _boundaries(scale, half)
    guide_bits = min(20, max(16, (2 * half + 2).bit_length() + 2))
    starts = np.arange(1 << guide_bits, dtype=np.uint64) << np.uint64(64 - guide_bits)
    guide = np.append(np.searchsorted(hi, starts, side="left"), len(hi))
    return DiscreteLaplace(scale, half, hi, lo, guide, guide_bits)


def _boundaries(scale: Fraction, half: int) -> tuple[np.ndarray, np.ndarray]:
    """The first two 64-bit words of F(z), z = -half-1 .. half, in 256-bit fixed point. Every step truncates,
    so the computed value lies below the true one by at most (steps + 4) units of 2^-256; a boundary whose bits
    below the 128th leave the truncation in doubt is computed exactly instead (:func:`boundary_value`)."""
    one = 1 << _FIXED
    q = boundary_q(scale)
    power = [one]  # q^k, k = 0 .. half + 1
    for _ in range(half + 1):
        power.append(power[-1] * q >> _FIXED)
    inverse = (one << _FIXED) // (one + q)  # 1 / (1 + q)
    words = []
    for z in range(-half - 1, half + 1):
        k = -z if z < 0 else z + 1
        tail = power[k] * inverse >> _FIXED
        value = tail if z < 0 else one - tail
        error = 2 * k + 8  # units of 2^-256, both signs (1 - tail turns a low estimate into a high one)
        low = value & ((1 << (_FIXED - 128)) - 1)
        if low < error or low > (1 << (_FIXED - 128)) - error:
            top = boundary_value(scale, z, 128)
        else:
            top = value >> (_FIXED - 128)
        words.append(top)
    hi = np.array([w >> 64 for w in words], dtype=np.uint64)
    lo = np.array([w & _MASK64 for w in words], dtype=np.uint64)
    return hi, lo


def boundary_q(scale: Fraction) -> int:
    """floor(exp(-1/scale) * 2^256), certified (:func:`boundary_value`'s method)."""
    digits = 110
    while True:
        with localcontext() as ctx:
            ctx.prec = digits
            scaled = (-(Decimal(scale.denominator) / Decimal(scale.numerator))).exp() * (Decimal(2) ** _FIXED)
            margin = scaled * Decimal(10) ** (-(digits - 10))
            if int(scaled - margin) == int(scaled + margin):
                return int(scaled)
        digits *= 2
