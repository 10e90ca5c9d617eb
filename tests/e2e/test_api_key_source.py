"""Where a gateway reads API keys: its header (x-api-key unless configured) and, when the
gateway names one, a query parameter; the key never reaches the backend or the access log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import request

pytestmark = pytest.mark.e2e


def test_configured_header_and_query_parameter(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port, tmp_path: Path
) -> None:
    cli.add_gateway("public", gateway_port, "--api-key-header", "X-Token", "--access-log", "json")
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{backends['alpha'].port}")
    cli.run("consumer", "add", "acme")
    key = cli.run("consumer", "key", "add", "acme").stdout.strip()
    cli.add_route("keyed", "public", "/keyed", "alpha", "--auth-api-key")
    envoy = envoy_factory("public")
    cli.run("route", "update", "keyed", "--timeout", "5s", "--wait")

    # the configured header carries the key; the default one no longer does
    status, _, body = request(gateway_port, "/keyed", headers={"x-token": key})
    assert status == 200 and body["headers"]["x-consumer-id"] == "acme"
    assert "x-token" not in body["headers"]  # not forwarded
    assert request(gateway_port, "/keyed", headers={"x-api-key": key})[0] == 401
    # no query parameter yet: a key there is just part of the path (and logged as such),
    # so this check uses a key of its own
    other = cli.run("consumer", "key", "add", "acme").stdout.strip()
    assert request(gateway_port, f"/keyed?api_key={other}")[0] == 401

    # a query parameter as well: accepted, and removed before the backend
    cli.run("gateway", "update", "public", "--api-key-query", "api_key", "--wait")
    status, _, body = request(gateway_port, f"/keyed/x?a=1&api_key={key}&b=2")
    assert status == 200 and body["headers"]["x-consumer-id"] == "acme"
    assert key not in json.dumps(body), body["path"]
    assert body["path"] == "/keyed/x?a=1&b=2"
    assert request(gateway_port, "/keyed?api_key=wrong")[0] == 401
    assert request(gateway_port, "/keyed", headers={"x-token": key})[0] == 200

    # the access log (Envoy's stdout) never holds an accepted key: Envoy removed it from
    # the path before the log line was written
    envoy.stop()
    log = envoy.log_path.read_text(errors="replace")
    assert '"path":"/keyed/x?a=1&b=2"' in log.replace(" ", "")
    assert key not in log
    assert "api_key=wrong" in log  # a refused key is not removed: the header is safer
