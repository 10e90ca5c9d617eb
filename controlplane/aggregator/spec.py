"""The composition a route hands to the aggregation service, and its wire form.

The route adds it as one request header (base64url of compact JSON), overwriting any copy
a client sent, so the service acts only on what the controller configured. The header
depends only on the route and its gateway's aggregation port, so the route's encoding is
cached like any other route's.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["PART_HEADER", "SPEC_HEADER", "Part", "Spec", "SpecError"]

#: request header carrying the composition, set by the aggregate route
SPEC_HEADER = "x-gateway-aggregate"
#: request header naming a part's cluster on the gateway's internal parts listener
PART_HEADER = "x-gateway-part"
VERSION = 1


class SpecError(ValueError):
    """The header is missing or not a composition this service understands."""


@dataclass(frozen=True)
class Part:
    name: str
    cluster: str
    path: str
    timeout_ms: int


@dataclass(frozen=True)
class Spec:
    parts: tuple[Part, ...]
    #: port of the gateway's parts listener, on the Envoy that sent the request
    port: int
    partial: bool = False
    forward_query: bool = False
    forward_headers: tuple[str, ...] = ()
    #: the route's path regex, whose named groups fill {name} placeholders
    path_regex: str | None = None

    def encode(self) -> str:
        data: dict[str, Any] = {
            "v": VERSION,
            "port": self.port,
            "parts": [[p.name, p.cluster, p.path, p.timeout_ms] for p in self.parts],
        }
        if self.partial:
            data["partial"] = True
        if self.forward_query:
            data["query"] = True
        if self.forward_headers:
            data["headers"] = list(self.forward_headers)
        if self.path_regex is not None:
            data["regex"] = self.path_regex
        raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str | None) -> Spec:
        if not value:
            raise SpecError(f"no {SPEC_HEADER} header: this service answers aggregate routes")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            data = json.loads(raw)
            if data.get("v") != VERSION:
                raise SpecError(f"composition version {data.get('v')!r} is not {VERSION}")
            parts = tuple(Part(str(n), str(c), str(p), int(t)) for n, c, p, t in data["parts"])
            port = int(data["port"])
            regex = data.get("regex")
            return cls(
                parts=parts,
                port=port,
                partial=bool(data.get("partial", False)),
                forward_query=bool(data.get("query", False)),
                forward_headers=tuple(str(h) for h in data.get("headers", ())),
                path_regex=str(regex) if regex is not None else None,
            )
        except SpecError:
            raise
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"malformed {SPEC_HEADER} header: {exc}") from None
