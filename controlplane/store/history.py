"""Revision history, audit, the policy as of a revision, and rollback.

Every write records, per object it touches, the canonical spec before and after (secret
fields replaced by a digest, see :func:`~.repository.redact_spec`), who wrote it and when
(``changes`` rows, written by ``Store._commit_in``). Nothing else is kept: the policy as of
revision N is the current policy with every recorded change after N undone, newest first.
So the history costs one row per changed object, and a rollback is an ordinary write of
that reconstructed policy as a NEW revision - history is never rewritten.

Secrets are never in the history, only their digests. A rollback therefore restores a
secret-bearing object (a certificate) only when the store still holds the secret the target
revision had (same digest); it never creates or changes an API key (a revoked or deleted key
stays gone); what it cannot restore it leaves as it is and reports as skipped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from ..errors import NotFound, PolicyInvalid
from ..policy import KINDS, parse_object, references
from .repository import (
    ObjectChange,
    Store,
    _Op,
    _secret_fields,
    _spec,
    is_redacted,
    redact_spec,
)
from .tables import Change, ControllerRow, EventRow, Meta, Resource

__all__ = [
    "AuditEntry",
    "HistoryUnavailable",
    "Retention",
    "Revision",
    "RollbackResult",
    "Skipped",
    "audit",
    "diff_revisions",
    "history",
    "parse_retention",
    "policy_at",
    "prune_history",
    "rollback",
]

#: what ``serve --history-retention`` keeps by default: a year of revisions
DEFAULT_RETENTION = "365d"
#: the event kind a rollback records next to its revision (``history`` shows it)
ROLLBACK_EVENT = "rollback"
_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


class HistoryUnavailable(NotFound):
    """The revision asked for is not (or no longer) in the recorded history."""


@dataclass(frozen=True)
class AuditEntry:
    """One object changed by one revision: who, when, and its value before and after."""

    revision: int
    at: float | None
    actor: str | None
    op: str
    kind: str
    name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class Revision:
    """One revision: when, by whom, what it changed (and ``note``: e.g. a rollback)."""

    revision: int
    at: float | None
    actor: str | None
    changes: list[AuditEntry] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "at": self.at,
            "actor": self.actor,
            "note": self.note,
            "changes": [{"op": c.op, "kind": c.kind, "name": c.name} for c in self.changes],
        }


@dataclass(frozen=True)
class Skipped:
    """An object a rollback left as it is, and why."""

    kind: str
    name: str
    reason: str


@dataclass(frozen=True)
class RollbackResult:
    """``revision``: the new revision written (the current one when nothing changed or on a
    dry run); ``target``: the revision whose policy it restores."""

    revision: int
    target: int
    changes: list[ObjectChange]
    skipped: list[Skipped]
    dry_run: bool


# -- reads ------------------------------------------------------------------------------------


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        int(row.revision),
        None if row.at is None else float(row.at),
        row.actor,
        row.op,
        row.kind,
        row.name,
        row.before,
        row.after,
    )


_COLUMNS = (
    Change.revision,
    Change.at,
    Change.actor,
    Change.op,
    Change.kind,
    Change.name,
    Change.before,
    Change.after,
)


def history(
    store: Store,
    kind: str | None = None,
    name: str | None = None,
    limit: int = 50,
    before_revision: int | None = None,
) -> list[Revision]:
    """Revisions newest first (those touching ``kind``/``name`` when given, with only those
    changes), at most ``limit``, older than ``before_revision`` when given (paging)."""
    with store._reader.begin() as conn:
        where = _filters(kind, name)
        revs = select(Change.revision).where(*where).distinct()
        if before_revision is not None:
            revs = revs.where(Change.revision < before_revision)
        numbers = [
            int(r)
            for r in conn.execute(revs.order_by(Change.revision.desc()).limit(limit)).scalars()
        ]
        if not numbers:
            return []
        rows = conn.execute(
            select(*_COLUMNS)
            .where(Change.revision.in_(numbers), *where)
            .order_by(Change.revision.desc(), Change.id)
        ).all()
        notes = {
            int(r or 0): d
            for r, d in conn.execute(
                select(EventRow.revision, EventRow.detail).where(
                    EventRow.kind == ROLLBACK_EVENT, EventRow.revision.in_(numbers)
                )
            )
        }
    grouped: dict[int, list[AuditEntry]] = {n: [] for n in numbers}
    for row in rows:
        grouped[int(row.revision)].append(_entry(row))
    out = []
    for n in numbers:
        entries = grouped[n]
        at = max((e.at for e in entries if e.at is not None), default=None)
        actor = next((e.actor for e in entries if e.actor), None)
        out.append(Revision(n, at, actor, entries, notes.get(n)))
    return out


def audit(
    store: Store,
    actor: str | None = None,
    kind: str | None = None,
    name: str | None = None,
    since: float | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Change rows newest first, with the object's old and new value (secrets redacted)."""
    query = select(*_COLUMNS).where(*_filters(kind, name))
    if actor is not None:
        query = query.where(Change.actor == actor)
    if since is not None:
        query = query.where(Change.at >= since)
    with store._reader.connect() as conn:
        rows = conn.execute(query.order_by(Change.id.desc()).limit(limit)).all()
    return [_entry(r) for r in rows]


