"""Full garbage collections wait while a fleet runs its first syncs (xds/gcdefer.py): the
initial-sync gate defers CPython's oldest-generation collections from its first slot to
its last, and gives the thresholds back when idle or after the longest deferral."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from controlplane.xds.admission import InitialSyncGate
from controlplane.xds.gcdefer import FullCollectionDeferral


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*saved)


def test_the_gate_defers_full_collections_from_its_first_slot_to_its_last(
    thresholds: tuple[int, int, int],
) -> None:
    async def run() -> None:
        deferral = FullCollectionDeferral()
        gate = InitialSyncGate(1, slot_timeout=0, deferral=deferral)
        first = await gate.admit()
        young, middle, oldest = gc.get_threshold()
        assert (young, middle) == thresholds[:2]  # young collections go on as before
        assert oldest > 1_000_000  # the full one is out of reach
        waiting = asyncio.create_task(gate.admit())  # the bound is 1: this one queues
        await asyncio.sleep(0.01)
        first.release()  # handed on to the waiting stream: still busy
        second = await waiting
        assert gc.get_threshold()[2] > 1_000_000
        second.release()  # nobody in flight or waiting
        assert gc.get_threshold() == thresholds
        assert deferral.deferrals == 1 and not deferral.deferring

    asyncio.run(run())


def test_a_gate_busy_for_too_long_gets_full_collections_back(
    thresholds: tuple[int, int, int],
) -> None:
    deferral = FullCollectionDeferral(max_deferral=0.0)
    deferral.busy()
    assert deferral.deferring
    deferral.busy()  # a further first sync, past the longest deferral
    assert gc.get_threshold() == thresholds and not deferral.deferring
    deferral.busy()  # still the same busy period: no new deferral
    assert gc.get_threshold() == thresholds
    deferral.idle()
    deferral.busy()  # the next burst defers again
    assert deferral.deferring and deferral.deferrals == 2
    deferral.idle()
    assert gc.get_threshold() == thresholds


def test_thresholds_set_by_someone_else_are_left_alone(
    thresholds: tuple[int, int, int],
) -> None:
    deferral = FullCollectionDeferral()
    gc.set_threshold(0)  # collection switched off by its owner
    deferral.busy()
    assert not deferral.deferring and gc.get_threshold()[0] == 0
    gc.set_threshold(*thresholds)
    deferral.busy()
    gc.set_threshold(500, 5, 5)  # changed while deferred
    deferral.idle()
    assert gc.get_threshold() == (500, 5, 5)


def test_a_slot_never_given_back_does_not_defer_for_ever(
    thresholds: tuple[int, int, int],
) -> None:
    """Without a bound a slot has no timeout; a proxy that never ACKs keeps it. The
    deferral still ends after its longest time, with no further first sync to notice."""

    async def run() -> None:
        gate = InitialSyncGate(0, deferral=FullCollectionDeferral(max_deferral=0.05))
        silent = await gate.admit()
        assert gc.get_threshold()[2] > 1_000_000
        await asyncio.sleep(0.2)
        assert gc.get_threshold() == thresholds and silent.held
        silent.release()
        assert gc.get_threshold() == thresholds

    asyncio.run(run())
