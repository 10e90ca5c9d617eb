"""Prometheus metrics of the controller and the analytics sink, through ``prometheus_client``.

Each controller (and each stand-alone sink) owns a :class:`Registry`, which wraps a
``CollectorRegistry`` of its own rather than the library's process-global one: tests run
several controllers in one interpreter, and a global registry would refuse the second
controller's metrics as duplicates (ADR 0034). Counters and histograms are the library's
own classes; gauges whose value is read from the controller's state at scrape time (proxies
connected, the revision served, ...) are a small collector, so there is nothing to keep in
sync. The text is the library's Prometheus text format 0.0.4 with its content type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["CHECK_BUCKETS", "CONTENT_TYPE", "CheckMetrics", "Counter", "Histogram", "Registry"]

#: The library adds a ``<name>_created`` series (start time) to every counter and histogram;
#: the Prometheus text format has no place for it (it becomes an extra gauge per metric),
#: and the series the gateway exposes are the ones documented, so it is switched off.
prometheus_client.disable_created_metrics()

#: The plain-text encoder (no OpenMetrics negotiation: scrapers all read it) and the content
#: type the library pairs with it (``text/plain; version=0.0.4; charset=utf-8``).
_encode, CONTENT_TYPE = choose_encoder("")

#: gauge values: one number, or label values (in the order of ``labels``) -> number
GaugeRead = Callable[[], dict[tuple[str, ...], float] | float]


class _ScrapeGauge:
    """A gauge computed when scraped: ``read`` returns its current value(s)."""

    def __init__(self, name: str, help: str, read: GaugeRead, labels: Sequence[str]) -> None:
        self.name, self.help, self.read, self.labels = name, help, read, list(labels)

    def describe(self) -> Iterator[Metric]:
        """The family without samples: lets the registry refuse a duplicate name at once."""
        yield GaugeMetricFamily(self.name, self.help, labels=self.labels)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        value = self.read()
        if isinstance(value, dict):
            for label_values, v in sorted(value.items()):
                family.add_metric(list(label_values), v)
        else:
            family.add_metric([], value)
        yield family


class Registry:
    """The metrics of one controller or sink, rendered for its ``/metrics``."""

    def __init__(self) -> None:
        self.collectors = CollectorRegistry(auto_describe=True)

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        """A counter; ``name`` ends in ``_total`` and is exposed as written."""
        return Counter(name, help, tuple(labels), registry=self.collectors)

    def histogram(
        self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = ()
    ) -> Histogram:
        """A histogram over ``buckets`` (upper bounds; ``+Inf`` is added)."""
        return Histogram(
            name, help, tuple(labels), buckets=tuple(buckets), registry=self.collectors
        )

    def gauge(self, name: str, help: str, read: GaugeRead, labels: Iterable[str] = ()) -> None:
        """A gauge read from ``read`` at each scrape (a dict keyed by label values when
        ``labels`` are given)."""
        self.collectors.register(_ScrapeGauge(name, help, read, tuple(labels)))

    def render(self) -> str:
        """The Prometheus text exposition of every metric, in registration order."""
        return _encode(self.collectors).decode()


#: seconds: a write's rendering takes milliseconds, Envoy's check 5-50 ms started ahead and
#: up to seconds started cold (a whole gateway of 10,000 routes)
CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CheckMetrics:
    """The controller's count of policy writes checked before commit
    (``validate.ValidationObserver``)."""

    def __init__(self, registry: Registry) -> None:
        self.checks = registry.counter(
            "gateway_policy_checks_total",
            "Policy writes checked before commit, by result: accepted, refused (by Envoy), "
            "failed (no verdict) or unvalidated (no Envoy installed).",
            ("result",),
        )
        self.seconds = registry.histogram(
            "gateway_policy_check_seconds",
            "Time a write spent in its check before commit, by stage: render (the affected "
            "configuration as Envoy would get it) and envoy (envoy --mode validate).",
            CHECK_BUCKETS,
            ("stage",),
        )
        self._render = self.seconds.labels(stage="render")
        self._envoy = self.seconds.labels(stage="envoy")

    def checked(self, result: str, render: float, envoy: float | None) -> None:
        self.checks.labels(result=result).inc()
        if result != "unvalidated":
            self._render.observe(render)
        if envoy is not None:
            self._envoy.observe(envoy)
