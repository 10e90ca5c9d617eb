"""The docker-compose stack, run as local processes (no Docker engine here).

Same commands as the compose services (taken from docker-compose.yml itself), same bootstrap
and launcher script, same environment variables; only the host names of the containers
become 127.0.0.1, the fixed ports become ephemeral ones and the volumes folders. The
control channel is mutual TLS with the certificates the one-shot `pki` service makes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controlplane.envoy_launcher import bootstrap_dir, find_envoy_binary, free_port, wait_ready

from .harness import Cli, backend_of, gatewayctl_command, request, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def test_compose_stack_as_processes(tmp_path: Path) -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    db = str(tmp_path / "gateway.db")
    procs: list[subprocess.Popen[bytes]] = []
    ports = {
        name: free_port()
        for name in (
            "users",
            "orders",
            "xds",
            "health",
            "admin",
            "api",
            "gw",
            "aggregator",
            "parts",
        )
    }

    def spawn(argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    # volumes -> folders; the pki service's script, as compose would run it ($$ -> $)
    volumes = {v: tmp_path / v for v in ("pki-ca", "pki-controller", "pki-envoy")}
    for folder in volumes.values():
        folder.mkdir()
    pki = services["pki"]
    assert pki["entrypoint"] == ["sh", "-euc"]
    script = pki["command"][0].replace("$$", "$")
    uid = str(os.getuid())
    made = subprocess.run(
        ["sh", "-euc", script],
        env={
            **os.environ,
            "PATH": f"{Path(gatewayctl_command()[0]).parent}:{os.environ['PATH']}",
            "PKI_CA_DIR": str(volumes["pki-ca"]),
            "PKI_CONTROLLER_DIR": str(volumes["pki-controller"]),
            "PKI_ENVOY_DIR": str(volumes["pki-envoy"]),
            "PKI_CONTROLLER_UID": uid,
            "PKI_ENVOY_UID": uid,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    for name in ("pki-controller/controller.key", "pki-envoy/envoy-1.key", "pki-ca/ca.key"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert not (volumes["pki-envoy"] / "ca.key").exists()
    assert not (volumes["pki-controller"] / "ca.key").exists()

    def mounted(path: str, service: str) -> str:
        """A container path of a pki volume -> its folder here."""
        for mount in services[service]["volumes"]:
            volume, _, rest = str(mount).partition(":")
            target = rest.split(":")[0]
            if volume in volumes and path.startswith(target + "/"):
                return str(volumes[volume] / path[len(target) + 1 :])
        return path

    try:
        # demo backends: the compose command with the port swapped
        for name in ("users", "orders"):
            argv = _replace(list(services[name]["command"]), "--port", str(ports[name]))
            assert argv[:3] == ["python", "-m", "controlplane.demo.echo"]
            spawn([sys.executable, *argv[1:]], {}, name)

        # aggregation service: the compose command on loopback
        argv = list(services["aggregator"]["command"])
        argv = _replace(_replace(argv, "--port", str(ports["aggregator"])), "--host", "127.0.0.1")
        assert argv[:2] == ["gatewayctl", "aggregator"]
        spawn([*gatewayctl_command(), *argv[1:]], {}, "aggregator")

        # controller: the compose command and environment, database moved to tmp
        ctl = services["controller"]
        argv = list(ctl["command"])
        argv = _replace(argv, "--db", db)
        argv = _replace(argv, "--xds-address", f"127.0.0.1:{ports['xds']}")
        argv = _replace(argv, "--health-address", f"127.0.0.1:{ports['health']}")
        argv = _replace(argv, "--admin-address", f"127.0.0.1:{ports['api']}")
        argv = [mounted(a, "controller") for a in argv]
        assert argv[0] == "gatewayctl"
        spawn(
            [*gatewayctl_command(), *argv[1:]],
            {
                **ctl["environment"],
                "GATEWAY_DB": db,
                "GATEWAY_AGGREGATOR": f"127.0.0.1:{ports['aggregator']}",
                "GATEWAY_AGGREGATION_ADDRESS": "127.0.0.1",
            },
            "controller",
        )

        # envoy: run-envoy.sh with the compose environment
        env = {k: mounted(str(v), "envoy") for k, v in services["envoy"]["environment"].items()}
        assert services["envoy"]["command"] == ["bash", "/etc/envoy/run-envoy.sh"]
        assert env["ADMIN_ADDRESS"] == "127.0.0.1"
        env.update(
            XDS_HOST="127.0.0.1",
            XDS_PORT=str(ports["xds"]),
            ADMIN_PORT=str(ports["admin"]),
            ENVOY_BIN=find_envoy_binary(),
            ENVOY_RENDERED=str(tmp_path / "bootstrap.yaml"),
        )
        envoy = spawn(["bash", str(bootstrap_dir() / "run-envoy.sh")], env, "envoy")
        wait_ready(ports["admin"], 40, process=envoy)

        # the README's demo step: apply examples/demo.yaml (container names -> loopback)
        demo = (REPO / "examples" / "demo.yaml").read_text()
        demo = demo.replace("users:8080", f"127.0.0.1:{ports['users']}")
        demo = demo.replace("orders:8080", f"127.0.0.1:{ports['orders']}")
        demo = demo.replace("port: 8080", f"port: {ports['gw']}")
        demo = demo.replace("aggregation_port: 18081", f"aggregation_port: {ports['parts']}")
        cli = Cli(db=db)
        cli.run("apply", "-f", "-", "--wait", input=demo)

        assert backend_of(ports["gw"], "/users/42") == "users"
        status, headers, body = request(ports["gw"], "/orders?id=1")
        assert status == 200 and headers["x-backend"] == "orders"
        assert headers["x-served-by"] == "gateway" and body["path"] == "/orders?id=1"
        assert backend_of(ports["gw"], "/nothing") == 404
        # the aggregate route: both backends in one answer, through the aggregation service
        status, _, body = wait_until(
            lambda: (r := request(ports["gw"], "/overview/7"))[0] == 200 and r, 20, 0.1
        )
        assert body["user"]["path"] == "/users/7" and body["orders"]["path"] == "/orders?user=7"

        [proxy] = cli.json("status")["proxies"]
        assert proxy["node"] == env["NODE_ID"] and proxy["gateway"] == env["GATEWAY"]
        assert proxy["in_sync"]
        wait_until(lambda: envoy.poll() is None, 1)
        # ... over mutual TLS, as the certificate of the pki service permits
        ctl_log = (tmp_path / "controller.log").read_text()
        assert "over mutual TLS" in ctl_log
        assert f"authenticated as CN={env['NODE_ID']}" in ctl_log
        rendered = yaml.safe_load((tmp_path / "bootstrap.yaml").read_text())
        (xds_cluster,) = [
            c for c in rendered["static_resources"]["clusters"] if c["name"] == "xds_cluster"
        ]
        assert xds_cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
