"""``apply``, ``export`` and ``diff``: the declarative workflow over whole files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import PolicyInvalid
from .context import ctx_of, finish_atomic, finish_change, finish_remote
from .output import Format, emit, stderr
from .resources import AtomicOption, WaitOption

if TYPE_CHECKING:
    from ..policy import Bundle
    from ..store import ObjectChange

__all__ = ["register_declarative"]

FileOption = Annotated[
    list[str],
    typer.Option(
        "--file",
        "-f",
        help="YAML or JSON file, a directory (its *.yaml, *.yml and *.json files in name "
        "order) or - for standard input; repeat to merge several into one change.",
    ),
]

#: the files a directory given to ``-f`` contributes
POLICY_SUFFIXES = (".yaml", ".yml", ".json")


def _files(paths: list[str]) -> list[str]:
    """``-f`` values as files: a directory becomes its policy files in name order. An empty
    directory is refused: with ``--prune`` it would delete every object."""
    out: list[str] = []
    for path in paths:
        if path != "-" and Path(path).is_dir():
            found = sorted(
                str(p) for p in Path(path).iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file()
            )
            if not found:
                raise PolicyInvalid(f"{path}: directory has no *.yaml, *.yml or *.json file")
            out.extend(found)
        else:
            out.append(path)
    if out.count("-") > 1:
        raise PolicyInvalid("-f -: standard input can be read only once")
    return out


#: the top-level key ``export --secrets`` writes API keys under (``apply --secrets`` only)
API_KEYS = "api_keys"
#: the first line of an export without ``--secrets``: what it left out
EXPORT_HEADER = (
    "# API keys are not in this file: `gatewayctl export --secrets -f FILE` includes them\n"
)


def _read_all(paths: list[str], secrets: bool = False) -> tuple[Bundle, list[Any]]:
    """Every ``-f`` file merged into one bundle, applied as one change. An object defined in
    two files is refused (naming both) rather than one silently replacing the other.
    ``api_keys`` sections (``export --secrets``) are taken only with ``secrets``: their
    keys are returned next to the bundle."""
    from ..policy import PLURALS, Bundle

    files = _files(paths)
    if len(files) == 1:
        return _read(files[0], secrets)
    seen: dict[tuple[str, str], str] = {}
    groups: dict[str, list[Any]] = {key: [] for key in PLURALS.values()}
    keys: list[Any] = []
    for path in files:
        bundle, found = _read(path, secrets)
        for key in found:
            first = seen.get(("api_key", key.name))
            seen[("api_key", key.name)] = path
            if first is not None:
                raise PolicyInvalid(f"{path}: api_key {key.name!r} is also defined in {first}")
            keys.append(key)
        source = "stdin" if path == "-" else path
        for kind, key in PLURALS.items():
            for obj in getattr(bundle, key):
                first = seen.get((kind, obj.name))
                seen[(kind, obj.name)] = source
                if first is not None:
                    raise PolicyInvalid(f"{source}: {kind} {obj.name!r} is also defined in {first}")
                groups[key].append(obj)
    merged = Bundle.model_construct(**groups)  # type: ignore[arg-type]  # validated on reading
    merged.check(references=False)
    return merged, keys


def _split_keys(text: str, source: str, secrets: bool) -> tuple[str, list[Any]]:
    """The file without its ``api_keys`` section, and those keys validated. Without
    ``secrets`` the section is refused: a file that restores credentials must say so."""
    from ..policy import parse_object
    from ..policy.loader import load_text

    if API_KEYS not in text:
        return text, []
    data = load_text(text, source)
    if not isinstance(data, dict) or API_KEYS not in data:
        return text, []
    if not secrets:
        raise PolicyInvalid(
            f"{source}: {API_KEYS}: API keys are applied only with --secrets "
            "(the file restores credentials)"
        )
    items = data.pop(API_KEYS) or []
    if not isinstance(items, list):
        raise PolicyInvalid(f"{source}: {API_KEYS}: must be a list")
    keys = []
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"{source}: {API_KEYS}[{i}]" + (f" {name!r}" if isinstance(name, str) else "")
        keys.append(parse_object("api_key", item, where))
    import json

    return json.dumps(data), keys


def _read_text(path: str) -> tuple[str, str]:
    """A ``-f`` file's UTF-8 text and its name in messages."""
    from ..policy.loader import decode

    if path == "-":
        data, source = sys.stdin.buffer.read(), "stdin"
    else:
        try:
            data, source = Path(path).read_bytes(), path
        except OSError as exc:
            raise PolicyInvalid(f"{path}: cannot read: {exc.strerror}") from None
    return decode(data, source), source


