"""What the ADS streams report to Prometheus: responses pushed, their ACK latency, NACKs.

Kept apart from the stream state machine: a stream calls three methods, and the registry
(shared with the analytics sink in the controller) renders them for ``/metrics``.
"""

from __future__ import annotations

from typing import Any

from ..metrics import Registry

__all__ = ["XdsMetrics"]

#: seconds: push latency (response sent -> ACK received) is milliseconds normally
PUSH_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]


def short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


class XdsMetrics:
    def __init__(self, registry: Registry) -> None:
        self.pushes = registry.counter(
            "gateway_xds_pushes_total",
            "xDS responses sent to proxies, by gateway and resource type.",
            ("gateway", "type"),
        )
        self.acks = registry.counter(
            "gateway_xds_acks_total",
            "xDS responses ACKed by proxies, by gateway and type.",
            ("gateway", "type"),
        )
        self.nacks = registry.counter(
            "gateway_xds_nacks_total",
            "xDS responses rejected (NACKed) by proxies.",
            ("gateway", "type"),
        )
        self.holds = registry.counter(
            "gateway_xds_rollbacks_refused_total",
            "Streams held because answering would roll the proxy back (older revision or "
            "another database's policy), by gateway.",
            ("gateway",),
        )
        self.push_latency = registry.histogram(
            "gateway_xds_push_latency_seconds",
            "Time from sending an xDS response to its ACK, by resource type.",
            PUSH_BUCKETS,
            ("type",),
        )
        #: (metric, label values) -> its child: looking a child up by labels costs more
        #: than counting, and a push to 100 proxies counts 200-300 times
        self._children: dict[tuple[str, str, str], Any] = {}

    def _child(self, metric: str, gateway: str, type_url: str) -> Any:
        key = (metric, gateway, type_url)
        child = self._children.get(key)
        if child is None:
            kind = short_type(type_url)
            if metric == "latency":
                child = self.push_latency.labels(type=kind)
            else:
                counter = self.pushes if metric == "pushes" else self.acks
                child = counter.labels(gateway=gateway, type=kind)
            self._children[key] = child
        return child

    def pushed(self, gateway: str, type_url: str) -> None:
        self._child("pushes", gateway, type_url).inc()

    def acked(self, gateway: str, type_url: str, seconds: float) -> None:
        self._child("acks", gateway, type_url).inc()
        self._child("latency", "", type_url).observe(seconds)

    def held(self, gateway: str) -> None:
        self.holds.labels(gateway=gateway).inc()

    def nacked(self, gateway: str, type_url: str) -> None:
        self.nacks.labels(gateway=gateway, type=short_type(type_url)).inc()
