"""Small statistics for reports, written out so every number can be checked by hand.

- ``wilson``: the Wilson score interval for a proportion (good at small n and at 0 or n
  successes, where the normal approximation claims certainty it does not have).
- ``percentile``: nearest-rank, the same as ``ORDER BY x LIMIT 1 OFFSET ceil(q*n)-1`` in SQL.
- ``two_proportion_z``: the two-sample test for drift in a success rate.
- ``documents_needed``: how many documents, at the rate seen so far, before the interval
  clears a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95 %
Z99 = 2.5758293035489004  # two-sided 99 %


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``successes / n``; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # exact at the edges (floating point leaves 1e-17 residues there)
    return (0.0 if successes == 0 else lo), (1.0 if successes == n else hi)


def documents_needed(successes: int, n: int, threshold: float, *, limit: int = 10_000_000) -> int | None:
    """The smallest total n' >= n at which, if the observed rate held, the Wilson interval would
    lie wholly above or below ``threshold``. None when the rate equals the threshold (no amount of
    data at this rate decides it) or more than ``limit`` would be needed."""
    if n <= 0:
        return None
    rate = successes / n

    def decided(m: int) -> bool:
        lo, hi = wilson(round(rate * m), m)
        return lo > threshold or hi < threshold

    if decided(n):
        return n
    if math.isclose(rate, threshold, rel_tol=1e-9, abs_tol=1e-12):
        return None
    hi = n
    while not decided(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while lo + 1 < hi:  # decided(hi) is True, decided(lo) is False
        mid = (lo + hi) // 2
        if decided(mid):
            hi = mid
        else:
            lo = mid
    return hi


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def two_proportion_z(s1: int, n1: int, s2: int, n2: int) -> float | None:
    """z statistic for p1 - p2 with a pooled standard error; None when undefined."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return None if s1 / n1 == s2 / n2 else math.copysign(math.inf, s1 / n1 - s2 / n2)
    return (s1 / n1 - s2 / n2) / se


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: ``b`` documents only the first
    got right, ``c`` only the second (a binomial test of b against (b + c) / 2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
