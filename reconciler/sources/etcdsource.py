"""The spec as etcd keys PREFIX/<name>.yaml (the directory form: one key per
spec file, merged in key order), listed then watched by revision.

A follower thread watches the prefix from the revision after the last list;
each change says "look again" (the reconcile lists again: level-based). A
compaction, a broken stream or a lost quorum makes it list again from
scratch, retrying with capped backoff; the loss is said once, and so is the
return. While the store is known lost, read() fails at once (Unavailable),
so that drift is repaired against the last good spec without waiting for
timeouts; the follower notices the return and says "look again".
"""

from __future__ import annotations

import threading

from reconciler import spec as spec_mod
from reconciler import yamlsource
from reconciler.errors import Problem, SpecError
from reconciler.sources import Notify, Unavailable
from reconciler.sources import etcd as etcd_mod

RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between two attempts to reach a lost store


def is_spec_name(name: str) -> bool:
    """A key directly under the prefix that holds a spec file (not a
    subdirectory such as hosts/, not a hidden name such as .netapply-push)."""
    return ("/" not in name and not name.startswith(".")
            and name.endswith(yamlsource.SPEC_SUFFIXES))


class EtcdSource:
    """Source: the spec files under an etcd prefix."""

    def __init__(self, store: etcd_mod.Store):
        self.store = store
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
        return spec_mod.from_files(files, self.location, listing.revision)

    def follow(self, changed: Notify, status: Notify) -> None:
        self.status = status
        self.thread = threading.Thread(target=self._follow, args=(changed,),
                                       name="etcd-watch", daemon=True)
        self.thread.start()

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self.stopping.set()
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
                if is_spec_name(self.where.name(event.key)):
                    changed(f"etcd revision {event.revision}")
        except Unavailable:
            self.stopping.wait(0.1)
            return False
        return True
