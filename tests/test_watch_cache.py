"""Watch mode's observation cache never hides drift: random kernel changes
while watch runs are all repaired (checked by a fresh, uncached observation),
and lost notifications (ENOBUFS) make the next observation read everything."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler import engine
from reconciler import spec as spec_mod
from reconciler.drivers import events as events_mod
from reconciler.state.cache import ObservedCache
from reconciler.state.observe import ObservedState
from tests.kernelutil import Endpoint, fresh_observation, outside_change, until_started
from tests.test_watch import watching

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: w
networks:
  front: {subnet: 172.30.1.0/24, interface: br-w}
containers:
  web: {networks: {front: {ipv4_address: 172.30.1.10}}}
  db: {networks: {front: {ipv4_address: 172.30.1.11}}}
  app: {networks: {front: {ipv4_address: 172.30.1.12}}}
"""
ENDS = {name: Endpoint("w", name, "front", f"172.30.1.{last}/24", "br-w")
        for name, last in (("web", 10), ("db", 11), ("app", 12))}
DRIFTS = ("veth", "address", "route", "table", "netns", "mtu", "bridge mtu")


def drift(rng: random.Random) -> str:
    """One change from outside, to something the project owns; what it was."""
    name = rng.choice(sorted(ENDS))
    what = rng.choice(DRIFTS)
    outside_change(what, ENDS[name])
    return f"{what} of {name}"


def converged(spec: spec_mod.Spec) -> bool:
    """A fresh observation (new sockets, nothing cached) plans nothing."""
    try:
        return engine.plan_from(spec, fresh_observation(spec)).plan.empty
    except Exception:
        return False  # the watcher is in the middle of a repair


def test_random_drift_while_watch_runs_is_all_repaired(sandbox: Path) -> None:
    rounds = int(os.environ.get("NETAPPLY_DRIFT_ROUNDS", "12"))
    seed = int(os.environ.get("NETAPPLY_DRIFT_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    spec = spec_mod.load_text(SPEC, "w.yaml")
    with watching(sandbox, SPEC, "--resync", "3600") as watch:
        watch.started()
        watch.quiet()
        done: list[str] = []
        for _ in range(rounds):
            # A burst of one to three changes, some while a repair runs.
            for _ in range(rng.randint(1, 3)):
                done.append(drift(rng))
                time.sleep(rng.choice([0, 0, 0.005, 0.05]))
            deadline = time.monotonic() + 15
            while not converged(spec):
                assert time.monotonic() < deadline, f"seed {seed}: not repaired: {done}"
                time.sleep(0.1)
        watch.quiet()
        assert converged(spec), f"seed {seed}: {done}"
        # No resync ran: the notifications alone found everything.
        assert not any("resync" in r["trigger"] for r in watch.reconciles())
        # The repairs read what the notifications named, not everything.
        assert any(r["actions"] and not r["full_read"] for r in watch.reconciles())


def test_lost_notifications_make_the_next_observation_read_everything(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny receive buffer and a burst of link changes while the listener
    does not read: the kernel drops notifications (ENOBUFS)."""
    monkeypatch.setattr(events_mod, "RCVBUF", 1)  # the kernel rounds it up to its least
    reading = threading.Event()
    reading.set()
    real_read = events_mod.KernelEvents._read

    def held_read(self: events_mod.KernelEvents, *args: Any) -> None:
        reading.wait()
        real_read(self, *args)

    monkeypatch.setattr(events_mod.KernelEvents, "_read", held_read)
    heard: list[str] = []
    cache = ObservedCache()
    cache.store(ObservedState({}))
    events = events_mod.KernelEvents("w", "netapply-w", heard.append, heard.append, cache)
    events.start()
    try:
        until_started(cache)
        subprocess.run(["ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe0p"],
                       check=True)
        deadline = time.monotonic() + 5
        while not (reread := cache.take()[0]) or not reread.host_links:
            assert time.monotonic() < deadline, "no mark for a host link change"
            time.sleep(0.01)
        assert reread.namespaces == frozenset()  # one part, not everything
        # Of the host, the new links by index, not a dump of every link.
        probe = json.loads(subprocess.run(["ip", "-j", "link", "show", "probe0"], check=True,
                                          capture_output=True, text=True).stdout)[0]
        assert not reread.host and probe["ifindex"] in reread.host_links
        reading.clear()
        time.sleep(0.1)
        batch = "".join(f"link add probe{i} type veth peer name probe{i}p\n"
                        for i in range(1, 200))
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
        reading.set()
        deadline = time.monotonic() + 5
        while not any("overflowed" in text for text in heard):
            assert time.monotonic() < deadline, heard
            time.sleep(0.01)
        assert cache.take()[0] is None  # everything is read again
    finally:
        reading.set()
        events.stop()
