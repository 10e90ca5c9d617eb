"""The translator's input: one gateway and the policy it can draw on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..policy import Cluster, Gateway, PolicyModel, Route

__all__ = ["GatewayView"]


@dataclass(frozen=True)
class GatewayView:
    """Everything one gateway's Envoys need: the gateway, its routes, the clusters by name.

    ``clusters`` may hold more than the gateway uses; translation takes only those its
    routes name. ``objects`` holds every policy object by kind and name, for features that
    draw on gateway-independent objects (identity providers, consumers, certificates).
    Mappings (not copies) let the runner pass its live indexes as they are.
    """

    gateway: Gateway
    routes: Mapping[str, Route]
    clusters: Mapping[str, Cluster]
    objects: Mapping[str, Mapping[str, PolicyModel]] = field(default_factory=dict)
    #: names of routes changed since this gateway was last translated; None: not known
    changed_routes: frozenset[str] | None = None
