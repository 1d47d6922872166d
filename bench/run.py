"""`make bench`: netapply side by side with what a user would otherwise run.

Every measurement runs in a fresh private network + mount namespace
(scripts/sandbox), several times; the table shows medians and the ratio to the
baseline measured in the same run. Results are also written as JSON.
Environment: BENCH_N (comma-separated sizes, default 100,500,1000), BENCH_RUNS
(default 3), BENCH_PLANNER_N (default 10000), BENCH_OUT (default
bench-results/bench.json).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def run_child(mode: str, n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [str(REPO / "scripts" / "sandbox"), sys.executable, str(REPO / "bench" / "child.py"),
         mode, str(n)],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench {mode} {n} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def median_of(mode: str, n: int, runs: int) -> dict[str, Any]:
    samples = [run_child(mode, n) for _ in range(runs)]
    out: dict[str, Any] = {
        "mode": mode, "n": n, "runs": runs,
        "seconds": statistics.median(s["seconds"] for s in samples),
        "samples": [round(s["seconds"], 4) for s in samples],
        "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
    }
    if "writes" in samples[0]:
        out["writes"] = samples[0]["writes"]
        out["file_writes"] = samples[0]["file_writes"]
    return out


def main() -> None:
    sizes = [int(x) for x in os.environ.get("BENCH_N", "100,500,1000").split(",")]
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    planner_n = int(os.environ.get("BENCH_PLANNER_N", "10000"))
    out_path = Path(os.environ.get("BENCH_OUT", REPO / "bench-results" / "bench.json"))
    rows: list[dict[str, Any]] = []
    for n in sizes:
        cold = median_of("netapply-cold", n, runs)
        batch = median_of("ip-batch-cold", n, runs)
        noop = median_of("netapply-noop-plan", n, runs)
        loop = median_of("ip-json-loop", n, runs)
        rows.append({"what": "a. cold apply", "n": n, "netapply": cold, "baseline": batch,
                     "baseline_name": "ip -batch script", "target": 0.5})
        rows.append({"what": "b. no-op plan", "n": n, "netapply": noop, "baseline": loop,
                     "baseline_name": "ip -j loop", "target": 0.35})
    largest = max(sizes)
    change = median_of("netapply-change-one", largest, runs)
    cold_largest = next(r["netapply"] for r in rows
                        if r["n"] == largest and r["what"] == "a. cold apply")
    rows.append({"what": "c. one container changed", "n": largest, "netapply": change,
                 "baseline": cold_largest, "baseline_name": "netapply cold apply",
                 "target": 0.05})
    plan_only = median_of("planner", planner_n, runs)
    rows.append({"what": "d. planner alone", "n": planner_n, "netapply": plan_only,
                 "baseline": None, "baseline_name": "target 1 s", "target": None})
    for row in rows:
        base = row["baseline"]
        row["ratio"] = row["netapply"]["seconds"] / base["seconds"] if base else None
    for row in rows:
        if row["what"] in ("a. cold apply", "b. no-op plan"):
            row["per_container_ms"] = 1000 * row["netapply"]["seconds"] / row["n"]
            row["baseline_per_container_ms"] = 1000 * row["baseline"]["seconds"] / row["n"]
    growth = per_container_growth(rows, sizes)
    show(rows, growth)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"rows": rows, "per_container_growth": growth}, indent=2))
    print(f"written: {out_path}")


GROWTH_TARGET = 1.3  # cold apply: per container at the largest N / at the smallest


def per_container_growth(rows: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Per-container cost at the largest N over that at the smallest, for
    netapply and for its baseline (the kernel's own growth), by measurement."""
    small, large = min(sizes), max(sizes)
    growth: dict[str, Any] = {}
    if small == large:
        return growth
    for what in ("a. cold apply", "b. no-op plan"):
        by_n = {r["n"]: r for r in rows if r["what"] == what}
        growth[what] = {
            "sizes": [small, large],
            "netapply": by_n[large]["per_container_ms"] / by_n[small]["per_container_ms"],
            "baseline": (by_n[large]["baseline_per_container_ms"]
                         / by_n[small]["baseline_per_container_ms"]),
        }
    return growth


def show(rows: list[dict[str, Any]], growth: dict[str, Any]) -> None:
    table = Table(title="netapply benchmark (medians)")
    for column in ("measurement", "N", "netapply s", "per container ms", "baseline",
                   "baseline s", "baseline per container ms", "ratio", "target",
                   "kernel writes", "file writes", "peak RSS MB"):
        table.add_column(column, justify="right" if column != "measurement" else "left")
    for row in rows:
        ours, base = row["netapply"], row["baseline"]
        table.add_row(
            row["what"], str(row["n"]), f"{ours['seconds']:.3f}",
            f"{row['per_container_ms']:.2f}" if "per_container_ms" in row else "-",
            row["baseline_name"], f"{base['seconds']:.3f}" if base else "-",
            f"{row['baseline_per_container_ms']:.2f}" if "per_container_ms" in row else "-",
            f"{row['ratio']:.2f}" if row["ratio"] is not None else "-",
            f"<= {row['target']}" if row["target"] is not None else "<= 1 s",
            str(ours.get("writes", "-")), str(ours.get("file_writes", "-")),
            f"{ours['peak_rss_mb']:.0f}",
        )
    console = Console(width=180)
    console.print(table)
    for what, found in growth.items():
        small, large = found["sizes"]
        target = f" (target <= {GROWTH_TARGET})" if what == "a. cold apply" else ""
        console.print(f"per container, {what}: N={large} / N={small} = "
                      f"{found['netapply']:.2f}{target}; baseline {found['baseline']:.2f}")


if __name__ == "__main__":
    main()
