"""`make bench` (its last part): how fast netapply reacts to one change.

Run under scripts/sandbox. For each size N (one bridge network, N containers
with fixed addresses) it applies the spec once, then measures, side by side:
- the whole `netapply plan SPEC` command when nothing changed (imports, spec
  load, observation, plan), against the `ip -j` loop a script would run
  (link, addr and route of every namespace), medians of BENCH_CLI_RUNS;
- the whole `netapply apply --auto-approve SPEC` command after one
  container's address changed in the spec;
- `netapply watch SPEC`, BENCH_WATCH_RUNS times each, medians:
  edit -> converged: from a spec that moves one container's address being
  renamed into place until that address is in the kernel;
  drift -> repaired: from that container's address being deleted from
  outside until it is back;
- the watch process's peak RSS (VmHWM) after BENCH_WATCH_CYCLES edit/repair
  cycles, and its RSS after the first tenth and at the end (flat or not).
Timings include the debounce only where it applies (a single change while
idle goes at once). Results: a table and bench-results/watch.json.
Environment: BENCH_WATCH_N (default 1000), BENCH_WATCH_RUNS (default 21),
BENCH_WATCH_CYCLES (default 1000), BENCH_CLI_RUNS (default 3).
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
from typing import Any

from rich.console import Console
from rich.table import Table

from reconciler.drivers.netlink import NetlinkKernel

REPO = Path(__file__).resolve().parent.parent
PROJECT = "wbench"
CLI = [sys.executable, "-m", "reconciler.cli"]
FIRST = "c0000"


def address_of(moved: int) -> str:
    """c0000's address in the spec edited `moved` times."""
    return "10.20.58.152/16" if moved % 2 else "10.20.39.16/16"


def spec_text(n: int, moved: int) -> str:
    lines = ["version: 1", f"project: {PROJECT}", "networks:",
             "  front: {subnet: 10.20.0.0/16}", "containers:"]
    for i in range(n):
        address = 10_000 + i + (5_000 if i == 0 and moved % 2 else 0)
        lines.append(f"  c{i:04}: {{networks: {{front: {{ipv4_address: "
                     f"10.20.{address // 256}.{address % 256}}}}}}}")
    return "\n".join(lines) + "\n"


