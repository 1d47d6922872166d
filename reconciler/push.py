"""`netapply push SPEC etcd://.../PREFIX`: a validated spec into etcd, all its
files in one transaction guarded by the revision the push is based on.

The guard: every spec key as it was at the base revision is unchanged (same
mod_revision; 0 for one that did not exist), and so is PREFIX/.netapply-push,
a key every push rewrites. So of two pushes based on the same revision, the
second finds the first's marker changed and writes nothing, even when their
files differ; a hand-made `etcdctl put` of a spec key is caught by the
per-key compares. Files the spec no longer has are deleted in the same
transaction.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from reconciler import spec as spec_mod
from reconciler import yamlsource
from reconciler.errors import NetapplyError, Problem, SpecError
from reconciler.fleet import Fleet
from reconciler.sources import etcd as etcd_mod
from reconciler.sources.etcdsource import is_spec_name

MARKER = ".netapply-push"


class Conflict(NetapplyError):
    """The spec in etcd changed after the revision the push was based on;
    nothing was written. The pipeline must plan again against the spec as it
    is now."""

    def __init__(self, message: str, won: int):
        super().__init__(message)
        self.won = won  # the revision that changed it


@dataclass(frozen=True)
class Pushed:
    revision: int  # the store's revision with this push in it
    base: int  # the revision it was based on
    written: tuple[str, ...]  # names of files added or changed
    deleted: tuple[str, ...]  # names of files no longer in the spec


def spec_files(path: str) -> list[tuple[str, bytes]]:
    """(key name, bytes) of a spec file (its own name) or of each
    *.yaml/*.yml file of a spec directory, as `validate` reads them.
    Raises SpecError."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path)
                       if n.endswith(yamlsource.SPEC_SUFFIXES) and not n.startswith("."))
        paths = [os.path.join(path, n) for n in names]
    else:
        paths = [path]
    found = []
    for file in paths:
        try:
            with open(file, "rb") as stream:
                found.append((os.path.basename(file), stream.read()))
        except OSError as e:
            raise SpecError([Problem(None, f"spec: cannot read {file}: {e.strerror}")]) from None
    return found


def push(path: str, store: etcd_mod.Store, expect_revision: int | None = None) -> Pushed:
    """Validate the spec at path, then write it under the store's prefix.
    Raises SpecError (nothing written), Conflict, etcd_mod.Compacted (the
    expected revision is gone), sources.Unavailable, etcd_mod.StoreError."""
    # Validated as etcd reads it: its hosts may be machines that register there.
    spec_mod.build(dataclasses.replace(spec_mod.read(path), fleet=Fleet()))
    files = dict(spec_files(path))
    where = store.location
    prefix = where.prefix + "/"
    now = store.list(prefix)
    if expect_revision is not None and expect_revision > now.revision:
        raise NetapplyError(f"--expect-revision {expect_revision}: the store is only at "
                            f"revision {now.revision}")
    base = now if expect_revision is None else store.list(prefix, expect_revision)
    held = {where.name(e.key): e for e in base.entries
            if is_spec_name(where.name(e.key)) or where.name(e.key) == MARKER}
    compares = [etcd_mod.mod_revision_is(where.key(name), held[name].mod_revision
                                         if name in held else 0)
                for name in sorted({*held, *files, MARKER})]
    written = tuple(n for n, raw in files.items() if n not in held or held[n].value != raw)
    deleted = tuple(sorted(n for n in held if n != MARKER and n not in files))
    marker = json.dumps({"base": base.revision, "files": sorted(files)}).encode()
    success = [*(etcd_mod.put(where.key(n), files[n]) for n in written),
               *(etcd_mod.delete(where.key(n)) for n in deleted),
               etcd_mod.put(where.key(MARKER), marker)]
    result = store.txn(compares, success, [etcd_mod.get_prefix(prefix, keys_only=True)])
    if not result.succeeded:
        won = max((e.mod_revision for e in result.ranges[0].entries
                   if is_spec_name(where.name(e.key)) or where.name(e.key) == MARKER),
                  default=0)
        won = won if won > base.revision else result.revision  # a deletion left no trace
        raise Conflict(f"the spec at {where.url} changed at revision {won}, after revision "
                       f"{base.revision} this push is based on: nothing was written", won)
    return Pushed(result.revision, base.revision, written, deleted)