def _filters(kind: str | None, name: str | None) -> list[Any]:
    where = []
    if kind is not None:
        where.append(Change.kind == kind)
    if name is not None:
        where.append(Change.name == name)
    return where


Policy = dict[tuple[str, str], dict[str, Any]]


def policy_at(store: Store, revision: int) -> Policy:
    """(kind, name) -> canonical spec, secret fields redacted, as of ``revision``.

    :class:`HistoryUnavailable` (exit 3) for a revision that does not exist yet, or one
    whose later changes are not all recorded (written before history was, or pruned)."""
    with store._reader.begin() as conn:
        newest = int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())
        current = {
            (k, n): _spec(store.secrets, k, n, *rest)
            for k, n, *rest in conn.execute(
                select(
                    Resource.kind,
                    Resource.name,
                    Resource.spec,
                    Resource.secret,
                    Resource.secret_key_id,
                )
            )
            if k in KINDS
        }
        return _reconstruct(conn, revision, newest, current)


def _reconstruct(
    conn: Connection, revision: int, newest: int, current: dict[tuple[str, str], dict[str, Any]]
) -> Policy:
    """Undo, newest first, every recorded change after ``revision`` to ``current`` (the
    full specs at ``newest``)."""
    if revision < 0 or revision > newest:
        raise HistoryUnavailable(f"revision {revision} does not exist (the newest is {newest})")
    state: Policy = {key: redact_spec(key[0], spec) or {} for key, spec in current.items()}
    if revision == newest:
        return state
    unrecorded = conn.execute(
        select(func.max(Change.revision)).where(
            Change.revision > revision, Change.recorded.is_(False)
        )
    ).scalar()
    if unrecorded is not None:
        raise HistoryUnavailable(
            f"revision {revision} cannot be reconstructed: revision {int(unrecorded)} was "
            f"written before history was recorded; the oldest revision available is "
            f"{int(unrecorded)}"
        )
    oldest = conn.execute(select(func.min(Change.revision))).scalar()
    if oldest is None or revision < int(oldest) - 1:
        available = newest if oldest is None else int(oldest) - 1
        raise HistoryUnavailable(
            f"revision {revision} is no longer in the history (pruned by --history-retention); "
            f"the oldest revision available is {available}"
        )
    rows = conn.execute(
        select(Change.kind, Change.name, Change.before)
        .where(Change.revision > revision)
        .order_by(Change.id.desc())
    ).all()
    for kind, name, before in rows:
        if before is None:
            state.pop((kind, name), None)
        else:
            state[(kind, name)] = before
    return state


def _order(key: tuple[str, str]) -> tuple[int, str]:
    return (_KIND_ORDER.get(key[0], len(_KIND_ORDER)), key[1])


def diff_policies(old: Policy, new: Policy) -> list[ObjectChange]:
    out = []
    for key in sorted(set(old) | set(new), key=_order):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        op = "create" if a is None else "delete" if b is None else "update"
        out.append(ObjectChange(op, key[0], key[1], a, b))
    return out


