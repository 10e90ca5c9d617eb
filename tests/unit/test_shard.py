"""Route shards (translate/shard.py): the choice of key length, and that a sharded gateway
routes every request exactly as its single RouteConfiguration would."""

from __future__ import annotations

import random

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from controlplane.policy import Cluster, Gateway, OidcProvider, Route
from controlplane.translate import LISTENER, ROUTE, SCOPED, GatewayView, Translator
from controlplane.translate.route import RouteTable
from controlplane.translate.shard import (
    FALLBACK_FILTER,
    LENGTHS,
    SCOPE_HEADER,
    ShardPlan,
    choose_length,
    literal,
)

GW = Gateway(name="edge", port=8080)


def _route(name: str, cluster: str = "a", **match: object) -> Route:
    hosts = match.pop("hosts", None)
    extra = {"hosts": hosts} if hosts else {}
    return Route(
        name=name, gateways=["edge"], match=match or {"path_prefix": "/"}, cluster=cluster, **extra
    )


def _plan(routes: list[Route]) -> ShardPlan:
    plan = ShardPlan()
    for r in routes:
        plan.add(literal(r))
    return plan


def _choose(routes: list[Route], min_routes: int = 100) -> int | None:
    return choose_length(_plan(routes), len(routes), min_routes)


def _bench_like(n: int) -> list[Route]:
    return [_route(f"r{i:05d}", path_prefix=f"/r/{i:05d}") for i in range(n)]


def test_length_spreads_routes_into_small_shards() -> None:
    # 10,000 routes /r/00000..: 6 characters give 100 shards of 100 routes (sqrt(n))
    assert _choose(_bench_like(10_000), min_routes=2000) == 6
    assert _choose(_bench_like(1_000), min_routes=2000) is None  # below the threshold
    assert _choose(_bench_like(10_000), min_routes=0) is None  # sharding off


def test_no_sharding_when_a_route_has_no_literal() -> None:
    routes = _bench_like(300)
    assert _choose(routes) is not None
    assert _choose([*routes, _route("re", path_regex="^/x/[0-9]+$")]) is None
    # a catch-all is a short route like any other: in the fallback and in every shard
    assert _choose([*routes, _route("all", path_prefix="/")]) == _choose(routes)
    # every route in one shard whatever the length: not worth it
    same = [_route(f"s{i}", path="/same", hosts=[f"h{i}.example"]) for i in range(300)]
    assert _choose(same) is None


def test_keys_ignore_case() -> None:
    """Routes ignore case (ADR 0022): /R/00042-upper shares the shard of /r/00042, keyed in
    lower case (a request in another case is re-keyed in lower case by the fallback filter),
    so case variants no longer rule a length out."""
    routes = _bench_like(10_000)
    assert _choose(routes, min_routes=2000) == 6
    upper = [_route("upper", path_prefix="/R/00042-upper")]
    plan = _plan(routes + upper)
    assert plan.largest(6) == 101  # with /r/00000../r/00099
    assert choose_length(plan, 10_001, 2000) == 7  # 101 > sqrt(10,001): one more character
    plan.remove(literal(upper[0]))
    assert plan.largest(6) == 100 and choose_length(plan, 10_000, 2000) == 6


def test_a_prefix_with_a_trailing_slash_has_the_literal_without_it() -> None:
    # its twin matches the path without the slash, which must be in the same shard
    assert literal(_route("a", path_prefix="/users/")) == "/users"
    assert literal(_route("b", path="/users/")) == "/users/"  # no twin for exact "/a/"
    assert literal(_route("c", path_prefix="/")) == "/"


