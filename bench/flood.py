"""How much IPv6 multicast a cold apply floods, and whether a multicast
querier on the bridge bounds it (issue 17). Run inside a sandbox:

    scripts/sandbox env PYTHONPATH=. .venv/bin/python bench/flood.py [N]

For one bridge network of N containers, three ways: IPv4 only (no IPv6 address
on any link: netapply's default there), IPv6 (link-local addresses: duplicate
address probes, router solicitations, listener reports), and IPv6 with the
bridge as multicast querier (IFLA_BR_MCAST_QUERIER, set before the containers
come, with a 1 s query response interval so that snooping starts soon). Prints
one JSON line per way: the apply's seconds, and the packets the containers'
interfaces received, in total and per container, 3 s after the apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import yaml

from reconciler import desired, engine
from reconciler import spec as spec_mod
from reconciler.drivers.netlink import NetlinkKernel

SETTLE = 3.0  # seconds after the apply: duplicate address detection takes about 1 s


def spec_text(n: int, ipv6: bool) -> str:
    network: dict[str, Any] = {"subnet": "10.100.0.0/16", "interface": "br-flood"}
    if ipv6:
        network["ipv6"] = {"subnet": "fd00:100::/64"}
    doc = {"version": 1, "project": "flood", "networks": {"net0": network},
           "containers": {f"c{i}": {"networks": ["net0"]} for i in range(n)}}
    return yaml.safe_dump(doc, sort_keys=False)


def apply(text: str) -> float:
    spec = spec_mod.load_text(text, "flood.yaml")
    kernel = NetlinkKernel()
    try:
        start = time.perf_counter()
        engine.apply(kernel, spec, engine.snapshot(kernel, spec).plan)
        return time.perf_counter() - start
    finally:
        kernel.close()


def received(n: int) -> int:
    total = 0
    for i in range(n):
        out = subprocess.run(["ip", "-n", f"c{i}", "-s", "-j", "link", "show", "dev", "eth0"],
                             check=True, capture_output=True, text=True).stdout
        total += json.loads(out)[0]["stats64"]["rx"]["packets"]
    return total


def measure(n: int, way: str) -> dict[str, Any]:
    ipv6 = way != "ipv4"
    if way == "ipv6+querier":
        apply(spec_text(0, ipv6))
        subprocess.run(["ip", "link", "set", "dev", "br-flood", "type", "bridge",
                        "mcast_querier", "1", "mcast_query_response_interval", "100"],
                       check=True)
        time.sleep(1.5)  # snooping trusts its table once a query's response time passed
    seconds = apply(spec_text(n, ipv6))
    time.sleep(SETTLE)
    packets = received(n)
    apply(spec_text(0, ipv6))  # clean up for the next way
    return {"way": way, "n": n, "apply_s": round(seconds, 3), "rx_packets": packets,
            "rx_per_container": round(packets / n, 1),
            "host_veth": desired.host_ifname("flood", "c0", "net0")}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    assert os.environ.get("NETAPPLY_OUTER_NETNS"), "run inside scripts/sandbox"
    for way in ("ipv4", "ipv6", "ipv6+querier"):
        print(json.dumps(measure(n, way)), flush=True)


if __name__ == "__main__":
    main()
