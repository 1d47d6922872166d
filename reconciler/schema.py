"""The project's JSON Schema, and its errors translated into sentences a user understands.

A document's top level is validated whole; each entry of its sections (a
host, network, container, expectation) is validated apart, and what the
schema says of it is kept by the entry's content (EntryCache): after a small
edit of a large spec, only the entries edited are validated again. A new
entry is checked first by fastjsonschema (the schema compiled to Python: a
yes or no, five to ten times as fast); jsonschema validates only the
entries that check refuses, to find and word their problems.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import difflib
import functools
import importlib.resources
import json
import re
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from reconciler.errors import InternalError, Problem, Where
from reconciler.yamlsource import Document, Path, describe, locate, show

if TYPE_CHECKING:  # jsonschema is imported only to word a document's problems (_Schemas.top)
    from jsonschema.exceptions import ValidationError

# Package data, so that it ships in the wheel and is found wherever the
# package is installed (site-packages, a zip, an editable checkout).
SCHEMA_PACKAGE, SCHEMA_RESOURCE = "reconciler", "netapply.schema.json"
TEXT_HINT = "; quote it so YAML reads it as text"


def python_pattern(pattern: str) -> str:
    """A JSON Schema (ECMA-262) pattern for Python's re: there "$" matches only
    at the very end, while Python's "$" also matches before a final newline
    ("web\\n" would pass). fastjsonschema reads "$" the same way."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "string"):
        return
    if not re.search(python_pattern(pattern), instance):
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


class _Schemas:
    """The schema, in the parts it is checked in. What checks them is made
    when first needed: jsonschema (its import and validator, some 50 ms) only
    for a document the quick checks refuse."""

    def __init__(self, schema: dict[str, Any], entries: dict[str, dict[str, Any]],
                 names: dict[str, NamePattern]) -> None:
        self.schema = schema  # a document's top level, without its entries
        # Each section in ENTRY_SECTIONS: the schema of one entry (validated
        # apart, see EntryCache).
        self.entries = entries
        # Each section whose names have a pattern (propertyNames, see _bad_names).
        self.names = names
        self._quick: dict[str | None, Callable[[Any], bool]] = {}

    @functools.cached_property
    def top(self) -> Any:
        """jsonschema's validator of a document's top level."""
        import jsonschema.validators

        extend: Any = jsonschema.validators.extend
        cls = extend(jsonschema.validators.Draft202012Validator, {"pattern": _ecma_pattern})
        # The entry schemas' $refs point into $defs, which the top schema keeps.
        return cls(self.schema)

    def quick(self, section: str | None) -> Callable[[Any], bool]:
        """The quick check of one entry of section, or (None) of a document's top level."""
        check = self._quick.get(section)
        if check is None:
            schema = self.schema if section is None else self.entries[section]
            check = self._quick[section] = _quick(schema, self.schema["$defs"])
        return check


def _quick(schema: dict[str, Any], defs: dict[str, Any]) -> Callable[[Any], bool]:
    """Whether a value is valid against a schema (its `$ref`s point into
    defs), compiled by fastjsonschema, which implements the draft-07
    keywords; the schema uses no keyword 2020-12 added. Only a yes says
    anything: what it refuses, jsonschema validates and words
    (tests/test_quickschema.py: the two agree)."""
    import fastjsonschema

    # Without $id, whose URL fastjsonschema would fetch to resolve "#/$defs/..."
    # against: the $refs are resolved in this very document, and nothing is fetched.
    whole = {k: v for k, v in schema.items() if k not in ("$id", "$schema")}
    check = fastjsonschema.compile({**whole, "$defs": defs})

    def valid(value: Any) -> bool:
        try:
            check(value)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return valid


@functools.cache
def _schemas() -> _Schemas:
    schema = document()
    # Files of a directory are validated one by one; version and project may
    # live in any of them, so their presence is checked after merging.
    schema.pop("required", None)
    entries: dict[str, dict[str, Any]] = {}
    names: dict[str, NamePattern] = {}
    for section in ENTRY_SECTIONS:
        section_schema = schema["properties"][section]
        entries[section] = section_schema.pop(ENTRY_KEYWORDS[section])
        name_schema = section_schema.pop("propertyNames", None)
        if name_schema is not None:
            if set(name_schema) != {"pattern"}:
                raise InternalError(f"schema: {section}.propertyNames is more than a pattern")
            pattern = name_schema["pattern"]
            names[section] = NamePattern(
                pattern, re.compile(python_pattern(pattern)))
    return _Schemas(schema, entries, names)


class NamePattern(NamedTuple):
    """A section's propertyNames pattern, as written and as Python reads it."""

    written: str
    compiled: re.Pattern[str]


