"""The quota service (RLQS) served by the controller, on the ADS port.

Envoy's ``rate_limit_quota`` filters open one ``StreamRateLimitQuotas`` stream per filter
(domain ``<gateway>/<unit>``) over the bootstrap's ``xds_cluster``: the same port, the same
mutual TLS and the same loopback default as ADS and the access-log service. Each message is
a usage report of some buckets; each report is answered at once with an assignment per
bucket, decided by the :class:`~controlplane.quota.allocator.Allocator` over the
``quota_counters`` rows of the policy database (one transaction per report).

The budgets come from the policy the controller already serves (``Runner.objects``), read
at each report: a changed plan applies at the next report without any push.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2
from envoy.type.v3 import ratelimit_strategy_pb2, token_bucket_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from sqlalchemy import Engine

from ..policy.ratelimit import Per
from ..xds.mtls import StreamAuthorizer
from .allocator import ASSIGNMENT_TTL_S, Allocator, BucketKey, Decision, Usage
from .budgets import budget_of
from .counters import QuotaCounters

__all__ = ["LEASE_FILL", "RLQS_SERVICE", "QuotaService", "bucket_key"]

log = logging.getLogger(__name__)

RLQS_SERVICE = "envoy.service.rate_limit_quota.v3.RateLimitQuotaService"
#: a lease's refill: one token per 30 days, i.e. none (Envoy divides tokens_per_fill by the
#: WHOLE seconds of fill_interval, so it must be at least 1 s)
LEASE_FILL = duration_pb2.Duration(seconds=30 * 86400)
#: an assignment lives this long unless refreshed by the next answer (translate/quota.py)
ASSIGNMENT_TTL = duration_pb2.Duration(seconds=ASSIGNMENT_TTL_S)
#: rows of minute/hour sub-windows are deleted this long after they end
KEEP_SHORT_S = 3 * 3600
_KEYS = {"consumer": "consumer:", "ip": "ip:", "header": "header:"}


def bucket_key(bucket: Mapping[str, str]) -> BucketKey | None:
    """The bucket id Envoy builds (translate/quota.py) as a counter key; None if malformed."""
    try:
        unit = Per(bucket.get("unit", ""))
    except ValueError:
        return None
    gateway, route = bucket.get("gateway"), bucket.get("route")
    if not gateway or not route:
        return None
    key = "all"
    for name, prefix in _KEYS.items():
        if name in bucket:
            key = prefix + bucket[name]
            break
    return BucketKey(gateway, route, unit, key)


def _strategy(decision: Decision) -> list[ratelimit_strategy_pb2.RateLimitStrategy]:
    S = ratelimit_strategy_pb2.RateLimitStrategy
    if decision.kind == "allow":
        return [S(blanket_rule=S.ALLOW_ALL)]
    if decision.kind == "deny":
        return [S(blanket_rule=S.DENY_ALL)]
    lease = S(
        token_bucket=token_bucket_pb2.TokenBucket(
            max_tokens=decision.tokens,
            tokens_per_fill=wrappers_pb2.UInt32Value(value=1),
            fill_interval=LEASE_FILL,
        )
    )
    # a fresh lease: DENY_ALL first makes Envoy build the token bucket anew, full (a bucket
    # replacing another token bucket would start with the old one's share of tokens left)
    return [S(blanket_rule=S.DENY_ALL), lease] if decision.fresh else [lease]


def response(
    decisions: list[Decision], ids: Mapping[BucketKey, Any]
) -> rlqs_pb2.RateLimitQuotaResponse:
    out = rlqs_pb2.RateLimitQuotaResponse()
    for decision in decisions:
        for strategy in _strategy(decision):
            action = out.bucket_action.add()
            action.bucket_id.CopyFrom(ids[decision.bucket])
            action.quota_assignment_action.assignment_time_to_live.CopyFrom(ASSIGNMENT_TTL)
            action.quota_assignment_action.rate_limit_strategy.CopyFrom(strategy)
    return out


class QuotaService:
    """RLQS over the policy database's writer engine and the runner's live policy."""

    def __init__(
        self,
        engine: Engine,
        objects: Mapping[str, Mapping[str, object]],
        authorizer: StreamAuthorizer | None = None,
    ) -> None:
        self.counters = QuotaCounters(engine)
        self.objects = objects
        self.authorizer = authorizer
        self.allocator = Allocator(self.counters, lambda b: budget_of(self.objects, b))
        #: reports are accounted one at a time (the allocator's state is per process)
        self._lock = threading.Lock()
        self.reports = 0
        self.buckets_reported = 0
        self.streams = 0

    def _report(self, stream: object, usages: list[Usage]) -> list[Decision]:
        with self._lock:
            return self.allocator.report(stream, usages, time.time())

    def _close(self, stream: object) -> None:
        with self._lock:
            self.allocator.close(stream)

    async def _stream(
        self,
        requests: AsyncIterator[rlqs_pb2.RateLimitQuotaUsageReports],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rlqs_pb2.RateLimitQuotaResponse]:
        stream = object()
        gateway: str | None = None
        self.streams += 1
        try:
            async for msg in requests:
                ids: dict[BucketKey, Any] = {}
                usages: list[Usage] = []
                for usage in msg.bucket_quota_usages:
                    key = bucket_key(usage.bucket_id.bucket)
                    if key is None:
                        continue
                    if gateway is None:
                        gateway = key.gateway
                        refusal = self._refusal(context, gateway)
                        if refusal is not None:
                            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                    if key.gateway != gateway:  # one stream serves one gateway's Envoy
                        continue
                    ids[key] = usage.bucket_id
                    usages.append(Usage(key, usage.num_requests_allowed, usage.num_requests_denied))
                if not usages:
                    continue
                decisions = await asyncio.to_thread(self._report, stream, usages)
                self.reports += 1
                self.buckets_reported += len(usages)
                yield response(decisions, ids)
        except (asyncio.CancelledError, grpc.RpcError):
            pass
        finally:
            self.streams -= 1
            try:
                await asyncio.shield(asyncio.to_thread(self._close, stream))
            except (asyncio.CancelledError, Exception) as exc:  # shutting down: best effort
                log.debug("quota stream close: %s", exc)

    def _refusal(self, context: Any, gateway: str) -> str | None:
        if self.authorizer is None:
            return None
        return self.authorizer.gateway_refusal(context, gateway, "quota")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            RLQS_SERVICE,
            {
                "StreamRateLimitQuotas": grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    request_deserializer=rlqs_pb2.RateLimitQuotaUsageReports.FromString,
                    response_serializer=rlqs_pb2.RateLimitQuotaResponse.SerializeToString,
                )
            },
        )

    async def run(self, every: float = 300.0) -> None:
        """Until cancelled: delete counters of windows long over."""
        while True:
            await asyncio.sleep(every)
            try:
                now = int(time.time())
                await asyncio.to_thread(self.counters.prune, now)
                await asyncio.to_thread(
                    self.counters.prune_units, ("minute", "hour"), now - KEEP_SHORT_S
                )
            except Exception as exc:  # the database is away: try again later
                log.warning("quota counters: prune failed: %s", exc)
