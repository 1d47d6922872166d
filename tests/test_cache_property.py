"""Watch mode's observation cache against a random stream of kernel and file
events, on the real kernel (issue 17: "a cache fed by a random event stream,
dropped events included, equals a fresh observation after resync").

A project is applied in a private namespace; the real listeners (KernelEvents
for netlink, watch's /run/netns and /etc/netns handlers on watchdog) feed a
real ObservedCache through a Stream that decides each mark's fate: delivered,
silently dropped, or lost loudly (the cache is told everything(), as the
listener does on ENOBUFS). Between changes from outside, a reconcile observes
as watch does (previous=cache.observed, reread=cache.take()) and compares
with a fresh observation (new sockets, nothing kept).

- Every mark delivered or lost loudly: each reconcile equals the fresh one.
- Marks silently dropped: after a resync (everything(), as the timer and
  SIGHUP do) the reconcile equals the fresh one.
- Not true of any cache: with every mark dropped, each outside change but
  one (a new /etc/netns entry, listed every time) leaves the cached
  observation behind a fresh one; a resync then catches up. Each change is
  also checked alone, marked, since the examples draw few of each.

Barriers, not sleeps, make "every event of a change has been handled": the
netlink listener is idle with nothing queued on any of its sockets (the kernel
queues a notification before the command that caused it returns), and a
sentinel file made in /run/netns and /etc/netns has reached the handlers,
which get inotify's events in order.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from watchdog.observers import Observer

from reconciler import engine, firewall
from reconciler import spec as spec_mod
from reconciler.drivers import events as events_mod
from reconciler.drivers.kernel import ETC_NETNS_DIR, NETNS_DIR
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.resources import tables_dir
from reconciler.state.cache import ObservedCache
from reconciler.state.observe import ObservedState
from reconciler.watch import _EtcNetnsEvents, _NetnsEvents
from tests.kernelutil import (
    OUTSIDE_CHANGES,
    Endpoint,
    fresh_observation,
    outside_change,
    private_namespace,
    require_sandbox,
)

pytestmark = pytest.mark.kernel

PROJECT = "c"
SPEC = f"""\
version: 1
project: {PROJECT}
networks:
  front: {{subnet: 172.30.1.0/24, interface: br-cf}}
  back: {{subnet: 172.30.2.0/24, interface: br-cb, internal: true}}
containers:
  web:
    networks: {{front: {{ipv4_address: 172.30.1.10}}}}
    routes: [{{to: 10.99.0.0/16, via: 172.30.1.254}}]
    ports: ["8080:80"]
  db: {{networks: {{front: {{ipv4_address: 172.30.1.11}}, back: {{ipv4_address: 172.30.2.11}}}}}}
  app: {{networks: {{back: {{ipv4_address: 172.30.2.12}}}}}}
"""
ENDS = {
    "web": Endpoint(PROJECT, "web", "front", "172.30.1.10/24", "br-cf"),
    "db": Endpoint(PROJECT, "db", "front", "172.30.1.11/24", "br-cf"),
    "app": Endpoint(PROJECT, "app", "back", "172.30.2.12/24", "br-cb"),
}
NETWORKS = {"web": ("front",), "db": ("front", "back"), "app": ("back",)}
BARRIER = ".barrier-"  # sentinel files' prefix: their events are the barrier's, never marks
WAIT = 15.0  # seconds any barrier may take before the test fails


class Fate(Enum):
    DELIVER = "deliver"
    LOUD = "loud"  # lost with ENOBUFS: the cache is told everything()
    DROP = "drop"  # lost silently
    MIXED = "mixed"  # each mark on its own: delivered, dropped or lost loudly


class Stream:
    """Between the listeners and the cache: each mark meets the current fate.
    Has the methods of events.Marks and those watch's file handlers call."""

    def __init__(self, cache: ObservedCache):
        self.cache = cache
        self.fate = Fate.DELIVER
        self.rng = random.Random(0)
        self._seen = threading.Condition()
        self._sentinels: set[str] = set()

    def _meet(self, mark: Callable[[], None]) -> None:
        fate = self.fate
        if fate is Fate.MIXED:
            fate = self.rng.choice([Fate.DELIVER, Fate.DROP, Fate.LOUD])
        if fate is Fate.DELIVER:
            mark()
        elif fate is Fate.LOUD:
            self.cache.everything()

    def everything(self) -> None:
        self._meet(self.cache.everything)

    def namespace(self, ns: str) -> None:
        self._meet(lambda: self.cache.namespace(ns))

    def host(self, index: int | None = None) -> None:
        self._meet(lambda: self.cache.host(index))

    def nft(self) -> None:
        self._meet(self.cache.nft)

    def netns_entry(self, name: str) -> None:
        if not self._sentinel(name):
            self._meet(lambda: self.cache.netns_entry(name))

    def etc_entry(self, name: str | None) -> None:
        if name is None or not self._sentinel(name):
            self._meet(lambda: self.cache.etc_entry(name))

    def _sentinel(self, name: str) -> bool:
        if not name.startswith(BARRIER):
            return False
        with self._seen:
            self._sentinels.add(name)
            self._seen.notify_all()
        return True

    def wait_for(self, sentinel: str) -> None:
        with self._seen:
            assert self._seen.wait_for(lambda: sentinel in self._sentinels, WAIT), \
                f"the file handlers did not see {sentinel} in {WAIT} s"


