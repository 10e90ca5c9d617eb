"""The xDS resources a proxy of a gateway receives, computed offline from the database.

``gatewayctl render`` uses the controller's own :class:`~controlplane.runner.Runner` (load,
translate, build the snapshot) on the store, so what it prints is what ``serve`` would
send, resource for resource, without a controller running. The resources are decoded from
the snapshot's wire fragments: the exact bytes a stream would get.
"""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.json_format import MessageToDict

from .errors import NotFound
from .settings import Settings
from .store import Store
from .translate import CLUSTER, ENDPOINT, EXTENSION, LISTENER, ROUTE, SCOPED, SECRET

__all__ = ["REDACTED", "render_gateway"]

#: section of the output per xDS type, in the order a controller pushes them
SECTIONS = {
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
    EXTENSION: "extension_configs",
    SECRET: "secrets",
    LISTENER: "listeners",
    SCOPED: "scoped_routes",
    ROUTE: "routes",
}
REDACTED = "(redacted)"
_API_KEY_AUTH = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth"


def render_gateway(
    store: Store, gateway: str, *, show_secrets: bool = False, settings: Settings | None = None
) -> dict[str, Any]:
    """``{"gateway", "revision", <section>: {"version", "resources": [...]}}``: every resource
    as Envoy's ``/config_dump`` shows it (``@type``, proto field names). Private keys and API
    keys are replaced by ``(redacted)`` unless ``show_secrets``. ``settings`` (default: the
    ``GATEWAY_*`` environment, as ``serve`` reads it) choose what ``serve`` would: the
    aggregation service, route sharding, TLS to the log sink."""
    from .runner import Runner
    from .translate.aggregate import aggregation_target
    from .xds.cache import SnapshotCache

    settings = settings or Settings()
    sink_tls = all((settings.xds_tls_cert, settings.xds_tls_key, settings.xds_client_ca))
    runner = Runner(
        store,
        SnapshotCache(),
        controller="render",
        xds_address=settings.xds_address,
        aggregation=aggregation_target(settings),
        shard_from=settings.route_shards_from,
        sink_tls=sink_tls,
    )
    snapshot = runner.render(gateway)
    if snapshot is None:
        raise NotFound(f"gateway {gateway!r} does not exist")
    out: dict[str, Any] = {"gateway": gateway, "revision": snapshot.revision}
    for type_url, section in SECTIONS.items():
        typed = snapshot.types.get(type_url)
        if typed is None:
            continue
        resources = []
        for name in sorted(typed.fragments):
            response = discovery_pb2.DiscoveryResponse.FromString(typed.fragments[name])
            for any_ in response.resources:
                data = MessageToDict(any_, preserving_proto_field_name=True)
                resources.append(_plain(data, redact=not show_secrets))
        out[section] = {"version": typed.version, "resources": resources}
    return out


def _plain(value: Any, *, redact: bool) -> Any:
    """A copy made of plain dicts and lists; with ``redact``, without private keys (TLS
    secrets), API keys (the api_key_auth filter) and generic secrets (an OpenID client
    secret and its cookie key)."""
    if isinstance(value, list):
        return [_plain(v, redact=redact) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if redact and key in ("private_key", "generic_secret") and isinstance(item, dict):
            out[key] = dict.fromkeys(item, REDACTED)
        elif redact and key == "credentials" and value.get("@type") == _API_KEY_AUTH:
            out[key] = [{**_plain(c, redact=False), "key": REDACTED} for c in item]
        else:
            out[key] = _plain(item, redact=redact)
    return out
