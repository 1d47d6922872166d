"""`make bench`, runtime containers: a no-op `netapply plan` of N Docker
containers (`runtime: docker`) against the same plan of N named namespaces.

Run inside scripts/sandbox (make bench does): dockerd is started in that
namespace with its own state directories (tests/engines.py) and stopped by
PID. Each plan is the CLI as users run it, in a fresh process, so start-up,
the engine's list call and any inspect calls are all counted. Prints one
JSON line. Environment: BENCH_RUNTIME_N (default 200), BENCH_RUNS (default 5).
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.engines import dockerd  # noqa: E402


def spec(project: str, n: int, runtime: bool) -> str:
    subnet = ipaddress.ip_network("10.88.0.0/16")
    lines = [f"version: 1\nproject: {project}\nnetworks:\n  n: {{subnet: {subnet}}}\n",
             "containers:\n"]
    for i in range(n):
        address = subnet[i + 10]
        extra = "runtime: docker, " if runtime else ""
        lines.append(f"  c{i}: {{{extra}networks: {{n: {{ipv4_address: {address}}}}}}}\n")
    return "".join(lines)


def cli(*args: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "--no-color", *args],
                          capture_output=True, text=True, env=env, cwd=REPO)
    took = time.perf_counter() - started
    if done.returncode not in (0, 2):
        raise SystemExit(f"netapply {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return took


def measure(path: Path, runs: int, env: dict[str, str]) -> list[float]:
    cli("apply", "--auto-approve", str(path), env=env)
    samples = []
    for _ in range(runs):
        samples.append(cli("plan", "--detailed-exitcode", str(path), env=env))
    cli("destroy", "--auto-approve", str(path), env=env)
    return samples


def main() -> None:
    n = int(os.environ.get("BENCH_RUNTIME_N", "200"))
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    with tempfile.TemporaryDirectory(prefix="netapply-bench-") as tmp:
        root = Path(tmp)
        with dockerd(root / "docker") as docker:
            for i in range(n):
                docker.start_container(f"c{i}")
            env = {**os.environ, "PYTHONPATH": str(REPO), "DOCKER_HOST": docker.url}
            named = root / "named.yaml"
            named.write_text(spec("bnamed", n, runtime=False))
            engine = root / "docker.yaml"
            engine.write_text(spec("bdocker", n, runtime=True))
            named_s = measure(named, runs, env)
            docker_s = measure(engine, runs, env)
    result = {
        "n": n, "runs": runs,
        "named_netns_plan_s": round(statistics.median(named_s), 4),
        "docker_plan_s": round(statistics.median(docker_s), 4),
        "ratio": round(statistics.median(docker_s) / statistics.median(named_s), 3),
        "samples": {"named": [round(s, 4) for s in named_s],
                    "docker": [round(s, 4) for s in docker_s]},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