class Listener(events_mod.KernelEvents):
    """KernelEvents that can say it has handled every message queued so far,
    and every watch() asked so far. It peeks into the base's sockets (its
    private _sockets and _listeners) under a lock its thread holds while it
    reads or syncs: with the lock held and every socket empty, each message
    queued before has been read and has marked what it is about."""

    def __init__(self, marks: Stream):
        super().__init__(PROJECT, firewall.table_name(PROJECT), self._heard, self._failed, marks)
        self.heard: list[str] = []
        self.errors: list[str] = []  # the thread failed and started over: a bug
        self._busy = threading.Lock()
        self._asked = 0
        self._synced = 0
        self._started = threading.Event()

    def _heard(self, text: str) -> None:
        self.heard.append(text)

    def _failed(self, text: str) -> None:
        self.errors.append(text)

    def watch(self, namespaces: Iterable[str]) -> None:
        with self._busy:
            self._asked += 1
        super().watch(namespaces)

    def _sync(self, selector: selectors.BaseSelector) -> None:
        with self._busy:
            asked = self._asked
            super()._sync(selector)
            self._synced = asked
            self._started.set()

    def _read(self, *args: Any) -> None:
        with self._busy:
            super()._read(*args)

    def settle(self) -> None:
        """Wait until every watch() is synced and no socket holds a message."""
        deadline = time.monotonic() + WAIT
        while True:
            with self._busy:
                if self._started.is_set() and self._synced >= self._asked and not any(
                        _queued(sock) for sock in self._all_sockets()):
                    return
            assert time.monotonic() < deadline, f"listener not idle in {WAIT} s: {self.heard}"
            time.sleep(0.002)

    def _all_sockets(self) -> list[socket.socket]:
        return [*self._sockets.values(), *(sock for _ns, sock in self._listeners.values())]


def _queued(sock: socket.socket) -> bool:
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return True  # a message, or an error (ENOBUFS) the listener has yet to meet


@dataclass
class Lab:
    spec: spec_mod.Spec
    cache: ObservedCache
    stream: Stream
    listener: Listener
    kernel: NetlinkKernel  # kept from one reconcile to the next, as watch keeps it
    sentinels: Iterator[int]
    held: list[int]  # descriptors of deleted namespaces, closed at the end

    def settle(self) -> None:
        """Every event of what was done so far has met its fate."""
        self.listener.settle()
        for directory in (NETNS_DIR, ETC_NETNS_DIR):
            name = f"{BARRIER}{next(self.sentinels)}"
            path = os.path.join(directory, name)
            with open(path, "w"):
                pass
            os.unlink(path)
            self.stream.wait_for(name)

    def observe(self) -> ObservedState:
        """A reconcile's observation, as watch makes it (watch._reconcile)."""
        reread, renamed = self.cache.take()
        for name in renamed:
            self.kernel.forget(name)
        self.kernel.forget_moved_paths()
        observed = engine.observe_project(self.kernel, self.spec, previous=self.cache.observed,
                                          reread=reread)
        self.cache.store(observed)
        return observed

    def change(self, what: str, container: str) -> None:
        """An outside change; a namespace it deletes is kept alive (as a process
        still running in it would keep it), so the kernel never tears one down
        while the test compares: both observations see the same kernel."""
        if what in ("netns", "netns again"):
            with contextlib.suppress(FileNotFoundError):
                self.held.append(os.open(os.path.join(NETNS_DIR, container), os.O_RDONLY))
        outside_change(what, ENDS[container])

    def reconcile(self) -> tuple[ObservedState, ObservedState]:
        """The cached observation and a fresh one, after every event so far has
        met its fate; then the listener listens where watch would have it
        listen (in the spec's namespaces that exist now)."""
        self.settle()
        cached, fresh = self.observe(), fresh_observation(self.spec)
        self.listener.watch(NETWORKS)
        self.listener.settle()
        return cached, fresh


