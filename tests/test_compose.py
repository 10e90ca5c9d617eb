"""The docker-compose stack, the Dockerfile and the local Envoy launcher must agree.

No Docker engine runs in CI, so the stack itself cannot be started here. Instead these
tests pin down everything that would make it diverge from what the tests exercise: the same
bootstrap and launcher script, the same Envoy version, the same ports and addresses. The
bootstrap is rendered and checked by the real Envoy binary.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.envoy_launcher import EnvoySpec, bootstrap_dir, find_envoy_binary

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENVOY_DIR = REPO / "envoy"
BOOTSTRAP = ENVOY_DIR / "bootstrap.yaml"
BOOTSTRAP_MTLS = ENVOY_DIR / "bootstrap-mtls.yaml"
RUN_ENVOY = ENVOY_DIR / "run-envoy.sh"

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------------------------------
# helpers


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _service(name: str) -> dict[str, Any]:
    services = _compose()["services"]
    assert name in services, f"service {name!r} missing from docker-compose.yml"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


def _as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _flag(argv: list[str], flag: str) -> str:
    """Value of `--flag VALUE` or `--flag=VALUE` in argv; fails the test if absent."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not found in {argv}")


def _xds_cluster(boot: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap's one cluster to the controller (others, such as the gateway's
    replicas for shared rate limits, come over EDS from it)."""
    (cluster,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == "xds_cluster"]
    assert isinstance(cluster, dict)
    return cluster


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _container_ports(ports: list[Any]) -> dict[int, int]:
    """Map container port -> published host port for short-syntax "HOST:CONTAINER" entries."""
    mapping: dict[int, int] = {}
    for entry in ports:
        parts = str(entry).split("/")[0].split(":")
        assert len(parts) >= 2, f"port {entry!r} is not published with HOST:CONTAINER"
        mapping[int(parts[-1])] = int(parts[-2])
    return mapping


def _compose_envoy_env() -> dict[str, str]:
    env = _service("envoy").get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _dockerfile_cmd() -> list[str]:
    cmd_lines = [
        line for line in DOCKERFILE.read_text().splitlines() if line.strip().startswith("CMD ")
    ]
    assert len(cmd_lines) == 1, f"expected exactly one CMD in Dockerfile, got {cmd_lines}"
    cmd = json.loads(cmd_lines[0].strip()[len("CMD ") :])
    assert isinstance(cmd, list), "Dockerfile CMD must use the exec (JSON array) form"
    return [str(a) for a in cmd]


def _envoy_version(binary: str) -> str:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    assert match, f"cannot parse Envoy version from {out!r}"
    return match.group(1)


def _render(env: dict[str, str], rendered: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run run-envoy.sh with `env`, rendering to `rendered`, passing `extra` to Envoy."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    full_env["ENVOY_RENDERED"] = str(rendered)
    return subprocess.run(
        ["bash", str(RUN_ENVOY), *extra],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=rendered.parent,
    )


# ---------------------------------------------------------------------------------------
# (a) the compose tool itself accepts the file


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_is_valid() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "neither docker-compose nor `docker compose` is installed "
            "(apt-get install -y docker-compose)"
        )
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{' '.join(cli)} config -q failed:\n{result.stderr}"


# ---------------------------------------------------------------------------------------
# (b) compose, Dockerfile, bootstrap and launcher agree


def test_compose_envoy_version_matches_test_envoy() -> None:
    image = _service("envoy")["image"]
    repo_name, _, tag = image.partition(":")
    assert repo_name == "envoyproxy/envoy", image
    tag_version = re.fullmatch(r"v(\d+\.\d+\.\d+)", tag)
    assert tag_version, f"envoy image must be pinned to an exact vX.Y.Z tag, got {image!r}"
    assert tag_version.group(1) == _envoy_version(find_envoy_binary())


def test_compose_envoy_runs_the_shared_bootstrap() -> None:
    envoy = _service("envoy")
    mounts = [str(v) for v in envoy.get("volumes", [])]
    assert "./envoy:/etc/envoy:ro" in mounts, mounts
    argv = _as_argv(envoy.get("entrypoint") or []) + _as_argv(envoy.get("command") or [])
    assert "/etc/envoy/run-envoy.sh" in argv, argv

    # The launcher used by tests and `gatewayctl up` reads the very same files.
    launcher_dir = bootstrap_dir()
    for name in ("bootstrap.yaml", "bootstrap-mtls.yaml", "run-envoy.sh"):
        assert (launcher_dir / name).read_bytes() == (ENVOY_DIR / name).read_bytes(), name


def test_xds_port_agrees_between_controller_and_envoy() -> None:
    controller = _service("controller")
    argv = _as_argv(controller["command"])
    xds_port = _port_of(_flag(argv, "--xds-address"))
    env = _compose_envoy_env()
    assert env["XDS_HOST"] == "controller"
    assert int(env["XDS_PORT"]) == xds_port

    health = _flag(argv, "--health-address")
    assert health.startswith("127.0.0.1:"), "health/metrics stay on the container's loopback"
    healthcheck = " ".join(_as_argv(controller["healthcheck"]["test"]))
    assert f"http://127.0.0.1:{_port_of(health)}/healthz" in healthcheck

    assert env["ADMIN_ADDRESS"] == "127.0.0.1", "Envoy's admin API stays on loopback"
    assert _service("envoy")["depends_on"]["controller"]["condition"] == "service_healthy"


#: control-plane and admin ports: never published on the host
CONTROL_PORTS = {18000, 18001, 18002, 18003, 9901}


def test_only_the_gateway_port_and_the_admin_api_are_published() -> None:
    published = {
        name: _container_ports(svc.get("ports", [])) for name, svc in _compose()["services"].items()
    }
    assert published.pop("envoy") == {8080: 8080}
    # the admin API: on the host's loopback only, over TLS
    assert published.pop("controller") == {18004: 18004}
    assert _service("controller")["ports"] == ["127.0.0.1:18004:18004"]
    argv = _as_argv(_service("controller")["command"])
    assert _flag(argv, "--admin-tls-cert") == "/pki/controller.pem"
    assert _flag(argv, "--admin-tls-key") == "/pki/controller.key"
    assert all(not ports for ports in published.values()), published
    for svc in _compose()["services"].values():
        assert "network_mode" not in svc, "host networking would expose every port"
        assert not set(svc.get("expose", [])) & CONTROL_PORTS


def test_the_control_channel_is_mutual_tls_with_pki_made_certificates() -> None:
    """The controller serves xDS beyond loopback only with mTLS (it would refuse to start
    otherwise), from certificates the one-shot `pki` service makes with `gatewayctl pki`."""
    argv = _as_argv(_service("controller")["command"])
    assert not _flag(argv, "--xds-address").startswith("127.")
    assert "--insecure" not in argv and "GATEWAY_INSECURE" not in _service("controller").get(
        "environment", {}
    )
    files = {f: _flag(argv, f) for f in ("--xds-tls-cert", "--xds-tls-key", "--xds-client-ca")}
    assert "pki-controller:/pki:ro" in _service("controller")["volumes"]
    assert all(path.startswith("/pki/") for path in files.values()), files
    assert _service("controller")["depends_on"]["pki"]["condition"] == (
        "service_completed_successfully"
    )

    env = _compose_envoy_env()
    assert "pki-envoy:/pki:ro" in _service("envoy")["volumes"]
    assert {env[v] for v in TLS_VARS} == {"/pki/envoy-1.pem", "/pki/envoy-1.key", "/pki/ca.pem"}

    pki = _service("pki")
    assert pki["image"] == _service("controller")["image"]
    # Envoy runs as the uid that owns its files (the image's entrypoint drops to ENVOY_UID)
    script_text = "\n".join(pki["command"])
    assert f"PKI_ENVOY_UID:-{env['ENVOY_UID']}}}" in script_text
    assert "PKI_CONTROLLER_UID:-10001}" in script_text
    assert "--uid 10001" in DOCKERFILE.read_text()
    script = "".join(_as_argv(pki["entrypoint"])[-1:]) + "\n".join(pki["command"])
    assert "gatewayctl pki init" in script and "gatewayctl pki issue" in script
    assert f"--gateway {env['GATEWAY']} --node {env['NODE_ID']}" in script
    assert "--controller-host controller" in script
    # the CA key stays in a volume no running service mounts
    assert "pki-ca:/pki-ca" in pki["volumes"]
    for name, svc in _compose()["services"].items():
        if name != "pki":
            assert not any(str(v).startswith("pki-ca:") for v in svc.get("volumes", [])), name
    assert pki.get("restart") == "no"


def test_dockerfile_cmd_matches_compose_controller() -> None:
    cmd = _dockerfile_cmd()
    compose_cmd = _as_argv(_service("controller")["command"])
    for flag in ("--xds-address", "--health-address", "--db"):
        assert _flag(cmd, flag) == _flag(compose_cmd, flag), flag
    assert cmd == compose_cmd

    text = DOCKERFILE.read_text()
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for p in line.split()}
    assert exposed == {_port_of(_flag(cmd, "--xds-address"))}
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^VOLUME\s+/data\b", text, re.M)
    assert _flag(cmd, "--db").startswith("/data/")
    assert "gateway-data:/data" in [str(v) for v in _service("controller")["volumes"]]
    assert "gateway-data" in _compose()["volumes"]


def test_demo_backends_run_the_echo_module() -> None:
    controller_image = _service("controller")["image"]
    for name in ("users", "orders"):
        svc = _service(name)
        assert svc["image"] == controller_image
        argv = _as_argv(svc["command"])
        assert argv[:3] == ["python", "-m", "controlplane.demo.echo"], argv
        assert _flag(argv, "--name") == name
    import controlplane.demo.echo as echo

    assert callable(echo.main)


def test_every_bootstrap_placeholder_is_supplied() -> None:
    placeholders = set(PLACEHOLDER.findall(BOOTSTRAP.read_text()))
    expected = {"NODE_ID", "GATEWAY", "XDS_HOST", "XDS_PORT", "ADMIN_ADDRESS", "ADMIN_PORT"}
    assert placeholders == expected | DEFAULTED
    # the ADS protocol has one default, run-envoy.sh's: compose and launcher leave it be
    placeholders -= DEFAULTED

    compose_env = _compose_envoy_env()
    assert placeholders <= set(compose_env), placeholders - set(compose_env)

    spec_env = EnvoySpec(node_id="n", gateway="g", xds_host="127.0.0.1", xds_port=1).env()
    assert placeholders <= set(spec_env), placeholders - set(spec_env)

    # EnvoySpec.env() sets only what run-envoy.sh actually reads.
    script = RUN_ENVOY.read_text()
    for name in spec_env:
        assert "${" + name in script, f"run-envoy.sh does not read {name}"
    for name in set(compose_env) - IMAGE_VARS:
        assert "${" + name in script, f"compose sets {name}, which run-envoy.sh ignores"


#: read by the envoyproxy/envoy image's entrypoint, not by run-envoy.sh
IMAGE_VARS = {"ENVOY_UID"}
#: placeholders run-envoy.sh fills with its own default unless the environment sets them
DEFAULTED = {"XDS_API_TYPE"}


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_the_ads_protocol_is_chosen_by_xds_api_type(api_type: str, tmp_path: Path) -> None:
    env = EnvoySpec(
        node_id="n", gateway="g", xds_host="127.0.0.1", xds_port=1, xds_api_type=api_type
    ).env()
    rendered = tmp_path / "bootstrap.yaml"
    result = _render(env, rendered, "--mode", "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        yaml.safe_load(rendered.read_text())["dynamic_resources"]["ads_config"]["api_type"]
        == api_type
    )
    # unset: the script's one default
    plain = EnvoySpec(node_id="n", gateway="g", xds_host="127.0.0.1", xds_port=1).env()
    assert "XDS_API_TYPE" not in plain and "XDS_API_TYPE" not in _compose_envoy_env()
    result = _render(plain, rendered, "--mode", "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    default = re.search(r"^DEFAULT_API_TYPE=(\w+)$", RUN_ENVOY.read_text(), re.M)
    assert default is not None
    assert yaml.safe_load(rendered.read_text())["dynamic_resources"]["ads_config"][
        "api_type"
    ] == default.group(1)


def test_run_envoy_refuses_an_unknown_ads_protocol(tmp_path: Path) -> None:
    result = _render({"XDS_API_TYPE": "REST", "ENVOY_BIN": "true"}, tmp_path / "bootstrap.yaml")
    assert result.returncode != 0
    assert "XDS_API_TYPE='REST' must be GRPC" in result.stderr


# ---------------------------------------------------------------------------------------
# (c) the rendered bootstrap is valid for the real Envoy


@pytest.mark.parametrize("source", ["compose", "launcher"])
def test_rendered_bootstrap_validates_with_envoy(source: str, tmp_path: Path) -> None:
    if source == "compose":
        env = _compose_envoy_env()
        # the files the `pki` service would put in the pki-envoy volume (mounted at /pki)
        from controlplane.pki import init_ca, issue_client

        init_ca(tmp_path / "ca", ["controller"])
        issue_client(tmp_path / "ca", [env["GATEWAY"]], env["NODE_ID"], tmp_path / "envoy-1")
        shutil.copy(tmp_path / "ca" / "ca.pem", tmp_path / "ca.pem")
        for var in TLS_VARS:
            env[var] = env[var].replace("/pki/", f"{tmp_path}/")
    else:
        env = EnvoySpec(
            node_id="test-node",
            gateway="public",
            xds_host="127.0.0.1",
            xds_port=18000,
            admin_port=19901,
        ).env()
    env["ENVOY_BIN"] = find_envoy_binary()
    rendered = tmp_path / "bootstrap.yaml"

    result = _render(env, rendered, "--mode", "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr

    text = rendered.read_text()
    assert not PLACEHOLDER.search(text)
    boot = yaml.safe_load(text)
    assert boot["node"] == {"id": env["NODE_ID"], "cluster": env["GATEWAY"]}
    admin = boot["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == (env["ADMIN_ADDRESS"], int(env["ADMIN_PORT"]))
    cluster = _xds_cluster(boot)
    assert cluster["type"] == "STRICT_DNS"
    sock = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    assert (sock["address"], sock["port_value"]) == (env["XDS_HOST"], int(env["XDS_PORT"]))
    ads = boot["dynamic_resources"]["ads_config"]
    assert ads["set_node_on_first_message_only"] is True
    backoff = ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"]
    assert backoff == {"base_interval": "0.1s", "max_interval": "1s"}


@pytest.mark.parametrize(
    ("var", "value"),
    [("NODE_ID", "a|b"), ("GATEWAY", "x&y"), ("XDS_HOST", "h/ost"), ("ADMIN_PORT", "99999")],
)
def test_run_envoy_rejects_unsafe_values(var: str, value: str, tmp_path: Path) -> None:
    # ENVOY_BIN=true: if the value slipped through, the script would exec `true` and exit 0.
    env = {var: value, "ENVOY_BIN": "true"}
    result = _render(env, tmp_path / "bootstrap.yaml")
    assert result.returncode != 0
    assert var in result.stderr


# ---------------------------------------------------------------------------------------
# (d) the mutual-TLS variant of the bootstrap (a controller serving ADS over mTLS)

TLS_VARS = {"XDS_TLS_CERT", "XDS_TLS_KEY", "XDS_TLS_CA"}


def test_mtls_bootstrap_is_the_bootstrap_plus_a_transport_socket() -> None:
    base = yaml.safe_load(BOOTSTRAP.read_text())
    mtls = yaml.safe_load(BOOTSTRAP_MTLS.read_text())
    cluster = _xds_cluster(mtls)
    socket = cluster.pop("transport_socket")
    secrets = mtls["static_resources"].pop("secrets")
    assert mtls == base  # nothing else may drift
    # the same files as static secrets, for the TLS of a separate analytics sink
    from controlplane.translate.accesslog import CA_SECRET, CLIENT_SECRET

    assert secrets == [
        {
            "name": CLIENT_SECRET,
            "tls_certificate": {
                "certificate_chain": {"filename": "${XDS_TLS_CERT}"},
                "private_key": {"filename": "${XDS_TLS_KEY}"},
            },
        },
        {"name": CA_SECRET, "validation_context": {"trusted_ca": {"filename": "${XDS_TLS_CA}"}}},
    ]
    context = socket["typed_config"]["common_tls_context"]
    assert context["validation_context"]["trusted_ca"] == {"filename": "${XDS_TLS_CA}"}
    assert context["tls_certificates"] == [
        {
            "certificate_chain": {"filename": "${XDS_TLS_CERT}"},
            "private_key": {"filename": "${XDS_TLS_KEY}"},
        }
    ]


def test_every_mtls_placeholder_is_supplied() -> None:
    base = set(PLACEHOLDER.findall(BOOTSTRAP.read_text()))
    placeholders = set(PLACEHOLDER.findall(BOOTSTRAP_MTLS.read_text()))
    assert placeholders == base | TLS_VARS | {"XDS_TLS_SAN_TYPE"}
    spec_env = EnvoySpec(
        node_id="n",
        gateway="g",
        xds_host="127.0.0.1",
        xds_port=1,
        xds_tls_cert="/c.pem",
        xds_tls_key="/c.key",
        xds_tls_ca="/ca.pem",
    ).env()
    # XDS_TLS_SAN_TYPE is derived by the script from XDS_HOST, not supplied
    assert placeholders - {"XDS_TLS_SAN_TYPE"} - DEFAULTED <= set(spec_env)
    script = RUN_ENVOY.read_text()
    assert "XDS_TLS_SAN_TYPE=IP_ADDRESS" in script and "XDS_TLS_SAN_TYPE=DNS" in script
    for name in spec_env:
        assert "${" + name in script, f"run-envoy.sh does not read {name}"
    # a plain spec sets no TLS variable, so the plain template is used
    plain = EnvoySpec(node_id="n", gateway="g", xds_host="127.0.0.1", xds_port=1).env()
    assert not TLS_VARS & set(plain)


@pytest.mark.parametrize(("host", "san_type"), [("127.0.0.1", "IP_ADDRESS"), ("controller", "DNS")])
def test_rendered_mtls_bootstrap_validates_with_envoy(
    host: str, san_type: str, tmp_path: Path
) -> None:
    from tests.e2e.tlsutil import TestCA

    ca = TestCA()
    cert, key = ca.issue("envoy-1", ["envoy-1"], client=True).write(tmp_path, "client")
    env = EnvoySpec(
        node_id="test-node",
        gateway="public",
        xds_host=host,
        xds_port=18000,
        admin_port=19901,
        xds_tls_cert=cert,
        xds_tls_key=key,
        xds_tls_ca=ca.write(tmp_path),
    ).env()
    rendered = tmp_path / "bootstrap.yaml"
    result = _render(env, rendered, "--mode", "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    boot = yaml.safe_load(rendered.read_text())
    cluster = _xds_cluster(boot)
    context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["tls_certificates"][0]["private_key"] == {"filename": key}
    (san,) = context["validation_context"]["match_typed_subject_alt_names"]
    assert san == {"san_type": san_type, "matcher": {"exact": host}}


def test_run_envoy_wants_all_tls_files_or_none(tmp_path: Path) -> None:
    present = tmp_path / "c.pem"
    present.write_text("x")
    for env, expected in (
        ({"XDS_TLS_CERT": str(present)}, "XDS_TLS_KEY is required"),
        (
            {"XDS_TLS_CERT": str(present), "XDS_TLS_KEY": str(present), "XDS_TLS_CA": "/no/ca"},
            "XDS_TLS_CA: cannot read /no/ca",
        ),
        (
            {"XDS_TLS_CERT": "a b", "XDS_TLS_KEY": str(present), "XDS_TLS_CA": str(present)},
            "XDS_TLS_CERT='a b' must be a path",
        ),
    ):
        result = _render({**env, "ENVOY_BIN": "true"}, tmp_path / "bootstrap.yaml")
        assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_the_bootstrap_admin_token_is_kept_on_the_data_volume() -> None:
    """The controller's first start writes the admin token to a file on its own volume
    (never in an image layer or the environment); README says how to read it."""
    controller = _service("controller")
    path = controller["environment"]["GATEWAY_ADMIN_TOKEN_FILE"]
    assert path == "/data/admin-token"
    assert "gateway-data:/data" in controller["volumes"]
    assert f"docker compose exec controller cat {path}" in (REPO / "README.md").read_text()
