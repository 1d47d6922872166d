"""Load a spec: YAML files -> schema -> semantic checks -> model.Spec with defaults.

Every user mistake becomes a Problem with a file position; all of them are
collected and raised together as one SpecError. Semantic checks run only when
the schema found nothing, so they can rely on the shape of the data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from reconciler import schema, speccheck, yamlsource
from reconciler.errors import Problem, SpecError
from reconciler.model import Spec
from reconciler.yamlsource import Document

__all__ = ["Sources", "Spec", "SpecError", "build", "load", "load_text", "read"]


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


def build(sources: Sources) -> Spec:
    """The spec of files read by read(). Raises SpecError as load() does."""
    return _finish(list(sources.docs), list(sources.problems), sources.directory)


def load_text(text: str, filename: str = "<string>") -> Spec:
    """Load a spec from one YAML document (mainly for tests)."""
    doc, problems = yamlsource.parse(text, filename)
    return _finish([doc], problems, None)


def _finish(docs: list[Document], problems: list[Problem], directory: str | None) -> Spec:
    for doc in docs:
        problems.extend(yamlsource.shape_problems(doc, directory is not None))
        if isinstance(doc.data, dict):
            problems.extend(schema.problems(doc))
    data, where, merge_problems = yamlsource.merge(docs, directory)
    problems.extend(merge_problems)
    if problems:
        raise SpecError(problems)
    return speccheck.Builder(data, where).build()
