"""The aggregation service's composition header and request handling, without Envoy.

An echo backend stands in for the parts listener (it ignores ``x-gateway-part``), so
these tests check what the service sends and how it merges answers; tests/e2e covers the
whole path through Envoy.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from controlplane.aggregator.service import serve
from controlplane.aggregator.spec import SPEC_HEADER, Part, Spec, SpecError
from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port
from controlplane.policy import Route
from controlplane.translate.aggregate import spec_of


def test_spec_round_trip_and_errors() -> None:
    spec = Spec(
        parts=(Part("user", "users", "/users/{id}", 250), Part("o", "orders", "/o?x=1", 1000)),
        port=18081,
        partial=True,
        forward_query=True,
        forward_headers=("authorization",),
        path_regex="^/p/(?P<id>[0-9]+)$",
    )
    assert Spec.decode(spec.encode()) == spec
    for bad in (None, "", "!!!", "e30"):  # e30 = "{}"
        with pytest.raises(SpecError):
            Spec.decode(bad)


def test_route_spec_carries_the_policy() -> None:
    route = Route.model_validate(
        {
            "name": "p",
            "gateways": ["g"],
            "match": {"path_regex": "^/p/(?P<id>[0-9]+)$"},
            "aggregate": {
                "on_error": "partial",
                "parts": [{"name": "user", "cluster": "users", "path": "/u/{id}", "timeout": 0.25}],
            },
        }
    )
    spec = spec_of(route, 18090)
    assert spec.partial and spec.port == 18090 and spec.path_regex == "^/p/(?P<id>[0-9]+)$"
    assert spec.parts == (Part("user", "users", "/u/{id}", 250),)
    assert spec.forward_headers == ("authorization", "x-consumer-id")
    assert route.clusters() == ["users"]


async def _exchange(spec: Spec | None, path: str, method: str = "GET") -> tuple[int, Any]:
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, "127.0.0.1", ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        headers = {SPEC_HEADER: spec.encode()} if spec else {}
        headers["authorization"] = "Bearer x"
        headers["x-other"] = "no"
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"http://127.0.0.1:{port}{path}", headers=headers) as resp,
        ):
            return resp.status, await resp.json()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_service_fills_paths_and_merges() -> None:
    with EchoServer("parts") as echo:
        spec = Spec(
            parts=(Part("a", "users", "/users/{id}", 2000), Part("b", "orders", "/o?u={id}", 2000)),
            port=echo.port,
            forward_query=True,
            forward_headers=("authorization",),
            path_regex="^/p/(?P<id>[0-9]+)$",
        )
        status, body = asyncio.run(_exchange(spec, "/p/42?x=1&q=a%26b%20c"))
        assert status == 200
        # the client's query goes on as sent (an encoded '&' is not a separator)
        assert body["a"]["path"] == "/users/42?x=1&q=a%26b%20c"
        assert body["b"]["path"] == "/o?u=42&x=1&q=a%26b%20c"
        sent = body["a"]["headers"]
        assert sent["x-gateway-part"] == "users" and sent["host"] == "users"
        assert sent["authorization"] == "Bearer x" and "x-other" not in sent
        assert sent["x-envoy-upstream-rq-timeout-ms"] == "2000"


def test_service_refuses_what_is_not_an_aggregate() -> None:
    status, body = asyncio.run(_exchange(None, "/anything"))
    assert status == 400 and SPEC_HEADER in body["error"]
    status, body = asyncio.run(_exchange(None, "/healthz"))
    assert (status, body) == (200, {"ok": True})
    spec = Spec(parts=(Part("a", "users", "/u", 100),), port=1)
    status, _ = asyncio.run(_exchange(spec, "/x", method="POST"))
    assert status == 405


def test_unreachable_part_fails_or_is_reported() -> None:
    dead = free_port()  # nothing listens: a connection error
    fail = Spec(parts=(Part("a", "users", "/u", 500),), port=dead)
    status, body = asyncio.run(_exchange(fail, "/x"))
    assert status == 502 and body["part"] == "a" and body["reason"].startswith("connection")
    partial = Spec(parts=(Part("a", "users", "/u", 500),), port=dead, partial=True)
    status, body = asyncio.run(_exchange(partial, "/x"))
    assert status == 200 and list(body) == ["errors"] and "a" in body["errors"]
