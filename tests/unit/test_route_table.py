"""The incrementally kept RouteTable always equals a translation from scratch."""

from __future__ import annotations

import random

from controlplane.policy import Gateway, Route
from controlplane.translate.route import RouteTable, route_configuration

HOSTS = ["a.example.com", "b.example.com", "c.example.com"]


def _random_route(rng: random.Random, name: str) -> Route:
    match = rng.choice(
        [
            {"path_prefix": f"/p{rng.randint(0, 5)}"},
            {"path": f"/e{rng.randint(0, 5)}"},
            {"path_regex": f"/r{rng.randint(0, 5)}/[0-9]+"},
        ]
    )
    if rng.random() < 0.3:
        match["methods"] = ["GET"]
    return Route(
        name=name,
        gateways=["public"],
        hosts=rng.sample(HOSTS, rng.randint(0, 2)) if rng.random() < 0.5 else [],
        match=match,
        priority=rng.choice([0, 0, 0, 5]),
        cluster=rng.choice(["c1", "c2", "c3"]),
    )


def test_random_changes_match_a_fresh_translation() -> None:
    rng = random.Random(7)
    gateway = Gateway(name="public", port=8080, hostnames=["a.example.com", "z.example.com"])
    table = RouteTable()
    routes: dict[str, Route] = {}
    for step in range(400):
        name = f"r{rng.randint(0, 40)}"
        if name in routes and rng.random() < 0.35:
            del routes[name]
        else:
            routes[name] = _random_route(rng, name)
        # half the time the table is told what changed, half the time it has to find out
        table.sync(dict(routes), changed=frozenset({name}) if step % 2 else None)
        assert table.encode(gateway).data == route_configuration(gateway, routes.values()).data, (
            step
        )
        used = {c for r in routes.values() for c in r.clusters()}
        assert set(table.clusters) == used
    assert len(table) == len(routes)
