"""A real Envoy held between the two responses of a push that switches the API-key expiry
check on (a gateway's first key that expires) or off (its last one revoked), over both ADS
protocols: whatever it serves in that window, the backend reads the consumer's name and
nothing else, and no key goes past the check.

The controller runs in this process (``serve`` itself, in a thread) so the
test can stop its streams after the first of the two responses: the window is then as long
as the test needs, not the microseconds it lasts between two writes. The unit test
(tests/unit/test_push_order.py) checks the order itself; this one checks that the order is
the one a real Envoy needs."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controlplane.controller import serve
from controlplane.envoy_launcher import free_port, stats
from controlplane.policy import ApiKey, Bundle, JwtProvider, Route, new_api_key
from controlplane.settings import Settings
from controlplane.store import Store
from controlplane.translate import EXTENSION, ROUTE
from controlplane.xds.delta import DeltaStream
from controlplane.xds.server import AdsStream

from .harness import Envoy, request, wait_until
from .test_auth import ISSUER, Signer

pytestmark = pytest.mark.e2e

POLICY = """
gateways:
  - {{name: public, port: {port}}}
clusters:
  - {{name: alpha, endpoints: ["127.0.0.1:{backend}"]}}
consumers:
  - {{name: acme}}
routes:
  - name: keyed
    gateway: public
    match: {{path_prefix: /keyed}}
    cluster: alpha
    auth: {{api_key: true}}
"""


class _Hold:
    """Stops the stream that writes the first RDS or ECDS response after ``arm()`` until
    ``release()``: Envoy then runs that response and not yet the other."""

    def __init__(self) -> None:
        self.armed = False
        self.types: tuple[str, ...] = (ROUTE, EXTENSION)
        self.first: str | None = None
        self.reached = threading.Event()
        self.released = threading.Event()

    def arm(self, types: tuple[str, ...] = (ROUTE, EXTENSION)) -> None:
        self.first = None
        self.types = types
        self.reached.clear()
        self.released.clear()
        self.armed = True

    def release(self) -> None:
        self.released.set()

    def wrap(self, original: Any) -> Any:
        async def respond(stream: Any, type_url: str, *args: Any) -> None:
            await original(stream, type_url, *args)
            if self.armed and type_url in self.types:
                self.armed = False
                self.first = type_url
                self.reached.set()
                await asyncio.to_thread(self.released.wait, 60)

        return respond


class _InProcess:
    """``serve`` itself on a free loopback port, in a thread of its own; stopped by
    cancellation, as the command is by a signal."""

    def __init__(self, db: str, xds_port: int | None = None) -> None:
        self.xds_port = xds_port or free_port()
        self.settings = Settings(
            db=db,
            xds_address=f"127.0.0.1:{self.xds_port}",
            health_address=None,
            admin_address=None,
            validate_mode="never",
        )
        self._started = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, name="controller", daemon=True)

    def __enter__(self) -> _InProcess:
        self._thread.start()
        if not self._started.wait(30) or self._failed is not None:
            raise RuntimeError(f"controller did not start: {self._failed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        gc.unfreeze()  # serve froze the heap it started with: this test process's

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except asyncio.CancelledError:
            pass  # stopped by __exit__
        except BaseException as exc:  # reported by __enter__
            self._failed = exc
            self._started.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        started = asyncio.Event()
        self._task = asyncio.create_task(serve(self.settings, started, hard_exit=False))
        ready = asyncio.create_task(started.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():  # failed to start: its exception goes to __enter__
            ready.cancel()
            await self._task
        self._started.set()
        await self._task


def _applied(envoy: Envoy, type_url: str) -> int:
    """How many RDS (or ECDS) updates this Envoy applied."""
    if type_url == ROUTE:
        counters = stats(envoy.admin_port, r"\.rds\..*\.update_success$")
    else:
        counters = stats(envoy.admin_port, r"^extension_config_discovery\..*\.config_reload$")
    return sum(counters.values())


def _seen_by_backend(port: int, key: str) -> tuple[int, dict[str, str]]:
    status, _headers, body = request(port, "/keyed", headers={"x-api-key": key})
    return status, (body.get("headers", {}) if isinstance(body, dict) else {})


def _check_window(port: int, keys: dict[str, str]) -> dict[str, int]:
    """Each key once: refused, or let through with the consumer's name alone."""
    out = {}
    for label, key in keys.items():
        status, headers = _seen_by_backend(port, key)
        out[label] = status
        assert status in (200, 401), (label, status)
        if status == 200:
            assert headers.get("x-consumer-id") == "acme", (label, headers)
            assert "x-gateway-key-client" not in headers, (label, headers)
    return out


