"""``serve`` freezes the controller's heap once started: a full garbage collection would
otherwise walk every long-lived object (~95 ms) in the middle of a push (ADR 0040)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from controlplane.controller import Controller
from controlplane.settings import Settings


def _started(tmp_path: Path, freeze: bool) -> int:
    """The collector's frozen-object count once a controller has started."""
    controller = Controller(
        Settings(
            db=str(tmp_path / "g.db"),
            create_database=True,
            xds_address="127.0.0.1:0",
            health_address=None,
            admin_address=None,
            admin_token_file=str(tmp_path / "admin-token"),
            validate_mode="never",
        )
    )
    controller.freeze_heap = freeze

    async def run() -> int:
        await controller.start()
        try:
            return gc.get_freeze_count()
        finally:
            await controller.stop()

    try:
        return asyncio.run(run())
    finally:
        controller.store.close()


def test_a_started_controller_freezes_its_heap(tmp_path: Path) -> None:
    assert gc.get_freeze_count() == 0
    try:
        assert _started(tmp_path / "off", freeze=False) == 0  # embedded: left alone
        frozen = _started(tmp_path / "on", freeze=True)
        # the loaded policy, the modules' objects: far more than a handful
        assert frozen > 10_000, frozen
    finally:
        gc.unfreeze()
