"""Policy parsing: bad input gives one-line errors naming the field; values normalise."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.errors import PolicyInvalid
from controlplane.policy import Bundle, Cluster, Route
from controlplane.policy.common import duration_ms

EXAMPLES = sorted((Path(__file__).parent.parent / "translate" / "testdata" / "in").glob("*.yaml"))

BASE = """\
gateways: [{name: web, port: 8080}]
clusters: [{name: app, endpoints: ["10.0.0.1:80"]}]
"""


def _error(text: str) -> str:
    with pytest.raises(PolicyInvalid) as info:
        Bundle.from_text(text, "policy.yaml")
    message = str(info.value)
    assert "\n" not in message, f"multi-line error: {message!r}"
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "gateways: [\n  - name: x\n",
            "policy.yaml: malformed YAML at line 2, column 3",
            id="malformed-yaml",
        ),
        pytest.param(
            "gateways:\n  - name: web\n   port: 1\n",
            "policy.yaml: malformed YAML at line 3",
            id="bad-indentation",
        ),
        pytest.param(
            BASE + "routes: [{name: r, gateway: web, cluster: app, colour: blue}]",
            "routes[0] 'r': colour: unknown field",
            id="unknown-field",
        ),
        pytest.param(
            BASE + "routes: [{name: r, gateway: web, cluster: app, match: {path: /, verb: GET}}]",
            "routes[0] 'r': match.verb: unknown field",
            id="unknown-nested-field",
        ),
        pytest.param("services: []", "services: unknown top-level key", id="unknown-top-level"),
        pytest.param(
            BASE + "routes: [{name: r, gateway: web, cluster: app, match: {path_regex: '(('}}]",
            "routes[0] 'r': match.path_regex: invalid RE2 regex '(('",
            id="invalid-regex",
        ),
        pytest.param(
            BASE
            + "routes: [{name: r, gateway: web, cluster: app,"
            + " match: {headers: [{name: x-a, regex: '[a-'}]}}]",
            "routes[0] 'r': match.headers[0].regex: invalid RE2 regex",
            id="invalid-header-regex",
        ),
        pytest.param(
            BASE + "routes: [{name: r, gateway: web, cluster: nope}]",
            "route 'r': cluster 'nope' does not exist",
            id="unknown-cluster",
        ),
        pytest.param(
            BASE + "routes: [{name: r, gateway: web, backends: [{cluster: app, weight: 1},"
            " {cluster: ghost, weight: 1}]}]",
            "route 'r': cluster 'ghost' does not exist",
            id="unknown-backend-cluster",
        ),
        pytest.param(
            BASE + "routes: [{name: r, gateway: nope, cluster: app}]",
            "route 'r': gateway 'nope' does not exist",
            id="unknown-gateway",
        ),
        pytest.param(
            BASE + "routes: [{name: r, gateway: web, cluster: app}, "
            "{name: r, gateway: web, cluster: app}]",
            "routes: duplicate name 'r'",
            id="duplicate-route",
        ),
        pytest.param(
            "gateways: [{name: web, port: 80}, {name: web, port: 81}]",
            "gateways: duplicate name 'web'",
            id="duplicate-gateway",
        ),
        pytest.param(
            "gateways: [{name: web, port: 70000}]",
            "gateways[0] 'web': port: 70000 is out of range: must be an integer from 1 to 65535",
            id="port-too-large",
        ),
        pytest.param(
            "gateways: [{name: web, port: 0}]",
            "gateways[0] 'web': port: 0 is out of range: must be an integer from 1 to 65535",
            id="port-zero",
        ),
        pytest.param(
            "clusters: [{name: app, endpoints: ['10.0.0.1:99999']}]",
            "clusters[0] 'app': endpoints: '10.0.0.1:99999': port must be a number from 1 to 65535",
            id="endpoint-port",
        ),
        pytest.param(
            "gateways: [{name: web, port: eighty}]",
            "gateways[0] 'web': port: must be an integer from 1 to 65535, not a string",
            id="wrong-type-int",
        ),
        pytest.param(
            "gateways: [{name: web, port: 80, hostnames: a.example.com}]",
            "gateways[0] 'web': hostnames: Input should be a valid list",
            id="wrong-type-list",
        ),
        pytest.param("routes: {name: r}", "routes: must be a list", id="wrong-type-section"),
        pytest.param("- a\n- b\n", "the file must be a mapping", id="not-a-mapping"),
        pytest.param(
            BASE + "routes: [{name: r, gateway: web, backends: [{cluster: app, weight: 0}]}]",
            "routes[0] 'r': backends: weights must add up to more than zero",
            id="weights-sum-to-zero",
        ),
        pytest.param(
            "clusters: [{name: app, endpoints: ['10.0.0.1:80'], connect_timeout: soon}]",
            "clusters[0] 'app': connect_timeout: 'soon' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            "clusters: [{name: app, endpoints: ['10.0.0.1:80'], connect_timeout: 0.0015}]",
            "clusters[0] 'app': connect_timeout: has a resolution of 1ms",
            id="duration-resolution",
        ),
        pytest.param(
            "clusters: [{name: app, endpoints: ['10.0.0.1:80'], connect_timeout: 0}]",
            "clusters[0] 'app': connect_timeout: 0 is out of range: "
            "must be a duration from 1ms to 8760h",
            id="duration-zero",
        ),
        pytest.param(
            "gateways: [{name: Web, port: 0}]",
            "gateways[0] 'Web': name: must be 1-63 lower-case letters",
            id="several-errors-one-line",
        ),
        pytest.param(
            BASE + "routes: [{name: r, gateway: web}]",
            "routes[0] 'r': action: set exactly one of cluster, backends, redirect, "
            "direct_response, aggregate (got 0)",
            id="no-action",
        ),
    ],
)
def test_bad_input_gives_one_line_error(text: str, expected: str) -> None:
    assert _error(text).startswith(expected)


def test_several_errors_are_counted() -> None:
    assert _error("gateways: [{name: Web, port: 0}]").endswith("(and 1 more)")


@pytest.mark.parametrize(
    ("given", "normalised", "ms"),
    [
        ("250ms", "250ms", 250),
        (0.25, "250ms", 250),
        ("0.25s", "250ms", 250),
        ("1m", "60s", 60_000),
        ("1.5s", "1500ms", 1500),
        (2, "2s", 2000),
        ("2", "2s", 2000),
        ("1h", "3600s", 3_600_000),
        (" 5 s ", "5s", 5000),
        ("1000ms", "1s", 1000),
    ],
)
def test_duration_normalisation(given: object, normalised: str, ms: int) -> None:
    cluster = Cluster.model_validate(
        {"name": "app", "endpoints": ["10.0.0.1:80"], "connect_timeout": given}
    )
    assert cluster.connect_timeout == normalised
    assert duration_ms(cluster.connect_timeout) == ms


def test_durations_everywhere_normalise() -> None:
    route = Route.model_validate(
        {
            "name": "r",
            "gateway": "web",
            "cluster": "app",
            "timeout": 0.5,
            "idle_timeout": "2m",
            "retries": {"per_try_timeout": "100"},
        }
    )
    assert (route.timeout, route.idle_timeout) == ("500ms", "120s")
    assert route.retries is not None and route.retries.per_try_timeout == "100s"


def test_defaults_are_not_exported() -> None:
    bundle = Bundle.from_text(BASE + "routes: [{name: r, gateway: web, cluster: app}]")
    assert bundle.to_data() == {
        "gateways": [{"name": "web", "port": 8080}],
        "clusters": [{"name": "app", "endpoints": ["10.0.0.1:80"]}],
        "routes": [{"name": "r", "gateways": ["web"], "cluster": "app"}],
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_export_round_trip(path: Path) -> None:
    bundle = Bundle.from_text(path.read_text(encoding="utf-8"), path.name)
    text = bundle.to_yaml()
    again = Bundle.from_text(text, "export")
    assert again.to_data() == bundle.to_data()
    assert again.to_yaml() == text  # export of an export is the same text


def test_models_with_the_same_fields_share_one_fields_set_safely() -> None:
    """Objects given the same fields share one set of their names (ADR 0055: a fifth of a
    route's memory), and nothing one object does changes what another reports as set."""
    from pydantic import ValidationError

    def route(i: int, **extra: object) -> Route:
        return Route.model_validate(
            {
                "name": f"r{i}",
                "gateways": ["web"],
                "match": {"path": f"/{i}"},
                "cluster": "app",
                **extra,
            }
        )

    a, b, c = route(1), route(2), route(3, priority=5)
    assert a.model_fields_set is b.model_fields_set  # shared
    assert a.match.model_fields_set is b.match.model_fields_set  # nested objects too
    assert a.model_fields_set == {"name", "gateways", "match", "cluster"}
    assert c.model_fields_set == {"name", "gateways", "match", "cluster", "priority"}
    # a copy with an update gets its own set; the shared one is unchanged
    d = a.model_copy(update={"priority": 3})
    assert d.priority == 3 and "priority" in d.model_fields_set
    assert "priority" not in a.model_fields_set and "priority" not in b.model_fields_set
    # assignment is refused (frozen) before pydantic would add to the set
    with pytest.raises(ValidationError):
        a.priority = 9  # type: ignore[misc]
    assert "priority" not in b.model_fields_set
    # the canonical form does not depend on the set: defaults are left out either way
    assert a.spec() == {
        "name": "r1",
        "gateways": ["web"],
        "match": {"path": "/1"},
        "cluster": "app",
    }
    assert d.spec()["priority"] == 3
