"""Prometheus metrics of the controller and the analytics sink, in the text exposition format.

Hand-written (a few dozen lines) rather than a dependency: the controller needs counters,
gauges computed at scrape time and one histogram, all owned by a :class:`Registry` per
process object, so tests can run several controllers in one interpreter without a global
registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["Counter", "Gauge", "Histogram", "Registry"]

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [*labels, *extra]
    if not pairs:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help

    def samples(self) -> Iterable[str]:  # pragma: no cover - abstract
        return ()

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def samples(self) -> Iterable[str]:
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {_number(value)}"


class Gauge(_Metric):
    """Values read at scrape time from a function: nothing to keep in sync."""

    kind = "gauge"

    def __init__(
        self, name: str, help: str, read: Callable[[], dict[Labels, float] | float]
    ) -> None:
        super().__init__(name, help)
        self.read = read

    def samples(self) -> Iterable[str]:
        value = self.read()
        if not isinstance(value, dict):
            value = {(): value}
        for labels, v in sorted(value.items()):
            yield f"{self.name}{_labels(labels)} {_number(v)}"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float]) -> None:
        super().__init__(name, help)
        self.bounds = sorted(buckets)
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts, total = self.series.setdefault(key, ([0] * (len(self.bounds) + 1), [0.0]))
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        total[0] += value

    def count(self, **labels: str) -> int:
        series = self.series.get(tuple(sorted(labels.items())))
        return sum(series[0]) if series else 0

    def samples(self) -> Iterable[str]:
        for labels, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, n in zip([*self.bounds, math.inf], counts, strict=True):
                running += n
                yield f"{self.name}_bucket{_labels(labels, [('le', _number(bound))])} {running}"
            yield f"{self.name}_sum{_labels(labels)} {_number(total[0])}"
            yield f"{self.name}_count{_labels(labels)} {running}"


M = TypeVar("M", bound=_Metric)


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def counter(self, name: str, help: str) -> Counter:
        return self._add(Counter(name, help))

    def gauge(self, name: str, help: str, read: Callable[[], dict[Labels, float] | float]) -> Gauge:
        return self._add(Gauge(name, help, read))

    def histogram(self, name: str, help: str, buckets: Iterable[float]) -> Histogram:
        return self._add(Histogram(name, help, buckets))

    def _add(self, metric: M) -> M:
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "".join(m.render() for m in self.metrics)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
