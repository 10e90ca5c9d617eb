"""``cert add|update|list|get|delete``: TLS certificates, read from PEM files.

Private keys are written to the store and sent to Envoy, but never printed: ``list`` shows
subject, DNS names and expiry, ``get`` the same plus the chain, and the key only with
``--show-key``, on the database (``--db``) only: the admin API never returns a private key,
so a remote ``get --show-key`` is refused before anything is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import PolicyInvalid
from .context import ctx_of, finish_change, finish_remote
from .contexts import path_of
from .output import Format, emit, emit_table
from .resources import WaitOption, remote_patch

__all__ = ["register_certs"]

NameArg = Annotated[str, typer.Argument(help="Certificate name.")]


def _read(path: str | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text (PEM) file"
        raise PolicyInvalid(f"{option}: cannot read {path}: {reason}") from None


def _fields(cert: str | None, key: str | None) -> dict[str, Any]:
    out = {}
    if cert is not None:
        out["cert"] = _read(cert, "--cert")
    if key is not None:
        out["key"] = _read(key, "--key")
    return out


def _pem_yaml(data: dict[str, Any]) -> str:
    """YAML with PEM blocks as literal blocks, readable and pasteable."""
    import yaml

    class _PemDumper(yaml.SafeDumper):
        pass

    def _literal(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _PemDumper.add_representer(str, _literal)
    return yaml.dump(data, Dumper=_PemDumper, sort_keys=False)


def register_certs(app: typer.Typer) -> None:
    certs = typer.Typer(help="Manage TLS certificates (for HTTPS gateways).", no_args_is_help=True)
    app.add_typer(certs, name="cert")

    @certs.command("add")
    def add(
        ctx: typer.Context,
        name: NameArg,
        cert: Annotated[str, typer.Option(help="PEM file: the certificate, then its chain.")],
        key: Annotated[str, typer.Option(help="PEM file: the (unencrypted) private key.")],
        wait: WaitOption = None,
    ) -> None:
        """Add a certificate; gateways serve it once their tls.certificates name it."""
        c = ctx_of(ctx)
        fields = {"name": name, **_fields(cert, key)}
        api = c.remote
        if api is not None:
            resp = api.request("POST", "/v1/certificates", body=fields, wait=wait).data
            finish_remote(resp, f"certificate {name!r} created", wait)
            return
        from ..policy import parse_object

        obj = parse_object("certificate", fields)
        revision = c.store.create(obj)
        finish_change(c, revision, f"certificate {name!r} created", wait)

    @certs.command("update")
    def update(
        ctx: typer.Context,
        name: NameArg,
        cert: Annotated[
            str | None, typer.Option(help="PEM file: the new certificate chain.")
        ] = None,
        key: Annotated[str | None, typer.Option(help="PEM file: the new private key.")] = None,
        wait: WaitOption = None,
    ) -> None:
        """Rotate a certificate: Envoy serves the new one to new connections, no restart."""
        c = ctx_of(ctx)
        fields = _fields(cert, key)
        if not fields:
            raise PolicyInvalid("cert update: give --cert and/or --key")
        api = c.remote
        if api is not None:
            remote_patch(api, "certificates", "certificate", name, fields, wait)
            return
        result = c.store.update("certificate", name, lambda spec: {**spec, **fields})
        if not result.changes:
            finish_change(c, result.revision, f"certificate {name!r} unchanged", None)
        else:
            finish_change(c, result.revision, f"certificate {name!r} updated", wait)

    @certs.command("delete")
    def delete(ctx: typer.Context, name: NameArg, wait: WaitOption = None) -> None:
        """Delete a certificate no gateway uses."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            resp = api.request("DELETE", path_of("certificates", name), wait=wait).data
            finish_remote(resp, f"certificate {name!r} deleted", wait)
            return
        revision = c.store.delete("certificate", name)
        finish_change(c, revision, f"certificate {name!r} deleted", wait)

    @certs.command("get")
    def get(
        ctx: typer.Context,
        name: NameArg,
        show_key: Annotated[
            bool, typer.Option(help="Also print the private key (with --db only).")
        ] = False,
    ) -> None:
        """Show one certificate (the private key only with --show-key, and only on the
        database: through the admin API it is refused, the API never returns keys)."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            if show_key:
                raise PolicyInvalid(
                    f"cert get {name} --show-key: the admin API never returns private keys; "
                    "run it where the database is, with --db"
                )
            from ..policy.certificate import cert_summary

            spec = api.get(path_of("certificates", name))["spec"]
            data = {**cert_summary(name, spec["cert"]), "cert": spec["cert"]}
        else:
            from ..policy import Certificate

            obj = c.store.get("certificate", name)
            assert isinstance(obj, Certificate)
            data = {**obj.summary(), "cert": obj.cert}
            if show_key:
                data["key"] = obj.key
        if c.output == Format.json:
            emit(data, Format.json)
        else:  # PEM blocks as YAML literal blocks, readable and pasteable
            print(_pem_yaml(data), end="")

    @certs.command("list")
    def list_(ctx: typer.Context) -> None:
        """List certificates: subject, DNS names, expiry (never the key)."""
        c = ctx_of(ctx)
        api = c.remote
        if api is not None:
            from ..policy.certificate import cert_summary

            items = api.get("/v1/certificates")["items"]
            rows = [cert_summary(i["name"], i["spec"]["cert"]) for i in items]
        else:
            rows = [o.summary() for o in c.store.list_objects("certificate")]  # type: ignore[attr-defined]
        if c.output == Format.table:
            emit_table(
                ["NAME", "SUBJECT", "DNS NAMES", "NOT AFTER"],
                [
                    [r["name"], r["subject"], ", ".join(r["dns_names"]), r["not_after"]]
                    for r in rows
                ],
            )
        else:
            emit(rows, c.output)
