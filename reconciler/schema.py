"""The project's JSON Schema, and its errors translated into sentences a user understands."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib.resources
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
import jsonschema.validators
from jsonschema.exceptions import ValidationError

from reconciler.errors import InternalError, Problem, Where
from reconciler.yamlsource import Document, Path, describe, locate, show

# Package data, so that it ships in the wheel and is found wherever the
# package is installed (site-packages, a zip, an editable checkout).
SCHEMA_PACKAGE, SCHEMA_RESOURCE = "reconciler", "netapply.schema.json"
TEXT_HINT = "; quote it so YAML reads it as text"


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    # JSON Schema patterns are ECMA-262: "$" matches only at the very end, while
    # Python's "$" also matches before a final newline ("web\n" would pass).
    if not validator.is_type(instance, "string"):
        return
    python_pattern = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    if not re.search(python_pattern, instance):
        yield ValidationError(f"does not match {pattern}")


def document() -> dict[str, Any]:
    """The JSON Schema of a spec document, as shipped in the package (a new copy each call)."""
    resource = importlib.resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_RESOURCE)
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as e:
        # Only a broken installation gets here: the wheel ships the schema.
        raise InternalError(
            f"package {SCHEMA_PACKAGE}: cannot read {SCHEMA_RESOURCE}: {e.strerror or e}"
        ) from None
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator() -> Any:
    schema = document()
    # Files of a directory are validated one by one; version and project may
    # live in any of them, so their presence is checked after merging.
    schema.pop("required", None)
    extend: Any = jsonschema.validators.extend
    cls = extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})
    return cls(schema)


def problems(doc: Document) -> list[Problem]:
    problems: list[Problem] = []
    for error in _validator().iter_errors(doc.data):
        problems.extend(_translate(error, doc.where))
    unique = {(p.where, p.message): p for p in problems}
    return list(unique.values())


def broken_entries(doc: Document) -> set[tuple[str | int, ...]] | None:
    """Where the schema failed, as the entries holding the failures:
    ("networks", "front"), ("expect", 2). None when a failure is outside any
    entry (a top-level key, a whole section of the wrong type): then no part
    of the document can be trusted to have its shape."""
    broken: set[tuple[str | int, ...]] = set()
    for error in _validator().iter_errors(doc.data):
        path = tuple(error.absolute_path)
        if path and path[0] in ENTRY_SECTIONS and len(path) >= 2:
            broken.add(path[:2])
        elif path and path[0] in ENTRY_SECTIONS and "propertyNames" in \
                error.absolute_schema_path:
            broken.add((path[0], str(error.instance)))  # a name that does not match
        else:
            return None
    return broken


ENTRY_SECTIONS = ("hosts", "networks", "containers", "expect")


def without_unknown_keys(doc: Document) -> Document:
    """doc, without the keys the schema does not know inside an entry (a
    misspelt `mtuu`, a `colour`): they mean nothing, so the rest of their
    entry can still be checked (spec.py: every problem at once). The keys
    are reported by problems() all the same."""
    data = copy.deepcopy(doc.data)
    changed = False
    for error in _leaf_errors(_validator().iter_errors(doc.data)):
        path = tuple(error.absolute_path)
        if error.validator != "additionalProperties" or error.validator_value is not False \
                or len(path) < 2 or path[0] not in ENTRY_SECTIONS:
            continue
        node: Any = data
        for step in path:
            node = node[step]
        known = _schema(error).get("properties", {})
        for key in [k for k in node if k not in known]:
            del node[key]
            changed = True
    return dataclasses.replace(doc, data=data) if changed else doc


def _leaf_errors(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """The errors, with an anyOf/oneOf error replaced by those of the one
    branch the value fits (as _translate reports them)."""
    for error in errors:
        branch = _matching_branch(error) if error.validator in ("anyOf", "oneOf") else None
        if branch is None:
            yield error
        else:
            yield from _leaf_errors(branch)


def _translate(error: ValidationError, where: dict[Path, Where]) -> list[Problem]:
    path: tuple[str | int, ...] = tuple(error.absolute_path)
    keyword = error.validator
    expected: Any = error.validator_value
    if keyword in ("anyOf", "oneOf"):
        branch = _matching_branch(error)
        if branch is not None:
            return [p for sub in branch for p in _translate(sub, where)]
    if keyword == "additionalProperties" and expected is False:
        return _unknown_keys(error, path, where)
    if keyword == "required":
        instance: Any = error.instance
        missing = [key for key in expected if key not in instance]
        return [_problem(where, path, _label(path, key) + " is required") for key in missing]
    if "propertyNames" in error.absolute_schema_path:
        # The error is about a name; point at it (the validated instance is the key).
        name = str(error.instance)
        cause = f"name {show(name)} must match {expected}"
        return [_problem(where, path, cause, at=(*path, name))]
    return [_problem(where, path, _cause(error, _label(path)))]


def _matching_branch(error: ValidationError) -> list[ValidationError] | None:
    """The errors of the only anyOf branch whose type fits the value, if exactly one does."""
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    fitting = [
        errors
        for errors in branches.values()
        if not any(e.validator == "type" and not e.relative_path for e in errors)
    ]
    alternatives: Any = error.validator_value
    if len(fitting) == 1 and len(branches) == len(alternatives):
        return fitting[0]
    return None


def _unknown_keys(
    error: ValidationError, path: tuple[str | int, ...], where: dict[Path, Where]
) -> list[Problem]:
    known = sorted(_schema(error).get("properties", {}))
    field = _label(path)
    problems = []
    instance: Any = error.instance
    for key in instance:
        if key in known:
            continue
        cause = f"unknown key {show(key)}" + (f" in {field}" if field else "")
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            cause += f" (did you mean {show(close[0])}?)"
        problems.append(_problem(where, path, cause, at=(*path, key)))
    return problems


def _schema(error: ValidationError) -> dict[str, Any]:
    return error.schema if isinstance(error.schema, dict) else {}


def _cause(error: ValidationError, field: str) -> str:
    keyword, value, schema = error.validator, error.instance, _schema(error)
    expected: Any = error.validator_value
    subject = f"{field} " if field else ""
    if keyword == "type":
        wanted = schema.get("title") or _type_words(expected)
        return _must_be(subject, wanted, value, "string" in expected)
    if keyword in ("anyOf", "oneOf"):
        wants_text = any(branch.get("type") == "string" for branch in expected)
        return _must_be(subject, schema.get("title", "valid"), value, wants_text)
    if keyword == "const":
        return _must_be(subject, show(expected), value, False)
    if keyword == "enum":
        choices = ", ".join(str(choice) for choice in expected)
        return f"{subject}must be one of {choices} (got {show(value)})"
    if keyword in ("minimum", "maximum"):
        low, high = schema.get("minimum", "-"), schema.get("maximum", "-")
        return f"{subject}must be between {low} and {high} (got {show(value)})"
    if keyword == "maxLength":
        return f"{subject}{show(value)} is longer than {expected} characters"
    if keyword == "minLength":
        return f"{subject}must not be empty"
    if keyword == "pattern":
        if "title" in schema:
            return _must_be(subject, schema["title"], value, False)
        return f"{subject}{show(value)} must match {expected}"
    return f"{subject}is not valid ({keyword})"


def _must_be(subject: str, expected: str, value: object, wants_text: bool) -> str:
    hint = TEXT_HINT if wants_text and not isinstance(value, str | dict | list | None) else ""
    return f"{subject}must be {expected} (got {show(value)}){hint}"


def _type_words(types: str | list[str]) -> str:
    words = {
        "string": "a string",
        "integer": "a whole number",
        "number": "a number",
        "boolean": "true or false",
        "object": "a mapping",
        "array": "a list",
        "null": "nothing",
    }
    names = [types] if isinstance(types, str) else [t for t in types if t != "null"]
    return " or ".join(words.get(name, name) for name in names)


def _label(path: tuple[str | int, ...], key: str | None = None) -> str:
    """The field name of path (plus key) inside its object; the key alone at the top."""
    _, field = describe((*path, key) if key is not None else path)
    return field or (key or "")


def _problem(
    where: dict[Path, Where],
    path: tuple[str | int, ...],
    cause: str,
    at: tuple[str | int, ...] | None = None,
) -> Problem:
    """A problem about the object at path, positioned at `at` (default: path itself)."""
    ctx, _ = describe(path)
    position = locate(where, tuple(str(part) for part in (path if at is None else at)))
    return Problem(position, f"{ctx}: {cause}")
