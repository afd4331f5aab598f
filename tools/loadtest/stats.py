"""Latency histograms as Locust keeps them ({rounded ms: count}), and percentiles over them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Histogram = Mapping[int, int]


def bucket(milliseconds: float) -> int:
    """Locust's rounding of a response time: whole ms below 100, then 2 significant digits."""
    if milliseconds < 100:
        return round(milliseconds)
    if milliseconds < 1000:
        return int(round(milliseconds, -1))
    if milliseconds < 10000:
        return int(round(milliseconds, -2))
    return int(round(milliseconds, -3))


def percentile(histogram: Histogram, fraction: float) -> float:
    """The smallest bucket that covers `fraction` of the samples; 0 for no samples."""
    total = sum(histogram.values())
    if total == 0:
        return 0.0
    wanted = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= wanted:
            return float(bucket)
    return float(max(histogram))


def merge(histograms: Iterable[Histogram]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            merged[bucket] = merged.get(bucket, 0) + count
    return merged


def difference(current: Histogram, previous: Histogram) -> dict[int, int]:
    """What arrived between two snapshots of a cumulative histogram."""
    return {
        bucket: count - previous.get(bucket, 0) for bucket, count in current.items() if count > previous.get(bucket, 0)
    }


def summary(histogram: Histogram) -> dict[str, float]:
    return {
        "p50": percentile(histogram, 0.50),
        "p95": percentile(histogram, 0.95),
        "p99": percentile(histogram, 0.99),
    }
