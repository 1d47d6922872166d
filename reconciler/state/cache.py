"""What watch mode knows of the kernel between two reconciles.

The last observation, and which of its parts may have changed since: a
kernel notification, a change under /run/netns or /etc/netns, or an apply's
own writes name the parts to read again (level-based: a notification says
"look again at this namespace", never what it now holds). Everything else
is taken as it was read, so a reconcile after one address changed reads one
namespace, not a thousand.

What the cache cannot vouch for is read in full again: at the start, at
every resync, and whenever a notification may have been lost (ENOBUFS on a
listening socket, a listener that failed and started over).

Marks come from the listener threads; take() hands them to the reconcile
loop and starts a new set, under a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from reconciler.resources import Netns
from reconciler.state.observe import ObservedState, Reread


@dataclass
class _Marks:
    everything: bool = True  # nothing is known yet
    # The host namespace to read again (its addresses, routes, entries), with
    # the indexes of its links that changed, read again one by one; None: not.
    host_links: set[int] | None = None
    nft: bool = False
    netns_dir: bool = False
    tables: bool = False
    namespaces: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    # Names under /run/netns that changed: the namespace a name leads to may be
    # another one now, so a socket kept for the name is no longer its.
    renamed: set[str] = field(default_factory=set)


class ObservedCache:
    """The last observation and the parts of the kernel marked since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks = _Marks()
        self.observed: ObservedState | None = None
        self.full_reads = 0  # observations that read everything (start, resync, lost events)

    # ---- marks (any thread) ------------------------------------------------------

    def everything(self) -> None:
        """Read it all again: a resync, or notifications may have been lost."""
        with self._lock:
            self._marks.everything = True

    def namespace(self, ns: str) -> None:
        with self._lock:
            self._marks.namespaces.add(ns)

    def host(self, index: int | None = None) -> None:
        """Something of the host namespace changed: a link (`index`), or an
        address, route or entry (None). Its links are read again by index;
        everything else of it is read whole (a link dump of the host is what
        costs, ~35 ms at 1,000 veths)."""
        with self._lock:
            if self._marks.host_links is None:
                self._marks.host_links = set()
            if index is not None:
                self._marks.host_links.add(index)

    def nft(self) -> None:
        with self._lock:
            self._marks.nft = True

    def netns_entry(self, name: str) -> None:
        """/run/netns/<name> changed (made, deleted, replaced)."""
        with self._lock:
            self._marks.netns_dir = True
            self._marks.namespaces.add(name)
            self._marks.files.add(name)
            self._marks.renamed.add(name)

    def etc_entry(self, name: str | None) -> None:
        """/etc/netns/<name> (or, None, the project's tables) changed."""
        with self._lock:
            if name is None:
                self._marks.tables = True
            else:
                self._marks.files.add(name)

    # ---- the reconcile loop ---------------------------------------------------------

    def take(self) -> tuple[Reread | None, frozenset[str]]:
        """What to read again (None: everything), and the /run/netns names whose
        namespace may be another now (for a full read, every name read last
        time too); the marks start anew."""
        with self._lock:
            marks, self._marks = self._marks, _Marks(everything=False)
        renamed = frozenset(marks.renamed)
        if marks.everything or self.observed is None:
            self.full_reads += 1
            return None, renamed | self._names()
        host_links = None if marks.host_links is None else frozenset[int | str](marks.host_links)
        return Reread(host=False, host_links=host_links, nft=marks.nft, netns_dir=marks.netns_dir,
                      namespaces=frozenset(marks.namespaces), files=frozenset(marks.files),
                      tables=marks.tables), renamed

    def _names(self) -> frozenset[str]:
        """The /run/netns names the last observation read (the project's
        namespaces and others'). A full read opens their sockets anew: a name
        may lead to another namespace now, and the event that said so may be
        the one that was lost (a resync is what finds that out)."""
        if self.observed is None:
            return frozenset()
        owned = {r.name for r in self.observed.resources.values() if isinstance(r, Netns)}
        return frozenset(owned | self.observed.foreign.netns)

    def give_back(self) -> None:
        """A reconcile that took marks did not store an observation (it failed
        or stopped on the way): read everything again next time, to be safe."""
        self.everything()

    def store(self, observed: ObservedState) -> None:
        self.observed = observed


__all__ = ["ObservedCache"]
