"""The spec as a YAML file or a directory of them, watched with watchdog
(inotify): a file written in place or renamed over, a directory (or a link
to one) replaced, as git-sync swaps its link. Each read parses again only
the files that changed (speccache.py): those a file event named, those whose
stat differs; everything at a resync and whenever the path leads elsewhere."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from reconciler import spec as spec_mod
from reconciler import yamlsource
from reconciler.sources import Notify
from reconciler.speccache import SpecFiles


class _SpecEvents(FileSystemEventHandler):
    """Changes to the spec: the path itself (a file written in place or by
    renaming a new one over it; a directory, or a symbolic link to one, that
    is replaced, as git-sync swaps its link), or any *.yaml/*.yml file in it.
    Each file named is parsed again at the next read (a directory replaced
    is seen by refresh(), which has every file parsed again)."""

    def __init__(self, spec: Path, notify: Notify, files: SpecFiles):
        self.spec = spec
        self.notify = notify
        self.files = files

    def _matters(self, path: str | bytes) -> bool:
        found = Path(os.fsdecode(path))
        return found == self.spec or (found.parent == self.spec
                                      and found.suffix in yamlsource.SPEC_SUFFIXES)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        matter = [p for p in paths if self._matters(p)]
        for path in matter:
            self.files.touched(path)
        if matter:
            self.notify(f"spec {event.event_type}")


class FileSource:
    """A spec file or directory on disk (Source)."""

    def __init__(self, path: str | os.PathLike[str]):
        # Not resolved: a link to the spec directory may be swapped for another.
        self.path = Path(os.path.abspath(path))
        self.specs = SpecFiles(self.path)  # the files as last read, parsed
        self.observer: BaseObserver | None = None
        self.events: _SpecEvents | None = None
        self.dir_watch: ObservedWatch | None = None
        self.dir_target: tuple[str, int] | None = None
        self.status: Notify = lambda _text: None

    @property
    def location(self) -> str:
        return str(self.path)

    def read(self) -> spec_mod.Sources:
        return self.specs.read()

    def unchanged(self) -> bool:
        return self.specs.unchanged()

    @property
    def host(self) -> str | None:
        return None

    def settle(self, spec: spec_mod.Spec) -> spec_mod.Spec:
        return spec

    def follow(self, changed: Notify, status: Notify) -> None:
        self.status = status
        self.events = _SpecEvents(self.path, changed, self.specs)
        self.observer = Observer()
        try:
            self.observer.schedule(self.events, str(self.path.parent))
        except OSError as e:  # e.g. the machine's limit of inotify watches
            status(f"cannot watch files ({e}); changes are seen at the next resync")
        self.refresh()
        self.observer.start()

    def refresh(self, resync: bool = False) -> None:
        """Watch the spec directory the spec path leads to now: after a link is
        swapped, or the directory is made anew, the new one (the old one's
        watch goes), and every file is parsed again. Failing that, the
        resync still comes. resync: every file is parsed again."""
        if resync:
            self.specs.touched()
        if self.observer is None or self.events is None:
            return
        target = None
        with contextlib.suppress(OSError):
            if self.path.is_dir():
                target = (os.path.realpath(self.path), os.stat(self.path).st_ino)
        if target == self.dir_target:
            return
        self.specs.touched()  # other files now, whatever their stat says
        try:
            if self.dir_watch is not None:
                self.observer.unschedule(self.dir_watch)
                self.dir_watch = None
            if target is not None:
                self.dir_watch = self.observer.schedule(self.events, str(self.path))
            self.dir_target = target
        except (OSError, KeyError) as e:
            self.status(f"cannot watch {self.path} ({e}); changes are seen at the next resync")

    def close(self) -> None:
        if self.observer is not None:
            # Its threads may still see an event while they stop, and say so.
            logging.getLogger("watchdog").setLevel(logging.ERROR)
            self.observer.stop()
            self.observer.join(timeout=2)
            self.observer = None
