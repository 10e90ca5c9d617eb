"""Percentiles of benchmark samples pooled over runs, and how far a short run's p99 strays.

A p99 from 150 samples lies between the two highest values: one slow write more or less
moves it by several milliseconds. Pooled over runs of 1,000 samples, ten values lie above
it. This reads the ``--raw`` files of ``bench.ads_fanout`` and prints the pooled figures,
then cuts the samples, in the order they were taken, into consecutive blocks of
``--block`` writes (each block is what a run of that many samples would have measured)
and prints the spread of their p99.

    python -m bench.pooled a.json b.json c.json --block 150
"""

from __future__ import annotations

import argparse
import json

from bench.stats import percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="--raw files of bench.ads_fanout")
    parser.add_argument("--series", default="last", help="which series (default: last)")
    parser.add_argument("--block", type=int, default=150, help="writes per simulated short run")
    parser.add_argument("--limit", type=float, default=100.0, help="ms a block's p99 is held to")
    args = parser.parse_args()
    runs = []
    for name in args.files:
        with open(name) as f:
            runs.append(json.load(f)[args.series])
    pooled = [v for run in runs for v in run]
    print(
        f"pooled over {len(runs)} run(s), n={len(pooled)}: p50 {percentile(pooled, 50):.1f} ms"
        f"  p90 {percentile(pooled, 90):.1f}  p99 {percentile(pooled, 99):.1f}"
        f"  max {max(pooled):.1f}"
    )
    for name, run in zip(args.files, runs, strict=True):
        print(f"  {name}: n={len(run)} p99 {percentile(run, 99):.1f} ms")
    blocks = [
        percentile(run[i : i + args.block], 99)
        for run in runs
        for i in range(0, len(run) - args.block + 1, args.block)
    ]
    if not blocks:
        return
    over = sum(1 for b in blocks if b > args.limit)
    print(
        f"p99 of {len(blocks)} consecutive blocks of {args.block} writes: "
        f"{min(blocks):.1f}-{max(blocks):.1f} ms (median {percentile(blocks, 50):.1f}); "
        f"{over} of {len(blocks)} over {args.limit:g} ms"
    )


if __name__ == "__main__":
    main()
