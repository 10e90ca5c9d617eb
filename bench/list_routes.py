"""``GET /v1/routes`` and ``gatewayctl route list -o json`` against a real controller with
N routes (the admin API's listing and the thin CLI's whole command).

    python -m bench.list_routes --routes 10000 --runs 10
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import time

from bench.harness import Stack, make_route


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    os.environ["GATEWAY_VALIDATE"] = "never"  # no writes are measured
    with Stack(admin=True) as stack:
        stack.start_backends()
        store = stack.seed()
        store.apply_objects([make_route("r", i, "a") for i in range(args.routes)])
        stack.start_controller()
        token = stack.admin_token()
        conn = http.client.HTTPConnection("127.0.0.1", stack.ports["admin-api"], timeout=60)
        api: list[float] = []
        size = 0
        for _ in range(args.runs + 2):
            start = time.perf_counter()
            conn.request("GET", "/v1/routes", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            size = len(resp.read())
            api.append(time.perf_counter() - start)
        conn.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_URL=stack.admin_url, GATEWAY_TOKEN=token)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed CLI has its bytecode
        cli: list[float] = []
        for _ in range(args.runs + 1):  # the first run writes bytecode
            start = time.perf_counter()
            subprocess.run(
                [stack.gatewayctl, "route", "list", "-o", "json"],
                env=env,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            cli.append(time.perf_counter() - start)
        print(f"{args.routes} routes, load average {os.getloadavg()[0]:.2f}")
        # the first GET at a revision builds and keeps its encoding; later ones reuse it
        print(f"GET /v1/routes first at this revision {api[0] * 1e3:7.1f} ms")
        for label, values in (("GET /v1/routes", api[2:]), ("route list -o json", cli[1:])):
            print(
                f"{label:20s} p50 {statistics.median(values) * 1e3:7.1f} ms"
                f"  min {min(values) * 1e3:7.1f} ms  ({size // 1024} KiB)"
            )


if __name__ == "__main__":
    main()
