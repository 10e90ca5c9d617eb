"""A cluster: the backends a route sends traffic to, and how Envoy treats them."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from .bounds import Count, CountOrZero, HttpStatus, Percent, Threshold, WholePercent
from .common import Duration, Name, PolicyModel, parse_hostport
from .headers import host_value, path_value

__all__ = [
    "CircuitBreakers",
    "Cluster",
    "HealthCheck",
    "LbPolicy",
    "OutlierDetection",
    "RetryBudget",
    "UpstreamProtocol",
]


class LbPolicy(StrEnum):
    round_robin = "round_robin"
    least_request = "least_request"
    random = "random"
    ring_hash = "ring_hash"
    maglev = "maglev"


class UpstreamProtocol(StrEnum):
    http1 = "http1"
    http2 = "http2"


class HealthCheck(PolicyModel):
    """Active HTTP health checking: Envoy probes every endpoint itself."""

    path: str = Field("/healthz", pattern=r"^/")
    interval: Duration = "5s"
    timeout: Duration = "1s"
    healthy_threshold: Threshold = 2
    unhealthy_threshold: Threshold = 3
    expected_statuses: list[HttpStatus] = Field(default_factory=lambda: [200])
    host: str | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return None if value is None else host_value(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return path_value(value) or value

    @field_validator("expected_statuses")
    @classmethod
    def _statuses(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("must name at least one status")
        return sorted(set(value))


class RetryBudget(PolicyModel):
    """Retries allowed at once, as a share of the requests in flight (Envoy's retry budget):
    when a backend fails, retries cannot multiply its load."""

    percent: Percent = Field(20, description="retries in flight / requests in flight")
    min_concurrency: Count = Field(3, description="retries always allowed at once")


class CircuitBreakers(PolicyModel):
    """Limits on what Envoy sends to the cluster at once; excess fails fast with 503."""

    max_connections: Count | None = None
    max_pending_requests: Count | None = None
    max_requests: Count | None = None
    max_retries: CountOrZero | None = None
    retry_budget: RetryBudget | None = Field(None, description="replaces max_retries")

    @model_validator(mode="after")
    def _budget_or_max(self) -> CircuitBreakers:
        if self.retry_budget is not None and self.max_retries is not None:
            raise ValueError("set max_retries or retry_budget, not both")
        return self


class OutlierDetection(PolicyModel):
    """Passive ejection of endpoints that keep failing."""

    consecutive_5xx: Count = 5
    interval: Duration = "10s"
    base_ejection_time: Duration = "30s"
    max_ejection_percent: WholePercent = 10


class Cluster(PolicyModel):
    """Backends as ``host:port``: IP endpoints are streamed over EDS, names resolved by DNS."""

    kind: ClassVar[str] = "cluster"

    name: Name
    endpoints: list[str] = Field(min_length=1, description="host:port of each backend")
    lb_policy: LbPolicy = LbPolicy.round_robin
    connect_timeout: Duration = "5s"
    protocol: UpstreamProtocol = Field(
        UpstreamProtocol.http1, description="http2 for gRPC backends"
    )
    health_check: HealthCheck | None = None
    circuit_breakers: CircuitBreakers | None = None
    outlier_detection: OutlierDetection | None = None

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        seen: set[tuple[str, int]] = set()
        for endpoint in value:
            parsed = parse_hostport(endpoint)
            if parsed in seen:
                raise ValueError(f"{endpoint!r} is listed twice")
            seen.add(parsed)
        return value

    def parsed_endpoints(self) -> list[tuple[str, int]]:
        return [parse_hostport(e) for e in self.endpoints]