def _read_document(paths: list[str], secrets: bool = False) -> dict[str, Any]:
    """Every ``-f`` file as one declarative document for the admin API (which validates
    it): read with the policy loader (duplicate keys, depth and alias limits refused), and
    an object defined in two files refused naming both, as the local apply does. An
    ``api_keys`` section is refused without ``secrets``, in the local command's words."""
    from ..policy.loader import load_text

    merged: dict[str, list[Any]] = {}
    seen: dict[tuple[str, str], str] = {}
    for path in _files(paths):
        text, source = _read_text(path)
        doc = load_text(text, source)
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise PolicyInvalid(f"{source}: expected a mapping of kinds (routes:, clusters:, ...)")
        if API_KEYS in doc and not secrets:
            raise PolicyInvalid(
                f"{source}: {API_KEYS}: API keys are applied only with --secrets "
                "(the file restores credentials)"
            )
        for key, items in doc.items():
            if not isinstance(items, list):
                merged[key] = items  # the server names the field and why
                continue
            for obj in items:
                name = obj.get("name") if isinstance(obj, dict) else None
                if isinstance(name, str):
                    first = seen.get((key, name))
                    if first is not None:
                        raise PolicyInvalid(
                            f"{source}: {key[:-1]} {name!r} is also defined in {first}"
                        )
                    seen[(key, name)] = source
            merged.setdefault(key, []).extend(items)
    return merged


def _read(path: str, secrets: bool = False) -> tuple[Bundle, list[Any]]:
    from ..policy import Bundle

    text, source = _read_text(path)
    text, keys = _split_keys(text, source, secrets)
    # references may name objects already stored: the store checks them in the transaction
    return Bundle.from_text(text, source, self_contained=False), keys


def _describe(changes: list[dict[str, Any]], local: bool = True) -> list[str]:
    """Change lines (``+ route a``, ``~ cluster b`` with changed fields) for local changes
    (``_changes_data(..., redact=False)``) or the admin API's (already redacted)."""
    marks = {"create": "+", "update": "~", "delete": "-"}
    lines = []
    for ch in changes:
        lines.append(f"{marks.get(ch['op'], '?')} {ch['kind']} {ch['name']}")
        if ch["op"] == "update":
            before, after = ch.get("before") or {}, ch.get("after") or {}
            hidden = _secret_fields(ch["kind"]) if local else ()
            for key in sorted(set(before) | set(after)):
                old, new = before.get(key), after.get(key)
                if old != new and key in hidden:
                    lines.append(f"    {key}: (secret, changed)")
                elif old != new:
                    lines.append(f"    {key}: {_short(old)} -> {_short(new)}")
    return lines


def _short(value: Any) -> str:
    if value is None:
        return "(unset)"
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _secret_fields(kind: str) -> tuple[str, ...]:
    """Fields never printed in change summaries (a certificate's private key)."""
    from ..policy import KINDS

    return tuple(getattr(KINDS.get(kind), "secret_fields", ()))


def _redact(kind: str, spec: dict[str, Any] | None) -> dict[str, Any] | None:
    hidden = _secret_fields(kind)
    if spec is None or not hidden:
        return spec
    return {k: "(secret)" if k in hidden else v for k, v in spec.items()}


def _changes_data(changes: list[ObjectChange], redact: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "op": c.op,
            "kind": c.kind,
            "name": c.name,
            "before": _redact(c.kind, c.before) if redact else c.before,
            "after": _redact(c.kind, c.after) if redact else c.after,
        }
        for c in changes
    ]


def _print_changes(changes: list[dict[str, Any]], local: bool) -> None:
    for line in _describe(changes, local):
        print(line)


