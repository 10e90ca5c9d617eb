"""The admin API application: every router, the error shape, the body limit, ETags."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..store import Store
from .errors import BodyLimit, install_error_handlers
from .status import HealthSource, probes

__all__ = ["DEFAULT_MAX_BODY", "create_app", "create_health_app"]

log = logging.getLogger(__name__)

#: request body limit: a 10,000-route apply document is 1.5 MB of compact JSON, 2.6 MB
#: indented (tests/unit/test_api.py); room for richer routes, far from hurting the controller
DEFAULT_MAX_BODY = 16 * 1024 * 1024
TITLE = "Gateway admin API"
VERSION = "1"

#: routers of other areas, included when their module exists
_OPTIONAL_ROUTERS = ("controlplane.api.history",)


class _ETag:
    """``ETag: "<revision>"`` on every /v1 response that did not set its own."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def with_etag(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"etag" for k, _ in headers):
                    try:
                        revision = await anyio.to_thread.run_sync(self.store.revision)
                    except Exception:  # the database is down: the answer says so already
                        revision = None
                    if revision is not None:
                        headers.append((b"etag", f'"{revision}"'.encode()))
                        message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_etag)


def create_app(
    store: Store,
    *,
    status_source: HealthSource | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    listing: Callable[[str, int], list[Any] | None] | None = None,
) -> FastAPI:
    """The admin API over ``store``; ``status_source`` (the running controller) answers
    ``/readyz`` and ``/metrics``; ``listing`` (the controller's
    :meth:`~controlplane.runner.Runner.listed`) serves lists from memory."""
    from . import analytics, declarative, policy, quota, status, tokens

    app = FastAPI(
        title=TITLE,
        version=VERSION,
        description="Manage the gateway's policy over HTTP: every operation of `gatewayctl`. "
        "Every /v1 path takes `Authorization: Bearer <token>` (`gatewayctl token add`); "
        'errors are `{"error": {"code", "message", "field"}}`; every response carries '
        '`ETag: "<revision>"`, and writes take `If-Match` with it.',
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.store = store
    #: kind, revision -> the controller's objects in memory at that revision, or None
    app.state.listing = listing
    app.state.specs = policy.SpecCache()
    install_error_handlers(app)
    for module in (policy, declarative, status, tokens, analytics, quota):
        app.include_router(module.router)
    for name in _OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        app.include_router(module.router)
    app.include_router(probes(status_source))
    from ..console import Sessions
    from ..console import router as console_router

    app.state.sessions = Sessions()
    from ..console.usage import router as usage_router

    app.include_router(console_router)
    app.include_router(usage_router)
    _security(app)
    app.add_middleware(_ETag, store=store)
    app.add_middleware(BodyLimit, limit=max_body)
    return app


def create_health_app(source: HealthSource) -> FastAPI:
    """The health port: ``/healthz``, ``/readyz``, ``/status``, ``/metrics``, no auth."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(probes(source, status=True))
    app.add_middleware(BodyLimit, limit=64 * 1024)  # GET only: no body worth reading
    return app


def _security(app: FastAPI) -> None:
    """Declare the bearer token in the OpenAPI document for every /v1 operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An admin API token (gw_...).",
        }
        error = {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "field"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": ["string", "null"]},
                        "revision": {
                            "type": "integer",
                            "description": "wait_failed only: the revision the write was "
                            "committed as, which stays (no --atomic)",
                        },
                    },
                }
            },
        }
        schema["components"].setdefault("schemas", {})["Error"] = error
        for path, operations in schema.get("paths", {}).items():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                for code, response in responses.items():
                    if code[0] in "45":
                        response["content"] = {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        }
                if path.startswith("/v1/"):
                    op["security"] = [{"bearer": []}]
                    responses.pop("422", None)  # validation errors are 400 here
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
