"""The analytics sink as a process of its own, and the HTML report in a real browser."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.analytics.rollup import Filter, RollupReader, Rollups, RollupWriter
from controlplane.envoy_launcher import free_port, stats

from .harness import Cli, Controller, Envoy, gatewayctl_command, wait_until
from .test_observability import get


class Sink:
    """``gatewayctl analytics-sink`` as a child process."""

    def __init__(self, cli: Cli, log_dir: Path) -> None:
        self.cli = cli
        self.port = free_port()
        self.http_port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"sink-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *gatewayctl_command(),
                "analytics-sink",
                "--address",
                f"127.0.0.1:{self.port}",
                "--http-address",
                f"127.0.0.1:{self.http_port}",
            ],
            env={**os.environ, "GATEWAY_DB": self.cli.db},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/healthz", timeout=1
                ) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_until(healthy, timeout=20, interval=0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_killing_the_sink_loses_no_request_and_ingestion_resumes(
    cli: Cli,
    controller: Controller,
    envoy_factory: Callable[..., Envoy],
    gateway_port: int,
    tmp_path: Path,
) -> None:
    sink = Sink(cli, tmp_path)
    sink.start()
    try:
        policy = {
            "gateways": [
                {
                    "name": "public",
                    "port": gateway_port,
                    "address": "127.0.0.1",
                    "analytics": {"sink": f"127.0.0.1:{sink.port}", "flush_interval": "200ms"},
                }
            ],
            "routes": [
                {
                    "name": "ping",
                    "gateway": "public",
                    "match": {"path": "/ping"},
                    "direct_response": {"status": 200, "body": "pong"},
                }
            ],
        }
        cli.run("apply", "-f", "-", input=json.dumps(policy))
        envoy = envoy_factory("public")
        wait_until(lambda: get(gateway_port, "/ping") == 200)

        def total() -> int:
            now = time.time()
            return RollupReader.open(cli.db).total_requests(Filter(now - 900, now + 60))

        def burst(n: int) -> float:
            """n requests on one keep-alive connection, every one 200; returns requests/s."""
            conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=10)
            started = time.perf_counter()
            try:
                for _ in range(n):
                    conn.request("GET", "/ping")
                    resp = conn.getresponse()
                    resp.read()
                    assert resp.status == 200
            finally:
                conn.close()
            return n / (time.perf_counter() - started)

        burst(500)
        first = wait_until(lambda: (t := total()) >= 501 and t, timeout=15)

        sink.kill()
        burst(1000)  # every request served while the sink is gone
        time.sleep(0.5)
        assert total() == first  # nothing was ingested meanwhile
        assert get(gateway_port, "/ping") == 200

        sink.start()

        # Envoy opens a new stream on its next flush; keep traffic flowing until it has
        def resumed() -> bool:
            burst(50)
            return total() > first

        wait_until(resumed, timeout=30, interval=0.2)
        written = stats(envoy.admin_port, "access_logs")
        assert any(k.endswith("logs_written") and v > 0 for k, v in written.items()), written
    finally:
        sink.stop()


def test_html_report_renders_charts_in_a_browser(cli: Cli, tmp_path: Path) -> None:
    browser = next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(b)
        ),
        None,
    )
    if browser is None:
        pytest.skip("no headless browser (apt-get install chromium; scripts/test.sh does as root)")
    cli.run("gateway", "list")  # creates the database
    now_minute = int(time.time() // 60)
    rollups = Rollups()
    for m in range(5):
        for _ in range(10 * (m + 1)):
            rollups.add((now_minute - 4 + m, "public", "api", "acme", "2xx"), 100, 200, 3.0 + m)
        rollups.add((now_minute - 4 + m, "public", "api", "globex", "5xx"), 100, 20, 40.0)
    RollupWriter(cli.db, "test").write(rollups.take())
    # the terminal chart: one line per minute, the seeded counts in it
    chart = cli.run("analytics", "chart", "--since", "10m").stdout.splitlines()
    assert chart[0].split()[:3] == ["TIME", "(UTC)", "REQUESTS"]
    counts = [int(line.split()[-3].replace(",", "")) for line in chart[1:] if "█" in line]
    assert counts == [11, 21, 31, 41, 51]

    report = tmp_path / "report.html"
    cli.run("analytics", "chart", "--since", "10m", "--html", str(report))
    page = report.read_text()
    assert "<script src" not in page and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", ""
    )  # self-contained: nothing loaded from elsewhere
    assert "<rect" not in page  # the bars are drawn by the page's script, in the browser

    home = tmp_path / "browser-home"
    home.mkdir()
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={home}",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
    )
    dom = proc.stdout
    assert 'data-rendered="true"' in dom, proc.stderr[-2000:]
    requests = re.findall(r'<rect[^>]*class="bar requests"[^>]*data-value="(\d+)"', dom)
    errors = re.findall(r'<rect[^>]*class="bar errors"[^>]*data-value="(\d+)"', dom)
    # one bar per minute of the window; the five seeded minutes carry their counts
    assert [int(v) for v in requests if int(v)] == [11, 21, 31, 41, 51]
    assert [int(v) for v in errors if int(v)] == [1, 1, 1, 1, 1]
    assert re.search(r'<polyline[^>]*class="line"', dom)
    assert len(re.findall(r'<circle[^>]*class="point"', dom)) == 5
    assert "acme" in dom and "globex" in dom