def _bad_names(data: object) -> Iterator[tuple[str, str, Finding]]:
    """(section, name, finding) of each entry name its section's pattern
    refuses, as jsonschema's propertyNames reports it (checked here: it takes
    jsonschema ten times as long, for every name at every build)."""
    if not isinstance(data, dict):
        return
    for section, pattern in _schemas().names.items():
        value = data.get(section)
        if not isinstance(value, dict):
            continue
        for name in value:
            if isinstance(name, str) and not pattern.compiled.search(name):
                cause = f"name {show(name)} must match {pattern.written}"
                yield section, name, ((section,), cause, (section, name))


ENTRY_SECTIONS = ("hosts", "networks", "containers", "expect")
# The keyword of each section's schema that holds the schema of one entry.
ENTRY_KEYWORDS = {"hosts": "additionalProperties", "networks": "additionalProperties",
                  "containers": "additionalProperties", "expect": "items"}
# What a schema failure says, without where it is: (path of the failing value,
# cause, path of what to point at or None for the value itself). Paths inside
# an entry are relative to it: the same finding holds wherever the entry is.
Finding = tuple[tuple[str | int, ...], str, "tuple[str | int, ...] | None"]


@dataclasses.dataclass(frozen=True)
class _Entry:
    """What the schema says about one entry's content."""

    findings: tuple[Finding, ...] = ()
    # Inside the entry: (path of a mapping, its keys the schema does not know).
    unknown: tuple[tuple[tuple[str | int, ...], tuple[str, ...]], ...] = ()


_VALID = _Entry()


class EntryCache:
    """The schema's findings on entries by content, across the builds of one
    process (watch, a long test run): `size` entries at most, the least
    recently used dropped first."""

    def __init__(self, size: int):
        self.size = size
        self.results: collections.OrderedDict[tuple[str, Hashable], _Entry] = \
            collections.OrderedDict()
        self.validated = 0  # entries validated, not found here (for tests)

    def get(self, section: str, value: object) -> _Entry:
        key = (section, _canonical(value))
        # Taken out and put back (last: the most recently used) rather than
        # moved: no step can fail when two threads build at once (at worst
        # both validate the entry).
        found = self.results.pop(key, None)
        if found is None:
            found = _validate(section, value)
            self.validated += 1
        self.results[key] = found
        while len(self.results) > self.size:
            with contextlib.suppress(KeyError):
                self.results.popitem(last=False)
        return found


# Twice the 10,000 containers of a large spec: an edit of one entry validates
# that one only (watch, a directory of files), in about 20 MiB at most (an
# entry kept takes about 1 KiB: its content's canonical form, its findings).
ENTRY_CACHE = EntryCache(20_000)