def register_declarative(app: typer.Typer) -> None:
    @app.command()
    def apply(
        ctx: typer.Context,
        file: FileOption,
        prune: Annotated[bool, typer.Option(help="Delete objects the file does not name.")] = False,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Run the whole apply (every check) and roll it back: write nothing.",
            ),
        ] = False,
        wait: WaitOption = None,
        expect_revision: Annotated[
            int | None,
            typer.Option(
                "--expect-revision",
                metavar="N",
                help="Refuse (exit 4, nothing written) unless the policy is still at "
                "revision N, the one the change was planned against.",
            ),
        ] = None,
        atomic: AtomicOption = False,
        secrets: Annotated[
            bool,
            typer.Option(
                "--secrets",
                help="Also apply the file's api_keys section (written by export --secrets).",
            ),
        ] = False,
    ) -> None:
        """Make the gateway policy match a file, all or nothing. ``--dry-run`` runs the
        whole apply, every check included, and rolls it back: same answer, same exit code."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            doc = _read_document(file, secrets)
            if atomic and not dry_run:
                wait = wait or "30s"  # the local --atomic's default wait
            resp = api.request(
                "POST",
                "/v1/apply",
                body=doc,
                query={
                    "prune": prune,
                    "dry_run": dry_run,
                    "secrets": secrets or None,
                    "atomic": atomic or None,
                },
                revision=expect_revision,
                wait=None if dry_run else wait,
                # --atomic may wait twice: for the change, then for the restoring revision
                wait_rounds=2 if atomic else 1,
            ).data
            changes = resp.get("changes") or []
            if c.output != Format.table:
                emit(
                    {"revision": resp.get("revision"), "dry_run": dry_run, "changes": changes},
                    c.output,
                )
            else:
                _print_changes(changes, local=False)
            if not changes:
                stderr.print(f"no changes (revision {resp.get('revision')})")
            elif dry_run:
                stderr.print(f"dry run: {len(changes)} change(s), nothing written")
            else:
                finish_remote(resp, f"applied {len(changes)} change(s)", wait)
            return
        from ..policy.loader import gc_paused

        with gc_paused():  # a bulk file: millions of objects that all stay alive (loader.py)
            bundle, keys = _read_all(file, secrets)
            result = c.store.apply(
                bundle, prune=prune, dry_run=dry_run, expect_revision=expect_revision, extra=keys
            )
        if c.output != Format.table:
            emit(
                {
                    "revision": result.revision,
                    "dry_run": dry_run,
                    "changes": _changes_data(result.changes),
                },
                c.output,
            )
        else:
            _print_changes(_changes_data(result.changes, redact=False), local=True)
        if not result.changes:
            stderr.print(f"no changes (revision {result.revision})")
        elif dry_run:
            stderr.print(f"dry run: {len(result.changes)} change(s), nothing written")
        elif atomic:
            finish_atomic(c, result, f"applied {len(result.changes)} change(s)", wait)
        else:
            finish_change(c, result.revision, f"applied {len(result.changes)} change(s)", wait)

    @app.command()
    def diff(
        ctx: typer.Context,
        file: Annotated[
            list[str] | None,
            typer.Option(
                "--file",
                "-f",
                help="YAML or JSON file, a directory or - for standard input; repeat to merge.",
            ),
        ] = None,
        prune: Annotated[
            bool, typer.Option(help="Also show deletions apply --prune would make.")
        ] = False,
        from_revision: Annotated[
            int | None,
            typer.Option("--from", metavar="REV", help="Compare the policy of revision REV ..."),
        ] = None,
        to_revision: Annotated[
            int | None,
            typer.Option("--to", metavar="REV", help="... with that of REV [the newest]."),
        ] = None,
    ) -> None:
        """Show what ``apply -f FILE`` would change, or (``--from A [--to B]``) what changed
        between two revisions; exit 1 when there are differences."""
        c = ctx_of(ctx)
        api = c.remote
        if from_revision is not None or to_revision is not None:
            if file:
                raise PolicyInvalid("diff: give either -f FILE or --from/--to, not both")
            if from_revision is None:
                raise PolicyInvalid("diff: --to needs --from")
            from .history import print_revision_diff

            if api is not None:
                query: dict[str, Any] = {"from": from_revision}
                if to_revision is not None:
                    query["to"] = to_revision
                from types import SimpleNamespace

                rows = api.get("/v1/history/diff", **query)["changes"]
                print_revision_diff(c.output, [SimpleNamespace(**r) for r in rows])  # type: ignore[misc]
                if rows:
                    raise typer.Exit(1)
                return
            newest = c.store.revision() if to_revision is None else to_revision
            changes = c.store.diff_revisions(from_revision, newest)
            print_revision_diff(c.output, changes)
            if changes:
                raise typer.Exit(1)
            return
        if not file:
            raise PolicyInvalid("diff: give -f FILE (or --from REV --to REV)")
        if api is not None:
            resp = api.request(
                "POST", "/v1/diff", body=_read_document(file, secrets=True), query={"prune": prune}
            ).data
            found: list[dict[str, Any]] = resp.get("changes") or []
            if c.output != Format.table:
                emit(found, c.output)
            else:
                _print_changes(found, local=False)
            if found:
                raise typer.Exit(1)
            return
        # comparing writes nothing: a file's api_keys section (export --secrets) is compared
        bundle, keys = _read_all(file, secrets=True)
        result = c.store.apply(bundle, prune=prune, dry_run=True, checks=False, extra=keys)
        if c.output != Format.table:
            emit(_changes_data(result.changes), c.output)
        else:
            _print_changes(_changes_data(result.changes, redact=False), local=True)
        if result.changes:
            raise typer.Exit(1)

    @app.command()
    def export(
        ctx: typer.Context,
        output_file: Annotated[
            str | None, typer.Option("--file", "-f", help="Write here instead of stdout.")
        ] = None,
        secrets: Annotated[
            bool,
            typer.Option(
                "--secrets",
                help="Include API keys (api_keys section; needs --file, written mode 0600); "
                "apply --secrets restores them.",
            ),
        ] = False,
    ) -> None:
        """Write all policy as one file that ``apply -f`` takes back unchanged (with
        ``--file``: created mode 0600, since it holds certificates' private keys). API keys
        only with ``--secrets``; without it the file's first line says they are left out."""
        import json

        c = ctx_of(ctx)
        if secrets and not output_file:
            raise PolicyInvalid(
                "--secrets: needs --file FILE (created mode 0600): API keys are not printed"
            )
        api = c.remote
        if api is not None:
            # secrets (private keys, API keys) only for an admin token, recorded as an event
            data = api.get("/v1/export", secrets=secrets or None)
            if c.output == Format.json:
                text = json.dumps(data, indent=2) + "\n"
            else:
                import yaml

                text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
                if not secrets:
                    text = EXPORT_HEADER + text
        else:
            data = c.store.bundle().to_data()
            if secrets:
                keys = sorted(c.store.list_objects("api_key"), key=lambda k: k.name)  # type: ignore[attr-defined]
                if keys:
                    data[API_KEYS] = [k.spec() for k in keys]
            if c.output == Format.json:
                text = json.dumps(data, indent=2) + "\n"
            else:
                import yaml

                text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
                if not secrets:
                    text = EXPORT_HEADER + text
        if output_file:  # it may hold private keys: readable by its owner only
            from ..store import write_private_file

            try:
                write_private_file(output_file, text)
            except OSError as exc:
                raise PolicyInvalid(f"--file: cannot write {output_file}: {exc.strerror}") from None
        else:
            print(text, end="")

    @app.command()
    def render(
        ctx: typer.Context,
        gateway: Annotated[str, typer.Option("--gateway", "-g", help="The gateway to render.")],
        show_secrets: Annotated[
            bool,
            typer.Option(
                "--show-secrets",
                help="Print private keys, API keys and client secrets instead of (redacted).",
            ),
        ] = False,
    ) -> None:
        """Print the exact xDS resources (clusters, endpoints, secrets, listeners, routes) a
        proxy of GATEWAY receives, translated offline from the database by the controller's
        own code; ``GATEWAY_*`` settings are read as ``serve`` reads them."""
        import logging

        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            from .contexts import path_of

            data = api.get(path_of("gateways", gateway, "render"), show_secrets=show_secrets)
            emit(data, Format.json if c.output == Format.json else Format.yaml)
            return
        from ..render import render_gateway

        # a translation failure is the command's one-line error, not also a log record
        logging.getLogger("controlplane.runner").disabled = True
        data = render_gateway(c.store, gateway, show_secrets=show_secrets)
        emit(data, Format.json if c.output == Format.json else Format.yaml)

    _ = emit
