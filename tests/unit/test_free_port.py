"""``free_port`` hands each parallel test worker ports of its own slot (GATEWAY_PORT_SLOT),
so two workers never pick the same port between the check and the bind."""

from __future__ import annotations

import os

import pytest

from controlplane import envoy_launcher
from controlplane.envoy_launcher import DEFAULT_PORTS, free_port


@pytest.fixture(autouse=True)
def _below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envoy_launcher, "_ephemeral_range", lambda: (32768, 60999))


@pytest.mark.parametrize(("slot", "slots"), [(0, 3), (2, 3), (1, 2)])
def test_ports_come_from_the_slot_only(
    monkeypatch: pytest.MonkeyPatch, slot: int, slots: int
) -> None:
    monkeypatch.setenv("GATEWAY_PORT_SLOT", f"{slot}/{slots}")
    ports = [free_port() for _ in range(60)]
    assert all(p % slots == slot and 10000 <= p < 32768 for p in ports), ports
    assert len(set(ports)) == len(ports)


def test_the_suite_gives_this_worker_its_slot() -> None:
    """Under pytest-xdist (the suite's own run) the conftest set the slot of this worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        pytest.skip("not a parallel run")
    count = os.environ["PYTEST_XDIST_WORKER_COUNT"]
    assert os.environ["GATEWAY_PORT_SLOT"] == f"{worker.removeprefix('gw')}/{count}"


@pytest.mark.parametrize("value", ["3/3", "x", "1/0", "-1/2", "1/2/3"])
def test_a_malformed_slot_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GATEWAY_PORT_SLOT", value)
    with pytest.raises(ValueError, match="GATEWAY_PORT_SLOT"):
        free_port()


def test_the_defaults_are_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway given port 18081 clashes with its own default aggregation port: a run
    failed so ("aggregation_port: must differ from the gateway's other ports")."""
    monkeypatch.setenv("GATEWAY_PORT_SLOT", "1/2")
    monkeypatch.setattr(envoy_launcher, "_handed_out", set())
    # the first candidates drawn are the defaults of this slot, then any other port
    defaults = sorted(p for p in DEFAULT_PORTS if p % 2 == 1)
    draws = iter([p // 2 for p in defaults] + [12345 // 2])
    monkeypatch.setattr(envoy_launcher.random, "randrange", lambda *_: next(draws))
    assert defaults and free_port() == 12345


def test_the_reserved_ports_are_the_products_defaults() -> None:
    from controlplane.policy.gateway import Gateway
    from controlplane.settings import Settings

    defaults = {Gateway.model_fields["aggregation_port"].default}
    # the declared defaults, not Settings(): the environment may override them
    for field in ("xds_address", "health_address", "admin_address"):
        address = Settings.model_fields[field].default
        defaults.add(int(address.rsplit(":", 1)[1]))
    assert defaults <= DEFAULT_PORTS, defaults - DEFAULT_PORTS
