"""Small helpers shared by the translate modules (protobuf plumbing only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from envoy.config.core.v3 import config_source_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2

from ..errors import GatewayError, TranslationError
from ..policy.common import duration_ms

__all__ = ["ads_source", "blame", "duration", "pack", "regex", "string_match"]


@contextlib.contextmanager
def blame(kind: str, name: str) -> Iterator[None]:
    """Name the policy object whose translation raised (a bug, or a value no input check
    caught), so ``status`` and ``--wait`` can point at it."""
    try:
        yield
    except GatewayError:
        raise
    except Exception as exc:
        raise TranslationError(
            f"{kind} {name!r}: translation failed: {type(exc).__name__}: {exc}"
        ) from exc


def duration(value: str) -> duration_pb2.Duration:
    ms = duration_ms(value)
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def pack(message: object) -> any_pb2.Any:
    """``message`` in an Any, serialised deterministically: map fields (a Struct in a local
    reply's JSON body, metadata) otherwise come out in an order that differs between
    processes, and so would the content hash in the xDS version: two controllers, or
    ``render``, would name the same configuration differently."""
    out = any_pb2.Any()
    out.Pack(message, deterministic=True)  # type: ignore[arg-type]
    return out


def switch_on_config() -> rc.FilterConfig:
    """The per-route config that turns on a filter the chain lists disabled: a FilterConfig
    whose ``config`` is present but empty (no config at all is refused by Envoy as an
    empty per-route configuration)."""
    on = rc.FilterConfig()
    on.config.SetInParent()
    return on


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


def string_match(
    *, exact: str | None = None, prefix: str | None = None, pattern: str | None = None
) -> string_pb2.StringMatcher:
    if exact is not None:
        return string_pb2.StringMatcher(exact=exact)
    if prefix is not None:
        return string_pb2.StringMatcher(prefix=prefix)
    return string_pb2.StringMatcher(safe_regex=regex(pattern or ""))
