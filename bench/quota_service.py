"""Quota service CPU per 1,000 buckets reported (ADR 0051).

Run from the repository root with the project's venv::

    python -m bench.quota_service                 # 20 reports of 1,000 buckets, SQLite
    python -m bench.quota_service --db postgresql+psycopg://...   # an existing database

The work the controller does for one usage report, in-process and without the gRPC
transport: parse the serialized ``RateLimitQuotaUsageReports`` (1,000 buckets, one per
consumer, as one Envoy's filter sends them every 5 s), map bucket ids to counter keys, run
the allocator (one database transaction: give-backs and new leases), and encode the answer.
The first report creates every counter row and lease; the following ones are steady state
(each bucket spent part of its lease, some leases renewed). CPU is this process's
(``time.process_time``), which includes the database driver and SQLite itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoy.service.rate_limit_quota.v3 import rlqs_pb2

from controlplane.policy import Consumer, Gateway, Plan, Route
from controlplane.quota.allocator import Usage
from controlplane.quota.service import QuotaService, bucket_key, response
from controlplane.store import Store
from controlplane.store.db import make_engines


def reports(n: int, allowed: int) -> bytes:
    msg = rlqs_pb2.RateLimitQuotaUsageReports(domain="public/minute")
    for i in range(n):
        usage = msg.bucket_quota_usages.add()
        usage.bucket_id.bucket.update(
            {"gateway": "public", "route": "api", "unit": "minute", "consumer": f"c{i:05d}"}
        )
        usage.num_requests_allowed = allowed
    return msg.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=20)
    parser.add_argument("--db", help="SQLAlchemy URL of an existing gateway database")
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    url = args.db or f"sqlite:///{folder}/gw.db"
    if args.db is None:
        Store(url, create=True).close()
    engine, _ = make_engines(url)
    objects = {
        "gateway": {"public": Gateway(name="public", port=8080, rate_limit_mode="shared")},
        "route": {
            "api": Route.model_validate(
                {
                    "name": "api",
                    "gateways": ["public"],
                    "match": {"path_prefix": "/"},
                    "cluster": "c",
                    "rate_limit": {"key": "consumer"},
                }
            )
        },
        "plan": {"p": Plan(name="p", limits=[{"requests": 1_000_000, "per": "minute"}])},
        "consumer": {
            f"c{i:05d}": Consumer(name=f"c{i:05d}", plan="p") for i in range(args.buckets)
        },
    }
    service = QuotaService(engine, objects)
    stream = object()
    cpu: list[float] = []
    wall: list[float] = []
    for r in range(args.reports + 1):
        data = reports(args.buckets, 0 if r == 0 else 7)
        c0, w0 = time.process_time(), time.perf_counter()
        msg = rlqs_pb2.RateLimitQuotaUsageReports.FromString(data)
        ids, usages = {}, []
        for usage in msg.bucket_quota_usages:
            key = bucket_key(usage.bucket_id.bucket)
            assert key is not None
            ids[key] = usage.bucket_id
            usages.append(Usage(key, usage.num_requests_allowed, usage.num_requests_denied))
        decisions = service._report(stream, usages)
        response(decisions, ids).SerializeToString()
        c1, w1 = time.process_time(), time.perf_counter()
        if r == 0:
            print(f"first report (rows and leases created): cpu {1000 * (c1 - c0):.1f} ms")
            continue
        cpu.append(c1 - c0)
        wall.append(w1 - w0)
    per_k = 1000 / args.buckets
    print(
        f"steady state, {args.buckets} buckets per report, {args.reports} reports: "
        f"cpu median {1000 * statistics.median(cpu) * per_k:.1f} ms per 1,000 buckets "
        f"(p90 {1000 * sorted(cpu)[int(0.9 * len(cpu))] * per_k:.1f}), wall median "
        f"{1000 * statistics.median(wall) * per_k:.1f} ms"
    )


if __name__ == "__main__":
    main()
