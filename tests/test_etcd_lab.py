"""A fleet on etcd, with real packets: three lab machines (scripts/lab) run
`netapply watch --source etcd://...` against a 3-member etcd cluster inside
the test's sandbox (members on loopback and on the underlay bridge's
192.0.2.1, where the machines reach them). Pushes converge everywhere; a move
converges; of two concurrent pushes one wins; one member down changes
nothing; without quorum the machines keep their state, repair drift, say the
loss once and catch up when quorum returns; a machine cut off while the
store is compacted catches up too."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.etcdlab import EtcdCluster, os_env_without_etcd
from tests.test_overlay_lab import Lab

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent
SPEC = """\
version: 1
project: fleet
hosts:
  a: {address: 192.0.2.11}
  b: {address: 192.0.2.12}
  c: {address: 192.0.2.13}
networks:
  blue: {driver: overlay, vni: 100, subnet: 10.200.0.0/24}
containers:
  web: {host: a, networks: [blue]}
  db: {host: b, networks: {blue: {aliases: [database]}}}
"""
MACHINES = {"a": "192.0.2.11/24", "b": "192.0.2.12/24", "c": "192.0.2.13/24"}
STORE_HOST = "192.0.2.1"  # the sandbox's end of the underlay


def wait_for(what: str, check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.1)


class Watch:
    """`netapply watch --source` on a lab machine, and its JSON log."""

    def __init__(self, lab: Lab, machine: str, url: str, log: Path, *options: str):
        self.log = log
        self.stderr = open(log, "a")  # noqa: SIM115 - closed in stop()
        # scripts/lab run execs nsenter, which execs python: this PID is the watch.
        self.process = subprocess.Popen(
            [str(REPO / "scripts" / "lab"), "run", machine, sys.executable, "-m",
             "reconciler.cli", "watch", "--source", url, "--log-format", "json",
             "--debounce", "0.1", *options], stdout=subprocess.DEVNULL, stderr=self.stderr,
            env={**lab.env, **os_env_without_etcd(), "LAB_DIR": lab.env["LAB_DIR"]}, cwd=REPO)

    def records(self, event: str) -> list[dict[str, Any]]:
        return [r for r in map(json.loads, self.log.read_text().splitlines())
                if r.get("event") == event]

    def at(self, revision: int) -> bool:
        """Converged on the spec of `revision` (or a later one)."""
        return any(r["result"] == "converged" and r["detail"].startswith("revision ")
                   and int(r["detail"].split()[1]) >= revision for r in self.records("reconcile"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=15)
        self.stderr.close()


def push(spec: Path, url: str, *args: str) -> int:
    result = subprocess.run([sys.executable, "-m", "reconciler.cli", "push", *args, str(spec),
                             url], capture_output=True, text=True, cwd=REPO,
                            env=os_env_without_etcd())
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_a_fleet_follows_etcd_through_moves_races_member_loss_and_compaction(
        sandbox: Path, have_ping: None) -> None:
    lab = Lab(sandbox / "lab")
    cluster = EtcdCluster(sandbox / "etcd", extra_hosts=(STORE_HOST,))
    watches: dict[str, Watch] = {}
    spec = sandbox / "fleet.yaml"
    url = cluster.url("netapply/fleet")
    try:
        for name, address in MACHINES.items():
            lab.up(name, address)
        subprocess.run(["ip", "addr", "add", f"{STORE_HOST}/24", "dev", "lab0"], check=True)
        cluster.start()
        spec.write_text(SPEC)
        revision = push(spec, url)
        for name in MACHINES:
            watches[name] = Watch(lab, name, cluster.url("netapply/fleet", STORE_HOST),
                                  sandbox / f"watch-{name}.log")

        def converged(revision: int, what: str) -> None:
            wait_for(f"every machine at revision {revision} ({what})",
                     lambda: all(w.at(revision) for w in watches.values()))

        converged(revision, "first push")
        assert lab.ping("a", "web", "db") and lab.ping("a", "web", "database")
        assert lab.ping("b", "db", "web")
        db_ip = lab.address("b", "db")

        # An invalid spec written by hand keeps the last good one in force, and
        # its problem is named at the etcd key, line and column.
        cluster.call("kv/put", {"key": _b64("/netapply/fleet/zz.yaml"),
                                "value": _b64("containers:\n  web: {host: nowhere}\n")})
        wait_for("the invalid spec reported", lambda: any(
            "etcd://192.0.2.1:23790,192.0.2.1:23792,192.0.2.1:23794/netapply/fleet/zz.yaml:2:3"
            in " ".join(r["errors"]) for r in watches["a"].records("reconcile")))
        assert lab.ping("a", "web", "db")
        cluster.call("kv/deleterange", {"key": _b64("/netapply/fleet/zz.yaml")})

        # A move: db from b to c; its address stays.
        spec.write_text(SPEC.replace("db: {host: b", "db: {host: c"))
        converged(push(spec, url), "db moved to c")
        assert lab.address("c", "db") == db_ip
        assert lab.run("b", "ip", "netns", "pids", "db").returncode != 0
        wait_for("web reaches db on c", lambda: lab.ping("a", "web", "db"), 10)

        # Two pushes based on the same revision: one wins, the other writes nothing.
        base = cluster.revision()
        racers = []
        for name, host in (("left", "a"), ("right", "b")):
            path = sandbox / f"{name}.yaml"
            path.write_text(spec.read_text() + f"  {name}: {{host: {host}, networks: [blue]}}\n")
            racers.append(subprocess.Popen(
                [sys.executable, "-m", "reconciler.cli", "push", "--expect-revision", str(base),
                 str(path), url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                cwd=REPO, env=os_env_without_etcd()))
        results = [(r.wait(timeout=30), *r.communicate()) for r in racers]
        assert sorted(code for code, _, _ in results) == [0, 1], results
        won = int(next(out for code, out, _ in results if code == 0))
        assert f"changed at revision {won}" in next(err for code, _, err in results if code)
        converged(won, "the winning push")
        winner, machine = ("left", "a") if results[0][0] == 0 else ("right", "b")
        loser, other = ("right", "b") if winner == "left" else ("left", "a")
        assert lab.run(machine, "ip", "netns", "pids", winner).returncode == 0
        assert lab.run(other, "ip", "netns", "pids", loser).returncode != 0
        spec.write_text((sandbox / f"{winner}.yaml").read_text())
        assert won > base

        # One member down: pushes still converge.
        cluster.members[0].stop()
        spec.write_text(spec.read_text() + "  solo: {host: c, networks: [blue]}\n")
        converged(push(spec, url), "with one member down")  # push fails over too

        # Two down: no quorum. The machines keep their state, repair drift, and
        # say the loss once.
        cluster.members[1].stop()
        wait_for("every machine says the store is lost", lambda: all(
            any("lost the spec store" in r["source"] for r in w.records("source"))
            for w in watches.values()), 40)
        web_ip = lab.address("a", "web")
        assert lab.run("a", "ip", "-n", "web", "addr", "flush", "dev", "eth0").returncode == 0
        wait_for("web's address repaired without the store",
                 lambda: _has_address(lab, "a", "web", web_ip), 15)
        assert lab.ping("a", "web", "db")
        for w in watches.values():
            lost = [r for r in w.records("source") if "lost the spec store" in r["source"]]
            assert len(lost) == 1, lost

        # Quorum returns: they catch up with what is pushed next.
        cluster.members[0].start()
        cluster.members[1].start()
        cluster.wait_healthy()
        spec.write_text(spec.read_text().replace("solo: {host: c", "solo: {host: a"))
        converged(push(spec, url), "after quorum returned")
        assert lab.run("a", "ip", "netns", "pids", "solo").returncode == 0
        assert all(any("back" in r["source"] for r in w.records("source"))
                   for w in watches.values())

        # c is cut off from the store while the spec changes twice and the
        # history is compacted; once back it catches up by listing again.
        assert lab.run("c", "ip", "link", "set", "eth0", "down").returncode == 0
        spec.write_text(spec.read_text() + "  late: {host: c, networks: [blue]}\n")
        push(spec, url)
        spec.write_text(spec.read_text().replace("late: {host: c", "later: {host: c"))
        last = push(spec, url)
        cluster.compact()
        assert lab.run("c", "ip", "link", "set", "eth0", "up").returncode == 0
        converged(last, "c back after a compaction")
        assert lab.run("c", "ip", "netns", "pids", "later").returncode == 0
        assert lab.run("c", "ip", "netns", "pids", "late").returncode != 0
    finally:
        for w in watches.values():
            w.stop()
        cluster.stop()
        lab.lab("down")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _has_address(lab: Lab, machine: str, ns: str, address: str) -> bool:
    out = lab.run(machine, "ip", "-j", "-n", ns, "-4", "addr", "show", "dev", "eth0")
    return address in out.stdout
