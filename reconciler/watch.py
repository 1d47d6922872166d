"""`netapply watch`: keep the kernel equal to the spec, unattended.

Level-based, as controller-runtime's reconcile loop: a spec change (a file
event, an etcd revision), a kernel notification, a timer or SIGHUP only says
"look again"; every reconcile is the same observe -> plan -> apply -> verify
as `netapply apply`.
The engine's own writes cause notifications too (and the kernel's own
follow-ups, such as IPv6 addresses becoming usable); they lead to a few more
reconciles, which find nothing to do and so write nothing.

What makes a reconcile cheap: the namespaces' netlink sockets stay open; the
observation is cached (state/cache.py), and a notification marks the part
of the kernel it is about (a namespace, the host's, nftables, an /etc/netns
entry) to be read again, and only those parts are; the timer's resync, and
any notification lost (ENOBUFS), read everything again. The spec comes from
a source (sources/: files or etcd); of a spec on disk, only the files that
changed are parsed again (speccache.py), and a spec whose files are all as
they were is not built again. The plan covers what changed since the
last reconcile (engine.plan_from's base): where only objects of containers'
namespaces changed, those namespaces are planned and the desired state is
kept; anything else plans the whole. The verification reads again what
the apply wrote.

- Triggers arrive on one queue. The first of a burst starts a reconcile at
  once (leading edge); what comes while it runs, or within the debounce
  interval after it, makes one more when the burst has calmed down.
- An invalid spec is logged, error by error, and the last good spec stays in
  force: drift is still repaired against it, and nothing is torn down.
- A failed reconcile is retried with capped exponential backoff; the loop
  never dies on a kernel error.
- SIGTERM/SIGINT stop it between two kernel writes, never in the middle of
  one; it then exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler import engine, expect, firewall, fleet, lock, machines, runtimes, sources
from reconciler import spec as spec_mod
from reconciler.drivers.events import KernelEvents
from reconciler.drivers.kernel import ETC_NETNS_DIR, NETNS_DIR
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.errors import NetapplyError, SpecError
from reconciler.executor import describe
from reconciler.model import Runtime, Spec
from reconciler.planner import Action, Change
from reconciler.resources import Netns, Sublink, Veth, tables_dir
from reconciler.sources.files import FileSource
from reconciler.state.cache import ObservedCache
from reconciler.state.observe import ObservedState

BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
BURST_MAX = 5.0  # a burst longer than this is reconciled anyway
STOP = ("stop", "")


def next_backoff(previous: float) -> float:
    """Seconds to wait before retrying a failed reconcile: 1, 2, 4, ... 60."""
    return min(max(previous * 2, BACKOFF_FIRST), BACKOFF_MAX)


class Stopping(Exception):
    """Raised between two kernel writes once a stop was asked for."""


@dataclass(frozen=True)
class Options:
    spec: Path | None  # a spec file or directory, unless source is given
    host: str | None = None
    debounce: float = 0.3
    resync: float = 60.0
    log_format: str = "auto"  # auto: text on a terminal, JSON lines otherwise
    lock_timeout: float = 30.0
    engine_urls: Mapping[Runtime, str | None] = field(default_factory=dict)
    source: sources.Source | None = None  # where the spec is (default: FileSource(spec))


@dataclass
class Outcome:
    result: str  # "converged", "invalid spec", "failed", "stopped"
    actions: int = 0
    errors: list[str] = field(default_factory=list)
    detail: str = ""
    steps: list[str] = field(default_factory=list)  # what was done ("web: create address ...")
    full_read: bool = False  # the observation read the whole kernel (no cache)


class Log:
    """One line per event that matters: human-readable on a terminal, JSON
    lines otherwise (or as asked)."""

    def __init__(self, log_format: str):
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.json = log_format == "json" or (log_format == "auto" and not self.console.is_terminal)
        self.lock = threading.Lock()  # lines come from the loop and from listener threads

    def line(self, event: str, text: str, **fields: Any) -> None:
        with self.lock:
            self._line(event, text, **fields)

    def _line(self, event: str, text: str, **fields: Any) -> None:
        now = datetime.now(UTC)
        if self.json:
            record = {"time": now.isoformat(timespec="milliseconds"), "event": event, **fields}
            sys.stderr.write(json.dumps(record, sort_keys=True) + "\n")
            sys.stderr.flush()
        else:
            stamp = now.astimezone().strftime("%H:%M:%S")
            self.console.print(f"[dim]{stamp}[/dim] {escape(text)}")


class _LibraryLog(logging.Handler):
    """Warnings of the libraries (watchdog's) as lines of our log, so that a
    JSON log stays JSON lines."""

    def __init__(self, log: Log):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.line("library", f"{record.name}: {record.getMessage()}", logger=record.name,
                      level=record.levelname.lower(), message=record.getMessage())


class _NetnsEvents(FileSystemEventHandler):
    """Entries of /run/netns changing: the cache reads that name again (the
    namespace may be another now); an owned one deleted (`ip netns del`)
    asks for a reconcile."""

    def __init__(self, notify: Callable[[str], None], cache: ObservedCache):
        self.notify = notify
        self.cache = cache
        self.owned: set[str] = set()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write", "closed"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self.cache.netns_entry(os.path.basename(os.fsdecode(path)))
        name = os.path.basename(os.fsdecode(event.src_path))
        if event.event_type == "deleted" and name in self.owned:
            self.notify(f"netns {name} deleted")


class _EtcNetnsEvents(FileSystemEventHandler):
    """Changes under /etc/netns: the entry they are in is read again at the next
    reconcile (hosts files are repaired then, as before the cache)."""

    def __init__(self, cache: ObservedCache):
        self.cache = cache
        self.tables = ""  # the project's tables directory, once known

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            rest = os.path.relpath(os.fsdecode(path), ETC_NETNS_DIR)
            name = rest.split(os.sep, 1)[0]
            if name in (".", ".."):
                continue
            self.cache.etc_entry(None if name == self.tables else name)


class Watcher:
    def __init__(self, options: Options):
        self.options = options
        assert options.source is not None or options.spec is not None
        self.source: sources.Source = options.source or FileSource(options.spec or "")
        self.log = Log(options.log_format)
        self.triggers: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.stopping = False
        self.last_good: Spec | None = None
        self.owned_netns: set[str] = set()  # as the last successful reconcile left them
        self.owned_from: object = None  # the desired state owned_netns was found in
        self.reconciles = 0
        self.cache = ObservedCache()
        self.kernel: NetlinkKernel | None = None  # kept from one reconcile to the next
        # The last reconcile's outcome, what the next one plans against: only
        # what changed since is planned again (engine.plan_from's base).
        self.settled: engine.Snapshot | None = None
        self.unwatched = False  # /run/netns or /etc/netns unwatched: no cache to trust
        # The last spec built and the source's files it was built from: a source
        # that gives the very same files again (nothing changed) is not built again.
        self.built: tuple[spec_mod.Sources, Spec | SpecError] | None = None
        self.host_said: str | None = None
        self.resolver = runtimes.Resolver(options.engine_urls)
        self.engine_events = runtimes.EngineEvents(
            self.resolver.urls, self._put("engine"),
            lambda text: self.log.line("error", text, error=text),
            lambda text: self.log.line("engine", text))
        self.notes_said: tuple[str, ...] = ()
        self.failing_said: tuple[str, ...] = ()  # expectations that did not hold, as logged
        self.hosts_said: frozenset[str] | None = None  # the spec's hosts, as last built

    # ---- triggers --------------------------------------------------------------

    def _put(self, kind: str) -> Callable[[str], None]:
        return lambda detail: self.triggers.put((kind, detail))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # SimpleQueue.put is safe in a signal handler; nothing else is done here.
        if signum == signal.SIGHUP:
            self.triggers.put(("sighup", "SIGHUP"))
        else:
            self.stopping = True
            self.triggers.put(STOP)

    def _wait(self, timeout: float, reason: str, backing_off: bool) -> str | None:
        """What triggers the next reconcile, or `reason` when timeout passes;
        None to stop. The first trigger that comes while idle goes at once
        (leading edge), with whatever is queued by then. Triggers that came
        while the last reconcile ran are a burst: it and the rest of it (each
        within the debounce interval of the one before, for at most BURST_MAX)
        make one reconcile (the trailing one).
        While backing off, kernel events wait for the retry: a failing
        reconcile's own partial writes must not make it fail again at once.
        The spec and SIGHUP go through at once; but a spec event about what
        the failing reconcile read already (the last events of the write it
        woke up for, seen while it ran) waits too."""
        deadline = time.monotonic() + timeout
        kinds: set[str] = set()
        during = not self.triggers.empty()  # came while the last reconcile ran
        while True:
            try:
                item = self.triggers.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return ",".join(sorted(kinds | {reason}))
            if item == STOP:
                return None
            kinds.add(item[0])
            if not (backing_off and (item[0] == "kernel"
                                     or (item[0] == "spec" and self.source.unchanged()))):
                break
        if not during:
            # Leading edge: the first event while idle goes at once, with whatever
            # is queued already; what comes while it runs makes one more, below.
            while True:
                try:
                    item = self.triggers.get_nowait()
                except queue.Empty:
                    return ",".join(sorted(kinds))
                if item == STOP:
                    return None
                kinds.add(item[0])
        burst_end = time.monotonic() + BURST_MAX
        while (left := min(self.options.debounce, burst_end - time.monotonic())) > 0:
            try:
                item = self.triggers.get(timeout=left)
            except queue.Empty:
                break
            if item == STOP:
                return None
            kinds.add(item[0])
        return ",".join(sorted(kinds))

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        logging.getLogger().addHandler(_LibraryLog(self.log))
        observer = Observer()
        netns_events = _NetnsEvents(self._put("kernel"), self.cache)
        etc_events = _EtcNetnsEvents(self.cache)
        try:
            os.makedirs(NETNS_DIR, exist_ok=True)
            observer.schedule(netns_events, NETNS_DIR)
            os.makedirs(ETC_NETNS_DIR, exist_ok=True)
            observer.schedule(etc_events, ETC_NETNS_DIR, recursive=True)
        except OSError as e:  # e.g. the machine's limit of inotify watches
            self.unwatched = True
            text = (f"cannot watch files ({e}); changes are seen at the next resync, and "
                    "every reconcile reads the whole kernel")
            self.log.line("error", text, error=text)
        observer.start()
        kernel_events: KernelEvents | None = None
        self.log.line("start", f"watching {self.source.location} (debounce "
                      f"{self.options.debounce} s, full resync every {self.options.resync} s)",
                      spec=self.source.location, pid=os.getpid())
        self.source.follow(self._put("spec"), lambda text: self.log.line("source", text,
                                                                         source=text))
        try:
            trigger: str | None = "start"
            backoff = 0.0
            resync = False
            while trigger is not None and not self.stopping:
                self.source.refresh(resync)
                outcome = self._reconcile(trigger)
                if outcome.result == "stopped":
                    break
                backoff = next_backoff(backoff) if outcome.result == "failed" else 0.0
                if self.last_good is not None:
                    if kernel_events is None or not kernel_events.alive():
                        project = self.last_good.project
                        etc_events.tables = tables_dir(project)
                        kernel_events = KernelEvents(
                            project, firewall.table_name(project), self._put("kernel"),
                            lambda text: self.log.line("error", text, error=text), self.cache)
                        kernel_events.start()
                    netns_events.owned = {ns for ns in self.owned_netns if "/" not in ns}
                    kernel_events.watch(self.owned_netns)
                    self.engine_events.follow(runtime_names(self.last_good))
                # Every reconcile is a full one, so the resync timer starts anew.
                wait, reason = self.options.resync, "resync"
                if backoff and backoff < wait:
                    wait, reason = backoff, "retry"
                trigger = self._wait(wait, reason, backing_off=bool(backoff))
                # A resync trusts nothing kept: the whole kernel is read again,
                # and so is every file of the spec (the source's refresh).
                resync = trigger is not None and not {"resync", "sighup"}.isdisjoint(
                    trigger.split(","))
                if resync:
                    self.cache.everything()
        finally:
            # Its threads may still see an event while they stop, and say so.
            logging.getLogger("watchdog").setLevel(logging.ERROR)
            observer.stop()
            self.source.close()
            if kernel_events is not None:
                kernel_events.stop()
            self.engine_events.stop()
            self.resolver.close()
            if self.kernel is not None:
                self.kernel.close()
            observer.join(timeout=2)
        self.log.line("stop", "stopped", reconciles=self.reconciles)
        return 0

    def _reconcile(self, trigger: str) -> Outcome:
        self.reconciles += 1
        started = time.monotonic()
        outcome = self._attempt()
        took = time.monotonic() - started
        text = f"reconcile ({trigger}): {outcome.result}, {outcome.actions} action(s) in " \
               f"{took:.3f} s"
        if outcome.full_read:
            text += " (read the whole kernel)"
        if outcome.detail:
            text += f"; {outcome.detail}"
        if outcome.steps:
            text += ": " + "; ".join(outcome.steps)
        self.log.line("reconcile", text, trigger=trigger, result=outcome.result,
                      actions=outcome.actions, duration_s=round(took, 4), errors=outcome.errors,
                      detail=outcome.detail, steps=outcome.steps, full_read=outcome.full_read)
        for error in outcome.errors:
            self.log.line("error", f"  {error}", error=error)
        return outcome

    def _read(self) -> tuple[spec_mod.Sources, Spec]:
        """The spec as the source has it now, settled (sticky addresses
        allocated in etcd); read again while it changes under the settling."""
        for _attempt in range(3):
            read = self.source.read()
            try:
                return read, self.source.settle(self._build(read))
            except sources.Changed:
                continue
        raise NetapplyError("the spec kept changing while overlay addresses were allocated")

    def _build(self, read: spec_mod.Sources) -> Spec:
        """spec.build(read), or what it gave last time when the source gave
        the very same files again (a file source whose files are unchanged)."""
        if self.built is None or self.built[0] is not read:
            result: Spec | SpecError
            try:
                result = spec_mod.build(read)
            except SpecError as e:
                result = e
            self.built = (read, result)
        result = self.built[1]
        if isinstance(result, SpecError):
            raise SpecError(list(result.problems))
        return result

    def _hosts_changed(self, spec: Spec) -> None:
        """Says which machines joined or left (live hosts in etcd)."""
        hosts = frozenset(spec.hosts)
        if self.hosts_said is not None and hosts != self.hosts_said:
            joined, left = sorted(hosts - self.hosts_said), sorted(self.hosts_said - hosts)
            text = "hosts " + ", ".join([*(f"+{h}" for h in joined), *(f"-{h}" for h in left)])
            self.log.line("hosts", text, joined=joined, left=left, hosts=sorted(hosts))
        self.hosts_said = hosts

    def _attempt(self) -> Outcome:
        try:
            read, spec = self._read()
        except sources.Unavailable:
            # Said once by the source when lost; drift is still repaired.
            return self._keep_last_good([], "the spec store is unreachable; the last good "
                                            "spec stays in force")
        except SpecError as e:
            return self._keep_last_good([str(p) for p in e.problems])
        except NetapplyError as e:
            return self._keep_last_good([str(e)])
        if self.last_good is not None and spec.project != self.last_good.project:
            # Not this watch's project: its objects are not touched, and the
            # last good spec's drift is still repaired.
            return self._keep_last_good([
                f"the project changed from '{self.last_good.project}' to '{spec.project}': "
                "destroy the old project first, then restart watch"])
        self._hosts_changed(spec)
        outcome = self._apply(spec)
        if outcome.result == "converged":
            self.last_good = spec
            if read.revision is not None:
                outcome.detail = f"revision {read.revision}"
        return outcome

    def _keep_last_good(self, errors: list[str], detail: str = "the spec is invalid; the last "
                        "good one stays in force") -> Outcome:
        """The spec as saved cannot be applied (errors say why): the last good
        one stays in force, drift repaired against it, until a fix is saved."""
        if self.last_good is None:
            return Outcome("invalid spec" if errors else "no spec", errors=errors,
                           detail="nothing applied yet")
        outcome = self._apply(self.last_good)
        outcome.errors = errors + outcome.errors
        outcome.detail = detail
        if outcome.result == "converged" and errors:
            outcome.result = "invalid spec"
        return outcome

    def _apply(self, spec: Spec) -> Outcome:
        steps: list[str] = []
        owners: dict[str, str] = {}  # of the resolved spec (runtime containers' paths)

        def progress(action: Action, change: Change) -> None:
            """Records what is done, and stops between two actions once asked to."""
            steps.append(describe(action, change, owners))
            if self.stopping:
                raise Stopping

        if self.unwatched:  # no file events: trust nothing kept, sockets included
            self.cache.everything()
        reread, renamed = self.cache.take()
        stored = False
        base, self.settled = self.settled, None
        try:
            if self.kernel is None:
                self.kernel = NetlinkKernel()
            kernel = self.kernel
            for name in renamed:  # its socket may be bound to a namespace gone from there
                kernel.forget(name)
            kernel.forget_moved_paths()
            # In etcd, the name this machine registered as (if the spec spans machines).
            requested = self.options.host or (self.source.host if spec.hosts else None)
            local = engine.local_addresses(kernel) if spec.hosts and not requested else []
            chosen = machines.select(spec, requested, local)
            host = chosen.host
            if host is not None and host != self.host_said:
                self.log.line("host", f"this machine is host '{host}' ({chosen.why})",
                              host=host, why=chosen.why)
                self.host_said = host
            resolution = self.resolver.resolve(spec, host)
            spec = resolution.spec
            owners.update(spec.ns_owners())
            with lock.project_lock(spec.project, self.options.lock_timeout):
                snap = engine.snapshot(kernel, spec, host=host, previous=self.cache.observed,
                                       reread=reread, base=base)
                settled = snap
                observed = snap.observed
                # Said once each time they change: skipped runtime containers,
                # a port someone else started holding, other managers.
                notes = (*resolution.notes, *snap.notes, *fleet.gone(spec))
                if notes != self.notes_said:
                    for note in notes:
                        self.log.line("note", note, note=note)
                    self.notes_said = notes
                if not snap.plan.empty:
                    _, settled = engine.apply_verified(kernel, spec, snap.plan,
                                                       progress=progress, host=host, base=snap)
                    observed = settled.observed
            self.cache.store(observed)
            self.settled = settled
            stored = True
            # Converged: the namespaces with the project's links are the desired
            # ones (made, or attached to by netns_path); looked for again only in
            # a desired state that is not the last one's.
            if snap.desired is not self.owned_from:
                self.owned_from = snap.desired
                self.owned_netns = {r.name for r in snap.desired.values()
                                    if isinstance(r, Netns)}
                self.owned_netns |= {r.ns for r in snap.desired.values()
                                     if isinstance(r, Veth | Sublink) and r.ns.startswith("/")}
            self._check_expectations(spec, observed, host)
            return Outcome("converged", len(steps), steps=steps, full_read=reread is None)
        except Stopping:
            return Outcome("stopped", len(steps), detail="stopped between two actions",
                           steps=steps)
        except SpecError as e:  # the machine lacks something the spec needs
            return Outcome("failed", len(steps), [str(p) for p in e.problems], steps=steps)
        except NetapplyError as e:
            hint = getattr(e, "hint", "")
            return Outcome("failed", len(steps), [f"{e}; what to do: {hint}" if hint else str(e)],
                           steps=steps)
        except Exception as e:  # a bug: log it, keep watching
            lines = traceback.format_exception_only(type(e), e)
            return Outcome("failed", len(steps), [f"internal error: {''.join(lines).strip()}"],
                           steps=steps)
        finally:
            if not stored:  # what was taken to be read again is not known to be read
                self.cache.give_back()

    def _check_expectations(self, spec: Spec, observed: ObservedState, host: str | None) -> None:
        """After a converge: check the spec's expectations, and log those that
        do not hold (never undoing anything). Logged when the failing set
        changes, and once when every one holds again."""
        results = expect.run(spec, observed, host)
        failing = tuple(f"expect[{r.check.expectation.index}]: {r.check.expectation.source} -> "
                        f"{r.check.expectation.target} {r.check.expectation.what} does not hold: "
                        f"{r.detail}" for r in expect.failed(results))
        if failing == self.failing_said:
            return
        for text in failing:
            self.log.line("expect", text, fails=text)
        if not failing:
            text = "every expectation holds again"
            self.log.line("expect", text, holds=text)
        self.failing_said = failing


def runtime_names(spec: Spec) -> dict[Runtime, frozenset[str]]:
    """The engines' names of the spec's runtime containers, by engine."""
    names: dict[Runtime, set[str]] = {}
    for c in spec.containers.values():
        if c.runtime is not None:
            names.setdefault(c.runtime, set()).add(c.engine_name)
    return {runtime: frozenset(found) for runtime, found in names.items()}


def run(options: Options) -> int:
    return Watcher(options).run()
