"""What every admin API operation shares: the caller, If-Match, ``wait=``, the write path.

Operations are plain (synchronous) functions: FastAPI runs them in its thread pool, so the
store's blocking SQL never stalls the controller's event loop (xDS streams, status).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request

from ..errors import Conflict, GatewayError, PolicyInvalid, WaitFailed
from ..store import ApplyResult, ObjectChange, Store
from ..store.actor import acting_as
from .auth import Principal, authenticate, check_write, require_role
from .errors import ApiError

__all__ = [
    "Atomic",
    "Caller",
    "IfMatch",
    "Wait",
    "Writer",
    "change_rows",
    "get_store",
    "redact",
    "write_response",
]

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')
#: attempts at an authorized bundle write when another writer slips in between the dry run
#: and the write (only without If-Match: with it, the caller asked for exactly one revision)
_ATTEMPTS = 3


def get_store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


StoreDep = Annotated[Store, Depends(get_store)]


def _principal(
    request: Request,
    authorization: Annotated[
        str | None,
        Header(description="Bearer <token> (gatewayctl token add)", include_in_schema=False),
    ] = None,
) -> Principal:
    if authorization is None and "gw_console" in request.cookies:
        # the web console: the same operations, authenticated by its session (ADR 0042)
        from ..console.session import session_principal

        principal = session_principal(request)
        if principal is not None:
            request.state.principal = principal
            return principal
    principal = authenticate(get_store(request), authorization)
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(_principal)]


def _if_match(
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description='The revision the change was planned against, as the ETag ("N"): '
            "if the policy is at another revision the write is refused (409), nothing written.",
        ),
    ] = None,
) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return None
    match = _ETAG.match(if_match)
    if not match:
        raise ApiError(400, "invalid", 'If-Match: expected a revision as "N"', "If-Match")
    return int(match.group(1))


IfMatch = Annotated[int | None, Depends(_if_match)]


def _wait(
    wait: Annotated[
        str | None,
        Query(
            description="Answer once every connected proxy of the affected gateways runs the "
            "new revision (e.g. 30s); a NACK or a timeout is an error (wait_failed).",
            max_length=32,
        ),
    ] = None,
) -> float | None:
    if wait is None or wait == "":
        return None
    from ..policy.common import duration_ms, parse_duration

    try:
        seconds = duration_ms(parse_duration(wait)) / 1000
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "invalid", f"wait: {exc}", "wait") from None
    if seconds > 600:
        raise ApiError(400, "invalid", "wait: at most 600s", "wait")
    return seconds


Wait = Annotated[float | None, Depends(_wait)]


def redact(kind: str, spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A spec without its secret fields (a certificate's private key): never sent out."""
    from ..policy import KINDS

    hidden = getattr(KINDS.get(kind), "secret_fields", ())
    if spec is None or not hidden:
        return spec
    return {k: v for k, v in spec.items() if k not in hidden}


def change_rows(changes: list[ObjectChange], *, values: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in changes:
        row: dict[str, Any] = {"op": c.op, "kind": c.kind, "name": c.name}
        if values:
            row["before"] = redact(c.kind, c.before)
            row["after"] = redact(c.kind, c.after)
        rows.append(row)
    return rows


Atomic = Annotated[
    bool,
    Query(
        description="Wait for the proxies (wait=, default 30s); if one rejects the change or "
        "does not run it in time, restore the previous values as a new revision and answer "
        "wait_failed saying so (the CLI's --atomic)."
    ),
]


def write_response(
    store: Store,
    result: ApplyResult,
    wait: float | None,
    *,
    dry_run: bool = False,
    atomic_as: str | None = None,
) -> dict[str, Any]:
    """The contract's write answer; with ``wait``, only once the proxies run the revision.
    ``atomic_as`` (the caller's name, for ``atomic=true``): a change the proxies do not
    run is undone as a new revision written by that caller, and the answer is the error."""
    body: dict[str, Any] = {
        "revision": result.revision,
        "changes": change_rows(result.changes),
        "dry_run": dry_run,
    }
    if atomic_as is not None and result.changes and not dry_run:
        from ..cli.wait import wait_or_revert

        with acting_as(atomic_as):
            body["notes"] = wait_or_revert(store, result, 30.0 if wait is None else wait)
    elif wait is not None and result.changes and not dry_run:
        body["notes"] = wait_committed(store, result.revision, wait)
    return body


def wait_committed(store: Store, revision: int, wait: float) -> list[str]:
    """``wait_for_revision`` of a write that stays committed whatever the proxies do: its
    WaitFailed names the revision, so the error answer says the write took effect."""
    from ..cli.wait import wait_for_revision

    try:
        return wait_for_revision(store, revision, wait)
    except WaitFailed as exc:
        exc.revision = revision
        raise


class Writer:
    """Writes on behalf of the caller: role and gateway scope checked against the exact
    changes, recorded under the caller's name."""

    def __init__(self, store: Store, principal: Principal) -> None:
        self.store = store
        self.principal = principal

    def single(self, run: Callable[[], ApplyResult]) -> ApplyResult:
        """A write whose own plan already called :meth:`check` on its change."""
        require_role(self.principal, "editor")
        with acting_as(self.principal.name):
            return run()

    def check(
        self, kind: str, name: str, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> None:
        check_write(self.principal, kind, name, before, after)

    def bundle(
        self,
        run: Callable[[bool, int | None], ApplyResult],
        expect_revision: int | None,
        *,
        dry_run: bool = False,
    ) -> ApplyResult:
        """A write of many objects (apply, delete): ``run(dry_run, expect_revision)``.

        A gateway-scoped caller's bundle is first run dry to learn the exact changes; each
        is checked, then the real write is pinned to the dry run's revision, so what was
        checked is what is written (a writer in between: planned again, or 409 with
        If-Match)."""
        require_role(self.principal, "editor")
        with acting_as(self.principal.name):
            if not self.principal.gateways:  # unscoped editor or admin: every object
                return run(dry_run, expect_revision)
            for attempt in range(_ATTEMPTS):
                planned = run(True, expect_revision)
                for c in planned.changes:
                    check_write(self.principal, c.kind, c.name, c.before, c.after)
                if dry_run or not planned.changes:
                    return planned
                try:
                    return run(False, planned.revision)
                except Conflict:
                    if expect_revision is not None or attempt == _ATTEMPTS - 1:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover


def principal_writer(store: Store, principal: Principal) -> Writer:
    return Writer(store, principal)


def as_invalid(exc: GatewayError, field: str | None) -> GatewayError:
    """Attach the field a store error is about (for the JSON error's ``field``)."""
    if isinstance(exc, PolicyInvalid):
        exc.field = field  # type: ignore[attr-defined]
    return exc
