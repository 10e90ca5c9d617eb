"""What an access-log stream may write: which gateways, routes and consumers rollups can name.

Everything in an access-log entry is what the sending client says. The sink therefore takes
the gateway from the stream (its node's ``cluster``, fixed when the stream opens) and accepts
it only if the policy has that gateway with analytics on; a route name counts only if it is
one of that gateway's routes, a consumer only if the policy declares it. Anything else is
folded into :data:`OTHER`, so a client can neither write into another gateway's rollups nor
grow them with invented names.

The controller's scope reads the policy its runner keeps in memory (the same dicts, updated
change by change); ``gatewayctl analytics-sink`` reads the store itself and reloads it when
the policy revision moves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..policy import Gateway

__all__ = ["OTHER", "Scope", "StoreScope"]

log = logging.getLogger(__name__)

#: the rollup bucket of every route or consumer the policy does not know
OTHER = "(other)"

#: why a stream's entries were refused (the label of the refused counters)
UNKNOWN_GATEWAY = "unknown_gateway"
ANALYTICS_OFF = "analytics_off"


class Scope:
    """Policy lookups for the sink, over mappings another component keeps up to date."""

    def __init__(
        self,
        gateways: Mapping[str, Any],
        routes: Mapping[str, Mapping[str, Any]],
        consumers: Mapping[str, Any],
    ) -> None:
        self._gateways = gateways
        self._routes = routes
        self._consumers = consumers

    def refusal(self, gateway: str) -> str | None:
        """None if ``gateway`` may stream access logs, else why not."""
        gw = self._gateways.get(gateway)
        if not isinstance(gw, Gateway):
            return UNKNOWN_GATEWAY
        if gw.analytics is None or not gw.analytics.enabled:
            return ANALYTICS_OFF
        return None

    def is_route(self, gateway: str, route: str) -> bool:
        return route in self._routes.get(gateway, ())

    def is_consumer(self, name: str) -> bool:
        return name in self._consumers

    async def refresh(self, *, soon: bool = False) -> None:
        """Bring the lookups up to date (nothing to do when another component keeps them)."""


class StoreScope(Scope):
    """The scope of a sink running on its own: the policy read from the store.

    The revision is checked at most every ``interval`` seconds (one indexed read); the
    gateways, routes and consumers are reloaded only when it moved.
    """

    def __init__(self, db: str | None, interval: float = 2.0) -> None:
        from ..store import Store

        self._store = Store(db, migrate=False)
        self._interval = interval
        self._revision = -1
        self._checked = 0.0
        self._lock = asyncio.Lock()
        super().__init__({}, {}, {})

    def close(self) -> None:
        self._store.close()

    async def refresh(self, *, soon: bool = False) -> None:
        async with self._lock:
            # a stream of a gateway not known yet asks again sooner: the gateway (or its
            # analytics) may have been created a moment ago, and a refused stream's entries
            # are lost
            interval = min(self._interval, 0.1) if soon else self._interval
            if time.monotonic() - self._checked < interval:
                return
            self._checked = time.monotonic()
            try:
                revision = await asyncio.to_thread(self._store.revision)
                if revision == self._revision:
                    return
                revision, objects = await asyncio.to_thread(self._store.load_all)
            except Exception as exc:  # the database may be away: keep the last policy read
                log.warning("analytics sink: could not read the policy: %s", exc)
                return
            gateways: dict[str, Any] = {}
            routes: dict[str, dict[str, Any]] = {}
            consumers: dict[str, Any] = {}
            for obj in objects:
                kind, name = obj.kind, obj.name  # type: ignore[attr-defined]
                if kind == "gateway":
                    gateways[name] = obj
                elif kind == "consumer":
                    consumers[name] = obj
                elif kind == "route":
                    for gateway in obj.gateways:  # type: ignore[attr-defined]
                        routes.setdefault(gateway, {})[name] = obj
            self._gateways, self._routes, self._consumers = gateways, routes, consumers
            self._revision = revision