def test_short_literals_keep_the_length() -> None:
    """Issue 14 item 6: a route shorter than the key (``/new``, ``/r/05``, ``/``) goes to the
    fallback shard instead of shortening the key (which fell back to one table)."""
    routes = _bench_like(10_000)
    for short in ("/new", "/r/05", "/r/0", "/", "/n"):
        assert _choose([*routes, _route("s", path_prefix=short)], min_routes=2000) == 6
    # the fallback is a shard like the others: up to sqrt(n) routes, else the length whose
    # largest shard is smallest
    shorts = [_route(f"s{i}", path_prefix=f"/s{i:02d}") for i in range(100)]
    assert _choose([*routes, *shorts], min_routes=2000) == 6
    shorts += [_route(f"t{i}", path_prefix=f"/t{i:02d}") for i in range(100)]
    assert _choose([*routes, *shorts], min_routes=2000) == 6  # fallback of 200 routes
    shorts += [_route(f"u{i}", path_prefix=f"/u/{i:03d}") for i in range(300)]
    assert _choose([*routes, *shorts], min_routes=2000) == 6  # /u/ routes of 6 characters


def test_length_depends_on_the_routes_only() -> None:
    routes = _bench_like(10_000)
    assert _choose(routes[:1999], min_routes=2000) is None

    # built route by route, with detours, the plan ends where a fresh one starts
    plan = _plan(routes)
    extra = [literal(r) for r in (*_bench_like(300), _route("x", path="/r/0"))]
    for lit in extra:
        plan.add(lit)
    assert choose_length(plan, 10_301, 2000) == 7  # /r/000.. now hold 200 routes at 6
    for lit in extra:
        plan.remove(lit)
    fresh = _plan(routes)
    for n in LENGTHS:
        assert plan.largest(n) == fresh.largest(n)
    assert choose_length(plan, 10_000, 2000) == 6
    for r in routes:
        plan.remove(literal(r))
    assert plan.shortest() == 0 and all(plan.largest(n) == 0 for n in LENGTHS)


_NO_HOST = "no virtual host"


def _first_match(config: route_pb2.RouteConfiguration, host: str, path: str) -> str | None:
    """The route Envoy would pick (exact domain, else the wildcard or default host)."""
    vhosts = {d: vh for vh in config.virtual_hosts for d in vh.domains}
    vh = vhosts.get(host) or vhosts.get("*")
    if vh is None:
        return _NO_HOST
    bare = path.split("?", 1)[0]
    for r in vh.routes:
        m = r.match
        assert m.HasField("safe_regex") or not m.case_sensitive.value  # literals ignore case
        if m.HasField("safe_regex"):
            assert r.name == "gateway.path_parameters"  # no regex routes here
            if ";" in bare:
                return r.name
        elif (m.HasField("path") and m.path.lower() == bare.lower()) or (
            m.HasField("prefix") and bare.lower().startswith(m.prefix.lower())
        ):
            return None if r.name == "gateway.not_found" else r.name
    return None


def _sharded_match(
    scopes: list[scoped_route_pb2.ScopedRouteConfiguration],
    configs: dict[str, route_pb2.RouteConfiguration],
    length: int,
    host: str,
    path: str,
) -> str | None:
    """What Envoy picks: the scope of the request's key; where that names no scope or its
    table no virtual host, the fallback filter's keys (lower case if that differs, then
    the layout's fallback)."""
    by_key = {s.key.fragments[0].string_key: s.route_configuration_name for s in scopes}
    key = f"{length}{path.split('?', 1)[0][:length]}"
    tries = [key, key.lower(), f"{length}*"]
    for k in tries:
        if k in by_key:
            got = _first_match(configs[by_key[k]], host, path)
            if got != _NO_HOST:
                return got
    return None


def _random_routes(rng: random.Random, n: int) -> list[Route]:
    words = ["users", "orders", "use", "us", "admin", "api", "items", "u", "Users"]
    out = []
    for i in range(n):
        path = "/" + "/".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.3:
            path += str(rng.randint(0, 9))
        hosts = [rng.choice(["a.example", "b.example"])] if rng.random() < 0.25 else None
        kind = "path" if rng.random() < 0.3 else "path_prefix"
        out.append(_route(f"r{i}", hosts=hosts, **{kind: path}))
    # short literals: a catch-all, a host's catch-all, a short prefix and an exact path
    out.append(_route("all", path_prefix="/"))
    out.append(_route("b-all", path_prefix="/", hosts=["b.example"]))
    out.append(_route("short", path_prefix="/us"))
    out.append(_route("exact", path="/u"))
    return out