def diff_revisions(store: Store, a: int, b: int) -> list[ObjectChange]:
    """What changed from revision ``a`` to revision ``b`` (secret fields as digests)."""
    with store._reader.begin() as conn:
        newest = int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())
        current = {
            (k, n): _spec(store.secrets, k, n, *rest)
            for k, n, *rest in conn.execute(
                select(
                    Resource.kind,
                    Resource.name,
                    Resource.spec,
                    Resource.secret,
                    Resource.secret_key_id,
                )
            )
            if k in KINDS
        }
        return diff_policies(
            _reconstruct(conn, a, newest, current), _reconstruct(conn, b, newest, current)
        )


# -- rollback ---------------------------------------------------------------------------------


def rollback(
    store: Store,
    revision: int,
    *,
    expect_revision: int | None = None,
    dry_run: bool = False,
) -> RollbackResult:
    """Write the policy as of ``revision`` as ONE new revision, through the store's one
    write path (every check, one transaction; ``dry_run`` rolls it back).

    Secret rules: API keys are never created or changed (a revoked or deleted key stays
    so; keys created after ``revision`` are deleted, which only takes access away); an
    object with a secret field is restored only when the store holds the secret it had at
    ``revision`` (its digest matches the current value). Objects it cannot restore are left
    as they are and listed in ``skipped``; if an object the rollback writes needs one of
    them, the whole rollback is refused naming both."""
    skipped: list[Skipped] = []

    with store._writer.begin() as conn:

        def plan(current: dict[tuple[str, str], dict[str, Any]]) -> list[_Op]:
            skipped.clear()
            newest = int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())
            target = _reconstruct(conn, revision, newest - 1, current)
            return _rollback_ops(revision, target, current, skipped)

        result = store._commit_in(conn, plan, None, dry_run, expect_revision=expect_revision)
        if result.changes and not dry_run:
            conn.execute(
                insert(EventRow).values(
                    at=time.time(),
                    kind=ROLLBACK_EVENT,
                    gateway="",
                    node="",
                    revision=result.revision,
                    detail=f"rollback to revision {revision}",
                )
            )
    return RollbackResult(result.revision, revision, result.changes, skipped, dry_run)


def _rollback_ops(
    revision: int,
    target: Policy,
    current: dict[tuple[str, str], dict[str, Any]],
    skipped: list[Skipped],
) -> list[_Op]:
    ops: list[_Op] = []
    where = f"rollback to revision {revision}"
    for key in sorted(set(target) | set(current), key=_order):
        kind, name = key
        want, full = target.get(key), current.get(key)
        have = redact_spec(kind, full)
        if want == have:
            continue
        if kind == "api_key":
            if want is None:  # created after the revision: removing it only takes access away
                ops.append(("delete", kind, name, None))
            elif full is None:
                skipped.append(
                    Skipped(kind, name, "a deleted or revoked API key is never restored")
                )
            else:
                skipped.append(Skipped(kind, name, "API keys are never changed by a rollback"))
            continue
        if want is None:
            ops.append(("delete", kind, name, None))
            continue
        spec = dict(want)
        # a secret field is held when the store's current value has the digest history
        # recorded (absent: recorded without it, e.g. deleted while undecryptable)
        missing = [
            f
            for f in _secret_fields(kind)
            if (f not in spec or is_redacted(spec[f]))
            and (full is None or f not in spec or (redact_spec(kind, full) or {}).get(f) != spec[f])
            and (f in spec or (full is not None and f in full) or f in _required(kind))
        ]
        if missing:
            skipped.append(
                Skipped(
                    kind,
                    name,
                    f"its {', '.join(missing)} at revision {revision} is not held (history "
                    "keeps only a digest of secrets); left as it is",
                )
            )
            continue
        for f in _secret_fields(kind):
            if is_redacted(spec.get(f)) and full is not None:
                spec[f] = full[f]
        obj = parse_object(kind, spec, f"{where}: {kind} {name!r}")
        ops.append(("update" if full is not None else "create", kind, name, obj))
    _check_skipped_needed(where, ops, current, skipped)
    return ops


