"""The spec's files as watch mode last read them: a file is parsed again only
when it changed, and the spec is built again only when a file's content did.

A file counts as unchanged while its identity, size and times (stat: device,
inode, size, mtime, ctime) are those it had when read and no file event named
it since (two writes within one tick of the file system's clock, same size,
are told apart by the event). A file that looks changed is read; if its bytes
hash (SHA-256) as before, nothing is built again either.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from reconciler import spec as spec_mod
from reconciler import yamlsource
from reconciler.errors import Problem, SpecError
from reconciler.yamlsource import Document

StatKey = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class _File:
    stat: StatKey
    doc: Document
    problems: tuple[Problem, ...]


def _stat_key(path: str) -> StatKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class SpecFiles:
    """read() is spec.read(path), parsing again only what changed since the
    last call, and giving the very same Sources while every file's bytes are
    as they were (watch builds the spec again only then). Not thread-safe but
    for touched(), which file watchers call."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._files: dict[str, _File] = {}
        self._read: tuple[tuple[tuple[str, str], ...], spec_mod.Sources] | None = None
        self._touched: set[str] = set()
        self._all_touched = True
        self._lock = threading.Lock()
        self.parsed = 0  # files parsed so far (for tests and the log)

    def touched(self, path: str | None = None) -> None:
        """A file event named path (None: read every file again, as at a resync)."""
        with self._lock:
            if path is None:
                self._all_touched = True
            else:
                self._touched.add(os.path.abspath(path))

    def read(self) -> spec_mod.Sources:
        """The spec's files; raises SpecError as spec.read does."""
        with self._lock:
            touched, self._touched = self._touched, set()
            everything, self._all_touched = self._all_touched, False
        names = self._names()
        if names is None:  # nothing to read, or too much: spec.read says what
            self._files.clear()
            self._read = None
            return spec_mod.read(self.path)
        files: dict[str, _File] = {}
        for name in names:
            key = _stat_key(name)
            kept = self._files.get(name)
            if (kept is None or key is None or kept.stat != key or everything
                    or os.path.abspath(name) in touched):
                doc, problems = yamlsource.read_file(name)
                self.parsed += 1
                kept = _File(key or (0, 0, 0, 0, 0), doc, tuple(problems))
            files[name] = kept
        self._files = files
        digests = tuple((name, f.doc.sha256) for name, f in files.items())
        if self._read is not None and self._read[0] == digests \
                and all(f.doc.sha256 for f in files.values()):
            return self._read[1]
        directory = self.path if os.path.isdir(self.path) else None
        sources = spec_mod.Sources(
            tuple(f.doc for f in files.values()),
            tuple(p for f in files.values() for p in f.problems), directory)
        self._read = (digests, sources)
        return sources

    def unchanged(self) -> bool:
        """Whether every file's bytes are as the last read() gave them (the
        files events named are read again to know; parsed only if changed)."""
        if self._read is None:
            return False
        last = self._read[1]
        try:
            return self.read() is last
        except SpecError:
            return False

    def _names(self) -> list[str] | None:
        """The spec's files, as yamlsource.read lists them; None when it would
        refuse the path (absent, a directory without spec files or with too many)."""
        if not os.path.isdir(self.path):
            return [self.path] if os.path.exists(self.path) else None
        try:
            names = sorted(entry.name for entry in os.scandir(self.path)
                           if entry.name.endswith(yamlsource.SPEC_SUFFIXES)
                           and not entry.name.startswith("."))
        except OSError:
            return None
        if not names or len(names) > yamlsource.MAX_FILES:
            return None
        return [os.path.join(self.path, name) for name in names]


__all__ = ["SpecFiles"]