def test_sharded_routing_equals_unsharded_routing() -> None:
    """Every request, whatever its case, host or path, meets the route the single table
    gives it: short routes (shorter than the key) included, through the fallback."""
    rng = random.Random(7)
    routes = {r.name: r for r in _random_routes(rng, 400)}
    whole = Translator(shard_from=0).translate(GatewayView(GW, routes, {}))
    sharded = Translator(shard_from=50).translate(GatewayView(GW, routes, {}))
    plain = whole.message(ROUTE, "edge")
    scopes = [sharded.message(SCOPED, n) for n in sharded.by_type[SCOPED]]
    configs = {n: sharded.message(ROUTE, n) for n in sharded.by_type[ROUTE]}
    assert len(scopes) >= 4 and "edge" not in configs
    length = int(scopes[0].key.fragments[0].string_key.rstrip("*").split("/", 1)[0])
    assert length > 3  # longer than the short routes' literals
    segments = ["users", "orders", "use", "us", "usx", "admin", "api", "items", "u", "x", "0"]
    checked = matched = fallback = 0
    for upper in (0.0, 0.3):
        for _ in range(5000):
            path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(0, 4)))
            path += rng.choice(["", "1", "/", "?q=1", "7?a=/b"])
            path = "".join(c.upper() if rng.random() < upper else c for c in path)
            host = rng.choice(["a.example", "b.example", "c.example"])
            expected = _first_match(plain, host, path)
            assert _sharded_match(scopes, configs, length, host, path) == expected, (host, path)
            checked += 1
            matched += expected is not None
            fallback += expected in ("all", "b-all", "short", "exact")
    assert checked == 10_000 and matched > 2000 and fallback > 500
    for config in configs.values():
        assert list(config.request_headers_to_remove) == [SCOPE_HEADER]
        for vh in config.virtual_hosts:  # a request that found its shard is not re-keyed
            assert FALLBACK_FILTER in vh.typed_per_filter_config


def test_a_short_route_changes_no_listener_and_one_shard() -> None:
    """Issue 14 item 6: /new added to 10,000 routes: the listener is the same message, the
    fallback is the only RouteConfiguration sent, and no layout is kept for a drain."""
    routes = {r.name: r for r in _bench_like(10_000)}
    translator = Translator(shard_from=2000)
    first = translator.translate(GatewayView(GW, routes, {}))
    new = _route("new", path_prefix="/new")
    second = translator.translate(
        GatewayView(GW, {**routes, "new": new}, {}, changed_routes=frozenset({"new"}))
    )
    assert _listener_hcm(first) == _listener_hcm(second)
    changed = [
        n for n, enc in second.by_type[ROUTE].items() if enc is not first.by_type[ROUTE].get(n)
    ]
    assert changed == ["edge#6*"] and not second.late
    assert [r.name for r in second.message(ROUTE, "edge#6*").virtual_hosts[0].routes] == [
        "gateway.path_parameters",
        "new",
        "gateway.not_found",
    ]
    # a short route whose literal starts shards joins them too, in the gateway's order
    r_all = _route("r-all", path_prefix="/r/0")
    third = translator.translate(
        GatewayView(
            GW, {**routes, "new": new, "r-all": r_all}, {}, changed_routes=frozenset({"r-all"})
        )
    )
    changed = {n for n, e in third.by_type[ROUTE].items() if e is not second.by_type[ROUTE][n]}
    assert len(changed) == 101 and "edge#6*" in changed
    [vh] = third.message(ROUTE, "edge#6/r/042").virtual_hosts
    assert [r.name for r in vh.routes][-2:] == ["r-all", "gateway.not_found"]
    assert len(vh.routes) == 1 + 100 + 1 + 1
    # and leaves them again
    fourth = translator.translate(
        GatewayView(GW, {**routes, "new": new}, {}, changed_routes=frozenset({"r-all"}))
    )
    [vh] = fourth.message(ROUTE, "edge#6/r/042").virtual_hosts
    assert "r-all" not in [r.name for r in vh.routes] and len(vh.routes) == 102
    assert _listener_hcm(fourth) == _listener_hcm(first)
    chain = [f.name for f in _listener_hcm(first).http_filters]
    assert chain[0] == FALLBACK_FILTER