@contextmanager
def lab(marks: bool = True) -> Iterator[Lab]:
    """The project applied in a private namespace, the listeners running and
    the cache holding a first, full observation. marks=False: no mark ever
    reaches the cache (every one is dropped)."""
    require_sandbox()
    with ExitStack() as stack:
        stack.enter_context(private_namespace())
        spec = spec_mod.load_text(SPEC, f"{PROJECT}.yaml")
        kernel = NetlinkKernel()
        stack.callback(kernel.close)
        engine.apply(kernel, spec, engine.snapshot(kernel, spec).plan)
        cache = ObservedCache()
        stream = Stream(cache)
        listener = Listener(stream)
        listener.start()
        stack.callback(listener.stop)
        files = Observer()
        etc = _EtcNetnsEvents(cast(ObservedCache, stream))
        etc.tables = tables_dir(PROJECT)
        files.schedule(_NetnsEvents(lambda _text: None, cast(ObservedCache, stream)), NETNS_DIR)
        files.schedule(etc, ETC_NETNS_DIR, recursive=True)
        files.start()

        def stop_files() -> None:
            files.stop()
            files.join()

        stack.callback(stop_files)
        listener.watch(NETWORKS)
        setup = Lab(spec, cache, stream, listener, kernel, itertools.count(), [])
        stack.callback(lambda: [os.close(fd) for fd in setup.held])
        setup.settle()
        setup.observe()  # the first reconcile: a full read
        if not marks:
            stream.fate = Fate.DROP
        yield setup
        assert listener.errors == []


def differences(cached: ObservedState, fresh: ObservedState) -> list[str]:
    """What differs, by resource key and by field of the rest ([] if equal)."""
    found = []
    for key in sorted(cached.resources.keys() | fresh.resources.keys(), key=str):
        a, b = cached.resources.get(key), fresh.resources.get(key)
        if a != b:
            found.append(f"{key}: cached {a}, fresh {b}")
    for f in fields(ObservedState):
        if f.compare and f.name != "resources":
            a, b = getattr(cached, f.name), getattr(fresh, f.name)
            if a != b:
                found.append(f"{f.name}: cached {a}, fresh {b}")
    return found


# ---- the properties ----------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    what: str
    container: str
    fate: Fate
    reconcile: bool = False  # a reconcile follows it

    def __str__(self) -> str:
        return (f"{self.what} of {self.container} ({self.fate.value})"
                + (", reconcile" if self.reconcile else ""))


def changes(fates: list[Fate]) -> st.SearchStrategy[list[Change]]:
    return st.lists(st.builds(Change, st.sampled_from(OUTSIDE_CHANGES),
                              st.sampled_from(sorted(ENDS)), st.sampled_from(fates),
                              st.booleans()), min_size=1, max_size=6)


def run(setup: Lab, plan: list[Change], check: bool) -> None:
    """Make the changes, each under its fate, and reconcile after those that
    say so and at the end; with check, each reconcile's cached observation
    must equal a fresh one."""
    for change in plan:
        note(f"change: {change}")
        setup.stream.fate = change.fate
        setup.change(change.what, change.container)
        setup.settle()
        setup.stream.fate = Fate.DELIVER
        if change.reconcile or change is plan[-1]:
            cached, fresh = setup.reconcile()
            if check:
                assert differences(cached, fresh) == []


def resynced(setup: Lab) -> list[str]:
    """What a resync's observation (everything marked, as the timer and SIGHUP
    do) has that a fresh one has not, and the reverse ([] when equal)."""
    setup.settle()
    setup.cache.everything()
    return differences(*setup.reconcile())


PROPERTY_SETTINGS = settings(
    settings.default,
    # 20 examples with the "ci" profile, 100 with "long" (conftest.py).
    max_examples=max(15, settings.default.max_examples // 20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(plan=changes([Fate.DELIVER, Fate.DELIVER, Fate.DELIVER, Fate.LOUD]))
def test_a_cache_fed_every_event_equals_a_fresh_observation(plan: list[Change]) -> None:
    """Every mark delivered, or lost loudly (ENOBUFS): each reconcile's cached
    observation is what a fresh one sees."""
    with lab() as setup:
        run(setup, plan, check=True)


@PROPERTY_SETTINGS
@given(plan=changes([Fate.DROP, Fate.MIXED, Fate.DELIVER, Fate.LOUD]))
def test_a_cache_that_lost_events_equals_a_fresh_observation_after_a_resync(
        plan: list[Change]) -> None:
    """Marks dropped silently: what the cache holds may be stale until a
    resync (the timer, SIGHUP) marks everything; then it is not."""
    with lab() as setup:
        run(setup, plan, check=False)
        assert resynced(setup) == []


@pytest.mark.parametrize("what", OUTSIDE_CHANGES)
def test_each_change_is_missed_without_marks_seen_with_them_and_after_a_resync(
        what: str) -> None:
    """The properties are not true of any cache: with every mark dropped,
    each outside change leaves the cached observation
    behind a fresh one; with marks, the same change is seen; with its marks
    dropped, a resync sees it. (The examples above draw few of each.)"""
    with lab(marks=False) as setup:
        setup.change(what, "web")
        found = differences(*setup.reconcile())
        assert found != []
        assert resynced(setup) == []
    with lab() as setup:
        setup.change(what, "web")
        assert differences(*setup.reconcile()) == []