def write_spec(spec: Path, text: str) -> None:
    """As an editor or git does: a new file renamed over the old one."""
    tmp = spec.with_name(".spec.yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, spec)


def wait(check: Callable[[], bool], limit: float = 120.0) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > limit:
            raise SystemExit("netapply did not converge in time")
        time.sleep(0.001)
    return time.perf_counter() - start


class LogTail:
    """The watch log's reconcile lines, read as they come."""

    def __init__(self, path: Path):
        self.file = open(path)  # noqa: SIM115 - lives as long as the measurement
        self.count = 0

    def reconciles(self) -> int:
        self.count += sum('"event": "reconcile"' in line for line in self.file.readlines())
        return self.count

    def quiet(self, after: int, seconds: float = 0.5) -> None:
        """Until more than `after` reconciles were logged (the one the change
        started has ended: its address shows before its verification does) and
        then none for `seconds` (its own notifications' trailing reconcile is
        over): the next change meets an idle watch. A change in the middle of
        an apply would make it fail, and retry after a backoff."""
        wait(lambda: self.reconciles() > after)
        count, since = self.reconciles(), time.perf_counter()
        while time.perf_counter() - since < seconds:
            time.sleep(0.02)
            if self.reconciles() != count:
                count, since = self.count, time.perf_counter()


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def ip_json_loop(n: int) -> float:
    start = time.perf_counter()
    for ns in [None, *(f"c{i:04}" for i in range(n))]:
        prefix = ["ip", "-j"] + (["-n", ns] if ns else [])
        for what in (["link", "show"], ["addr", "show"], ["route", "show"]):
            subprocess.run(prefix + what, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for {pid}")


def measure(n: int, runs: int, cycles: int, cli_runs: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="netapply-watch-bench."))
    spec = work / "spec.yaml"
    write_spec(spec, spec_text(n, 0))
    subprocess.run([*CLI, "apply", "--auto-approve", str(spec)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    kernel = NetlinkKernel()

    def has_address(cidr: str) -> bool:
        try:
            return any(a.cidr == cidr for a in kernel.addresses(FIRST))
        except Exception:
            return False

    row: dict[str, Any] = {"n": n}
    noop = [timed([*CLI, "plan", str(spec)]) for _ in range(cli_runs)]
    row["noop_plan_s"] = statistics.median(noop)
    row["ip_json_loop_s"] = ip_json_loop(n)
    changes = []
    for moved in range(1, cli_runs + 1):
        write_spec(spec, spec_text(n, moved))
        changes.append(timed([*CLI, "apply", "--auto-approve", str(spec)]))
    row["change_one_apply_s"] = statistics.median(changes)
    moved = cli_runs
    log = open(work / "watch.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*CLI, "watch", "--log-format", "json", str(spec)], stderr=log,
                            cwd=REPO)
    tail = LogTail(work / "watch.log")
    try:
        tail.quiet(0, 2.0)  # the start, its own notifications and their trailing reconcile
        edits, drifts = [], []
        for _ in range(runs):
            moved += 1
            target = address_of(moved)
            before = tail.reconciles()
            write_spec(spec, spec_text(n, moved))
            edits.append(wait(lambda target=target: has_address(target)))  # type: ignore[misc]
            tail.quiet(before)
            before = tail.reconciles()
            kernel.addr_del(FIRST, "eth0", target)
            drifts.append(wait(lambda target=target: has_address(target)))  # type: ignore[misc]
            tail.quiet(before)
        row["edit_to_converged_s"] = statistics.median(edits)
        row["drift_to_repaired_s"] = statistics.median(drifts)
        row["edit_samples"] = [round(x, 4) for x in edits]
        row["drift_samples"] = [round(x, 4) for x in drifts]
        rss = []
        for cycle in range(cycles):
            moved += 1
            target = address_of(moved)
            before = tail.reconciles()
            write_spec(spec, spec_text(n, moved))
            wait(lambda target=target: has_address(target))  # type: ignore[misc]
            tail.quiet(before)
            before = tail.reconciles()
            kernel.addr_del(FIRST, "eth0", target)
            wait(lambda target=target: has_address(target))  # type: ignore[misc]
            tail.quiet(before)
            if cycle + 1 in (max(1, cycles // 10), cycles):
                rss.append(status_kib(proc.pid, "VmRSS") / 1024)
        row["cycles"] = cycles
        logged = (work / "watch.log").read_text()
        row["reconciles"] = logged.count('"event": "reconcile"')
        row["failed_reconciles"] = logged.count('"result": "failed"')
        row["rss_mb_after_tenth_and_end"] = [round(x, 1) for x in rss]
        row["peak_rss_mb"] = round(status_kib(proc.pid, "VmHWM") / 1024, 1)
        return row
    finally:
        kernel.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        tail.file.close()
        subprocess.run([*CLI, "destroy", "--auto-approve", str(spec)], capture_output=True,
                       cwd=REPO)


def main() -> None:
    sizes = [int(x) for x in os.environ.get("BENCH_WATCH_N", "1000").split(",")]
    runs = int(os.environ.get("BENCH_WATCH_RUNS", "21"))
    cycles = int(os.environ.get("BENCH_WATCH_CYCLES", "1000"))
    cli_runs = int(os.environ.get("BENCH_CLI_RUNS", "3"))
    rows = [measure(n, runs, cycles, cli_runs) for n in sizes]
    table = Table(title="netapply reacting to one change (medians)")
    for column in ("N", "no-op plan (command)", "ip -j loop", "ratio", "one address: apply",
                   "watch: edit -> converged", "watch: drift -> repaired",
                   "watch RSS: peak / after 1/10 / end"):
        table.add_column(column, justify="right")
    for row in rows:
        rss = row["rss_mb_after_tenth_and_end"]
        table.add_row(
            str(row["n"]), f"{row['noop_plan_s']:.3f} s", f"{row['ip_json_loop_s']:.2f} s",
            f"{row['noop_plan_s'] / row['ip_json_loop_s']:.3f}",
            f"{row['change_one_apply_s']:.3f} s",
            f"{row['edit_to_converged_s'] * 1000:.1f} ms",
            f"{row['drift_to_repaired_s'] * 1000:.1f} ms",
            f"{row['peak_rss_mb']:.0f} / " + " / ".join(f"{x:.0f}" for x in rss) + " MB")
    Console(width=160).print(table)
    out = Path(os.environ.get("BENCH_WATCH_OUT", REPO / "bench-results" / "watch.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
