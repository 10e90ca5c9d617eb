"""``--wait``: block until every proxy of the gateways a revision changed runs it.

Everything is read from the database, where controllers record what they built and what
each proxy acknowledged, so the CLI needs no address of any controller.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import WaitFailed

if TYPE_CHECKING:
    from ..store import ApplyResult, Store

__all__ = ["STALE_AFTER", "parse_timeout", "wait_for_revision", "wait_or_revert"]

#: a controller silent for this long is presumed dead, and its proxies disconnected
STALE_AFTER = 15.0


def parse_timeout(value: str) -> float:
    from ..policy.common import duration_ms
    from ..policy.common import parse_duration as _parse_duration

    try:
        return duration_ms(_parse_duration(value)) / 1000
    except ValueError as exc:
        raise WaitFailed(f"--wait: {exc}") from None


def wait_for_revision(store: Store, revision: int, timeout: float) -> list[str]:
    """Return notes for the user; raise WaitFailed on a rejection or on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        notes, done = _check(store, revision)
        if done:
            return notes
        if time.monotonic() >= deadline:
            raise WaitFailed(f"timed out after {timeout:g}s: {'; '.join(notes)}")
        time.sleep(0.02)


def wait_or_revert(store: Store, result: ApplyResult, timeout: float) -> list[str]:
    """``--atomic`` (CLI on the database, and ``POST /v1/apply?atomic=true``): wait for the
    proxies to run ``result``; if one rejects it or they do not run it within ``timeout``,
    write the previous values of the changed objects back as a NEW revision and raise
    WaitFailed saying so (and whether the proxies run the restored revision)."""
    from ..errors import Conflict, GatewayError

    try:
        return wait_for_revision(store, result.revision, timeout)
    except WaitFailed as exc:
        try:
            undone = store.revert(result)
        except GatewayError as undo:
            what = "newer changes were written since" if isinstance(undo, Conflict) else undo
            raise WaitFailed(
                f"{exc}; the change was NOT rolled back ({what}): revision {result.revision} "
                "stays the newest"
            ) from None
        try:
            wait_for_revision(store, undone.revision, timeout)
            live = "and every connected proxy runs it"
        except WaitFailed as again:
            live = f"but not every proxy runs it yet: {again}"
        raise WaitFailed(
            f"{exc}; rolled back: revision {undone.revision} restores what revision "
            f"{result.revision} changed, {live}"
        ) from None


def _check(store: Store, revision: int) -> tuple[list[str], bool]:
    controllers = store.controllers()
    if not controllers:
        return [
            f"no controller has recorded revision {revision} (is `gatewayctl serve` running?)"
        ], False
    if max(built for _, _, built, _ in controllers) < revision:
        return [f"no controller has translated revision {revision} yet"], False
    builds = store.gateway_builds()
    # a failed gateway records the revision whose change it could not apply as its changed
    # revision: it fails this wait only if that change is this revision or a later one
    affected = sorted(g for g, (_, changed, _error) in builds.items() if changed >= revision)
    for gateway in affected:
        error = builds[gateway][2]
        if error:
            raise WaitFailed(f"gateway {gateway!r} was not updated: {error}")
    failing = [
        f"gateway {g!r} still serves an older configuration: {error}"
        for g, (_, _, error) in sorted(builds.items())
        if error
    ]
    live = {cid for cid, _, _, beat in controllers if beat >= time.time() - STALE_AFTER}
    proxies = [
        p for p in store.proxies() if p.connected and p.controller in live and p.gateway in affected
    ]
    waiting = []
    for p in proxies:
        if p.nack_revision is not None and p.nack_revision >= revision:
            culprit = f" (caused by {p.nack_objects})" if p.nack_objects else ""
            raise WaitFailed(
                f"proxy {p.node_id} of gateway {p.gateway!r} rejected {p.nack_type}{culprit}: "
                f"{_one_line(p.nack_error or '')}"
            )
        if p.acked_revision < revision:
            held = f" (held: {p.hold})" if p.hold else ""
            waiting.append(f"proxy {p.node_id} runs revision {p.acked_revision}{held}")
    if waiting:
        return waiting, False
    served = {p.gateway for p in proxies}
    notes = [f"no proxy of gateway {g!r} is connected" for g in affected if g not in served]
    return notes + failing, True


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
