"""The xDS side: snapshots, the snapshot cache, the ADS stream server and proxy status.

The names are loaded on first use (PEP 562): a write's check imports ``xds.snapshot`` for
its consistency check, and importing the stream server with it (gRPC) would add ~9 MiB to
every validating CLI command."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import SnapshotCache
    from .server import AdsServer
    from .snapshot import Snapshot, build_snapshot
    from .status import StatusRecorder

__all__ = ["AdsServer", "Snapshot", "SnapshotCache", "StatusRecorder", "build_snapshot"]

_WHERE = {
    "AdsServer": ".server",
    "Snapshot": ".snapshot",
    "SnapshotCache": ".cache",
    "StatusRecorder": ".status",
    "build_snapshot": ".snapshot",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(where, __name__), name)
