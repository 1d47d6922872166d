"""Load a spec: YAML files -> schema -> semantic checks -> model.Spec with defaults.

Every user mistake becomes a Problem with a file position; all of them are
collected and raised together as one SpecError. Semantic checks run only when
the schema found nothing, so they can rely on the shape of the data.
"""

from __future__ import annotations

import os

from reconciler import schema, speccheck, yamlsource
from reconciler.errors import Problem, SpecError
from reconciler.model import Spec
from reconciler.yamlsource import Document

__all__ = ["Spec", "SpecError", "load", "load_text"]


def load(path: str | os.PathLike[str]) -> Spec:
    """Load a spec file, or a directory whose *.yaml/*.yml files are merged.

    Raises SpecError listing every problem found, each with file:line:col.
    """
    given = os.fspath(path)
    docs, problems = yamlsource.read(given)
    return _finish(docs, problems, given if os.path.isdir(given) else None)


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
