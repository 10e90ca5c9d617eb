"""``gatewayctl route update R --cluster X --wait`` at N routes, timed as a user sees it:
from the command's start to the first 200 from X through Envoy.

The CLI is the thin client (only GATEWAY_URL and GATEWAY_TOKEN: no database), the
controller a real ``gatewayctl serve`` with its admin API, the proxy one real Envoy, the
backends two echo processes told apart by ``x-backend``. Each sample flips one route between
the two clusters; writes are checked by Envoy before commit as by default (``--validate
never`` on the controller's side with ``--no-validate``).

    python -m bench.route_update --routes 10000 --samples 40
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import time
from pathlib import Path

from bench.harness import Probe, Stack, make_route, route_name, route_path
from bench.stats import summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between updates")
    parser.add_argument(
        "--no-validate", action="store_true", help="the controller skips the Envoy check"
    )
    args = parser.parse_args()
    if args.no_validate:
        os.environ["GATEWAY_VALIDATE"] = "never"
    else:
        os.environ.pop("GATEWAY_VALIDATE", None)
    with Stack(admin=True) as stack:
        stack.start(preload=[make_route("r", i, "a") for i in range(args.routes)])
        probe = Probe(stack.ports["listener"])
        index = args.routes // 2
        name, path = route_name("r", index), route_path("r", index)
        probe.wait_for(path, lambda s, b: s == 200 and b == "a", timeout=300)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_URL=stack.admin_url, GATEWAY_TOKEN=stack.admin_token())
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed CLI has its bytecode
        command = [str(Path(stack.gatewayctl)), "route", "update", name, "--wait"]
        totals: list[float] = []
        exits: list[float] = []
        for i in range(args.samples + 1):  # the first (unmeasured) run writes bytecode
            target = "b" if i % 2 == 0 else "a"
            time.sleep(args.pause)
            start = time.perf_counter()
            subprocess.run(
                [*command, "--cluster", target],
                env=env,
                cwd=stack.workdir,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            exited = time.perf_counter() - start
            total = probe.wait_for(path, lambda s, b, t=target: s == 200 and b == t, start=start)
            if i:
                exits.append(exited)
                totals.append(total)
        # the same change through the admin API alone (what the CLI does, without its start)
        api_totals: list[float] = []
        conn = http.client.HTTPConnection("127.0.0.1", stack.ports["admin-api"], timeout=60)
        auth = {"Authorization": f"Bearer {stack.admin_token()}"}
        for i in range(args.samples):
            target = "b" if i % 2 == 0 else "a"
            time.sleep(args.pause)
            start = time.perf_counter()
            conn.request("GET", f"/v1/routes/{name}", headers=auth)
            got = conn.getresponse()
            spec = json.loads(got.read())["spec"]
            body = json.dumps({**spec, "cluster": target})
            headers = {**auth, "If-Match": got.headers["ETag"], "Content-Type": "application/json"}
            conn.request("PUT", f"/v1/routes/{name}?wait=30s", body=body, headers=headers)
            put = conn.getresponse()
            put.read()
            assert put.status == 200, put.status
            api_totals.append(
                probe.wait_for(path, lambda s, b, t=target: s == 200 and b == t, start=start)
            )
        conn.close()
        probe.close()
        load = os.getloadavg()[0]
        validated = "never" if args.no_validate else "auto (Envoy installed: validated)"
        print(f"{args.routes} routes, {args.samples} updates, validate={validated}")
        print(f"load average {load:.2f}")
        for label, values in (
            ("command start -> CLI exit", exits),
            ("command start -> first 200 from X", totals),
            ("admin API GET+PUT?wait -> first 200", api_totals),
        ):
            s = summary(values)
            print(
                f"{label:36s} p50 {s['p50']:6.1f} ms  p90 {s['p90']:6.1f}  p99 {s['p99']:6.1f}"
                f"  max {s['max']:6.1f}  (n={s['n']:.0f})"
            )


if __name__ == "__main__":
    main()
