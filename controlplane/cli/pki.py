"""``pki init|issue|show``: the control channel's CA and certificates (mutual TLS for xDS).

Not to be confused with ``cert``, which manages the TLS certificates gateways serve to
their clients. See ``controlplane/pki.py`` for the identity format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import PolicyInvalid
from .context import ctx_of
from .output import Format, emit, stderr

__all__ = ["register_pki"]

DirOption = Annotated[
    Path, typer.Option("--dir", help="Folder of the CA (ca.pem, ca.key, controller.pem/.key).")
]


def register_pki(app: typer.Typer) -> None:
    pki = typer.Typer(
        help="The control channel's CA and certificates (mutual TLS between Envoy and "
        "the controller).",
        no_args_is_help=True,
    )
    app.add_typer(pki, name="pki")

    @pki.command("init")
    def init(
        folder: DirOption,
        controller_host: Annotated[
            list[str] | None,
            typer.Option(
                help="Name or IP Envoys reach the controller by (XDS_HOST); repeatable "
                "[localhost, 127.0.0.1].",
            ),
        ] = None,
        days: Annotated[int, typer.Option(min=1, help="Validity of both certificates.")] = 3650,
    ) -> None:
        """Create the CA and the controller's server certificate (keys written 0600)."""
        from ..pki import init_ca

        paths = init_ca(folder, controller_host or ["localhost", "127.0.0.1"], days=days)
        for path in paths:
            print(path)
        stderr.print(
            f"serve with: --xds-tls-cert {paths[2]} --xds-tls-key {paths[3]} "
            f"--xds-client-ca {paths[0]}"
        )

    @pki.command("issue")
    def issue(
        folder: DirOption,
        gateway: Annotated[
            list[str], typer.Option(help="Gateway the Envoy may serve (node.cluster); repeatable.")
        ],
        node: Annotated[str, typer.Option(help="The node id the Envoy must use (node.id).")],
        out: Annotated[Path, typer.Option(help="Writes OUT.pem and OUT.key (0600).")],
        days: Annotated[int, typer.Option(min=1, help="Validity.")] = 365,
    ) -> None:
        """Issue an Envoy client certificate that permits these gateways and this node id."""
        from ..pki import CA_CERT, issue_client

        cert, key = issue_client(folder, gateway, node, out, days=days)
        print(cert)
        print(key)
        stderr.print(f"Envoy: XDS_TLS_CERT={cert} XDS_TLS_KEY={key} XDS_TLS_CA={folder / CA_CERT}")

    @pki.command("server")
    def server(
        folder: DirOption,
        host: Annotated[
            list[str], typer.Option(help="Name or IP Envoys reach the service by; repeatable.")
        ],
        out: Annotated[Path, typer.Option(help="Writes OUT.pem and OUT.key (0600).")],
        days: Annotated[int, typer.Option(min=1, help="Validity.")] = 365,
    ) -> None:
        """Issue a server certificate for another control-plane service (an analytics sink
        or a second controller) from the same CA."""
        from ..pki import CA_CERT, issue_server

        cert, key = issue_server(folder, host, out, days=days)
        print(cert)
        print(key)
        stderr.print(f"--tls-cert {cert} --tls-key {key} --client-ca {folder / CA_CERT}")

    @pki.command("show")
    def show(
        ctx: typer.Context,
        cert: Annotated[Path, typer.Argument(help="A PEM client certificate.")],
    ) -> None:
        """What a client certificate permits: gateways and node ids."""
        from ..pki import identity_of

        try:
            identity = identity_of(cert.read_bytes())
        except OSError as exc:
            raise PolicyInvalid(f"{cert}: cannot read: {exc.strerror}") from None
        except ValueError:
            raise PolicyInvalid(f"{cert}: not a PEM certificate") from None
        data = {
            "subject": identity.subject,
            "gateways": sorted(identity.gateways),
            "nodes": sorted(identity.nodes),
        }
        emit(data, ctx_of(ctx).output if ctx_of(ctx).output != Format.table else Format.yaml)
