"""Response caching and compression through a real Envoy.

The cache is Envoy's in-memory cache (cache_v2 + simple_http_cache), which Envoy marks as
work in progress: these tests are what the gateway relies on. A hit is proven by the
backend's own request counter staying put, not by a header the gateway could invent.
"""

from __future__ import annotations

import gzip
import http.client
import zlib

import pytest

from .harness import request

pytestmark = pytest.mark.e2e


POLICY = """
gateways: [{{name: public, port: {port}, address: 127.0.0.1}}]
clusters: [{{name: alpha, endpoints: ["127.0.0.1:{backend}"]}}]
consumers: [{{name: acme}}, {{name: globex}}]
routes:
  - {{name: catalog, gateway: public, match: {{path_prefix: /catalog}}, cluster: alpha,
     cache: {{ttl: 60s}}}}
  - {{name: origin, gateway: public, match: {{path_prefix: /origin}}, cluster: alpha, cache: {{}}}}
  - {{name: plain, gateway: public, match: {{path_prefix: /plain}}, cluster: alpha}}
"""


def _get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_cache_hits_per_consumer_and_purge(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port
):
    alpha = backends["alpha"]
    cli.run("apply", "-f", "-", input=POLICY.format(port=gateway_port, backend=alpha.port))
    acme = cli.run("consumer", "key", "add", "acme").stdout.strip()
    globex = cli.run("consumer", "key", "add", "globex").stdout.strip()
    envoy_factory("public")
    # the per-consumer route, added by the CLI
    cli.add_route(
        "account", "public", "/account", "alpha", "--auth-api-key", "--cache-ttl", "60s",
        "--cache-per-consumer", "--wait",
    )  # fmt: skip

    # a TTL set by policy: the second GET is served from the cache
    status, headers, body = request(gateway_port, "/catalog/1?q=1")
    assert status == 200 and "age" not in headers
    assert body["path"] == "/catalog/1?q=1"  # the key is not passed on
    assert "x-gateway-cache-key" not in body["headers"]
    assert headers["cache-control"] == "max-age=60"
    hits = alpha.hits
    status, headers, again = request(gateway_port, "/catalog/1?q=1")
    assert status == 200 and alpha.hits == hits
    assert "age" in headers and int(headers["age"]) >= 0
    assert again == body
    # another URL and another method are not the cached response
    request(gateway_port, "/catalog/2")
    request(gateway_port, "/catalog/1?q=1", method="POST")
    assert alpha.hits == hits + 2

    # without a TTL the backend's Cache-Control decides
    request(gateway_port, "/origin/a", headers={"x-echo-cache-control": "no-store"})
    request(gateway_port, "/origin/a", headers={"x-echo-cache-control": "no-store"})
    assert alpha.hits == hits + 4
    request(gateway_port, "/origin/b", headers={"x-echo-cache-control": "max-age=60"})
    _, headers, _ = request(gateway_port, "/origin/b")
    assert alpha.hits == hits + 5 and "age" in headers

    # a route without a cache policy is never cached, whatever the backend says or a
    # client sends as the cache key
    forged = {"x-echo-cache-control": "max-age=60", "x-gateway-cache-key": "g0"}
    request(gateway_port, "/plain", headers=forged)
    _, headers, body = request(gateway_port, "/plain", headers=forged)
    assert alpha.hits == hits + 7 and "age" not in headers
    assert "x-gateway-cache-key" not in body["headers"]

    # per consumer: acme's entry is never served to globex
    status, _, first = request(gateway_port, "/account/me", headers={"x-api-key": acme})
    assert status == 200 and first["headers"]["x-consumer-id"] == "acme"
    base = alpha.hits
    _, headers, cached = request(gateway_port, "/account/me", headers={"x-api-key": acme})
    assert alpha.hits == base and "age" in headers and cached == first
    status, headers, other = request(gateway_port, "/account/me", headers={"x-api-key": globex})
    assert status == 200 and alpha.hits == base + 1 and "age" not in headers
    assert other["headers"]["x-consumer-id"] == "globex"
    assert request(gateway_port, "/account/me")[0] == 401  # no key, no cached answer

    # purge: the next request reaches the backend again, then is cached anew
    cli.run("cache", "purge", "catalog", "--wait")
    before = alpha.hits
    _, headers, _ = request(gateway_port, "/catalog/1?q=1")
    assert alpha.hits == before + 1 and "age" not in headers
    _, headers, _ = request(gateway_port, "/catalog/1?q=1")
    assert alpha.hits == before + 1 and "age" in headers


