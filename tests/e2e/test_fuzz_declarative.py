"""Property-based fuzzing of the declarative format through the real CLI, controller and Envoy.

Every generated document is applied with ``gatewayctl apply -f FILE --prune --wait=...``
against one controller and one Envoy serving the gateway the documents describe. The
property (ADR 0005, issue "close the holes"): a document is either

* refused: exit 2, one line on stderr, no traceback, and the database unchanged (the same
  revision, the same ``export``); or
* accepted and ACKed by the Envoy (``--wait`` exits 0).

Never a traceback, a crash exit, or a document accepted and then rejected by Envoy (exit 7).

Documents mix valid values with boundary and hostile ones: huge, negative and zero numbers,
infinities, empty and very long strings, control characters, unicode, broken regexes, wrong
types, duplicate names, dangling references, duplicate keys, deep nesting, bytes that are
not UTF-8. Within a document either every value is drawn from the valid pools or values are
drawn from both, so about half the documents exercise the accepted path.

Bounded for CI: ``FUZZ_EXAMPLES`` examples (default 50), derandomised (the same documents on
every run), no shrinking unless ``FUZZ_SHRINK=1``. ``FUZZ_EXAMPLES=500 FUZZ_SEED=random``
explores further.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from controlplane.demo.echo import EchoServer
from controlplane.envoy_launcher import free_port

from .harness import Cli, Controller, Envoy, wait_connected

pytestmark = pytest.mark.e2e

GATEWAY = "fuzz"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
SHRINK = os.environ.get("FUZZ_SHRINK") == "1"
RANDOM = os.environ.get("FUZZ_SEED") == "random"

# -- value pools -------------------------------------------------------------------------

T = st.SearchStrategy[Any]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _rsa_jwk() -> dict[str, str]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    n = numbers.public_numbers().n
    return {
        "kty": "RSA",
        "alg": "RS256",
        "kid": "r",
        "n": _b64(n.to_bytes(256, "big")),
        "e": "AQAB",
    }


def _ec_jwk() -> dict[str, str]:
    nums = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    x, y = nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")
    return {"kty": "EC", "crv": "P-256", "kid": "e", "x": _b64(x), "y": _b64(y)}


RSA_JWK = _rsa_jwk()
EC_JWK = _ec_jwk()

HOSTILE_STRINGS = [
    "",
    " ",
    "x" * 5000,
    "\r\n",
    "a\r\nx-injected: 1",
    "a\nb",
    "\x00",
    "nul\x00byte",
    "\x01\x7f",
    "tab\there",
    "\u0085next-line",
    "\u2028",
    "ünïcødé",
    "😀",
    "%",
    "%s%n",
    "%REQ(:path)%",
    "../../etc/passwd",
    "*",
    "$(reboot)",
    "{{x}}",
    "-",
    ".",
    "a:b",
    "jwks.a",
    "A" * 64,
]
HOSTILE_NUMBERS: list[Any] = [
    0,
    -1,
    -(2**31),
    2**31,
    2**32,
    2**32 + 1,
    2**63,
    2**64,
    10**30,
    0.5,
    1e308,
    float("inf"),
    float("-inf"),
    True,
    False,
]
WRONG_TYPES: list[Any] = [None, [], {}, [1], {"a": 1}, "1", 1, True, 1.5]


def hostile() -> T:
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        st.sampled_from(HOSTILE_NUMBERS),
        st.sampled_from(WRONG_TYPES),
        st.text(max_size=12),
    )


@dataclass
class Pools:
    """Strategies for one document. A ``clean`` document draws valid values only; any
    other draws a few hostile values (``budget``, 1-3) among valid ones, so that one bad
    value is not hidden behind another that is refused first."""

    clean: bool
    port: int
    aggregation_port: int
    backend: str
    budget: int = 0
    #: one field in ``rate`` turns hostile (until the budget is spent): a high rate spends
    #: it on the first objects, a low one reaches the last fields of the document
    rate: int = 10

    def v(self, valid: T, bad: T | None = None) -> T:
        if self.clean:
            return valid
        bad = bad if bad is not None else hostile()

        @st.composite
        def pick(draw: Any) -> Any:
            if self.budget > 0 and draw(st.integers(1, self.rate)) == 1:
                self.budget -= 1
                return draw(bad)
            return draw(valid)

        return pick()

    def name(self) -> T:
        return self.v(st.sampled_from(["a", "b", "c"]))

    def duration(self) -> T:
        return self.v(
            st.sampled_from(["1s", "250ms", "5s", "2m", 1, 0.5]),
            st.sampled_from(["0s", "-1s", "1.5ms", "1y", "", "abc", "9999999h", 10**20, 1e300])
            | st.sampled_from(HOSTILE_NUMBERS),
        )

    def small_int(self, lo: int, hi: int) -> T:
        return self.v(st.integers(lo, hi), st.sampled_from(HOSTILE_NUMBERS))

    def header(self) -> T:
        return self.v(
            st.sampled_from(["x-tenant", "x-env", "x-ref", "X-Mixed-Case"]),
            st.sampled_from(
                [
                    "x-consumer-id",
                    "x-api-key",
                    "authorization",
                    ":path",
                    ":authority",
                    "host",
                    "connection",
                    "transfer-encoding",
                    "x-envoy-original-path",
                    "x-gateway-route-scope",
                    "x-forwarded-for",
                    "bad header",
                    "x_underscore",
                    "",
                ]
            )
            | hostile(),
        )

    def header_value(self) -> T:
        return self.v(
            st.sampled_from(["v", "%consumer%", "%claim.tenant%", "%header.x-ref%", "100%%"]),
        )

    def path(self) -> T:
        return self.v(
            st.sampled_from(["/", "/a", "/b/c", "/users/", "/x-y_z.json"]),
            st.sampled_from(["a", "//", "/a b", "/a\r\nb", "/%00", "/" + "p" * 5000]) | hostile(),
        )

    def regex(self) -> T:
        return self.v(
            st.sampled_from(["^/r/[0-9]+$", "^/p/(?P<id>[a-z]+)$", "/q.*"]),
            st.sampled_from(
                [
                    "(",
                    "[z-a]",
                    "a{2000}",
                    "(a|b|c|d|e|f|g|h|i|j|k|l){3,9}",
                    "\\",
                    "(?P<x>a)(?P<x>b)",
                    "(?=lookahead)",
                ]
            )
            | hostile(),
        )

    def host(self) -> T:
        return self.v(
            st.sampled_from(["api.example.com", "*.example.com", "a.test"]),
            st.sampled_from(["a b", "a\r\nb", "*", "-a.com", "a..b", "x" * 300, "ünï.com"]),
        )


# -- objects ------------------------------------------------------------------------------


def auth(p: Pools) -> T:
    return st.fixed_dictionaries(
        {},
        optional={
            "jwt": st.lists(p.name(), max_size=2),
            "api_key": p.v(st.booleans()),
            "scopes": p.v(st.lists(st.sampled_from(["read", "write:x"]), max_size=2)),
            "claims": p.v(
                st.dictionaries(
                    st.sampled_from(["tenant", "org"]),
                    st.lists(st.just("t1"), max_size=2),
                    max_size=1,
                )
            ),
            "consumers": st.lists(p.name(), max_size=2),
            "groups": st.lists(p.name(), max_size=2),
        },
    )


def cors(p: Pools) -> T:
    return st.fixed_dictionaries(
        {
            "allow_origins": p.v(
                st.lists(
                    st.sampled_from(["https://app.example.com", "https://*.example.com", "*"]),
                    min_size=1,
                    max_size=2,
                ),
                st.lists(
                    st.sampled_from(["", "ftp://x", "https://a\r\n", "null", "https://"]),
                    max_size=2,
                ),
            )
        },
        optional={
            "allow_methods": st.lists(
                p.v(st.sampled_from(["GET", "post"]), st.sampled_from(["G E T", "GET\r\n", ""])),
                max_size=2,
            ),
            "allow_headers": st.lists(p.header(), max_size=2),
            "expose_headers": st.lists(p.header(), max_size=2),
            "allow_credentials": p.v(st.booleans()),
            "max_age": p.duration(),
        },
    )


def limits(p: Pools) -> T:
    return st.lists(
        st.fixed_dictionaries(
            {
                "requests": p.small_int(1, 1000),
                "per": p.v(
                    st.sampled_from(["second", "minute", "hour", "day", "week", "month"]),
                    st.just("fortnight"),
                ),
            },
            optional={"burst": p.small_int(1, 5000)},
        ),
        max_size=2,
    )


def rate_limit(p: Pools) -> T:
    return st.fixed_dictionaries(
        {},
        optional={
            "key": p.v(
                st.sampled_from(["consumer", "client_ip", "none", "header:x-tenant"]),
                st.sampled_from(["header:", "header:bad name", "header:x\r\n", "ip"]),
            ),
            "limits": limits(p),
            "use_plans": p.v(st.booleans()),
        },
    )


def gateway(p: Pools) -> T:
    fixed = {
        "name": st.just(GATEWAY),
        "port": p.v(st.just(p.port), st.sampled_from([0, -1, 65536, 2**32, True, "80", 8080.5])),
        "address": p.v(st.just("127.0.0.1"), st.sampled_from(["localhost", "1.2.3", "", "::g"])),
        "aggregation_port": p.v(st.just(p.aggregation_port), st.sampled_from([0, p.port, 70000])),
    }
    return st.fixed_dictionaries(
        fixed,
        optional={
            "hostnames": st.lists(p.host(), max_size=2),
            "auth": auth(p),
            "cors": cors(p),
            "rate_limit": rate_limit(p),
            "compression": st.fixed_dictionaries(
                {},
                optional={
                    "algorithms": st.lists(
                        p.v(st.sampled_from(["gzip", "brotli", "zstd"]), st.just("lzma")),
                        max_size=3,
                    ),
                    "min_length": p.small_int(0, 10_000),
                    "content_types": st.lists(
                        p.v(st.just("application/json"), st.just("json")), max_size=1
                    ),
                },
            ),
            "access_log": st.fixed_dictionaries(
                {},
                optional={
                    "format": p.v(st.sampled_from(["json", "text", "off"])),
                    "fields": st.lists(
                        p.v(
                            st.sampled_from(["method", "path", "status", "consumer"]),
                            st.just("password"),
                        ),
                        max_size=3,
                    ),
                },
            ),
            "analytics": st.fixed_dictionaries(
                {},
                optional={
                    "enabled": p.v(st.booleans()),
                    "flush_interval": p.duration(),
                    "buffer_size_bytes": p.small_int(0, 65536),
                },
            ),
            "tls": p.v(
                st.nothing(),
                st.fixed_dictionaries({"certificates": st.lists(p.name(), max_size=1)}),
            ),
        },
    )


def other_gateway(p: Pools) -> T:
    """A gateway no Envoy serves: accepted without a proxy to ACK it."""
    return st.fixed_dictionaries(
        {"name": st.just("other"), "port": p.small_int(1, 65535), "address": st.just("127.0.0.1")}
    )


def cluster(p: Pools) -> T:
    endpoint = p.v(
        st.sampled_from([p.backend, "localhost:9", "[::1]:9", "backend.invalid:80"]),
        st.sampled_from(
            ["a:b", "1.2.3.4:0", ":80", "1.2.3.4", "x" * 300 + ":80", "a\r\n:80", "[::1:80"]
        ),
    )
    return st.fixed_dictionaries(
        {"name": p.name(), "endpoints": st.lists(endpoint, min_size=1, max_size=2)},
        optional={
            "lb_policy": p.v(
                st.sampled_from(["round_robin", "least_request", "random", "ring_hash", "maglev"])
            ),
            "connect_timeout": p.duration(),
            "protocol": p.v(st.sampled_from(["http1", "http2"]), st.just("http3")),
            "health_check": st.fixed_dictionaries(
                {},
                optional={
                    "path": p.path(),
                    "interval": p.duration(),
                    "timeout": p.duration(),
                    "healthy_threshold": p.small_int(1, 10),
                    "unhealthy_threshold": p.small_int(1, 10),
                    "expected_statuses": st.lists(p.small_int(200, 299), max_size=2),
                    "host": p.v(
                        st.sampled_from(["users.internal", "10.0.0.1:8080", "[::1]"]),
                        st.sampled_from(["*.example.com", "a b", "a\r\nb", "a/b", "h:0"]),
                    ),
                },
            ),
            "circuit_breakers": st.fixed_dictionaries(
                {},
                optional={
                    "max_connections": p.small_int(1, 10_000),
                    "max_pending_requests": p.small_int(1, 10_000),
                    "max_requests": p.small_int(1, 10_000),
                    "max_retries": p.small_int(0, 10),
                    "retry_budget": st.fixed_dictionaries(
                        {},
                        optional={
                            "percent": p.v(st.floats(1, 100)),
                            "min_concurrency": p.small_int(1, 10),
                        },
                    ),
                },
            ),
            "outlier_detection": st.fixed_dictionaries(
                {},
                optional={
                    "consecutive_5xx": p.small_int(1, 10),
                    "interval": p.duration(),
                    "base_ejection_time": p.duration(),
                    "max_ejection_percent": p.small_int(1, 100),
                },
            ),
        },
    )


def jwt_provider(p: Pools) -> T:
    good_jwks = st.sampled_from(
        [json.dumps({"keys": [RSA_JWK]}), json.dumps({"keys": [EC_JWK, RSA_JWK]})]
    )
    bad_jwks = st.sampled_from(
        [
            "{}",
            "not json",
            json.dumps({"keys": [{**RSA_JWK, "n": _b64(b"\xc0" + b"\x00" * 255)}]}),  # even
            json.dumps({"keys": [{**RSA_JWK, "n": "!!"}]}),
            json.dumps({"keys": [{**RSA_JWK, "e": "Aw"}, {**RSA_JWK, "e": "BQ"}]}),  # e=5
            json.dumps({"keys": [{**EC_JWK, "y": EC_JWK["x"]}]}),  # off the curve
            json.dumps({"keys": [{"kty": "OKP", "crv": "X25519", "x": _b64(b"1" * 32)}]}),
            '{"keys": [], "keys": [1]}',
            "[" * 5000 + "]" * 5000,
        ]
    )
    source = st.one_of(
        st.fixed_dictionaries({"jwks": p.v(good_jwks, bad_jwks)}),
        st.fixed_dictionaries(
            {
                "jwks_uri": p.v(
                    st.sampled_from(["https://issuer.test/jwks.json", "http://127.0.0.1:9/k"]),
                    st.sampled_from(
                        [
                            "ftp://x/k",
                            "https://",
                            "https://a\r\n/k",
                            "https://a:99999/k",
                            "jwks.json",
                        ]
                    ),
                )
            }
        ),
    )
    base = st.fixed_dictionaries(
        {
            "name": p.name(),
            "issuer": p.v(
                st.just("https://issuer.test"), st.sampled_from(["issuer", "https://i\r\n", ""])
            ),
        },
        optional={
            "audiences": st.lists(p.v(st.sampled_from(["api", "web"])), max_size=2),
            "claims_to_headers": st.dictionaries(
                p.v(st.sampled_from(["tenant", "org.id"]), st.sampled_from(["", "a b", "\n"])),
                p.header(),
                max_size=2,
            ),
            "consumer_claim": p.v(st.sampled_from(["sub", "client_id"])),
            "headers": st.lists(
                st.fixed_dictionaries(
                    {"name": p.header()},
                    optional={"prefix": p.v(st.just("Bearer "), st.just("B\r\n"))},
                ),
                max_size=1,
            ),
            "query_params": st.lists(p.v(st.just("token")), max_size=1),
            "cookies": st.lists(p.v(st.just("session")), max_size=1),
            "clock_skew": p.duration(),
            "jwks_cache_duration": p.duration(),
            "allow_missing_exp": p.v(st.booleans()),
            "forward_token": p.v(st.booleans()),
        },
    )
    return st.tuples(base, source).map(lambda t: {**t[0], **t[1]})


def route(p: Pools) -> T:
    match = st.fixed_dictionaries(
        {},
        optional={
            "path_prefix": p.path(),
            "path": p.path(),
            "path_regex": p.regex(),
            "methods": st.lists(
                p.v(st.sampled_from(["GET", "POST", "OPTIONS"]), st.just("FETCH")), max_size=2
            ),
            "headers": st.lists(
                st.fixed_dictionaries(
                    {"name": p.header()},
                    optional={
                        "exact": p.v(st.just("v")),
                        "prefix": p.v(st.just("p")),
                        "regex": p.regex(),
                        "present": p.v(st.booleans()),
                        "invert": p.v(st.booleans()),
                    },
                ),
                max_size=2,
            ),
            "query": st.lists(
                st.fixed_dictionaries(
                    {"name": p.v(st.just("q"))},
                    optional={"exact": p.v(st.just("1")), "present": p.v(st.booleans())},
                ),
                max_size=1,
            ),
        },
    )
    header_ops = st.fixed_dictionaries(
        {},
        optional={
            "set": st.dictionaries(p.header(), p.header_value(), max_size=2),
            "add": st.dictionaries(p.header(), p.header_value(), max_size=1),
            "remove": st.lists(p.header(), max_size=2),
        },
    )
    action = st.one_of(
        st.fixed_dictionaries({"cluster": p.name()}),
        st.fixed_dictionaries(
            {
                "backends": st.lists(
                    st.fixed_dictionaries({"cluster": p.name(), "weight": p.small_int(0, 100)}),
                    min_size=1,
                    max_size=2,
                )
            }
        ),
        st.fixed_dictionaries(
            {
                "redirect": st.fixed_dictionaries(
                    {},
                    optional={
                        "host": p.v(
                            st.sampled_from(["example.com", "10.0.0.1"]),
                            st.sampled_from(["evil.com\r\nset-cookie: x", "a b", "a/b", "*.x.com"]),
                        ),
                        "scheme": p.v(st.sampled_from(["http", "https"])),
                        "port": p.small_int(1, 65535),
                        "path": p.path(),
                        "status": p.v(st.sampled_from([301, 302, 307, 308]), st.just(200)),
                        "strip_query": p.v(st.booleans()),
                    },
                )
            }
        ),
        st.fixed_dictionaries(
            {
                "direct_response": st.fixed_dictionaries(
                    {"status": p.small_int(200, 599)}, optional={"body": p.v(st.text(max_size=20))}
                )
            }
        ),
        st.fixed_dictionaries(
            {
                "aggregate": st.fixed_dictionaries(
                    {
                        "parts": st.lists(
                            st.fixed_dictionaries(
                                {
                                    "name": p.v(st.sampled_from(["u", "o"]), st.just("errors")),
                                    "cluster": p.name(),
                                    "path": p.v(st.sampled_from(["/u", "/o?x=1", "/p/{id}"])),
                                },
                                optional={"timeout": p.duration()},
                            ),
                            min_size=1,
                            max_size=2,
                        )
                    },
                    optional={
                        "on_error": p.v(st.sampled_from(["fail", "partial"])),
                        "forward_headers": st.lists(p.header(), max_size=2),
                    },
                )
            }
        ),
    )
    extras = st.fixed_dictionaries(
        {},
        optional={
            "hosts": st.lists(p.host(), max_size=2),
            "priority": p.small_int(-10, 10),
            "prefix_rewrite": p.path(),
            "regex_rewrite": st.fixed_dictionaries(
                {"pattern": p.regex(), "substitution": p.v(st.just("/x"))}
            ),
            "host_rewrite": p.v(
                st.sampled_from(["backend.internal", "10.0.0.2:8080"]),
                st.sampled_from(["a\r\nb", "a b", "a/b"]),
            ),
            "timeout": p.duration(),
            "idle_timeout": p.duration(),
            "retries": st.fixed_dictionaries(
                {},
                optional={
                    "attempts": p.small_int(1, 5),
                    "retry_on": st.lists(
                        p.v(
                            st.sampled_from(["5xx", "reset", "connect-failure"]), st.just("always")
                        ),
                        max_size=2,
                    ),
                    "per_try_timeout": p.duration(),
                },
            ),
            "request_headers": header_ops,
            "response_headers": header_ops,
            "auth": auth(p),
            "cors": cors(p),
            "rate_limit": rate_limit(p),
            "hash_on": st.lists(
                st.one_of(
                    st.fixed_dictionaries({"header": p.header()}),
                    st.fixed_dictionaries(
                        {
                            "cookie": st.fixed_dictionaries(
                                {"name": p.v(st.just("sticky"))}, optional={"ttl": p.duration()}
                            )
                        }
                    ),
                    st.fixed_dictionaries({"source_ip": p.v(st.just(True))}),
                ),
                max_size=2,
            ),
            "fault": st.fixed_dictionaries(
                {},
                optional={
                    "delay": st.fixed_dictionaries(
                        {"duration": p.duration()}, optional={"percent": p.v(st.floats(0.1, 100))}
                    ),
                    "abort": st.fixed_dictionaries(
                        {},
                        optional={
                            "status": p.small_int(400, 599),
                            "percent": p.v(st.floats(0.1, 100)),
                        },
                    ),
                },
            ),
            "request_query": st.fixed_dictionaries(
                {},
                optional={
                    "set": st.dictionaries(
                        p.v(st.just("v")), p.v(st.just("2"), st.just("a&b")), max_size=1
                    ),
                    "remove": st.lists(p.v(st.just("debug")), max_size=1),
                },
            ),
            "request_body": st.fixed_dictionaries(
                {},
                optional={
                    "rename": st.dictionaries(
                        p.v(st.just("id")), p.v(st.just("uid"), st.just('a"b')), max_size=1
                    ),
                    "wrap": p.v(st.just("data")),
                },
            ),
            "response_body": st.fixed_dictionaries(
                {},
                optional={
                    "remove": st.lists(p.v(st.just("internal")), max_size=1),
                    "max_bytes": p.small_int(1, 10_000),
                },
            ),
            "cache": st.fixed_dictionaries(
                {},
                optional={
                    "ttl": p.duration(),
                    "per_consumer": p.v(st.booleans()),
                    "generation": p.small_int(0, 10),
                },
            ),
            "compression": p.v(st.booleans()),
            "websocket": p.v(st.booleans()),
            "grpc_timeout_max": p.duration(),
        },
    )
    target = p.v(
        st.one_of(
            st.fixed_dictionaries({"gateway": st.just(GATEWAY)}),
            st.fixed_dictionaries({"gateways": st.just([GATEWAY, "other"])}),
        ),
        st.fixed_dictionaries({"gateway": st.sampled_from(["nope", "", GATEWAY.upper()])}),
    )
    parts = st.tuples(
        st.fixed_dictionaries({"name": p.name(), "match": match}), target, action, extras
    )
    return parts.map(lambda t: {k: v for d in t for k, v in d.items()})


def consumer(p: Pools) -> T:
    return st.fixed_dictionaries(
        {"name": p.name()},
        optional={"groups": st.lists(p.name(), max_size=2), "plan": p.name(), "limits": limits(p)},
    )


def plan(p: Pools) -> T:
    return st.fixed_dictionaries(
        {"name": p.name(), "limits": limits(p)},
        optional={"description": p.v(st.text(max_size=30))},
    )


_FORWARD_ONLY = (
    *("prefix_rewrite", "regex_rewrite", "host_rewrite", "retries", "timeout", "fault"),
    *("request_query", "request_body", "response_body", "cache", "grpc_timeout_max"),
    *("hash_on", "websocket", "grpc_web"),
)
_NOT_WITH_CACHE = (
    *("prefix_rewrite", "regex_rewrite", "host_rewrite", "retries", "request_headers"),
    *("response_headers", "request_body", "response_body"),
)


def _unique_by(items: list[Any], key: Any) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def _fix_limits(limits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    limits = _unique_by(limits, lambda lim: lim["per"])
    for lim in limits:
        if "burst" in lim:
            lim["burst"] = max(lim["burst"], lim["requests"])
    return limits


def _fix_auth(auth: dict[str, Any]) -> None:
    if (auth.get("scopes") or auth.get("claims")) and (not auth.get("jwt") or auth.get("api_key")):
        auth.pop("scopes", None)
        auth.pop("claims", None)
    if not auth.get("jwt") and not auth.get("api_key"):
        auth.pop("consumers", None)
        auth.pop("groups", None)


def _fix_cors(cors: dict[str, Any]) -> None:
    if "*" in cors["allow_origins"]:
        cors.pop("allow_credentials", None)


def _fix_rate_limit(rl: dict[str, Any]) -> None:
    if rl.get("key", "consumer") != "consumer":
        rl.pop("use_plans", None)
    if "limits" in rl:
        rl["limits"] = _fix_limits(rl["limits"])


def _fix_route(route: dict[str, Any]) -> None:
    match = route["match"]
    paths = [k for k in ("path", "path_prefix", "path_regex") if k in match]
    for extra in paths[1:]:
        del match[extra]
    for header in match.get("headers", []):
        conditions = [k for k in ("exact", "prefix", "regex", "present") if k in header]
        for extra in conditions[1:]:
            del header[extra]
        if not conditions:
            header["present"] = True
    match["headers"] = _unique_by(match.get("headers", []), lambda h: h["name"].lower())
    for q in match.get("query", []):
        if "exact" in q and "present" in q:
            del q["present"]
        if "exact" not in q and "present" not in q:
            q["present"] = True
    if not ("cluster" in route or "backends" in route):
        for key in _FORWARD_ONLY:
            route.pop(key, None)
    if "cache" in route and any(k in route for k in _NOT_WITH_CACHE):
        del route["cache"]
    if "prefix_rewrite" in route and ("regex_rewrite" in route or "path_regex" in match):
        del route["prefix_rewrite"]
    if "backends" in route:
        route["backends"] = _unique_by(route["backends"], lambda b: b["cluster"])
        route["backends"][0]["weight"] = max(1, route["backends"][0]["weight"])
    if "aggregate" in route:
        agg = route["aggregate"]
        agg["parts"] = _unique_by(agg["parts"], lambda part: part["name"])
        if "(?P<id>" not in match.get("path_regex", ""):
            for part in agg["parts"]:
                part["path"] = part["path"].replace("{id}", "id")
    if "fault" in route and not route["fault"]:
        del route["fault"]
    for body in ("request_body", "response_body"):
        b = route.get(body)
        if b is not None and not (b.get("rename") or b.get("remove") or "wrap" in b):
            del route[body]
    if "retries" in route and route["retries"].get("retry_on") == []:
        del route["retries"]["retry_on"]
    if "hosts" in route:
        route["hosts"] = _unique_by(route["hosts"], str.lower)
    for key, fix in (("auth", _fix_auth), ("cors", _fix_cors), ("rate_limit", _fix_rate_limit)):
        if key in route:
            fix(route[key])


def repair(doc: dict[str, Any], p: Pools) -> dict[str, Any]:
    """Make a clean document satisfy the rules that span fields (one path condition, no
    cache with rewrites, references that resolve...), so clean documents are accepted."""
    names = ("a", "b", "c")
    for key in ("clusters", "jwt_providers", "plans", "consumers", "routes"):
        doc[key] = _unique_by(doc.get(key, []), lambda o: o["name"])
    have = {key: {o["name"] for o in doc[key]} for key in doc}
    for n in names:  # every name a reference may draw exists
        if n not in have["clusters"]:
            doc["clusters"].append({"name": n, "endpoints": [p.backend]})
        if n not in have["plans"]:
            doc["plans"].append({"name": n, "limits": [{"requests": 60, "per": "minute"}]})
        if n not in have["consumers"]:
            doc["consumers"].append({"name": n})
        if n not in have["jwt_providers"]:
            doc["jwt_providers"].append(
                {
                    "name": n,
                    "issuer": "https://issuer.test",
                    "jwks": json.dumps({"keys": [RSA_JWK]}),
                }
            )
    uses_other = any("other" in r.get("gateways", []) for r in doc["routes"])
    if uses_other and all(g["name"] != "other" for g in doc["gateways"]):
        doc["gateways"].append({"name": "other", "port": 1, "address": "127.0.0.1"})
    for gw in doc["gateways"]:
        gw["hostnames"] = _unique_by(gw.get("hostnames", []), str.lower)
        if "compression" in gw:
            algorithms = gw["compression"].get("algorithms")
            if algorithms is not None:
                gw["compression"]["algorithms"] = list(dict.fromkeys(algorithms)) or ["gzip"]
        if "access_log" in gw and "fields" in gw["access_log"]:
            gw["access_log"]["fields"] = list(dict.fromkeys(gw["access_log"]["fields"])) or ["path"]
        for key, fix in (("auth", _fix_auth), ("cors", _fix_cors), ("rate_limit", _fix_rate_limit)):
            if key in gw:
                fix(gw[key])
    for cluster in doc["clusters"]:
        cluster["endpoints"] = _unique_by(cluster["endpoints"], str.lower)
        hc = cluster.get("health_check", {})
        if hc.get("expected_statuses") == []:
            del hc["expected_statuses"]
        cb = cluster.get("circuit_breakers", {})
        if "retry_budget" in cb:
            cb.pop("max_retries", None)
    for plan in doc["plans"]:
        plan["limits"] = _fix_limits(plan["limits"]) or [{"requests": 1, "per": "second"}]
    for consumer in doc["consumers"]:
        consumer["limits"] = _fix_limits(consumer.get("limits", []))
    for provider in doc["jwt_providers"]:
        claims = provider.get("claims_to_headers", {})
        provider["claims_to_headers"] = dict(
            _unique_by(list(claims.items()), lambda kv: kv[1].lower())
        )
    for route in doc["routes"]:
        _fix_route(route)
    return {k: v for k, v in doc.items() if v}


def document(ports: tuple[int, int, str]) -> T:
    """A whole declarative file as bytes, with an occasional text-level mutation."""

    @st.composite
    def build(draw: Any) -> bytes:
        clean = draw(st.booleans())
        p = Pools(clean, *ports)
        if not clean:
            p.budget = draw(st.integers(1, 3))
            p.rate = draw(st.sampled_from([3, 10, 40]))
        doc: dict[str, Any] = {"gateways": [draw(gateway(p))]}
        if draw(st.booleans()):
            doc["gateways"].append(draw(other_gateway(p)))
        for key, strategy, most in (
            ("clusters", cluster(p), 3),
            ("jwt_providers", jwt_provider(p), 2),
            ("plans", plan(p), 2),
            ("consumers", consumer(p), 2),
            ("routes", route(p), 4),
        ):
            items = draw(st.lists(strategy, max_size=most))
            if items:
                doc[key] = items
        if p.clean:
            doc = repair(doc, p)
        elif draw(st.integers(0, 9)) == 0:
            doc[draw(st.sampled_from(["routes", "clusters", "gateways", "extra"]))] = draw(
                st.sampled_from(WRONG_TYPES)
            )
        as_json = draw(st.booleans())
        text = json.dumps(doc, indent=1) if as_json else yaml.safe_dump(doc, sort_keys=False)
        mutation = (
            "none"
            if p.clean
            else draw(
                st.sampled_from(["none"] * 6 + ["dup", "deep", "ctrl", "bytes", "empty", "list"])
            )
        )
        if mutation == "dup" and '"name": ' in json.dumps(doc):
            text = json.dumps(doc).replace('"name": ', '"name": "dup", "name": ', 1)
        elif mutation == "deep":
            depth = draw(st.sampled_from([65, 500, 100_000]))
            doc["plans"] = "@deep@"
            text = json.dumps(doc).replace('"@deep@"', "[" * depth + "]" * depth)
        elif mutation == "ctrl":
            text = text.replace("name", "na\x07me", 1)
        elif mutation == "bytes":
            return b"\xff\xfe" + text.encode()
        elif mutation == "empty":
            text = draw(st.sampled_from(["", "---\n", "null\n", "[]\n", "0\n", "{}\n"]))
        elif mutation == "list":
            text = "- " + text.replace("\n", "\n  ")
        return text.encode()

    return build()


# -- the property -------------------------------------------------------------------------


@dataclass
class Rig:
    cli: Cli
    envoy: Envoy
    path: Path
    ports: tuple[int, int, str]
    revision: int = 0
    export: str = ""
    accepted: int = 0
    refused: int = 0

    def state(self) -> tuple[int, str]:
        """Revision and export, read as ``export`` reads them."""
        from controlplane.policy import Bundle
        from controlplane.store import Store

        store = Store(self.cli.db)
        try:
            revision, objects = store.load_all()  # one transaction
            return revision, Bundle.from_objects(objects).to_yaml()
        finally:
            store.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("fuzz")
    cli = Cli(db=str(tmp / "gateway.db"))
    backend = EchoServer("alpha").start()
    port, aggregation_port = free_port(), free_port()
    cli.run(
        "gateway",
        "add",
        GATEWAY,
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
        "--aggregation-port",
        str(aggregation_port),
    )
    controller = Controller(cli, tmp)
    controller.start()
    envoy = Envoy(GATEWAY, "fuzz-1", controller.xds_port, tmp)
    # connected before the first document: every accepted one's --wait then waits for its ACK
    wait_connected(cli, 1, timeout=60)
    cli.run("gateway", "update", GATEWAY, "--hostname", "fuzz.test", "--wait=60s")
    rig = Rig(cli, envoy, tmp / "doc", (port, aggregation_port, f"127.0.0.1:{backend.port}"))
    rig.revision, rig.export = rig.state()
    try:
        yield rig
    finally:
        print(f"fuzz: {rig.accepted} accepted, {rig.refused} refused")
        envoy.stop()
        controller.stop()
        backend.stop()


def _check(rig: Rig, data: bytes) -> None:
    rig.path.write_bytes(data)
    proc = rig.cli.run(
        "apply", "-f", str(rig.path), "--prune", "--wait=60s", check=False, timeout=180
    )
    shown = data[:3000].decode(errors="replace")
    where = f"exit {proc.returncode}\nstderr: {proc.stderr}\ndocument:\n{shown}"
    assert "Traceback" not in proc.stderr + proc.stdout, where
    if proc.returncode == 0:
        rig.revision, rig.export = rig.state()
        rig.accepted += 1
        return
    assert proc.returncode == 2, where
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), where
    assert rig.state() == (rig.revision, rig.export), (
        "a refused document changed the database\n" + where
    )
    rig.refused += 1


def known_cases(port: int, aggregation_port: int, backend: str) -> list[bytes]:
    """The instances an attack pass found, run first on every run (Phase.explicit)."""
    gw = f"gateways: [{{name: {GATEWAY}, port: {port}, address: 127.0.0.1, "
    gw += f"aggregation_port: {aggregation_port}}}]\n"
    cl = f"clusters: [{{name: a, endpoints: ['{backend}']}}]\n"
    provider = (
        "jwt_providers: [{name: p, issuer: 'https://i.test', jwks_uri: 'https://i.test/k', "
        "claims_to_headers: {who: HEADER}}]\n"
    )
    route = f"routes: [{{name: r, gateway: {GATEWAY}, ACTION}}]\n"
    deep = "[" * 100_000 + "]" * 100_000
    even = json.dumps({"keys": [{**RSA_JWK, "n": _b64(b"\xc0" + b"\x00" * 255)}]})
    crlf = 'redirect: {host: "evil.test\\r\\nset-cookie: a=b"}'
    docs = [
        gw + cl + provider.replace("HEADER", "x-consumer-id"),
        gw + cl + provider.replace("HEADER", "x-api-key"),
        gw + cl + route.replace("ACTION", crlf),
        gw + cl + "routes:\n- name: r\n  gateway: fuzz\n  cluster: a\n  auth: {api_key: true}\n"
        "  auth: {}\n",
        gw + cl + "plans: " + deep + "\n",
        gw + cl + f"jwt_providers: [{{name: p, issuer: 'https://i.test', jwks: '{even}'}}]\n",
        # numeric bounds (issue items 3 and Low): out of Envoy's range, infinity, a bool port
        gw
        + cl.replace("]}]", "], circuit_breakers: {max_requests: 4294967296}}]")
        + route.replace("ACTION", "cluster: a"),
        gw + cl + route.replace("ACTION", "cluster: a, timeout: .inf"),
        gw.replace(f"{GATEWAY}, port: {port},", f"{GATEWAY}, port: true,") + cl,
    ]
    return [d.encode() for d in docs]


def test_every_document_is_refused_cleanly_or_acked(rig: Rig) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if SHRINK else [])],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(document(rig.ports))
    def apply_document(data: bytes) -> None:
        _check(rig, data)

    for case in known_cases(*rig.ports):
        apply_document = example(case)(apply_document)
    apply_document()
    # the run must have exercised both outcomes, or it proved little
    assert rig.accepted > 0 and rig.refused > 0, (rig.accepted, rig.refused)
