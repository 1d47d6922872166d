"""One benchmark measurement, run by bench/run.py inside a fresh sandbox
(scripts/sandbox): builds what it needs, times one thing, prints one JSON line."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import yaml

from reconciler import desired, engine
from reconciler import spec as spec_mod
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.model import Spec
from reconciler.state.observe import ObservedState

SUBNET = "10.100.0.0/16"


def spec_doc(n: int, networks: int = 1) -> dict[str, Any]:
    nets = {f"net{j}": {"subnet": f"10.{100 + j // 250}.{j % 250}.0/24" if networks > 1
                        else SUBNET} for j in range(networks)}
    names = sorted(nets)
    return {
        "version": 1, "project": "bench", "networks": nets,
        "containers": {f"c{i}": {"networks": [names[i % networks]]} for i in range(n)},
    }


def load(doc: dict[str, Any]) -> Spec:
    return spec_mod.load_text(yaml.safe_dump(doc, sort_keys=False), "bench.yaml")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def netapply_apply(spec: Spec) -> tuple[int, int]:
    """What `netapply apply --auto-approve` does after loading: observe, plan,
    apply, re-observe to verify. Returns (kernel writes, hosts-file writes)."""
    kernel = NetlinkKernel()
    try:
        snap = engine.snapshot(kernel, spec)
        engine.apply(kernel, spec, snap.plan)
        return kernel.writes - kernel.file_writes, kernel.file_writes
    finally:
        kernel.close()


def ip_batch_script(n: int, workdir: str) -> str:
    """The same topology as a hand-written script would build it: one `ip -batch`
    in the host namespace, then one `ip -n NS -batch` per namespace (iproute2's
    batch mode cannot switch namespaces per line)."""
    host = ["link add br0 type bridge", "addr add 10.100.0.1/16 dev br0", "link set br0 up"]
    lines = []
    for i in range(n):
        address = f"10.100.{(i + 2) // 256}.{(i + 2) % 256}/16"
        host += [f"netns add c{i}",
                 f"link add vh{i} type veth peer name eth0 netns c{i}",
                 f"link set vh{i} master br0 up"]
        inner = os.path.join(workdir, f"c{i}.batch")
        with open(inner, "w") as f:
            f.write(f"link set lo up\nlink set eth0 up\naddr add {address} dev eth0\n"
                    "route add default via 10.100.0.1\n")
        lines.append(f"ip -n c{i} -batch {inner}")
    with open(os.path.join(workdir, "host.batch"), "w") as f:
        f.write("\n".join(host) + "\n")
    script = os.path.join(workdir, "build.sh")
    with open(script, "w") as f:
        f.write(f"set -e\nip -batch {workdir}/host.batch\n" + "\n".join(lines) + "\n")
    return script


def ip_json_loop(names: list[str]) -> None:
    for ns in [None, *names]:
        prefix = ["ip", "-j"] + (["-n", ns] if ns else [])
        for what in (["link", "show"], ["addr", "show"], ["route", "show"]):
            subprocess.run(prefix + what, check=True, stdout=subprocess.DEVNULL)


def measure(mode: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": mode, "n": n}
    if mode == "ip-batch-cold":
        with tempfile.TemporaryDirectory() as workdir:
            script = ip_batch_script(n, workdir)
            out["seconds"] = timed(lambda: subprocess.run(["sh", script], check=True))
    elif mode == "netapply-cold":
        spec = load(spec_doc(n))
        holder: dict[str, tuple[int, int]] = {}
        out["seconds"] = timed(lambda: holder.setdefault("w", netapply_apply(spec)))
        out["writes"], out["file_writes"] = holder["w"]
    elif mode == "ip-json-loop":
        netapply_apply(load(spec_doc(n)))
        names = [f"c{i}" for i in range(n)]
        out["seconds"] = timed(lambda: ip_json_loop(names))
    elif mode == "netapply-noop-plan":
        spec = load(spec_doc(n))
        netapply_apply(spec)
        kernel = NetlinkKernel()
        holder2: dict[str, bool] = {}
        out["seconds"] = timed(
            lambda: holder2.setdefault("empty", engine.snapshot(kernel, spec).plan.empty)
        )
        assert holder2["empty"], "the no-op plan is not empty"
    elif mode == "netapply-change-one":
        doc = spec_doc(n)
        netapply_apply(load(doc))
        doc["containers"]["c0"] = {"networks": {"net0": {"ipv4_address": "10.100.200.200"}}}
        changed = load(doc)
        holder3: dict[str, tuple[int, int]] = {}
        out["seconds"] = timed(lambda: holder3.setdefault("w", netapply_apply(changed)))
        out["writes"], out["file_writes"] = holder3["w"]
    elif mode == "planner":
        spec = load(spec_doc(n, networks=max(1, n // 10)))
        state = desired.build(spec, ObservedState({}))
        observed = ObservedState(state)

        def run() -> None:
            assert engine.plan_from(spec, observed).plan.empty

        out["seconds"] = timed(run)
    else:
        raise SystemExit(f"unknown mode {mode}")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
