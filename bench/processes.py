"""A benchmark's own processes, started from the command line as a user would.

For benchmarks that need more than :class:`bench.harness.Stack` offers (their own backends,
the aggregation service, a policy file): a work directory, child processes with their logs
in it, the controller, ``apply -f``, one Envoy of gateway ``bench``; everything is stopped
on exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from controlplane.envoy_launcher import EnvoySpec, free_port, start_envoy, wait_ready

__all__ = ["Processes", "percentile"]


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Processes:
    def __init__(self, prefix: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: list[subprocess.Popen[bytes]] = []
        # children import this checkout's code, whatever directory the run started in
        self.env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        self.db = str(self.work / "gateway.db")

    @staticmethod
    def cli() -> list[str]:
        return [sys.executable, "-m", "controlplane.cli"]

    def spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.work
            )
        self.procs.append(proc)
        return proc

    def start_controller(self, *extra: str) -> int:
        """``gatewayctl serve`` on ephemeral ports, once healthy; returns its xDS port."""
        xds, health = free_port(), free_port()
        self.spawn(
            [
                *(*self.cli(), "--db", self.db, "serve", "--create"),
                *("--xds-address", f"127.0.0.1:{xds}"),
                *("--health-address", f"127.0.0.1:{health}", "--log-level", "warning"),
                *extra,
            ],
            "controller",
        )
        self.until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1))
        return xds

    def apply(self, policy: str) -> None:
        subprocess.run(
            [*self.cli(), "--db", self.db, "apply", "-f", "-"],
            input=policy.encode(),
            check=True,
            capture_output=True,
            env=self.env,
        )

    def start_envoy(self, xds_port: int) -> subprocess.Popen[bytes]:
        """One Envoy of gateway ``bench``, ready (its admin port is ``.admin_port``)."""
        self.admin_port = free_port()
        spec = EnvoySpec(
            node_id="bench-1",
            gateway="bench",
            xds_host="127.0.0.1",
            xds_port=xds_port,
            admin_port=self.admin_port,
            log_level="warning",
        )
        envoy = start_envoy(
            spec, log_path=self.work / "envoy.log", rendered=self.work / "envoy.yaml"
        )
        self.procs.append(envoy)
        wait_ready(self.admin_port, 40, process=envoy)
        return envoy

    @staticmethod
    def until(attempt: Callable[[], object], timeout: float = 30, interval: float = 0.1) -> None:
        """Call ``attempt`` until it stops raising (re-raised after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                attempt()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(interval)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
