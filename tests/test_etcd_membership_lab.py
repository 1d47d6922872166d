"""Live membership with real packets: three lab machines run `netapply watch
--source etcd://... --host NAME --ttl 3` against a 3-member etcd; the spec
has no `hosts`, so the registrations are the hosts. A machine whose watch is
killed is dropped by the others (forwarding and neighbour entries gone, its
container reported) once its lease expires, and comes back when its watch
starts again; losing the store drops nobody; a clean stop (SIGTERM) revokes
the lease. Overlay addresses stay where they are throughout."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.sources import etcd as etcd_mod
from tests.etcdlab import EtcdCluster, os_env_without_etcd
from tests.test_etcd_lab import STORE_HOST, Watch, push, wait_for
from tests.test_overlay_lab import Lab

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: live
networks:
  blue: {driver: overlay, vni: 200, subnet: 10.201.0.0/24}
containers:
  web: {host: a, networks: [blue]}
  db: {host: b, networks: [blue]}
  cache: {host: c, networks: [blue]}
"""
MACHINES = {"a": "192.0.2.11", "b": "192.0.2.12", "c": "192.0.2.13"}
TTL = "3"


def toward(lab: Lab, machine: str) -> set[str]:
    """The underlay addresses machine's forwarding entries lead to."""
    return {e["dst"] for e in lab.fdb(machine)}


def neighbours(lab: Lab, machine: str) -> set[str]:
    out = lab.run(machine, "ip", "-j", "neigh", "show", "nud", "permanent")
    return {e["dst"] for e in json.loads(out.stdout or "[]")}


def registered(cluster: EtcdCluster) -> list[str]:
    prefix = "/netapply/live/hosts/"
    found = cluster.call("kv/range", {"key": _b64(prefix), "range_end": _b64(
        etcd_mod.prefix_end(prefix)), "keys_only": True})
    kvs = found.get("kvs", [])
    assert isinstance(kvs, list)
    return sorted(base64.b64decode(kv["key"]).decode()[len(prefix):] for kv in kvs)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_machines_drop_a_dead_machine_after_its_lease_and_take_it_back(
        sandbox: Path, have_ping: None) -> None:
    lab = Lab(sandbox / "lab")
    cluster = EtcdCluster(sandbox / "etcd", extra_hosts=(STORE_HOST,))
    spec = sandbox / "live.yaml"
    url = cluster.url("netapply/live")
    watches: dict[str, Watch] = {}

    def start(name: str) -> None:
        # No --address: found as the address this machine reaches etcd from.
        watches[name] = Watch(lab, name, cluster.url("netapply/live", STORE_HOST),
                              sandbox / f"watch-{name}.log", "--host", name, "--ttl", TTL)

    try:
        for name, address in MACHINES.items():
            lab.up(name, f"{address}/24")
        subprocess.run(["ip", "addr", "add", f"{STORE_HOST}/24", "dev", "lab0"], check=True)
        cluster.start()
        spec.write_text(SPEC)
        revision = push(spec, url)
        for name in MACHINES:
            start(name)
        wait_for("every machine converged, with every other as a host", lambda: all(
            w.at(revision) and toward(lab, m) == set(MACHINES.values()) - {MACHINES[m]}
            for m, w in watches.items()))
        addresses = {m: lab.address(m, ns) for m, ns in (("a", "web"), ("b", "db"),
                                                         ("c", "cache"))}
        assert lab.ping("a", "web", "db") and lab.ping("c", "cache", "web")
        assert addresses["b"] in neighbours(lab, "a")

        # b's watch dies (SIGKILL, by PID): once its lease expires, a and c
        # drop every entry that leads to b; db is reported, not moved.
        watches["b"].process.send_signal(signal.SIGKILL)
        watches["b"].process.wait(timeout=10)
        wait_for("a and c dropped b", lambda: all(
            MACHINES["b"] not in toward(lab, m) and addresses["b"] not in neighbours(lab, m)
            for m in ("a", "c")))
        assert MACHINES["c"] in toward(lab, "a") and addresses["c"] in neighbours(lab, "a")
        assert any(r["left"] == ["b"] for r in watches["a"].records("hosts"))
        assert any("container 'db' is on host 'b', which is not registered now" in r["note"]
                   for r in watches["a"].records("note"))
        assert lab.run("b", "ip", "netns", "pids", "db").returncode == 0  # still there
        shown = lab.netapply("a", "show", "--source", cluster.url("netapply/live", STORE_HOST),
                             "--host", "a")
        assert shown.returncode == 0, shown.stderr
        assert "note: container 'db' is on host 'b', which is not registered now" in \
            " ".join(shown.stdout.split())
        assert lab.ping("a", "web", "cache")

        # b's watch starts again: it registers, and a and c take it back.
        watches.pop("b").stderr.close()
        start("b")
        wait_for("a and c took b back", lambda: all(
            MACHINES["b"] in toward(lab, m) and addresses["b"] in neighbours(lab, m)
            for m in ("a", "c")))
        wait_for("web reaches db again", lambda: lab.ping("a", "web", "db"), 10)

        # The store is lost (two of three members down) for longer than the
        # TTL: nobody is dropped; each machine says once that it cannot keep
        # its registration alive.
        cluster.members[1].stop()
        cluster.members[2].stop()
        wait_for("every machine says its registration is failing", lambda: all(
            any("cannot keep its registration alive" in r["source"]
                for r in w.records("source")) for w in watches.values()))
        time.sleep(int(TTL) + 2)
        for m in MACHINES:
            assert toward(lab, m) == set(MACHINES.values()) - {MACHINES[m]}
        assert lab.ping("a", "web", "db")
        for w in watches.values():
            failing = [r for r in w.records("source")
                       if "cannot keep its registration alive" in r["source"]]
            assert len(failing) == 1, failing
        cluster.members[1].start()
        cluster.members[2].start()
        cluster.wait_healthy()
        wait_for("every machine's registration is kept alive again", lambda: all(
            any("kept alive again" in r["source"] for r in w.records("source"))
            for w in watches.values()))

        # A member added and one removed: nobody else moves.
        spec.write_text(SPEC.replace("  cache: {host: c, networks: [blue]}\n",
                                     "  extra: {host: c, networks: [blue]}\n"))
        revision = push(spec, url)
        wait_for("converged on the new members", lambda: all(
            w.at(revision) for w in watches.values()))
        assert lab.address("a", "web") == addresses["a"]
        assert lab.address("b", "db") == addresses["b"]
        assert lab.ping("c", "extra", "web")

        # A clean stop (SIGTERM) revokes c's lease (its key is gone as the
        # watch exits, not a TTL later): a and b drop it.
        watches["c"].stop()
        assert registered(cluster) == ["a", "b"]
        wait_for("a and b dropped c", lambda: all(
            MACHINES["c"] not in toward(lab, m) for m in ("a", "b")))
    finally:
        for w in watches.values():
            w.stop()
        cluster.stop()
        lab.lab("down")


def test_the_fleet_demo_runs(sandbox: Path, have_ping: None) -> None:
    """make demo-fleet (scripts/demo-fleet.sh, which fails on any step that
    does not work), as docs/fleet.md walks through it."""
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [str(repo / "scripts" / "demo-fleet.sh")], capture_output=True, text=True, cwd=repo,
        env={**os_env_without_etcd(), "LAB_DIR": str(sandbox / "lab"),
             "NETAPPLY": f"{sys.executable} -m reconciler.cli"}, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(no answer: node-a dropped node-c; db is reported, not moved)" in result.stdout
    assert "hosts -node-c" in result.stdout