def _policy(tmp_path: Path, gateway_port: int, backend: int) -> tuple[str, Store, ApiKey]:
    """The test's database: the policy above and a key of acme's that never expires."""
    db = str(tmp_path / "gateway.db")
    store = Store(db, create=True)
    policy = POLICY.format(port=gateway_port, backend=backend)
    store.apply(Bundle.from_text(policy, "policy.yaml"))
    lasting = new_api_key("acme")
    store.create(lasting)
    return db, store, lasting


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Hold]:
    h = _Hold()
    monkeypatch.setattr(AdsStream, "_respond", h.wrap(AdsStream._respond))
    monkeypatch.setattr(DeltaStream, "_respond", h.wrap(DeltaStream._respond))
    yield h
    h.release()


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def test_no_request_meets_the_expiry_switch_half_applied(  # type: ignore[no-untyped-def]
    hold: _Hold, backends, gateway_port: int, tmp_path: Path, api_type: str
) -> None:
    db, store, lasting = _policy(tmp_path, gateway_port, backends["alpha"].port)
    assert lasting.key is not None
    with _InProcess(db) as controller:
        envoy = Envoy("public", "held", controller.xds_port, tmp_path, xds_api_type=api_type)
        try:
            wait_until(lambda: _seen_by_backend(gateway_port, lasting.key or "")[0] == 200, 30)
            assert _seen_by_backend(gateway_port, lasting.key)[1]["x-consumer-id"] == "acme"

            # on: the first key that expires
            expiring = new_api_key("acme", datetime.now(UTC) + timedelta(days=1))
            assert expiring.key is not None
            applied = {t: _applied(envoy, t) for t in (ROUTE, EXTENSION)}
            hold.arm()
            store.create(expiring)
            assert hold.reached.wait(30), "no RDS or ECDS response after the new key"
            first = hold.first
            assert first is not None
            wait_until(lambda: _applied(envoy, first) > applied[first], 15)
            # held: Envoy runs the first response of the two, not the second
            assert (
                _applied(envoy, ROUTE if first == EXTENSION else EXTENSION)
                == applied[ROUTE if first == EXTENSION else EXTENSION]
            )
            during = _check_window(gateway_port, {"lasting": lasting.key, "new": expiring.key})
            assert during["lasting"] == 200
            hold.release()
            wait_until(lambda: _seen_by_backend(gateway_port, expiring.key or "")[0] == 200, 15)
            assert _check_window(gateway_port, {"new": expiring.key}) == {"new": 200}
            wait_until(lambda: all(_applied(envoy, t) > applied[t] for t in applied), 15)

            # off: the last key that expires revoked
            applied = {t: _applied(envoy, t) for t in (ROUTE, EXTENSION)}
            hold.arm()
            store.delete("api_key", expiring.name)
            assert hold.reached.wait(30), "no RDS or ECDS response after the revocation"
            first = hold.first
            assert first is not None
            wait_until(lambda: _applied(envoy, first) > applied[first], 15)
            during = _check_window(gateway_port, {"lasting": lasting.key, "revoked": expiring.key})
            assert during["lasting"] == 200
            hold.release()
            wait_until(lambda: _seen_by_backend(gateway_port, expiring.key or "")[0] == 401, 15)
            wait_until(lambda: all(_applied(envoy, t) > applied[t] for t in applied), 15)
            assert _check_window(gateway_port, {"lasting": lasting.key}) == {"lasting": 200}
        finally:
            hold.release()
            envoy.stop()
    store.close()


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def test_a_new_jwt_provider_serves_as_soon_as_the_routes_name_it(  # type: ignore[no-untyped-def]
    hold: _Hold, backends, gateway_port: int, tmp_path: Path, api_type: str
) -> None:
    """One revision makes the keyed route accept a new JWT provider and adds the first key
    that expires. Held between the routes and the key filter's credentials (the push's last
    step), Envoy already has the JWT filter's new config: a token of the new provider is
    accepted, not refused for an unknown requirement, and no key goes past the check."""
    db, store, lasting = _policy(tmp_path, gateway_port, backends["alpha"].port)
    assert lasting.key is not None
    signer = Signer("k1")
    bearer = {"authorization": f"Bearer {signer.token()}"}
    with _InProcess(db) as controller:
        envoy = Envoy("public", "held", controller.xds_port, tmp_path, xds_api_type=api_type)
        try:
            wait_until(lambda: _seen_by_backend(gateway_port, lasting.key or "")[0] == 200, 30)
            assert request(gateway_port, "/keyed", headers=bearer)[0] == 401  # no JWT yet
            keyed = store.get("route", "keyed")
            assert isinstance(keyed, Route)
            spec = {**keyed.spec(), "auth": {"api_key": True, "jwt": ["corp"]}}
            corp = JwtProvider(
                name="corp",
                issuer=ISSUER,
                audiences=["api"],
                jwks=json.dumps({"keys": [signer.jwk()]}),
            )
            expiring = new_api_key("acme", datetime.now(UTC) + timedelta(days=1))
            assert expiring.key is not None
            applied = {t: _applied(envoy, t) for t in (ROUTE, EXTENSION)}
            hold.arm((ROUTE,))
            store.apply_objects([corp, Route.model_validate(spec), expiring])
            assert hold.reached.wait(30), "no RDS response after the change"
            wait_until(lambda: _applied(envoy, ROUTE) > applied[ROUTE], 15)
            # held after the routes: the JWT filter's config came before them (one ECDS
            # update), the key filter's credentials wait for the release
            assert _applied(envoy, EXTENSION) == applied[EXTENSION] + 1
            status, _headers, body = request(gateway_port, "/keyed", headers=bearer)
            assert status == 200, (status, body)
            during = _check_window(gateway_port, {"lasting": lasting.key, "new": expiring.key})
            assert during == {"lasting": 200, "new": 401}
            hold.release()
            wait_until(lambda: _seen_by_backend(gateway_port, expiring.key or "")[0] == 200, 15)
            assert _check_window(gateway_port, {"new": expiring.key}) == {"new": 200}
            assert request(gateway_port, "/keyed", headers=bearer)[0] == 200
        finally:
            hold.release()
            envoy.stop()
    store.close()


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
@pytest.mark.parametrize("turns", ["off", "on"])
def test_a_switch_turned_while_no_controller_ran(  # type: ignore[no-untyped-def]
    hold: _Hold, backends, gateway_port: int, tmp_path: Path, api_type: str, turns: str
) -> None:
    """The controller stops; the last key that expires is revoked (``off``), or the first
    one comes (``on``); a controller starts. The Envoy asks for its routes before its
    extension configs when it reconnects. Off: it gets the credentials first and, held
    between the two answers, serves the old routes (check on) with them: the revoked key is
    refused. On: the routes first, as asked, served with the old credentials: the new key
    is not known yet. Either way the other key reaches the backend as the consumer's name
    alone, and the state after both answers is the new policy's."""
    db, store, lasting = _policy(tmp_path, gateway_port, backends["alpha"].port)
    assert lasting.key is not None
    expiring = new_api_key("acme", datetime.now(UTC) + timedelta(days=1))
    assert expiring.key is not None
    if turns == "off":
        store.create(expiring)
    first, then = (EXTENSION, ROUTE) if turns == "off" else (ROUTE, EXTENSION)
    envoy: Envoy | None = None
    try:
        with _InProcess(db) as controller:
            xds_port = controller.xds_port
            envoy = Envoy("public", "held", xds_port, tmp_path, xds_api_type=api_type)
            wait_until(lambda: _seen_by_backend(gateway_port, lasting.key or "")[0] == 200, 30)
        if turns == "off":
            store.delete("api_key", expiring.name)
            # no controller: the Envoy serves what it ran, the revoked key included
            assert _check_window(gateway_port, {"revoked": expiring.key}) == {"revoked": 200}
        else:
            store.create(expiring)
        applied = {t: _applied(envoy, t) for t in (ROUTE, EXTENSION)}
        hold.arm()
        with _InProcess(db, xds_port):
            assert hold.reached.wait(60), "no RDS or ECDS response after the reconnect"
            assert hold.first == first
            wait_until(lambda: _applied(envoy, first) > applied[first], 15)
            assert _applied(envoy, then) == applied[then]
            during = _check_window(gateway_port, {"lasting": lasting.key, "changed": expiring.key})
            assert during == {"lasting": 200, "changed": 401}
            hold.release()
            wait_until(lambda: _applied(envoy, then) > applied[then], 15)
            assert _check_window(gateway_port, {"lasting": lasting.key}) == {"lasting": 200}
            now = 401 if turns == "off" else 200
            wait_until(lambda: _seen_by_backend(gateway_port, expiring.key or "")[0] == now, 15)
            if turns == "on":
                assert _check_window(gateway_port, {"new": expiring.key}) == {"new": 200}
    finally:
        hold.release()
        if envoy is not None:
            envoy.stop()
        store.close()
