"""Fixed, log-spaced latency buckets shared by the sink, the rollups and the reports.

Bucket ``i`` (``i >= 1``) holds latencies in ``[BASE * R**(i-1), BASE * R**i)`` milliseconds
with ``R = 2**(1/4)`` (about 1.19); bucket 0 holds everything under ``BASE`` (0.1 ms) and the
last bucket everything above its lower bound (about 28 minutes). A percentile read from a
rollup is the upper bound of the bucket holding that rank, so it is never below the true
value and at most 19 % above it: always within one bucket of an exact measurement.
Fixed bounds make histograms of different minutes, routes and sinks simply additive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = [
    "BASE_MS",
    "BUCKETS",
    "RATIO",
    "bucket_of",
    "decode",
    "encode",
    "from_samples",
    "merge",
    "percentile",
    "upper_bound",
]

BASE_MS = 0.1
RATIO = 2 ** (1 / 4)
BUCKETS = 98
_STEPS_PER_DOUBLING = 4


def bucket_of(ms: float) -> int:
    """Index of the bucket holding a latency of ``ms`` milliseconds."""
    if ms < BASE_MS:
        return 0
    index = math.floor(math.log2(ms / BASE_MS) * _STEPS_PER_DOUBLING) + 1
    return min(index, BUCKETS - 1)


def upper_bound(index: int) -> float:
    """Largest latency (exclusive) of bucket ``index``, in milliseconds."""
    return BASE_MS * RATIO**index


def percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) as the upper bound of the bucket of that rank; None if empty.

    The rank is the nearest-rank definition (``ceil(q * n)``), the one a sorted list of the
    same samples gives, so the result and an exact percentile share a bucket.
    """
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return upper_bound(index)
    return upper_bound(max(hist))  # pragma: no cover - the loop always reaches the rank


def merge(into: dict[int, int], other: Mapping[int, int]) -> dict[int, int]:
    for index, count in other.items():
        into[index] = into.get(index, 0) + count
    return into


def encode(hist: Mapping[int, int]) -> str:
    """Compact text for a database column: ``index:count`` pairs of non-empty buckets."""
    return ",".join(f"{i}:{n}" for i, n in sorted(hist.items()) if n)


def decode(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    if text:
        for pair in text.split(","):
            index, _, count = pair.partition(":")
            out[int(index)] = int(count)
    return out


def from_samples(samples: Iterable[float]) -> dict[int, int]:
    hist: dict[int, int] = {}
    for ms in samples:
        b = bucket_of(ms)
        hist[b] = hist.get(b, 0) + 1
    return hist
