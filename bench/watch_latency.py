"""`make bench` (its last part): how fast `netapply watch` reacts.

Run under scripts/sandbox. For each size it starts `netapply watch` on a spec
of N containers and measures, several times each:
- edit-to-converged: from writing a spec that moves one container to another
  address until that address is in the kernel;
- drift-to-repaired: from deleting one container's veth (host end) until it
  is back.
Both include the debounce interval (--debounce, default 0.3 s here as in
production). Medians go to a table and to bench-results/watch.json.
Environment: BENCH_WATCH_N (default 10,500), BENCH_WATCH_RUNS (default 5).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from reconciler.desired import host_ifname
from reconciler.drivers.netlink import NetlinkKernel

REPO = Path(__file__).resolve().parent.parent
PROJECT = "wbench"


def spec_text(n: int, moved: int) -> str:
    lines = ["version: 1", f"project: {PROJECT}", "networks:",
             "  front: {subnet: 10.20.0.0/16}", "containers:"]
    for i in range(n):
        address = 10_000 + i + (5_000 if i == 0 and moved % 2 else 0)
        lines.append(f"  c{i:04}: {{networks: {{front: {{ipv4_address: "
                     f"10.20.{address // 256}.{address % 256}}}}}}}")
    return "\n".join(lines) + "\n"


def wait(check: Callable[[], bool], limit: float = 120.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise SystemExit("watch did not converge in time")
        time.sleep(0.002)
    return time.monotonic() - start


def measure(n: int, runs: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="netapply-watch-bench."))
    spec = work / "spec.yaml"
    spec.write_text(spec_text(n, 0))
    log = open(work / "watch.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "watch", "--log-format",
                             "json", str(spec)], stderr=log, cwd=REPO)
    kernel = NetlinkKernel()
    try:
        first = "c0000"
        veth = host_ifname(PROJECT, first, "front")

        def has_address(cidr: str) -> bool:
            try:
                return any(a.cidr == cidr for a in kernel.addresses(first))
            except Exception:
                return False

        wait(lambda: has_address("10.20.39.16/16"))
        wait(lambda: (work / "watch.log").read_text().count('"reconcile"') >= 1)
        edits, drifts = [], []
        for run in range(1, runs + 1):
            time.sleep(1.0)  # let the previous change's own events settle
            spec.write_text(spec_text(n, run))
            target = "10.20.58.152/16" if run % 2 else "10.20.39.16/16"
            edits.append(wait(lambda target=target: has_address(target)))  # type: ignore[misc]
            time.sleep(1.0)
            subprocess.run(["ip", "link", "del", veth], check=True)
            drifts.append(wait(lambda target=target: has_address(target)))  # type: ignore[misc]
        return {"n": n, "runs": runs, "edit_to_converged_s": statistics.median(edits),
                "drift_to_repaired_s": statistics.median(drifts),
                "edit_samples": [round(x, 3) for x in edits],
                "drift_samples": [round(x, 3) for x in drifts]}
    finally:
        kernel.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        subprocess.run([sys.executable, "-m", "reconciler.cli", "destroy", "--auto-approve",
                        str(spec)], capture_output=True, cwd=REPO)


def main() -> None:
    sizes = [int(x) for x in os.environ.get("BENCH_WATCH_N", "10,500").split(",")]
    runs = int(os.environ.get("BENCH_WATCH_RUNS", "5"))
    rows = [measure(n, runs) for n in sizes]
    table = Table(title="netapply watch: reaction time (median; includes the 0.3 s debounce)")
    for column in ("containers", "edit -> converged", "drift -> repaired",
                   "samples (edit / drift)"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["n"]), f"{row['edit_to_converged_s']:.3f} s",
                      f"{row['drift_to_repaired_s']:.3f} s",
                      f"{row['edit_samples']} / {row['drift_samples']}")
    Console().print(table)
    out = Path(os.environ.get("BENCH_WATCH_OUT", REPO / "bench-results" / "watch.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
