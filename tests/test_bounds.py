"""Numbers and durations out of the range of the Envoy field they become are refused on input.

Before policy/bounds.py, ``circuit_breakers.max_requests: 4294967296`` was stored and then
failed translation forever, ``timeout: .inf`` raised OverflowError and ``port: true`` was
stored as 1. Each case below is refused with one line naming the object, the field and the
allowed range (exit 2), and the database is left as it was.
"""

from __future__ import annotations

import pytest

from controlplane.errors import PolicyInvalid
from controlplane.policy import Bundle
from controlplane.policy.bounds import parse_duration
from controlplane.store import Store
from tests.e2e.harness import Cli

BASE = """
gateways:
  - name: web
    port: 8080
    {gateway_extra}
clusters:
  - name: app
    endpoints: ["127.0.0.1:9001"]
    {cluster_extra}
  - name: other
    endpoints: ["127.0.0.1:9002"]
routes:
  - name: r
    gateway: web
    match: {{path_prefix: /}}
    {route_extra}
"""


def _file(gateway: str = "", cluster: str = "", route: str = "cluster: app") -> str:
    return BASE.format(gateway_extra=gateway, cluster_extra=cluster, route_extra=route)


#: (file, the start of the expected one-line error)
OUT_OF_RANGE = {
    "circuit breaker above uint32": (
        _file(cluster="circuit_breakers: {max_requests: 4294967296}"),
        "clusters[0] 'app': circuit_breakers.max_requests: 4294967296 is out of range: "
        "must be an integer from 1 to 4294967295",
    ),
    "circuit breaker max_connections boolean": (
        _file(cluster="circuit_breakers: {max_connections: true}"),
        "clusters[0] 'app': circuit_breakers.max_connections: must be an integer from 1 to "
        "4294967295, not a boolean",
    ),
    "max_retries negative": (
        _file(cluster="circuit_breakers: {max_retries: -1}"),
        "clusters[0] 'app': circuit_breakers.max_retries: -1 is out of range",
    ),
    "retry budget percent NaN": (
        _file(cluster="circuit_breakers: {retry_budget: {percent: .nan}}"),
        "clusters[0] 'app': circuit_breakers.retry_budget.percent: must be a number above 0 "
        "and at most 100, not nan",
    ),
    "retry budget min_concurrency above uint32": (
        _file(cluster="circuit_breakers: {retry_budget: {min_concurrency: 99999999999}}"),
        "clusters[0] 'app': circuit_breakers.retry_budget.min_concurrency: 99999999999 is out "
        "of range",
    ),
    "outlier consecutive_5xx above uint32": (
        _file(cluster="outlier_detection: {consecutive_5xx: 4294967296}"),
        "clusters[0] 'app': outlier_detection.consecutive_5xx: 4294967296 is out of range",
    ),
    "outlier ejection percent 101": (
        _file(cluster="outlier_detection: {max_ejection_percent: 101}"),
        "clusters[0] 'app': outlier_detection.max_ejection_percent: 101 is out of range: "
        "must be an integer from 1 to 100",
    ),
    "health check status boolean": (
        _file(cluster="health_check: {expected_statuses: [true]}"),
        "clusters[0] 'app': health_check.expected_statuses[0]: must be an integer from 100 "
        "to 599, not a boolean",
    ),
    "connect timeout infinite": (
        _file(cluster="connect_timeout: .inf"),
        "clusters[0] 'app': connect_timeout: must be a duration from 1ms to 8760h, not inf",
    ),
    "health check interval above a year": (
        _file(cluster="health_check: {interval: 9000h}"),
        "clusters[0] 'app': health_check.interval: '9000h' is out of range: must be a "
        "duration from 1ms to 8760h",
    ),
    "route timeout infinite": (
        _file(route="cluster: app\n    timeout: .inf"),
        "routes[0] 'r': timeout: must be a duration from 1ms to 8760h, not inf",
    ),
    "route timeout NaN": (
        _file(route="cluster: app\n    timeout: .nan"),
        "routes[0] 'r': timeout: must be a duration from 1ms to 8760h, not nan",
    ),
    "route timeout huge integer": (
        _file(route="cluster: app\n    timeout: " + "9" * 400),
        "routes[0] 'r': timeout: 999999999999999999999... is out of range",
    ),
    "route timeout boolean": (
        _file(route="cluster: app\n    timeout: true"),
        "routes[0] 'r': timeout: must be a duration from 1ms to 8760h",
    ),
    "weight above the bound": (
        _file(route="backends: [{cluster: app, weight: 4294967296}]"),
        "routes[0] 'r': backends[0].weight: 4294967296 is out of range: must be an integer "
        "from 0 to 1000000",
    ),
    "weight boolean": (
        _file(route="backends: [{cluster: app, weight: true}]"),
        "routes[0] 'r': backends[0].weight: must be an integer from 0 to 1000000, not a boolean",
    ),
    "retry attempts 11": (
        _file(route="cluster: app\n    retries: {attempts: 11}"),
        "routes[0] 'r': retries.attempts: 11 is out of range: must be an integer from 1 to 10",
    ),
    "retry attempts fraction": (
        _file(route="cluster: app\n    retries: {attempts: 2.5}"),
        "routes[0] 'r': retries.attempts: must be an integer from 1 to 10, not a fraction",
    ),
    "per-try timeout infinite": (
        _file(route="cluster: app\n    retries: {per_try_timeout: -.inf}"),
        "routes[0] 'r': retries.per_try_timeout: must be a duration",
    ),
    "gateway port boolean": (
        _file().replace("port: 8080", "port: true"),
        "gateways[0] 'web': port: must be an integer from 1 to 65535, not a boolean",
    ),
    "gateway port quoted": (
        _file().replace("port: 8080", "port: '8080'"),
        "gateways[0] 'web': port: must be an integer from 1 to 65535, not a string",
    ),
    "aggregation port 65536": (
        _file(gateway="aggregation_port: 65536"),
        "gateways[0] 'web': aggregation_port: 65536 is out of range",
    ),
    "redirect port 0": (
        _file(route="redirect: {port: 0}"),
        "routes[0] 'r': redirect.port: 0 is out of range: must be an integer from 1 to 65535",
    ),
    "fault percent 101": (
        _file(route="cluster: app\n    fault: {abort: {status: 503, percent: 101}}"),
        "routes[0] 'r': fault.abort.percent: 101 is out of range: must be a number above 0 "
        "and at most 100",
    ),
    "fault percent infinite": (
        _file(route="cluster: app\n    fault: {delay: {duration: 1s, percent: .inf}}"),
        "routes[0] 'r': fault.delay.percent: must be a number above 0 and at most 100, not inf",
    ),
    "fault abort status 600": (
        _file(route="cluster: app\n    fault: {abort: {status: 600}}"),
        "routes[0] 'r': fault.abort.status: 600 is out of range: must be an integer from 200 "
        "to 599",
    ),
    "direct response status boolean": (
        _file(route="direct_response: {status: true}"),
        "routes[0] 'r': direct_response.status: must be an integer from 200 to 599",
    ),
    "rate limit above uint32": (
        _file(
            route="cluster: app\n    rate_limit: {limits: [{requests: 4294967296, per: second}]}"
        ),
        "routes[0] 'r': rate_limit.limits[0].requests: 4294967296 is out of range",
    ),
    "compression min_length above uint32": (
        _file(gateway="compression: {min_length: 4294967296}"),
        "gateways[0] 'web': compression.min_length: 4294967296 is out of range",
    ),
    "cache generation above uint32": (
        _file(route="cluster: app\n    cache: {ttl: 5s, generation: 4294967296}"),
        "routes[0] 'r': cache.generation: 4294967296 is out of range",
    ),
    "priority boolean": (
        _file(route="cluster: app\n    priority: false"),
        "routes[0] 'r': priority: must be an integer from -1000 to 1000, not a boolean",
    ),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
def test_out_of_range_is_one_line_naming_object_field_and_range(case: str) -> None:
    text, expected = OUT_OF_RANGE[case]
    with pytest.raises(PolicyInvalid) as err:
        Bundle.from_text(text)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(expected), message


def test_weights_must_fit_envoys_sum() -> None:
    backends = ", ".join(f"{{cluster: c{i}, weight: 1000000}}" for i in range(4295))
    clusters = "\n".join(f"  - {{name: c{i}, endpoints: ['127.0.0.1:1']}}" for i in range(4295))
    text = _file(route=f"backends: [{backends}]").replace("clusters:\n", f"clusters:\n{clusters}\n")
    with pytest.raises(PolicyInvalid, match="weights must add up to at most 4294967295"):
        Bundle.from_text(text)


def test_an_integer_of_thousands_of_digits_is_malformed_input() -> None:
    with pytest.raises(PolicyInvalid, match=r"^input: malformed YAML: Exceeds the limit"):
        Bundle.from_text("gateways: [{name: web, port: " + "9" * 5000 + "}]")


def test_the_base_file_is_valid() -> None:
    """The cases above fail because of the one value they change, not the rest."""
    Bundle.from_text(_file())
    Bundle.from_text(_file(route="backends: [{cluster: app, weight: 4294}]"))


@pytest.mark.parametrize(
    ("value", "text"),
    [("1.5s", "1500ms"), (0.25, "250ms"), ("1m", "60s"), ("8760h", "31536000s"), (2, "2s")],
)
def test_durations_keep_their_normal_form(value: object, text: str) -> None:
    assert parse_duration(value) == text


# -- through the real CLI: exit 2, one line, database unchanged ---------------------------------

GOOD = _file(cluster="circuit_breakers: {max_requests: 100}")


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    db = tmp_path_factory.mktemp("bounds") / "gateway.db"
    out = Cli(db=str(db))
    out.run("apply", "-f", "-", input=GOOD)
    return out


def _state(cli: Cli) -> tuple[int, str]:
    store = Store(cli.db)
    try:
        return store.revision(), store.bundle().to_yaml()
    finally:
        store.close()


CLI_FILES = [
    "circuit breaker above uint32",
    "connect timeout infinite",
    "gateway port boolean",
    "weight above the bound",
    "retry attempts 11",
    "fault percent infinite",
    "route timeout huge integer",
]

CLI_COMMANDS = {
    "max-requests above uint32": (
        ["cluster", "update", "app", "--max-requests", "4294967296"],
        "cluster 'app': circuit_breakers.max_requests: 4294967296 is out of range",
    ),
    "backend weight above the bound": (
        ["route", "update", "r", "--backend", "app=4294967296"],
        "route 'r': backends[0].weight: 4294967296 is out of range",
    ),
    "fault percent NaN": (
        ["route", "update", "r", "--fault-abort", "503@nan"],
        "route 'r': fault.abort.percent: must be a number above 0 and at most 100, not nan",
    ),
    "timeout infinite": (
        ["route", "update", "r", "--timeout", "inf"],
        "route 'r': timeout: 'inf' is not a duration",
    ),
    "retries above the bound": (
        ["route", "update", "r", "--retries", "4294967296"],
        "route 'r': retries.attempts: 4294967296 is out of range: must be an integer from 1 to 10",
    ),
    "cluster named like the bootstrap's": (
        ["cluster", "add", "xds_cluster", "--endpoint", "127.0.0.1:1"],
        "cluster 'xds_cluster': name: 'xds_cluster' is reserved",
    ),
    "cluster named like a provider's JWKS fetch cluster": (
        ["cluster", "add", "jwks:partner", "--endpoint", "127.0.0.1:1"],
        "cluster 'jwks:partner': name: must be 1-63 lower-case letters",
    ),
    "route to the bootstrap's cluster": (
        ["route", "update", "r", "--cluster", "gateway_replicas"],
        "route 'r': cluster: 'gateway_replicas' is reserved",
    ),
    "gateway in the generated namespace": (
        ["gateway", "add", "gateway.replicas", "--port", "9000"],
        "gateway 'gateway.replicas': name: 'gateway.replicas' is reserved",
    ),
    "key expiry beyond datetime": (
        ["consumer", "key", "add", "alice", "--expires", "99999999999d"],
        "--expires: '99999999999d' must be from 1m to 36500d from now",
    ),
    "wait timeout infinite": (
        ["route", "update", "r", "--timeout", "3s", "--wait=.inf"],
        "--wait: '.inf' is not a duration",
    ),
    "port above the bound": (
        ["gateway", "update", "web", "--port", "65536"],
        "gateway 'web': port: 65536 is out of range",
    ),
}


@pytest.mark.parametrize("case", CLI_FILES)
def test_apply_refuses_out_of_range_and_writes_nothing(cli: Cli, case: str) -> None:
    text, expected = OUT_OF_RANGE[case]
    before = _state(cli)
    proc = cli.run("apply", "-f", "-", input=text, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), proc.stderr
    assert _state(cli) == before


@pytest.mark.parametrize("case", sorted(CLI_COMMANDS))
def test_commands_refuse_out_of_range_and_write_nothing(cli: Cli, case: str) -> None:
    args, expected = CLI_COMMANDS[case]
    before = _state(cli)
    proc = cli.run(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), proc.stderr
    assert _state(cli) == before