def _listener_hcm(resources: object) -> hcm_pb2.HttpConnectionManager:
    listener = resources.message(LISTENER, "edge")  # type: ignore[attr-defined]
    assert isinstance(listener, listener_pb2.Listener)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def test_a_change_reencodes_one_shard_and_layout_changes_keep_the_old_shards() -> None:
    routes = {r.name: r for r in _bench_like(3000)}
    translator = Translator(shard_from=2000)
    first = translator.translate(GatewayView(GW, routes, {}))
    hcm = _listener_hcm(first)
    assert hcm.WhichOneof("route_specifier") == "scoped_routes"
    mutation = hcm.early_header_mutation_extensions[0]
    assert mutation.name == "gateway.route_scope"

    moved = routes["r01500"].model_copy(update={"cluster": "b"})
    second = translator.translate(
        GatewayView(GW, {**routes, moved.name: moved}, {}, changed_routes=frozenset({moved.name}))
    )
    changed = [
        n for n, enc in second.by_type[ROUTE].items() if enc is not first.by_type[ROUTE].get(n)
    ]
    assert changed == ["edge#7/r/0150"]  # 3,000 routes: 300 shards of 10, and the fallback
    assert len(first.by_type[SCOPED]) == 301 and "edge#7*" in first.by_type[SCOPED]
    assert second.by_type[SCOPED].keys() == first.by_type[SCOPED].keys()

    # short routes outnumbering the routes of the shards of a shorter key: a new layout; the
    # old shards stay published for the connections of the listener being drained
    shorts = {f"s{i}": _route(f"s{i}", path_prefix=f"/r/{100 + i}") for i in range(120)}
    third = translator.translate(
        GatewayView(GW, {**routes, **shorts}, {}, changed_routes=frozenset(shorts))
    )
    names = set(third.by_type[SCOPED])
    assert {n for n in names if n.startswith("edge#7")} == set(first.by_type[SCOPED])
    new = {n for n in names if n.startswith("edge#6")}
    assert len(new) == 30 + 120 + 1  # /r/000../r/029, /r/100../r/219, the fallback
    assert third.message(SCOPED, "edge#6/r/015").key.fragments[0].string_key == "6/r/015"
    assert set(third.by_type[ROUTE]) == names

    # the replaced layout is kept up to date: a change shows in both layouts' shards
    back = moved.model_copy(update={"cluster": "a"})
    fourth = translator.translate(
        GatewayView(
            GW,
            {**routes, **shorts, back.name: back},
            {},
            changed_routes=frozenset({back.name}),
        )
    )
    changed = {n for n, enc in fourth.by_type[ROUTE].items() if enc is not third.by_type[ROUTE][n]}
    assert changed == {"edge#7/r/0150", "edge#6/r/015"}
    for name in changed:
        [vh] = fourth.message(ROUTE, name).virtual_hosts
        [r] = [r for r in vh.routes if r.name == "r01500"]
        assert r.route.cluster == "a"


