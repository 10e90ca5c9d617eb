"""The admin API: HTTP/JSON for every ``gatewayctl`` operation, served by the controller."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(store: Any, **options: Any) -> Any:
    """See :func:`controlplane.api.app.create_app` (imported on use: FastAPI is heavy)."""
    from .app import create_app as create

    return create(store, **options)