def _required(kind: str) -> set[str]:
    return {n for n, f in KINDS[kind].model_fields.items() if f.is_required()}


def _check_skipped_needed(
    where: str,
    ops: Iterable[_Op],
    current: dict[tuple[str, str], dict[str, Any]],
    skipped: list[Skipped],
) -> None:
    """An object written by the rollback that needs one it skipped (and that does not exist
    now) would dangle: refuse the whole rollback, naming both."""
    gone = {(s.kind, s.name): s.reason for s in skipped if (s.kind, s.name) not in current}
    deleted = {(k, n) for op, k, n, _ in ops if op == "delete"}
    for _op, kind, name, obj in ops:
        if obj is None:
            continue
        for ref in references(obj):
            if ref in gone:
                raise PolicyInvalid(
                    f"{where} refused: {kind} {name!r} needs {ref[0]} {ref[1]!r}, which the "
                    f"rollback cannot restore ({gone[ref]}); nothing written"
                )
    for s in skipped:
        obj_key = (s.kind, s.name)
        if obj_key not in current:
            continue
        spec = current[obj_key]
        try:
            refs = references(KINDS[s.kind].model_validate(spec))
        except Exception:
            continue
        for ref in refs:
            if ref in deleted:
                raise PolicyInvalid(
                    f"{where} refused: {s.kind} {s.name!r}, which the rollback leaves as it is "
                    f"({s.reason}), needs {ref[0]} {ref[1]!r}, which the rollback deletes; "
                    "nothing written"
                )


# -- retention --------------------------------------------------------------------------------

_RETENTION = re.compile(r"^\s*(\d{1,9})\s*(d|h|rev|revisions?)\s*$")


@dataclass(frozen=True)
class Retention:
    """Keep change rows younger than ``seconds``, or of the newest ``revisions``; neither
    set: keep everything."""

    seconds: float | None = None
    revisions: int | None = None

    def label(self) -> str:
        if self.seconds is not None:
            return f"{self.seconds / 86400:g} days"
        if self.revisions is not None:
            return f"{self.revisions} revisions"
        return "forever"


def parse_retention(value: str) -> Retention:
    """``90d``, ``48h`` (age), ``1000rev`` (count) or ``forever``; PolicyInvalid otherwise."""
    if value.strip().lower() in ("forever", "all", "none"):
        return Retention()
    m = _RETENTION.match(value.lower())
    if not m or int(m.group(1)) == 0:
        raise PolicyInvalid(
            f"--history-retention: {value[:32]!r} is not a retention; use e.g. '365d', '48h', "
            "'1000rev' or 'forever'"
        )
    n, unit = int(m.group(1)), m.group(2)
    if unit == "d":
        return Retention(seconds=n * 86400.0)
    if unit == "h":
        return Retention(seconds=n * 3600.0)
    return Retention(revisions=n)


def prune_history(
    store: Store, retention: Retention, now: float | None = None, dead_after: float = 15.0
) -> int:
    """Delete the change rows of revisions older than ``retention`` (whole revisions, so
    every revision kept stays reconstructible); never those a live controller has not
    translated yet (it reads them to catch up). Returns how many rows."""
    if store.paused or (retention.seconds is None and retention.revisions is None):
        return 0
    now = time.time() if now is None else now
    with store._writer.begin() as conn:
        newest = int(conn.execute(select(Meta.revision).where(Meta.id == 1)).scalar_one())
        if retention.revisions is not None:
            cutoff = newest - retention.revisions
        else:
            assert retention.seconds is not None
            old = conn.execute(
                select(func.max(Change.revision)).where(Change.at < now - retention.seconds)
            ).scalar()
            cutoff = -1 if old is None else int(old)
        behind = conn.execute(
            select(func.min(ControllerRow.built_revision)).where(
                ControllerRow.heartbeat_at >= now - dead_after
            )
        ).scalar()
        if behind is not None:
            cutoff = min(cutoff, int(behind))
        if cutoff < 1:
            return 0
        result = conn.execute(delete(Change).where(Change.revision <= cutoff))
    return int(result.rowcount or 0)
