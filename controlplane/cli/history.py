"""``history``, ``rollback``, ``audit`` and ``diff --from/--to``: the recorded revisions.

Each command is parse -> one store call -> print, so a remote (admin API) branch can sit
next to the store call. The store and policy modules are imported inside the commands (CLI
start-up stays fast).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .output import Format, emit, emit_table, stderr

if TYPE_CHECKING:
    from ..store import ObjectChange

__all__ = ["parse_since", "print_revision_diff", "register_history"]


def parse_since(value: str | None) -> float | None:
    """``--since``: a duration ago (``30m``, ``2h``, ``7d``) or an ISO 8601 time, as epoch
    seconds (controlplane/durations.py)."""
    from ..durations import since
    from ..errors import PolicyInvalid

    if value is None:
        return None
    try:
        return since(value, "--since")
    except ValueError as exc:
        raise PolicyInvalid(str(exc)) from None


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(value: Any) -> str:
    import json

    if value is None:
        return "(none)"
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def _field_changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """``field: old -> new`` per changed top-level field (whole value for create/delete)."""
    if before is None or after is None:
        return [_short(after if before is None else before)]
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            out.append(f"{key}: {_short(old)} -> {_short(new)}")
    return out


def _ns(item: dict[str, Any]) -> Any:
    """An admin API row as an object with the attributes the table code reads."""
    from types import SimpleNamespace

    row = dict(item)
    if isinstance(row.get("changes"), list):
        row["changes"] = [SimpleNamespace(**ch) for ch in row["changes"]]
    return SimpleNamespace(**row)


def _query(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _changes_data(changes: list[ObjectChange]) -> list[dict[str, Any]]:
    return [
        {"op": c.op, "kind": c.kind, "name": c.name, "before": c.before, "after": c.after}
        for c in changes
    ]


def print_revision_diff(output: Format, changes: list[ObjectChange]) -> None:
    """What ``diff --from A --to B`` prints (secret fields are digests in history)."""
    if output != Format.table:
        emit(_changes_data(changes), output)
        return
    marks = {"create": "+", "update": "~", "delete": "-"}
    for ch in changes:
        print(f"{marks[ch.op]} {ch.kind} {ch.name}")
        if ch.op == "update":
            for line in _field_changes(ch.before, ch.after):
                print(f"    {line}")


def register_history(app: typer.Typer) -> None:
    @app.command("history")
    def history_(
        ctx: typer.Context,
        kind: Annotated[
            str | None, typer.Argument(help="Only revisions touching this kind.")
        ] = None,
        name: Annotated[str | None, typer.Argument(help="... and this object.")] = None,
        limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most N revisions.")] = 50,
        before: Annotated[
            int | None, typer.Option("--before", help="Only revisions older than this one.")
        ] = None,
    ) -> None:
        """List revisions newest first: when, who, and the objects each one changed."""
        from .context import ctx_of

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:  # the server checks the kind
            query = _query(kind=kind, name=name, limit=limit, before=before)
            items = api.get("/v1/history", **query)["items"]
            if c.output != Format.table:
                emit(items, c.output)
                return
            revisions = [_ns(i) for i in items]
        else:
            kind = _check_kind(kind)
            revisions = c.store.history(kind, name, limit, before)
            if c.output != Format.table:
                emit([r.to_dict() for r in revisions], c.output)
                return
        emit_table(
            ["REVISION", "AT", "ACTOR", "CHANGES"],
            [
                [
                    r.revision,
                    _when(r.at),
                    r.actor or "-",
                    (f"[{r.note}] " if r.note else "")
                    + ", ".join(f"{ch.op} {ch.kind} {ch.name}" for ch in r.changes),
                ]
                for r in revisions
            ],
        )

    @app.command()
    def rollback(
        ctx: typer.Context,
        revision: Annotated[int, typer.Argument(help="The revision whose policy to restore.")],
        dry_run: Annotated[
            bool,
            typer.Option("--dry-run", help="Run every check of the rollback and write nothing."),
        ] = False,
        wait: Annotated[
            str | None,
            typer.Option(
                "--wait",
                metavar="[TIMEOUT]",
                help="Return once every proxy of the affected gateways runs the change "
                "(default 30s).",
            ),
        ] = None,
        expect_revision: Annotated[
            int | None,
            typer.Option(
                "--expect-revision",
                metavar="N",
                help="Refuse (exit 4, nothing written) unless the policy is still at revision N.",
            ),
        ] = None,
    ) -> None:
        """Write the policy as of REVISION as a NEW revision (history is never rewritten).
        API keys are never restored or changed (a revoked key stays revoked); an object
        whose secret the store no longer holds is left as it is and listed as skipped."""
        from .context import ctx_of, finish_change, finish_remote

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            resp = api.request(
                "POST",
                "/v1/rollback",
                body={"revision": revision, "dry_run": dry_run},
                revision=expect_revision,
                wait=None if dry_run else wait,
            ).data
            if c.output != Format.table:
                emit(resp, c.output)
            else:
                marks = {"create": "+", "update": "~", "delete": "-"}
                for ch in resp.get("changes") or []:
                    print(f"{marks.get(ch['op'], '?')} {ch['kind']} {ch['name']}")
            for s in resp.get("skipped") or []:
                stderr.print(f"skipped {s['kind']} {s['name']}: {s['reason']}", markup=False)
            count = len(resp.get("changes") or [])
            if not count:
                stderr.print(f"no changes: the policy is that of revision {revision} already")
            elif dry_run:
                stderr.print(f"dry run: {count} change(s), nothing written")
            else:
                finish_remote(resp, f"rolled back to revision {revision}: {count} change(s)", wait)
            return
        result = c.store.rollback(revision, expect_revision=expect_revision, dry_run=dry_run)
        if c.output != Format.table:
            emit(
                {
                    "revision": result.revision,
                    "dry_run": dry_run,
                    "changes": [
                        {"op": ch.op, "kind": ch.kind, "name": ch.name} for ch in result.changes
                    ],
                    "skipped": [s.__dict__ for s in result.skipped],
                },
                c.output,
            )
        else:
            print_revision_diff(Format.table, result.changes)
        for s in result.skipped:
            stderr.print(f"skipped {s.kind} {s.name}: {s.reason}", markup=False)
        if not result.changes:
            stderr.print(f"no changes: the policy is that of revision {revision} already")
        elif dry_run:
            stderr.print(f"dry run: {len(result.changes)} change(s), nothing written")
        else:
            finish_change(
                c,
                result.revision,
                f"rolled back to revision {revision}: {len(result.changes)} change(s)",
                wait,
            )

    @app.command()
    def audit(
        ctx: typer.Context,
        actor: Annotated[str | None, typer.Option(help="Only changes by this actor.")] = None,
        kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
        name: Annotated[str | None, typer.Option(help="Only objects of this name.")] = None,
        since: Annotated[
            str | None, typer.Option(help="Only since: 30m, 2h, 7d ago, or an ISO time.")
        ] = None,
        limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most N rows.")] = 100,
    ) -> None:
        """Who changed what, newest first: actor, time, revision, op, object, old -> new
        (secret values appear only as digests)."""
        from .context import ctx_of

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:  # the server checks the kind
            query = _query(actor=actor, kind=kind, name=name, since=parse_since(since), limit=limit)
            items = api.get("/v1/audit", **query)["items"]
            if c.output != Format.table:
                emit(items, c.output)
                return
            entries = [_ns(i) for i in items]
        else:
            kind = _check_kind(kind)
            entries = c.store.audit(actor, kind, name, parse_since(since), limit)
            if c.output != Format.table:
                emit([e.to_dict() for e in entries], c.output)
                return
        emit_table(
            ["AT", "ACTOR", "REVISION", "OP", "OBJECT", "CHANGE"],
            [
                [
                    _when(e.at),
                    e.actor or "-",
                    e.revision,
                    e.op,
                    f"{e.kind} {e.name}",
                    "\n".join(_field_changes(e.before, e.after))
                    if (e.before is not None or e.after is not None)
                    else "(not recorded)",
                ]
                for e in entries
            ],
        )


def _check_kind(kind: str | None) -> str | None:
    """The kind as stored (``jwt-provider`` -> ``jwt_provider``); unknown -> exit 2."""
    from ..errors import PolicyInvalid
    from ..policy import KINDS

    if kind is None:
        return None
    normal = kind.replace("-", "_")
    if normal not in KINDS:
        raise PolicyInvalid(f"kind {kind[:32]!r}: unknown (expected one of {', '.join(KINDS)})")
    return normal