def test_leaving_one_table_keeps_it_published_for_the_draining_listener() -> None:
    translator = Translator(shard_from=2000)
    routes = {r.name: r for r in _bench_like(1500)}
    first = translator.translate(GatewayView(GW, routes, {}))
    assert set(first.by_type[ROUTE]) == {"edge"}
    more = {r.name: r for r in _bench_like(3000)}
    second = translator.translate(GatewayView(GW, more, {}))
    assert _listener_hcm(second).WhichOneof("route_specifier") == "scoped_routes"
    assert "edge" in second.by_type[ROUTE]  # the old listener's table, with all routes
    [vh] = second.message(ROUTE, "edge").virtual_hosts
    assert len(vh.routes) == 1 + 3000 + 1  # the path-parameter guard, the final 404


def test_table_unsharded_when_threshold_not_met() -> None:
    table = RouteTable()
    routes = {r.name: r for r in _bench_like(10)}
    out = Translator().translate(GatewayView(GW, routes, {}))
    assert _listener_hcm(out).WhichOneof("route_specifier") == "rds"
    assert set(out.by_type[ROUTE]) == {"edge"} and not out.by_type[SCOPED]
    assert table.shard_length is None


def test_a_route_switching_on_a_disabled_filter_is_never_short() -> None:
    """A request re-keyed by the fallback filter gets none of the filters the chain lists
    disabled (Envoy makes its chain from the first route): a route that switches one on
    (an API key here) keeps the key no longer than its literal, and is marked so that a
    case variant re-keyed to it is refused."""
    routes = {r.name: r for r in _bench_like(10_000)}
    keyed = Route(
        name="keyed", gateways=["edge"], match={"path_prefix": "/new"}, cluster="a",
        auth={"api_key": True},
    )  # fmt: skip
    table = RouteTable()
    table.sync({**routes, "keyed": keyed})
    assert choose_length(table.shard_plan, len(table), 2000) is None  # as before: one table
    table.sync(routes)
    assert choose_length(table.shard_plan, len(table), 2000) == 6
    long_keyed = Route.model_validate(
        {**keyed.model_dump(exclude_none=True), "match": {"path_prefix": "/new/keyed"}}
    )
    out = Translator(shard_from=2000).translate(
        GatewayView(GW, {**routes, "keyed": long_keyed}, {})
    )
    [vh] = out.message(ROUTE, "edge#6/new/k").virtual_hosts
    [route] = [r for r in vh.routes if r.name == "keyed"]
    assert route.metadata.filter_metadata[FALLBACK_FILTER]["refuse"] is True
    [plain] = [r for r in out.message(ROUTE, "edge#6/r/000").virtual_hosts[0].routes][1:2]
    assert FALLBACK_FILTER not in plain.metadata.filter_metadata


@pytest.mark.parametrize(
    "extra",
    [
        {"ext_authz": {"cluster": "authz"}},
        {"auth": {"oidc": "corp"}},
    ],
    ids=["ext_authz", "oidc"],
)
def test_a_route_switching_on_a_filter_instance_is_marked_for_the_fallback(
    extra: dict[str, object],
) -> None:
    """The same for filters listed as several instances (an authorization service, an
    OpenID login): a case variant re-keyed to such a route would skip the check."""
    routes = {r.name: r for r in _bench_like(10_000)}
    guarded = Route.model_validate(
        {
            "name": "guarded",
            "gateways": ["edge"],
            "match": {"path_prefix": "/new/guarded"},
            "cluster": "a",
            **extra,
        }
    )
    oidc = OidcProvider(
        name="corp",
        issuer="https://login.example.com",
        authorization_endpoint="https://login.example.com/authorize",
        token_endpoint="https://login.example.com/token",
        client_id="gw",
        client_secret="s",
    )
    clusters = {"authz": Cluster(name="authz", endpoints=["10.0.0.9:9191"], protocol="http2")}
    out = Translator(shard_from=2000).translate(
        GatewayView(GW, {**routes, "guarded": guarded}, clusters, {"oidc_provider": {"corp": oidc}})
    )
    [vh] = out.message(ROUTE, "edge#6/new/g").virtual_hosts
    [route] = [r for r in vh.routes if r.name == "guarded"]
    assert route.metadata.filter_metadata[FALLBACK_FILTER]["refuse"] is True
