"""``gatewayctl render``: offline, it prints what a real controller sends a real Envoy."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from .harness import backend_of


def _admin_json(admin_port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def test_render_equals_what_envoy_runs(  # type: ignore[no-untyped-def]
    cli, envoy_factory, backends, gateway_port, tmp_path: Path
) -> None:
    policy = {
        "gateways": [{"name": "public", "port": gateway_port}],
        "clusters": [
            {"name": n, "endpoints": [f"127.0.0.1:{s.port}"]} for n, s in backends.items()
        ],
        "consumers": [{"name": "acme"}],
        "routes": [
            {
                "name": "to-alpha",
                "gateway": "public",
                "match": {"path_prefix": "/a"},
                "cluster": "alpha",
            },
            {
                "name": "to-beta",
                "gateway": "public",
                "match": {"path_prefix": "/b"},
                "cluster": "beta",
                "auth": {"api_key": True},
            },
        ],
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    envoy = envoy_factory("public")
    cli.run("apply", "-f", str(path))
    key = cli.run("consumer", "key", "add", "acme", "--wait").stdout.strip()
    assert backend_of(gateway_port, "/a/x") == "alpha"

    rendered = cli.json("render", "--gateway", "public")
    shown = cli.json("render", "--gateway", "public", "--show-secrets")

    # the route configuration is the one Envoy runs, field for field
    dump = _admin_json(envoy.admin_port, "/config_dump?resource=dynamic_route_configs")
    running = {c["route_config"]["name"]: c["route_config"] for c in dump["configs"]}
    routes = {r["name"]: r for r in rendered["routes"]["resources"]}
    assert routes == running
    [table] = routes.values()
    actions = {
        r["match"].get("prefix") or r["match"].get("path_separated_prefix"): r.get("route", {})
        for vh in table["virtual_hosts"]
        for r in vh["routes"]
    }
    assert actions["/a"]["cluster"] == "alpha" and actions["/b"]["cluster"] == "beta"

    # the same listeners and clusters by name, and the same versions Envoy acknowledged
    dump = _admin_json(envoy.admin_port, "/config_dump?resource=dynamic_listeners")
    assert {x["name"] for x in dump["configs"]} == {
        x["name"] for x in rendered["listeners"]["resources"]
    }
    # a version is "<revision it was first built at>-<content hashes>": a controller that
    # built the listener before the key was added keeps its older revision, same content
    versions = {x["active_state"]["version_info"].split("-", 1)[1] for x in dump["configs"]}
    assert versions == {rendered["listeners"]["version"].split("-", 1)[1]}
    dump = _admin_json(envoy.admin_port, "/config_dump?resource=dynamic_active_clusters")
    assert {c["cluster"]["name"] for c in dump["configs"]} == {
        c["name"] for c in rendered["clusters"]["resources"]
    }

    # the API key is printed only on request
    text = json.dumps(rendered)
    assert key not in text and "(redacted)" in text
    assert key in json.dumps(shown)
