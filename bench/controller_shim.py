"""``gatewayctl`` with garbage-collector instrumentation, for diagnosis only.

``python -m bench.controller_shim serve ...`` runs exactly ``gatewayctl serve ...`` after
installing a ``gc.callbacks`` hook that appends one line per full (generation 2) collection
to ``$BENCH_GC_LOG``: ``<unix time of the end> <pause in ms> <objects collected>``.

With ``BENCH_GC_FREEZE=1`` it also calls ``gc.collect(); gc.freeze()`` once the controller
has loaded its state (by wrapping ``Runner.load`` from the outside) and again on every
SIGUSR1 (the benchmark sends one after its bulk load is live): an experiment showing what
moving the long-lived policy objects out of the collector's reach would change. The
controller's code is not modified either way.

With ``BENCH_PROFILE=FILE`` a SIGUSR2 starts a CPU profile of every thread (yappi, installed
separately: ``pip install yappi``) and the next one writes it to FILE (pstat) and FILE.txt.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any


def _install_gc_log(path: str) -> None:
    out = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            pause = (time.perf_counter() - started[0]) * 1000
            out.write(f"{time.time():.6f} {pause:.3f} {info['collected']}\n")

    gc.callbacks.append(callback)


def _freeze_after_load() -> None:
    import signal

    from controlplane import runner

    def on_usr1(_signum: int, _frame: object) -> None:
        gc.collect()
        gc.freeze()

    signal.signal(signal.SIGUSR1, on_usr1)

    original = runner.Runner.load

    async def load(self: runner.Runner) -> None:
        await original(self)
        gc.collect()
        gc.freeze()

    runner.Runner.load = load  # type: ignore[method-assign]


def _install_profile_toggle(path: str) -> None:
    """SIGUSR2 starts a CPU profile of every thread (yappi); the next SIGUSR2 stops it and
    writes ``path`` (pstat format) and ``path.txt`` (functions by total time)."""
    import signal

    import yappi  # type: ignore[import-not-found]

    def on_usr2(_signum: int, _frame: object) -> None:
        if not yappi.is_running():
            yappi.clear_stats()
            yappi.set_clock_type("cpu")
            yappi.start(builtins=False, profile_threads=True)
            return
        yappi.stop()
        stats = yappi.get_func_stats()
        stats.save(path, type="pstat")
        with open(f"{path}.txt", "w") as out:
            stats.sort("ttot").print_all(
                out=out,
                columns={0: ("name", 100), 1: ("ncall", 10), 2: ("tsub", 8), 3: ("ttot", 8)},
            )
            yappi.get_thread_stats().print_all(out=out)

    signal.signal(signal.SIGUSR2, on_usr2)


def main() -> None:
    if os.environ.get("BENCH_PROFILE"):
        _install_profile_toggle(os.environ["BENCH_PROFILE"])
    if os.environ.get("BENCH_GC_LOG"):
        _install_gc_log(os.environ["BENCH_GC_LOG"])
    if os.environ.get("BENCH_GC_FREEZE") == "1":
        _freeze_after_load()
    from controlplane.cli.main import run

    sys.argv[0] = "gatewayctl"
    run()


if __name__ == "__main__":
    main()
