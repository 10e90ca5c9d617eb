"""free_port stays out of the kernel's ephemeral range (see its docstring) and never
repeats itself."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from controlplane.envoy_launcher import (
    EnvoySpec,
    _ephemeral_range,
    free_port,
    server_info,
    start_envoy,
)


def test_free_ports_are_bindable_distinct_and_below_the_ephemeral_range() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if low > 12000:
        assert all(10000 <= port < low for port in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_an_envoy_started_with_a_rendered_path_leaves_no_bootstrap_in_the_temp_dir(
    tmp_path: Path,
) -> None:
    """Tests and benchmarks start Envoys on ephemeral admin ports: with the default location
    each left its own rendered bootstrap in the temp directory, for good."""
    spec = EnvoySpec(
        node_id=f"launch-{os.getpid()}",
        gateway="default",
        xds_host="127.0.0.1",
        xds_port=free_port(),  # nothing listens: Envoy starts and keeps retrying
        admin_port=free_port(),
        log_level="warning",
    )
    default = Path(tempfile.gettempdir()) / f"envoy-bootstrap-{spec.node_id}-{spec.admin_port}.yaml"
    rendered = tmp_path / "bootstrap.yaml"
    proc = start_envoy(spec, log_path=tmp_path / "envoy.log", rendered=rendered)
    try:
        server_info_seen = None
        deadline = time.monotonic() + 30
        while server_info_seen is None and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "envoy.log").read_text()
            try:
                server_info_seen = server_info(spec.admin_port)
            except (OSError, RuntimeError):  # not listening yet
                time.sleep(0.05)
        assert server_info_seen is not None  # Envoy runs on that file
        assert f'id: "{spec.node_id}"' in rendered.read_text()
        assert not default.exists()
    finally:
        proc.terminate()
        proc.wait(10)
