"""Load a spec: YAML files -> schema -> semantic checks -> model.Spec with defaults.

Every user mistake becomes a Problem with a file position; all of them are
collected and raised together as one SpecError. Semantic checks run on every
entry the schema found nothing wrong in, so they can rely on its shape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from reconciler import fleet as fleet_mod
from reconciler import schema, speccheck, yamlsource
from reconciler.errors import Problem, SpecError
from reconciler.fleet import Fleet
from reconciler.model import Spec
from reconciler.yamlsource import Document

__all__ = ["Sources", "Spec", "SpecError", "build", "from_files", "load", "load_text", "read"]


def load(path: str | os.PathLike[str]) -> Spec:
    """Load a spec file, or a directory whose *.yaml/*.yml files are merged.

    Raises SpecError listing every problem found, each with file:line:col.
    """
    return build(read(path))


@dataclass(frozen=True)
class Sources:
    """A spec's files as read, before any check: what load() builds from."""

    docs: tuple[Document, ...]
    problems: tuple[Problem, ...]  # the files that could not be read or parsed
    directory: str | None  # the spec directory, when a directory was given
    # The store's revision the files were read at (etcd); None for files on disk.
    revision: int | None = None
    # What the store holds beside the files (etcd: live hosts, sticky
    # addresses; see fleet.py); None for files on disk.
    fleet: Fleet | None = None

    @property
    def digests(self) -> dict[str, str]:
        """Each file read (its path as named) -> SHA-256 of its bytes (hex)."""
        return {doc.file: doc.sha256 for doc in self.docs}


def read(path: str | os.PathLike[str]) -> Sources:
    """Read (and parse) the files of a spec. Raises SpecError only when there
    is nothing to read at all (no such path, a directory without spec files)."""
    given = os.fspath(path)
    docs, problems = yamlsource.read(given)
    return Sources(tuple(docs), tuple(problems), given if os.path.isdir(given) else None)


def from_files(files: Sequence[tuple[str, bytes]], directory: str,
               revision: int | None = None, fleet: Fleet | None = None) -> Sources:
    """The files of a spec held elsewhere than on disk (etcd keys), as the
    directory form: `files` are (name as shown in messages, bytes), read in
    the given order; `directory` names where they are. Parse problems are in
    the result; nothing is raised."""
    docs: list[Document] = []
    problems: list[Problem] = []
    for name, raw in files:
        doc, found = yamlsource.parse_bytes(raw, name)
        docs.append(doc)
        problems.extend(found)
    return Sources(tuple(docs), tuple(problems), directory, revision, fleet)


def build(sources: Sources) -> Spec:
    """The spec of files read by read(). Raises SpecError as load() does."""
    return _finish(list(sources.docs), list(sources.problems), sources.directory,
                   sources.fleet)


def load_text(text: str, filename: str = "<string>") -> Spec:
    """Load a spec from one YAML document (mainly for tests)."""
    doc, problems = yamlsource.parse(text, filename)
    return _finish([doc], problems, None)


def _finish(docs: list[Document], problems: list[Problem], directory: str | None,
            fleet: Fleet | None = None) -> Spec:
    """Every problem at once: the semantic checks run on every entry the
    schema found nothing wrong in (an entry with a schema problem is skipped
    and, where others name it, taken as defined), unless the file could not
    be read as YAML or a failure is outside any entry (nothing then has a
    trustworthy shape)."""
    trusted = not problems  # every file was read and parsed
    broken: set[tuple[str | int, ...]] = set()
    offset = 0  # where this file's expect entries start in the merged list
    for i, doc in enumerate(docs):
        shape = yamlsource.shape_problems(doc, directory is not None)
        problems.extend(shape)
        trusted = trusted and not shape
        if isinstance(doc.data, dict):
            found = schema.problems(doc)
            problems.extend(found)
            if found:
                docs[i] = doc = schema.without_unknown_keys(doc)
                entries = schema.broken_entries(doc)
                if entries is None:
                    trusted = False
                else:
                    broken |= {(p[0], p[1] + offset) if p[0] == "expect" else p  # type: ignore[operator]
                               for p in entries}
            expect = doc.data.get("expect") if isinstance(doc.data, dict) else None
            offset += len(expect) if isinstance(expect, list) else 0
    data, where, merge_problems = yamlsource.merge(docs, directory)
    if merge_problems or not trusted:
        raise SpecError([*problems, *merge_problems])
    try:
        spec = speccheck.Builder(data, where, broken, fleet is not None).build()
    except SpecError as e:
        problems.extend(e.problems)
    if problems:
        raise SpecError(problems)
    return spec if fleet is None else fleet_mod.complete(spec, fleet, fleet_mod.spans(data))
