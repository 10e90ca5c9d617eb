"""Per-gateway observability: structured access logs to stdout, usage analytics, tracing.

Both are optional gateway settings; a gateway without them gets exactly the configuration
it had before they existed. ``access_log`` makes every Envoy of the gateway print one line
per request on its stdout (JSON or text, with the fields chosen from :data:`LOG_FIELDS`).
``analytics`` streams the same requests to a sink over gRPC (Envoy's access-log service,
buffered in Envoy, never on the request path), which keeps per-minute rollups in the policy
database: the controller by default, or a separate ``gatewayctl analytics-sink``.
``tracing`` makes Envoy start an OpenTelemetry span for a sample of requests, export it over
OTLP/gRPC to a collector and pass the W3C ``traceparent`` on to the backend.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, WithJsonSchema, field_validator

from .bounds import IntRange
from .common import Duration, PolicyModel, parse_hostport

__all__ = ["LOG_FIELDS", "AccessLog", "Analytics", "LogFormat", "Tracing", "parse_percent"]

#: field name -> Envoy command operator; the catalogue a gateway's ``fields`` pick from
LOG_FIELDS: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upstream_service_time_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "request_duration_ms": "%REQUEST_DURATION%",
    "response_duration_ms": "%RESPONSE_DURATION%",
    "consumer": "%REQ(X-CONSUMER-ID)%",
    "route": "%ROUTE_NAME%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "client_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
    "authority": "%REQ(:AUTHORITY)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
}


class LogFormat(StrEnum):
    json = "json"
    text = "text"
    off = "off"


class AccessLog(PolicyModel):
    """One line per request on each Envoy's stdout."""

    format: LogFormat = Field(LogFormat.json, description="json (one object per line), text or off")
    fields: list[str] = Field(
        default_factory=lambda: list(LOG_FIELDS),
        description="which fields, from: " + ", ".join(LOG_FIELDS),
    )

    @field_validator("fields")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in LOG_FIELDS:
                raise ValueError(f"unknown field {name!r} (known: {', '.join(LOG_FIELDS)})")
        if len(set(value)) != len(value):
            raise ValueError("fields must be unique")
        if not value:
            raise ValueError("at least one field (or format: off)")
        return value


class Analytics(PolicyModel):
    """Usage analytics: Envoy streams its access log to a sink that keeps rollups."""

    enabled: bool = True
    sink: str | None = Field(
        None,
        description="HOST:PORT of a `gatewayctl analytics-sink`; unset: the controller itself",
    )
    buffer_size_bytes: Annotated[int, IntRange(0, 16 * 1024 * 1024)] = Field(
        16384, description="Envoy sends a batch when it has this much"
    )
    flush_interval: Duration = Field("1s", description="... or after this long")

    @field_validator("sink")
    @classmethod
    def _sink(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hostport(value)
        return value


def parse_percent(value: object) -> float:
    """``1%``, ``0.5 %``, ``100%`` or a bare number (percent) -> a float from 0 to 100."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a percentage")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not a percentage like 1% or 0.5%") from None
    else:
        raise ValueError(f"{value!r} is not a percentage like 1% or 0.5%")
    if not 0 <= number <= 100:  # also refuses nan
        raise ValueError(f"{value!r} is outside 0-100 %")
    return number


class Tracing(PolicyModel):
    """OpenTelemetry tracing: Envoy's OpenTelemetry tracer, spans exported over OTLP/gRPC."""

    otlp: str = Field(description="HOST:PORT of an OTLP/gRPC collector (plaintext gRPC)")
    sampling: Annotated[
        float,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "minimum": 0, "maximum": 100},
                    {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*%?\s*$"},
                ]
            }
        ),
    ] = Field(
        1.0, description="share of requests traced, 0-100 %: '1%', '0.5%' or a number of percent"
    )
    service_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="the spans' service.name; unset: the gateway's name",
    )

    @field_validator("otlp")
    @classmethod
    def _otlp(cls, value: str) -> str:
        parse_hostport(value)
        return value

    @field_validator("sampling", mode="before")
    @classmethod
    def _sampling(cls, value: object) -> float:
        return parse_percent(value)
