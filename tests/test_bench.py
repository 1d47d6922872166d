"""The benchmark keeps working: `make bench` at a tiny size (figures are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parent.parent


def test_bench_runs_at_a_small_size(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the benchmark needs root")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py")],
        env={**os.environ, "BENCH_N": "5,10", "BENCH_RUNS": "1", "BENCH_PLANNER_N": "100",
             "BENCH_OUT": str(out)},
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    whats = [(row["what"], row["n"]) for row in doc["rows"]]
    assert whats == [
        ("a. cold apply", 5), ("b. no-op plan", 5), ("a. cold apply", 10),
        ("b. no-op plan", 10), ("c. one container changed", 10), ("d. planner alone", 100),
    ]
    cold = doc["rows"][2]["netapply"]  # 10 hosts links and the one table they share
    assert cold["writes"] > 0 and cold["file_writes"] == 11 and cold["peak_rss_mb"] > 0
    # Cold apply per container, at each N and grown from the smallest N to the
    # largest, beside the same for the ip -batch script (issue 17's targets).
    assert doc["rows"][2]["per_container_ms"] == pytest.approx(1000 * cold["seconds"] / 10)
    growth = doc["per_container_growth"]["a. cold apply"]
    assert growth["sizes"] == [5, 10] and growth["netapply"] > 0 and growth["baseline"] > 0
    assert "per container, a. cold apply: N=10 / N=5" in proc.stdout
