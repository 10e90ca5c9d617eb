"""The xDS side: snapshots, the snapshot cache, the ADS stream server and proxy status."""

from .cache import SnapshotCache
from .server import AdsServer
from .snapshot import Snapshot, build_snapshot
from .status import StatusRecorder

__all__ = ["AdsServer", "Snapshot", "SnapshotCache", "StatusRecorder", "build_snapshot"]
