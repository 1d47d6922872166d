"""Where a spec comes from: one small interface, two implementations.

- files.FileSource: a YAML file or a directory of them on disk (watchdog).
- etcdsource.EtcdSource: the keys PREFIX/<name>.yaml of an etcd cluster,
  listed then watched by revision (etcd.py is the one module that talks to
  etcd).

`watch`, `plan` and `show` read a spec only through Source, so they do not
know which one they read (flannel's subnet.Manager has etcd and Kubernetes
behind one interface the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from reconciler import spec as spec_mod
from reconciler.errors import NetapplyError

Notify = Callable[[str], None]


class Unavailable(NetapplyError):
    """The store cannot be read now (no endpoint answers, or none has
    quorum). Nobody has to act on the spec: the last good one stays in force
    and the source catches up when the store returns; the operator may have
    to bring the store back."""


class Changed(NetapplyError):
    """The spec in the store changed while this machine was acting on it
    (allocating addresses): nobody has to act; it reads the spec again."""


class Source(Protocol):
    """A spec's files with the revision they were read at, and a way to hear
    that they changed."""

    @property
    def location(self) -> str:
        """Where the spec is, as the user named it (never with credentials)."""
        ...

    def read(self) -> spec_mod.Sources:
        """The spec's files, parsed (problems inside), with the store's
        revision (None for files). May be the very same Sources as the last
        read when nothing changed since (files: only a changed file is parsed
        again), which watch then does not build again. Raises SpecError when
        there is nothing to read at all, Unavailable when the store cannot be
        read now."""
        ...

    @property
    def host(self) -> str | None:
        """The machine this source registered as in the store (etcd watch);
        None when it registers nothing."""
        ...

    def settle(self, spec: spec_mod.Spec) -> spec_mod.Spec:
        """The spec read() gave, built, with what the store decides beyond
        the files: sticky overlay addresses allocated there (etcd watch).
        Files: the spec as it is. Raises Changed, Unavailable, SpecError,
        NetapplyError."""
        ...

    def follow(self, changed: Notify, status: Notify) -> None:
        """From now on, call changed(detail) whenever the spec may have
        changed ("look again": level-based, never a delta), and status(text)
        once when the source is lost and once when it is back. Threads it
        starts are stopped by close()."""
        ...

    def unchanged(self) -> bool:
        """Whether the spec is known to be as the last read() gave it (a
        change said about files already read); False when not known."""
        ...

    def refresh(self, resync: bool = False) -> None:
        """Between two reconciles: follow what the spec location leads to now
        (a swapped directory link). resync: the next read() trusts nothing it
        kept (files: every file is parsed again)."""
        ...

    def close(self) -> None:
        ...
