"""`make bench` (its etcd part): a fleet on etcd. Run under scripts/sandbox.

- push-to-converged: three lab machines (scripts/lab) run `netapply watch
  --source etcd://...` against a 3-member etcd cluster (tests/etcdlab.py);
  from the start of `netapply push` (a spec that moves one container between
  machines) until every machine's watch has converged on the pushed revision
  (its JSON log says so). Includes push's own start-up and the debounce (0.1 s).
- plan from etcd: one machine's share of a 100-machine, 5,000-container
  overlay spec pushed to etcd, planned by `netapply plan --source --host`
  (read from etcd, validate, observe, plan), and the read + validate alone.
Medians go to a table and to bench-results/etcd.json.
Environment: BENCH_ETCD_RUNS (default 5).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reconciler import spec as spec_mod  # noqa: E402
from reconciler.sources import etcd as etcd_mod  # noqa: E402
from reconciler.sources.etcdsource import EtcdSource  # noqa: E402
from tests.etcdlab import EtcdCluster  # noqa: E402
from tests.test_overlay_lab import Lab  # noqa: E402

STORE_HOST = "192.0.2.1"
MACHINES = {"a": "192.0.2.11", "b": "192.0.2.12", "c": "192.0.2.13"}


def fleet_spec(run: int) -> str:
    hosts = "".join(f"  {n}: {{address: {a}}}\n" for n, a in MACHINES.items())
    mover = "abc"[run % 3]
    return (f"version: 1\nproject: bfleet\nhosts:\n{hosts}networks:\n"
            "  blue: {driver: overlay, vni: 100, subnet: 10.200.0.0/24}\ncontainers:\n"
            "  web: {host: a, networks: [blue]}\n  db: {host: b, networks: [blue]}\n"
            f"  mover: {{host: {mover}, networks: [blue]}}\n")


def big_spec(hosts: int = 100, containers: int = 5000) -> str:
    lines = ["version: 1", "project: big", "hosts:"]
    lines += [f"  h{i:03}: {{address: 10.99.{i // 250}.{i % 250 + 1}}}" for i in range(hosts)]
    lines += ["networks:", "  blue: {driver: overlay, vni: 100, subnet: 10.128.0.0/16}",
              "containers:"]
    lines += [f"  c{i:04}: {{host: h{i % hosts:03}, networks: [blue]}}" for i in range(containers)]
    return "\n".join(lines) + "\n"


def netapply(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def converged(log: Path, revision: int) -> bool:
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if r.get("event") == "reconcile" and r["result"] == "converged" and \
                r["detail"].startswith("revision ") and int(r["detail"].split()[1]) >= revision:
            return True
    return False


def push_latency(work: Path, runs: int) -> list[float]:
    lab = Lab(work / "lab")
    cluster = EtcdCluster(work / "etcd", extra_hosts=(STORE_HOST,))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, address in MACHINES.items():
            lab.up(name, f"{address}/24")
        subprocess.run(["ip", "addr", "add", f"{STORE_HOST}/24", "dev", "lab0"], check=True)
        cluster.start()
        spec = work / "fleet.yaml"
        spec.write_text(fleet_spec(0))
        url = cluster.url("netapply/bfleet")
        first = int(netapply("push", str(spec), url).stdout)
        logs = [work / f"watch-{m}.log" for m in MACHINES]
        for machine, log in zip(MACHINES, logs, strict=True):
            with open(log, "w") as stream:
                procs.append(subprocess.Popen(
                    [str(REPO / "scripts" / "lab"), "run", machine, sys.executable, "-m",
                     "reconciler.cli", "watch", "--source",
                     cluster.url("netapply/bfleet", STORE_HOST), "--log-format", "json",
                     "--debounce", "0.1"], stderr=stream, stdout=subprocess.DEVNULL,
                    cwd=REPO, env={**lab.env, "PYTHONPATH": str(REPO)}))
        wait(lambda: all(converged(log, first) for log in logs))
        found = []
        for run in range(1, runs + 1):
            time.sleep(1.0)  # let the previous change's own events settle
            spec.write_text(fleet_spec(run))
            start = time.monotonic()
            pushed = netapply("push", str(spec), url)
            revision = int(pushed.stdout)
            wait(lambda revision=revision: all(  # type: ignore[misc]
                converged(log, revision) for log in logs))
            found.append(time.monotonic() - start)
        return found
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)
        cluster.stop()
        lab.lab("down")


def wait(check: object, limit: float = 120.0) -> None:
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - start > limit:
            raise SystemExit("the fleet did not converge in time")
        time.sleep(0.005)


def plan_from_etcd(work: Path, runs: int) -> tuple[list[float], list[float]]:
    cluster = EtcdCluster(work / "etcd-big")
    try:
        cluster.start()
        # h007's underlay address, on this sandbox (VXLAN sources need it local).
        subprocess.run(["ip", "addr", "add", "10.99.0.8/32", "dev", "lo"], check=True)
        spec = work / "big.yaml"
        spec.write_text(big_spec())
        url = cluster.url("netapply/big")
        pushed = netapply("push", str(spec), url)
        if pushed.returncode != 0:
            raise SystemExit(pushed.stderr)
        plans, reads = [], []
        for _ in range(runs):
            start = time.monotonic()
            result = netapply("plan", "--source", url, "--host", "h007", "--output", "json")
            plans.append(time.monotonic() - start)
            if result.returncode != 0:
                raise SystemExit(result.stderr)
            start = time.monotonic()
            source = EtcdSource(etcd_mod.Store(etcd_mod.parse_location(url)))
            spec_mod.build(source.read())
            source.close()
            reads.append(time.monotonic() - start)
        return plans, reads
    finally:
        cluster.stop()


def main() -> None:
    runs = int(os.environ.get("BENCH_ETCD_RUNS", "5"))
    work = Path(tempfile.mkdtemp(prefix="netapply-etcd-bench."))
    latency = push_latency(work, runs)
    plans, reads = plan_from_etcd(work, max(3, runs // 2))
    results = {"push_to_converged_s": statistics.median(latency),
               "plan_share_of_5000_from_etcd_s": statistics.median(plans),
               "read_and_validate_5000_from_etcd_s": statistics.median(reads),
               "runs": runs}
    table = Table(title="netapply on etcd (medians)")
    table.add_column("measurement")
    table.add_column("seconds", justify="right")
    table.add_row("push to converged, 3 lab machines", f"{results['push_to_converged_s']:.3f}")
    table.add_row("plan one machine's share, 100 hosts / 5,000 containers from etcd",
                  f"{results['plan_share_of_5000_from_etcd_s']:.3f}")
    table.add_row("  of which read + validate from etcd (in process)",
                  f"{results['read_and_validate_5000_from_etcd_s']:.3f}")
    Console().print(table)
    out = REPO / "bench-results" / "etcd.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
