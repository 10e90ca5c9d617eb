"""`up` without --demo after an `up --demo`: the demo route's backend lived in that earlier
process; start-up says so instead of leaving a silent 503."""

from __future__ import annotations

import socket
from pathlib import Path

from controlplane.localgw import stale_demo_note
from controlplane.policy import Cluster
from controlplane.store import Store


def _store(tmp_path: Path, endpoint: str | None) -> Store:
    store = Store(str(tmp_path / "gateway.db"), create=True)
    if endpoint is not None:
        store.apply_objects([Cluster(name="demo", endpoints=[endpoint])])
    return store


def test_a_demo_cluster_nobody_listens_on_is_named(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = _store(tmp_path, f"127.0.0.1:{port}")
    try:
        note = stale_demo_note(store)
    finally:
        store.close()
    assert note is not None and f"127.0.0.1:{port}" in note and "--demo" in note


def test_no_note_when_the_backend_answers_or_there_is_no_demo_cluster(tmp_path: Path) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        store = _store(tmp_path, f"127.0.0.1:{port}")
        try:
            assert stale_demo_note(store) is None
        finally:
            store.close()
    other = tmp_path / "other"
    other.mkdir()
    store = _store(other, None)
    try:
        assert stale_demo_note(store) is None
    finally:
        store.close()
