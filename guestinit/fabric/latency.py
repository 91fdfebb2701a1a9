"""Latency histograms with fixed buckets: bounded memory however many calls are recorded.

Bucket upper bounds grow by 2**(1/4) (about 19 %) from 10 µs to about 100 s, plus one overflow
bucket. A quantile is estimated inside the bucket that holds its rank, by linear interpolation,
and kept within the smallest and largest values seen; so an estimate is off by less than one
bucket's width (under 19 % of the value). :class:`Latencies` keeps one histogram per method for
a fixed set of methods (those the server registered), each behind a lock.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FIRST_BOUND_S = 10e-6
GROWTH = 2 ** (1 / 4)
BOUNDS_S: tuple[float, ...] = tuple(FIRST_BOUND_S * GROWTH**i for i in range(94))  # 10 µs .. ~100 s
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Summary:
    """One method's histogram at a moment: counts per bucket and the figures derived from them."""

    count: int
    errors: int
    sum_s: float
    min_s: float
    max_s: float
    counts: tuple[int, ...]  # len(BOUNDS_S) + 1, the last one the overflow bucket

    def quantile(self, q: float) -> float:
        return quantile(self.counts, q, self.min_s, self.max_s)

    @property
    def mean_s(self) -> float:
        return self.sum_s / self.count if self.count else 0.0

    def buckets(self) -> list[tuple[float, int]]:
        """The non-empty buckets as (upper bound in seconds, count); +inf for the overflow."""
        return [(upper_bound(i), n) for i, n in enumerate(self.counts) if n]


def upper_bound(index: int, bounds: Sequence[float] = BOUNDS_S) -> float:
    return bounds[index] if index < len(bounds) else math.inf


def bucket_of(seconds: float, bounds: Sequence[float] = BOUNDS_S) -> int:
    """The index of the bucket holding ``seconds`` (upper bounds are inclusive)."""
    return bisect.bisect_left(bounds, seconds)


def quantile(
    counts: Sequence[int], q: float, low: float, high: float, bounds: Sequence[float] = BOUNDS_S
) -> float:
    """The ``q`` quantile (0..1) of values counted per bucket, ``low`` and ``high`` being the
    smallest and largest of them (or the bucket limits, when unknown); 0.0 with no values."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = min(max(q, 0.0), 1.0) * total
    seen = 0
    for index, n in enumerate(counts):
        if n and seen + n >= rank:
            lower = bounds[index - 1] if index > 0 else 0.0
            upper = upper_bound(index, bounds)
            lower, upper = max(lower, low), min(upper, high)
            fraction = (rank - seen) / n
            return min(max(lower + (upper - lower) * fraction, low), high)
        seen += n
    return high


def counts_from_buckets(buckets: Iterable[tuple[float, int]]) -> tuple[int, ...]:
    """Counts per bucket from (upper bound in seconds, count) pairs, as GetStatus sends them."""
    counts = [0] * (len(BOUNDS_S) + 1)
    for bound, n in buckets:
        # the bound itself, computed by the sender from the same table, may differ in the last bit
        counts[len(BOUNDS_S) if math.isinf(bound) else bucket_of(bound * (1 - 1e-9))] += n
    return tuple(counts)


class Histogram:
    """Counts per fixed bucket, plus count, errors, sum, min and max; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(BOUNDS_S) + 1)
        self._errors = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0

    def record(self, seconds: float, ok: bool = True) -> None:
        seconds = max(seconds, 0.0)
        index = bucket_of(seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds
            self._min = min(self._min, seconds)
            self._max = max(self._max, seconds)
            if not ok:
                self._errors += 1

    def summary(self) -> Summary:
        with self._lock:
            count = sum(self._counts)
            low = self._min if count else 0.0
            return Summary(count, self._errors, self._sum, low, self._max, tuple(self._counts))


class Latencies:
    """One histogram per method name; names are added by the server as it routes methods, so
    their number is bounded by the methods it serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._methods: dict[str, Histogram] = {}

    def histogram(self, method: str) -> Histogram:
        with self._lock:
            found = self._methods.get(method)
            if found is None:
                found = self._methods[method] = Histogram()
            return found

    def summaries(self) -> dict[str, Summary]:
        """Every method that has had a call, by name."""
        with self._lock:
            methods = sorted(self._methods.items())
        return {name: s for name, h in methods if (s := h.summary()).count}
