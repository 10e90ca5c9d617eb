"""The parts of ``gatewayctl up`` that need no Envoy: --port on a stored gateway, the
parent-death signal of its children, the signals that stop it, its log file."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.localgw import default_envoy_log, ensure_gateway, prepare_log
from controlplane.store import Store
from controlplane.supervise import StopSignals


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "gateway.db"), create=True)
    yield s
    s.close()


def test_a_new_gateway_gets_the_port_or_8080(store: Store) -> None:
    gw, said = ensure_gateway(store, "public", None)
    assert gw.port == 8080 and said == "created gateway 'public' on 127.0.0.1:8080"
    gw, said = ensure_gateway(store, "other", 23080)
    assert gw.port == 23080 and said == "created gateway 'other' on 127.0.0.1:23080"


def test_port_moves_a_stored_gateway_in_one_recorded_change(store: Store) -> None:
    ensure_gateway(store, "public", None)
    before = store.revision()
    gw, said = ensure_gateway(store, "public", 23080)
    assert gw.port == 23080 and store.get("gateway", "public").port == 23080  # type: ignore[attr-defined]
    assert store.revision() == before + 1
    assert said is not None and said.startswith("changed gateway 'public' port 8080 -> 23080")


def test_no_port_or_the_same_port_leaves_a_stored_gateway_alone(store: Store) -> None:
    ensure_gateway(store, "public", 23080)
    before = store.revision()
    for port in (None, 23080):
        gw, said = ensure_gateway(store, "public", port)
        assert (gw.port, said) == (23080, None)
    assert store.revision() == before


def test_envoy_log_is_private_and_starts_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = default_envoy_log("public", 9901)
    assert path == tmp_path / "state" / "gatewayctl" / "envoy-public-9901.log"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.write_text("the previous run\n")
    prepare_log(path)
    assert path.read_text() == "" and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_child_dies_with_its_killed_parent(tmp_path: Path) -> None:
    """A parent started with Children.start is SIGKILLed: its child gets SIGTERM."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from controlplane.supervise import Children
                child = Children().start(["sleep", "300"])
                print(child.pid, flush=True)
                time.sleep(300)
                """
            ),
        ],
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_name_the_signal(sig: signal.Signals) -> None:
    async def main() -> str | None:
        stop = StopSignals(asyncio.get_running_loop())
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(stop.event.wait(), 10)
        return stop.name

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    # a terminal's SIGHUP, whatever the suite inherited (``nohup`` passes it down ignored,
    # and StopSignals rightly leaves an ignored SIGHUP alone)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert asyncio.run(main()) == sig.name
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


_SIGNAL_TO_A_THREAD = textwrap.dedent(
    """
    import asyncio, os, signal, sys, threading, time
    from controlplane.supervise import StopSignals

    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's, even under nohup
    seen = threading.Event()

    def worker():
        time.sleep(0.5)  # the main thread is asleep in the selector by then
        signal.pthread_kill(threading.get_ident(), signal.SIGHUP)
        if not seen.wait(float(sys.argv[1])):  # a thread's clock: no timer in the loop
            print("not seen: the loop slept on", flush=True)
            os._exit(1)

    async def main():
        stop = StopSignals(asyncio.get_running_loop())
        threading.Thread(target=worker, daemon=True).start()
        await stop.event.wait()  # nothing else is scheduled: only the signal can wake it
        seen.set()
        stop.close()
        return stop.name

    print(asyncio.run(main()))
    """
)


def test_a_signal_taken_by_another_thread_wakes_the_idle_loop() -> None:
    """The loop sleeps in its selector with no timer due; the signal lands on a worker
    thread. Without a wakeup fd the main thread (the only one that runs Python signal
    handlers) slept on until its next timer: ``up`` ignored a SIGHUP for a minute."""
    out = subprocess.run(
        [sys.executable, "-c", _SIGNAL_TO_A_THREAD, "60"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.strip() == "SIGHUP", out.stdout + out.stderr


def test_an_ignored_sighup_stays_ignored() -> None:
    """``nohup gatewayctl up``: whoever ignored SIGHUP meant it to outlive the terminal."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def main() -> None:
        StopSignals(asyncio.get_running_loop())
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN

    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGHUP, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
