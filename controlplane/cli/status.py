"""``status``: which proxies run which revision, and what they rejected."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from .context import ctx_of
from .output import Format, emit, emit_table, stderr
from .wait import STALE_AFTER

__all__ = ["NOT_IN_SYNC", "register_status", "status_document"]

#: ``status`` exit code when a connected proxy is behind (beyond ``--grace``), NACKed the
#: newest configuration it was sent, or is held
NOT_IN_SYNC = 8


def register_status(app: typer.Typer) -> None:
    @app.command()
    def status(
        ctx: typer.Context,
        grace: Annotated[
            str,
            typer.Option(
                help="How long after a change a connected proxy may still run an older "
                "revision before it counts as out of sync."
            ),
        ] = "5s",
        prune: Annotated[
            bool,
            typer.Option(
                "--prune",
                help="First delete the status rows of disconnected proxies and of controllers "
                "presumed dead (silent for 15 s), instead of waiting for them to expire.",
            ),
        ] = False,
    ) -> None:
        """Every proxy: its gateway, its address, the revision it ACKed, whether it is in
        sync, its last NACK. Exits 8 when a connected proxy is out of sync (behind its
        gateway's newest revision for longer than --grace), its last answer was a NACK, or it
        is held. Disconnected proxies and dead controllers are listed until they expire
        (serve --proxy-expiry, default 1 h) or --prune removes them."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            if prune:
                c.require_local(f"{c.command_path} --prune")
            _show(api.get("/v1/status", grace=grace), c.output)
            return
        grace_s = _seconds(grace, "--grace")
        store = c.store
        now = time.time()
        if prune:
            proxies = store.expire_proxies(now, STALE_AFTER)
            dead = store.expire_controllers(now, STALE_AFTER)
            stderr.print(f"pruned {proxies} proxy and {dead} controller status row(s)")
        _show(status_document(store, grace_s, now=now), c.output)


def status_document(
    store: Any,
    grace_s: float,
    *,
    visible: Callable[[str], bool] = lambda gateway: True,
    now: float | None = None,
) -> dict[str, Any]:
    """What ``status`` shows, for the CLI on the database and for ``GET /v1/status`` alike:
    the revision, the controllers not yet expired, each gateway's build and every proxy
    (of the gateways ``visible`` admits) with its problem, if any; ``problem`` sums them."""
    now = time.time() if now is None else now
    revision = store.revision()
    expiry = _proxy_expiry()
    # a controller dead for longer than the expiry is gone, even before a live
    # controller deletes its row (or when none runs any more)
    controllers = [row for row in store.controllers() if row[3] + STALE_AFTER >= now - expiry]
    live = {cid for cid, _, _, beat in controllers if beat >= now - STALE_AFTER}
    builds = store.gateway_builds()
    rows: list[dict[str, Any]] = []
    commit_times: dict[int, float | None] = {}
    specs: dict[str, dict[str, Any] | None] = {}
    beats = {cid: beat for cid, _, _, beat in controllers}
    for p in store.proxies():
        if not visible(p.gateway):
            continue
        connected = p.connected and p.controller in live
        if not connected and _gone_since(p, beats.get(p.controller)) < now - expiry:
            continue  # expired: the controllers delete such rows (serve --proxy-expiry)
        changed = builds.get(p.gateway, (0, 0, None))[1]
        in_sync = connected and p.acked_revision >= changed and not p.hold
        problem = _problem(p, connected, changed, now, grace_s, store, commit_times)
        nack = None
        if p.nack_error:
            nack = {
                "revision": p.nack_revision,
                "type": p.nack_type,
                "objects": p.nack_objects,
                "field": _nack_field(store, p.nack_objects, p.nack_error, specs),
                "error": p.nack_error,
            }
        rows.append(
            {
                "node": p.node_id,
                "gateway": p.gateway,
                "address": _address(p.address),
                "connected": connected,
                "controller": p.controller,
                "envoy": p.envoy_version,
                "acked_revision": p.acked_revision,
                "acked_at": p.acked_at,
                "since_ack_s": None if p.acked_at is None else round(now - p.acked_at, 3),
                "in_sync": in_sync,
                "last_nack": nack,
                "hold": p.hold if connected else None,
                "problem": problem,
            }
        )
    bad = [f"proxy {r['node']} ({r['gateway']}): {r['problem']}" for r in rows if r["problem"]]
    return {
        "revision": revision,
        "controllers": [
            {"id": i, "xds_address": a, "built_revision": b, "alive": i in live}
            for i, a, b, _ in controllers
        ],
        "gateways": {
            g: {"built_revision": b, "changed_revision": ch, "error": e}
            for g, (b, ch, e) in builds.items()
            if visible(g)
        },
        "proxies": rows,
        "problem": "; ".join(bad) or None,
    }


def _show(data: dict[str, Any], fmt: Format) -> None:
    """Print a status document (local, or the admin API's ``GET /v1/status``) in the
    chosen format; exit 8 when a proxy (or the document) names a problem."""
    rows: list[dict[str, Any]] = data.get("proxies") or []
    bad = [r for r in rows if r.get("problem")]
    if fmt != Format.table:
        emit(data, fmt)
        if bad or data.get("problem"):
            raise typer.Exit(NOT_IN_SYNC)
        return
    controllers = data.get("controllers") or []
    live = [x for x in controllers if x.get("alive")]
    stderr.print(
        f"policy revision {data.get('revision')}; "
        f"{len(live)} live controller(s) of {len(controllers)} known"
    )
    for gateway, build in sorted((data.get("gateways") or {}).items()):
        if build.get("error"):
            stderr.print(f"gateway {gateway}: not updated: {build['error']}", markup=False)
    if data.get("problem") and not bad:  # else each proxy's line below says it
        stderr.print(f"problem: {data['problem']}", markup=False)
    for r in rows:
        if r.get("hold"):
            stderr.print(f"proxy {r['node']}: held, sent nothing: {r['hold']}", markup=False)
    emit_table(
        [
            "NODE",
            "GATEWAY",
            "ADDRESS",
            "ENVOY",
            "CONNECTED",
            "ACKED",
            "LAST ACK",
            "IN SYNC",
            "LAST NACK",
        ],
        [
            [
                r["node"],
                r["gateway"],
                r.get("address") or "-",
                r.get("envoy"),
                "yes" if r.get("connected") else "no",
                r.get("acked_revision"),
                _ago(r.get("since_ack_s")),
                "HELD" if r.get("hold") else "yes" if r.get("in_sync") else "NO",
                _nack_text(r.get("last_nack")),
            ]
            for r in rows
        ],
    )
    for r in bad:
        stderr.print(f"proxy {r['node']} ({r['gateway']}): {r['problem']}", markup=False)
    if bad or data.get("problem"):
        raise typer.Exit(NOT_IN_SYNC)


def _seconds(value: str, option: str) -> float:
    from ..errors import PolicyInvalid
    from ..policy.common import duration_ms, parse_duration

    try:
        return duration_ms(parse_duration(value)) / 1000
    except ValueError as exc:
        raise PolicyInvalid(f"{option}: {exc}") from None


def _problem(
    p: Any,
    connected: bool,
    changed: int,
    now: float,
    grace: float,
    store: Any,
    commit_times: dict[int, float | None],
) -> str | None:
    """Why a connected proxy is not in sync, or None. A proxy that is merely behind counts
    only ``grace`` seconds after the revision it lacks was committed (pushes take time)."""
    if not connected:
        return None
    if p.hold:
        return "held"
    if p.nack_error and (p.nack_revision or 0) > p.acked_revision:
        return f"rejected revision {p.nack_revision} (NACK), runs {p.acked_revision}"
    if p.acked_revision >= changed:
        return None
    if changed not in commit_times:
        commit_times[changed] = store.revision_time(changed)
    at = commit_times[changed]
    if at is not None and now - at <= grace:
        return None
    return f"runs revision {p.acked_revision}, its gateway is at {changed}"


def _nack_text(nack: dict[str, object] | None) -> str:
    if not nack:
        return ""
    error = " ".join(str(nack["error"]).split())
    if len(error) > 160:
        error = error[:157] + "..."
    field = f": {nack['field']}" if nack.get("field") else ""
    objects = f" [{nack['objects']}{field}]" if nack["objects"] else ""
    return f"r{nack['revision']} {nack['type']}{objects}: {error}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _nack_field(
    store: Any, objects: str | None, error: str, specs: dict[str, dict[str, Any] | None]
) -> str | None:
    """The field of the first object named by the rejection that Envoy's error points at."""
    from ..xds.status import nack_field

    if not objects:
        return None
    first = objects.split(",")[0].strip()
    kind, _, name = first.partition(" ")
    if first not in specs:
        try:
            specs[first] = store.get(kind, name).spec()
        except Exception:  # deleted since: no field to name
            specs[first] = None
    spec = specs[first]
    return None if spec is None else nack_field(error, kind, spec)


def _proxy_expiry() -> float:
    """The controllers' ``--proxy-expiry`` as far as this shell knows (GATEWAY_PROXY_EXPIRY)."""
    from ..settings import Settings

    try:
        return Settings().proxy_expiry
    except ValueError:
        return Settings.model_fields["proxy_expiry"].default  # type: ignore[no-any-return]


def _gone_since(p: Any, beat: float | None) -> float:
    """When a proxy that is not connected was last known to be: its disconnect, or the
    last heartbeat of its controller (plus the time before a controller is presumed dead)."""
    if not p.connected or beat is None:
        return float(p.updated_at)
    return beat + STALE_AFTER


def _address(peer: str) -> str:
    """The proxy's address from gRPC's peer string (``ipv4:10.0.0.5:41234``,
    ``ipv6:%5B::1%5D:41234``) as ``10.0.0.5:41234`` / ``[::1]:41234``."""
    from urllib.parse import unquote

    scheme, sep, rest = peer.partition(":")
    return unquote(rest) if sep and scheme in ("ipv4", "ipv6") else peer