def test_compression_per_gateway_and_route(  # type: ignore[no-untyped-def]
    cli, controller, envoy_factory, backends, gateway_port
):
    alpha = backends["alpha"]
    cli.add_gateway(
        "public", gateway_port, "--compress", "brotli,gzip", "--compress-min-length", "1000"
    )
    cli.run("cluster", "add", "alpha", "--endpoint", f"127.0.0.1:{alpha.port}")
    cli.add_route("api", "public", "/api", "alpha")
    cli.add_route("raw", "public", "/raw", "alpha", "--no-compress")
    envoy_factory("public")
    cli.run("route", "update", "raw", "--timeout", "5s", "--wait")
    big = {"x-echo-pad": "4000"}

    status, headers, data = _get(gateway_port, "/api", {**big, "accept-encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b'"pad": "xxxx' in gzip.decompress(data) and len(data) < 1000
    # brotli is preferred when the client takes both
    _, headers, _ = _get(gateway_port, "/api", {**big, "accept-encoding": "gzip, br"})
    assert headers["content-encoding"] == "br"
    # small responses and clients without Accept-Encoding get plain bodies
    _, headers, _ = _get(gateway_port, "/api", {"accept-encoding": "gzip"})
    assert "content-encoding" not in headers
    _, headers, data = _get(gateway_port, "/api", big)
    assert "content-encoding" not in headers and len(data) > 4000
    # the route that opts out
    _, headers, data = _get(gateway_port, "/raw", {**big, "accept-encoding": "gzip"})
    assert "content-encoding" not in headers and len(data) > 4000

    # zstd only, live; the route that opted out still does
    cli.run("gateway", "update", "public", "--compress", "zstd", "--wait")
    _, headers, data = _get(gateway_port, "/api", {**big, "accept-encoding": "zstd, gzip"})
    assert headers["content-encoding"] == "zstd" and len(data) < 1000
    _, headers, _ = _get(gateway_port, "/api", {**big, "accept-encoding": "gzip"})
    assert "content-encoding" not in headers
    # off for the gateway; one route turns it on for itself
    cli.run("gateway", "update", "public", "--compress-off")
    cli.run("route", "update", "raw", "--compress", "--wait")
    _, headers, _ = _get(gateway_port, "/api", {**big, "accept-encoding": "gzip"})
    assert "content-encoding" not in headers
    _, headers, data = _get(gateway_port, "/raw", {**big, "accept-encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert zlib.decompress(data, 16 + zlib.MAX_WBITS).startswith(b"{")


def test_bad_cache_and_compression_input(cli) -> None:  # type: ignore[no-untyped-def]
    cli.run("gateway", "add", "public", "--port", "8080")
    cli.run("cluster", "add", "alpha", "--endpoint", "127.0.0.1:9001")
    cli.add_route("api", "public", "/api", "alpha")
    before = cli.run("export").stdout
    cases = [
        (("route", "update", "api", "--cache-override"), "cache: override: needs a ttl"),
        (("gateway", "update", "public", "--compress", "lzma"), "compression.algorithms"),
        (
            ("route", "update", "api", "--cache", "--prefix-rewrite", "/v2"),
            "route 'api': cache: cannot be combined with prefix_rewrite",
        ),
        (("cache", "purge", "api"), "route 'api': cache: the route does not cache"),
    ]
    for args, message in cases:
        proc = cli.run(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert cli.run("export").stdout == before
