"""The spec as etcd keys PREFIX/<name>.yaml (the directory form: one key per
spec file, merged in key order), listed then watched by revision.

A follower thread watches the prefix from the revision after the last list;
each change says "look again" (the reconcile lists again: level-based). A
compaction, a broken stream or a lost quorum makes it list again from
scratch, retrying with capped backoff; the loss is said once, and so is the
return. While the store is known lost, read() fails at once (Unavailable),
so that drift is repaired against the last good spec without waiting for
timeouts; the follower notices the return and says "look again".

Beside the spec files, the listing holds the fleet (fleet.py): the machines
registered under PREFIX/hosts/ (a registration or its expiry is a change
too, so every machine looks again), and the sticky overlay addresses under
PREFIX/alloc/. For `watch` (with a Membership), this machine registers at
its first read, settle() allocates the addresses in etcd, and close()
revokes the registration; `plan` and `show` only read both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Callable, Iterable

from reconciler import fleet, yamlsource
from reconciler import spec as spec_mod
from reconciler.errors import Problem, SpecError
from reconciler.model import IPAddress
from reconciler.sources import Notify, Unavailable, alloc, membership
from reconciler.sources import etcd as etcd_mod

RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between two attempts to reach a lost store


def is_spec_name(name: str) -> bool:
    """A key directly under the prefix that holds a spec file (not a
    subdirectory such as hosts/, not a hidden name such as .netapply-push)."""
    return ("/" not in name and not name.startswith(".")
            and name.endswith(yamlsource.SPEC_SUFFIXES))


def matters(name: str) -> bool:
    """A key whose change may change what a machine applies: a spec file or
    a registration (allocations change only with the spec)."""
    return is_spec_name(name) or name.startswith(membership.HOSTS + "/")


class EtcdSource:
    """Source: the spec files under an etcd prefix."""

    def __init__(self, store: etcd_mod.Store, member: membership.Membership | None = None,
                 local: Callable[[], Iterable[IPAddress]] = tuple):
        """`member`: register this machine and allocate overlay addresses
        (watch); `local`: this machine's addresses (to find which spec host
        it is)."""
        self.store = store
        self.member = member
        self.local = local
        self.marker = 0  # the push marker's mod_revision at the last read
        self.where = store.location
        self.lost: str | None = None  # why the store is lost, while it is
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.status: Notify = lambda _text: None
        self.state_lock = threading.Lock()
        self.next = 0  # the first revision the follower has not seen

    @property
    def location(self) -> str:
        return self.where.url

    def read(self) -> spec_mod.Sources:
        if self.lost is not None and self.thread is not None:
            raise Unavailable(self.lost)
        try:
            listing = self.store.list(self.where.prefix + "/")
        except Unavailable as e:
            self._lose(str(e))
            raise
        files = [(self.where.shown(e.key), e.value) for e in listing.entries
                 if is_spec_name(self.where.name(e.key))]
        if not files:
            raise SpecError([Problem(None, f"spec: {self.location} holds no *.yaml or *.yml "
                                           f"keys (netapply push SPEC {self.location} writes "
                                           "them)")])
        found = alloc.read(self.where, listing.entries)
        self.marker = found.marker
        live = membership.live_hosts(self.where, listing.entries)
        read = spec_mod.from_files(files, self.location, listing.revision)
        if self.member is None:  # plan, show: the addresses etcd holds now
            return spec_mod.Sources(read.docs, read.problems, read.directory, read.revision,
                                    fleet.Fleet(live, found.pinned()))
        if self.member.lease == 0:
            self.member.join(_spec_hosts(read), self.local)
        assert self.member.name is not None and self.member.address is not None
        live[self.member.name] = self.member.address  # alive: this is it
        # Addresses are pinned by settle(), after allocating.
        return spec_mod.Sources(read.docs, read.problems, read.directory, read.revision,
                                fleet.Fleet(live))

    @property
    def host(self) -> str | None:
        return self.member.name if self.member is not None else None

    def settle(self, spec: spec_mod.Spec) -> spec_mod.Spec:
        if self.member is None:
            return spec
        found = alloc.settle(self.store, spec, self.marker)
        return fleet.pin(spec, found.pinned())

    def follow(self, changed: Notify, status: Notify) -> None:
        self.status = status
        if self.member is not None:
            self.member.status = status
        self.thread = threading.Thread(target=self._follow, args=(changed,),
                                       name="etcd-watch", daemon=True)
        self.thread.start()

    def unchanged(self) -> bool:
        return False  # not known without listing the store: each event is a new revision

    def refresh(self, resync: bool = False) -> None:
        pass  # every read() lists the prefix whole

    def close(self) -> None:
        self.stopping.set()
        if self.member is not None:
            self.member.leave()
        self.store.close()
        if self.thread is not None:
            self.thread.join(timeout=2)

    def _lose(self, why: str) -> None:
        with self.state_lock:
            said, self.lost = self.lost, why
        if said is None:
            self.status(f"lost the spec store: {why}; the last good spec stays in force and "
                        "drift is still repaired")

    def _back(self, revision: int) -> bool:
        with self.state_lock:
            said, self.lost = self.lost, None
        if said is not None:
            self.status(f"the spec store is back at revision {revision}")
        return said is not None

    def _follow(self, changed: Notify) -> None:
        retry = 0.0
        prefix = self.where.prefix + "/"
        while not self.stopping.is_set():
            try:
                # A full list: after a start, a compaction or a loss, events
                # may have been missed.
                listing = self.store.list(prefix)
                if self._back(listing.revision):
                    changed(f"store back at revision {listing.revision}")
                retry = 0.0
                start = self.next = listing.revision + 1
                while self._watch(prefix, start, changed) and not self.stopping.is_set():
                    # Silent for a while: is there still a quorum behind it?
                    self.store.probe()
                    start = self.next
            except etcd_mod.Compacted as e:
                if not self.stopping.is_set():
                    changed(f"compacted at revision {e.revision}: listed again")
            except (Unavailable, etcd_mod.StoreError) as e:
                if self.stopping.is_set():
                    return
                self._lose(str(e))
                retry = min(max(retry * 2, RETRY_FIRST), RETRY_MAX)
                self.stopping.wait(retry)

    def _watch(self, prefix: str, start: int, changed: Notify) -> bool:
        """Follow one watch stream: True when it went idle, False when it
        broke (an endpoint went away: list again, from another one, without
        calling the store lost yet). Raises Compacted."""
        try:
            for event in self.store.watch(prefix, start):
                self.next = event.revision + 1
                name = self.where.name(event.key)
                if is_spec_name(name):
                    changed(f"etcd revision {event.revision}")
                elif matters(name):
                    changed(f"{name} {'left' if event.deleted else 'registered'} at etcd "
                            f"revision {event.revision}")
        except Unavailable:
            self.stopping.wait(0.1)
            return False
        return True


def _spec_hosts(read: spec_mod.Sources) -> dict[str, IPAddress]:
    """The hosts the spec files write (name -> address), before any check."""
    found: dict[str, IPAddress] = {}
    for doc in read.docs:
        hosts = doc.data.get("hosts") if isinstance(doc.data, dict) else None
        for name, value in (hosts.items() if isinstance(hosts, dict) else ()):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                found[str(name)] = ipaddress.ip_address(value.get("address"))
    return found
