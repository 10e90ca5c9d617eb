"""free_port stays out of the kernel's ephemeral range (see its docstring) and never
repeats itself."""

from __future__ import annotations

import socket

from controlplane.envoy_launcher import _ephemeral_range, free_port


def test_free_ports_are_bindable_distinct_and_below_the_ephemeral_range() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if low > 12000:
        assert all(10000 <= port < low for port in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))