def _canonical(value: object) -> Hashable:
    """A hashable form of parsed YAML data, equal only for data the schema
    (and its messages) cannot tell apart: types are kept (1, 1.0 and true
    are equal in Python, not in the schema), floats and other scalars by
    their repr (-0.0 shows as -0.0), mappings in their key order (unknown
    keys are reported in it)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return (kind, value)
    if kind is dict:
        assert isinstance(value, dict)
        return (dict, tuple((_canonical(k), _canonical(v)) for k, v in value.items()))
    if kind is list or kind is tuple:
        assert isinstance(value, list | tuple)
        return (kind, tuple(_canonical(item) for item in value))
    return (kind, repr(value))


def _validate(section: str, value: object) -> _Entry:
    """The schema's findings on one entry of section (its content only: they
    hold wherever and under whatever name the entry is written)."""
    schemas = _schemas()
    if schemas.quick(section)(value):
        return _VALID
    errors = list(schemas.top.descend(value, schemas.entries[section]))
    if not errors:
        return _VALID
    # A placeholder name: a finding's wording does not depend on the entry's
    # name or index (describe() puts those in the context only).
    base = (section, "")
    findings = [f for error in errors for f in _translate(error, base)]
    unknown = []
    for error in _leaf_errors(errors):
        if error.validator == "additionalProperties" and error.validator_value is False:
            known = _schema(error).get("properties", {})
            instance: Any = error.instance
            unknown.append((tuple(error.absolute_path),
                            tuple(k for k in instance if k not in known)))
    return _Entry(tuple((path[2:], cause, None if at is None else at[2:])
                        for path, cause, at in findings), tuple(unknown))


def _entries(data: object) -> Iterator[tuple[str, str | int, _Entry]]:
    """(section, entry name or index, the schema's findings) of every entry
    of the sections of a document's data that have their section's type (a
    section of another type is a top-level failure, and has no entries)."""
    if not isinstance(data, dict):
        return
    for section in ENTRY_SECTIONS:
        value = data.get(section)
        if ENTRY_KEYWORDS[section] == "items":
            if isinstance(value, list):
                for index, item in enumerate(value):
                    yield section, index, ENTRY_CACHE.get(section, item)
        elif isinstance(value, dict):
            for name, item in value.items():
                yield section, name, ENTRY_CACHE.get(section, item)


def _top_errors(data: object) -> list[ValidationError]:
    """jsonschema's errors of a document's top level (entries aside); none
    without asking it when the quick check passes."""
    schemas = _schemas()
    if schemas.quick(None)(data):
        return []
    return list(schemas.top.iter_errors(data))


def problems(doc: Document) -> list[Problem]:
    """Every schema problem of one file, each at its position (file:line:col)."""
    problems: list[Problem] = []
    for error in _top_errors(doc.data):
        problems.extend(_place(finding, doc.where) for finding in _translate(error))
    problems.extend(_place(finding, doc.where) for _, _, finding in _bad_names(doc.data))
    for section, name, entry in _entries(doc.data):
        for path, cause, at in entry.findings:
            base = (section, name)
            problems.append(_place(
                ((*base, *path), cause, None if at is None else (*base, *at)), doc.where))
    unique = {(p.where, p.message): p for p in problems}
    return list(unique.values())


def broken_entries(doc: Document) -> set[tuple[str | int, ...]] | None:
    """Where the schema failed, as the entries holding the failures:
    ("networks", "front"), ("expect", 2). None when a failure is outside any
    entry (a top-level key, a whole section of the wrong type): then no part
    of the document can be trusted to have its shape."""
    if _top_errors(doc.data):
        return None
    broken: set[tuple[str | int, ...]] = {
        (section, name) for section, name, _ in _bad_names(doc.data)}
    broken.update((section, name) for section, name, entry in _entries(doc.data)
                  if entry.findings)
    return broken


def without_unknown_keys(doc: Document) -> Document:
    """doc, without the keys the schema does not know inside an entry (a
    misspelt `mtuu`, a `colour`): they mean nothing, so the rest of their
    entry can still be checked (spec.py: every problem at once). The keys
    are reported by problems() all the same."""
    drops = [((section, name, *path), keys) for section, name, entry in _entries(doc.data)
             for path, keys in entry.unknown if keys]
    if not drops:
        return doc
    data = copy.deepcopy(doc.data)
    for path, keys in drops:
        node: Any = data
        for step in path:
            node = node[step]
        for key in keys:
            node.pop(key, None)  # an entry may hold the same mapping twice (an alias)
    return dataclasses.replace(doc, data=data)


def _leaf_errors(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """The errors, with an anyOf/oneOf error replaced by those of the one
    branch the value fits (as _translate reports them)."""
    for error in errors:
        branch = _matching_branch(error) if error.validator in ("anyOf", "oneOf") else None
        if branch is None:
            yield error
        else:
            yield from _leaf_errors(branch)


def _translate(error: ValidationError, base: tuple[str | int, ...] = ()) -> list[Finding]:
    """What error says, as findings; base: the path of the value the error's
    validation started at (its absolute_path is relative to that)."""
    path: tuple[str | int, ...] = (*base, *error.absolute_path)
    keyword = error.validator
    expected: Any = error.validator_value
    if keyword in ("anyOf", "oneOf"):
        branch = _matching_branch(error)
        if branch is not None:
            return [f for sub in branch for f in _translate(sub, base)]
    if keyword == "additionalProperties" and expected is False:
        return _unknown_keys(error, path)
    if keyword == "required":
        instance: Any = error.instance
        missing = [key for key in expected if key not in instance]
        return [(path, _label(path, key) + " is required", None) for key in missing]
    if "propertyNames" in error.absolute_schema_path:
        # The error is about a name; point at it (the validated instance is the key).
        name = str(error.instance)
        cause = f"name {show(name)} must match {expected}"
        return [(path, cause, (*path, name))]
    return [(path, _cause(error, _label(path)), None)]


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


def _unknown_keys(error: ValidationError, path: tuple[str | int, ...]) -> list[Finding]:
    known = sorted(_schema(error).get("properties", {}))
    field = _label(path)
    findings: list[Finding] = []
    instance: Any = error.instance
    for key in instance:
        if key in known:
            continue
        cause = f"unknown key {show(key)}" + (f" in {field}" if field else "")
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            cause += f" (did you mean {show(close[0])}?)"
        findings.append((path, cause, (*path, key)))
    return findings


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


def _place(finding: Finding, where: dict[Path, Where]) -> Problem:
    """A problem about the object at the finding's path, positioned at its
    `at` (default: the path itself) or the nearest ancestor written."""
    path, cause, at = finding
    ctx, _ = describe(path)
    position = locate(where, tuple(str(part) for part in (path if at is None else at)))
    return Problem(position, f"{ctx}: {cause}")
