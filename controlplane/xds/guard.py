"""No rollback: what a proxy reports running decides whether a controller may answer it.

Every type version a controller serves is ``<revision>-<database id>-<digest>``. Envoy
reports the version it runs in ``version_info`` of every request, including the first ones
on a new stream after a reconnect. So a controller can tell "this proxy runs revision N of
database X" and refuse to answer it with an older revision of X, or with the policy of
another database (a fresh or emptied one, a wrong file), unless that database absorbed X up
to N by a restore (its lineage). The stream is then held: no response, and Envoy keeps
serving what it has.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

__all__ = [
    "mark_switches",
    "parse_version",
    "rollback_reason",
    "type_version",
    "version_switches",
]

#: what follows a route version's digest: the switches those routes carry
#: (``Snapshot.route_switches``), so a proxy reconnecting to a controller that never sent it
#: anything says which it runs (``snapshot.first_sync_holds``)
_SWITCHES = "+on="


def type_version(revision: int, database_id: str, digest: str) -> str:
    return f"{revision}-{database_id}-{digest}"


def mark_switches(version: str, switches: frozenset[str]) -> str:
    """A route version that says which switches its routes carry (none: ``+on=``)."""
    return f"{version}{_SWITCHES}{','.join(sorted(switches))}"


def version_switches(version: str) -> frozenset[str] | None:
    """The switches a route version of ours says its routes carry; None when it says
    nothing (empty, foreign, or built before versions said it)."""
    if parse_version(version) is None:
        return None
    _, found, rest = version.partition(_SWITCHES)
    if not found:
        return None
    return frozenset(n for n in rest.split("+", 1)[0].split(",") if n)


@functools.lru_cache(maxsize=1024)
def parse_version(version: str) -> tuple[str | None, int] | None:
    """(database id or None, revision) of a version this controller (or an older one,
    ``<revision>-<digest>``) built; None for an empty or foreign version. Cached: every
    stream checks the versions its proxy runs on each request, and a fleet runs the same
    few versions."""
    parts = version.split("+", 1)[0].split("-")
    if not parts[0].isdigit() or len(parts) not in (2, 3):
        return None
    return (parts[1] or None) if len(parts) == 3 else None, int(parts[0])


def rollback_reason(
    running: str, database_id: str, revision: int, lineage: Mapping[str, int]
) -> str | None:
    """Why answering a proxy that runs ``running`` with ``revision`` of ``database_id``
    would roll it back, or None when it would not."""
    parsed = parse_version(running)
    if parsed is None:  # a fresh Envoy (empty) or a version no controller of ours built
        return None
    their_db, their_rev = parsed
    if their_db is None or their_db == database_id:
        if revision >= their_rev:
            return None
        return (
            f"proxy runs revision {their_rev}, newer than revision {revision} this controller "
            "has (an older copy of the database?)"
        )
    absorbed = lineage.get(their_db)
    if absorbed is not None and absorbed >= their_rev:
        return None
    return (
        f"proxy runs revision {their_rev} of database {their_db}, this controller serves "
        f"database {database_id} (revision {revision}): restore that database's backup "
        "(gatewayctl restore) or start serve with --allow-rollback"
    )
