"""A yes-or-no check of a value against a JSON Schema, about ten times as fast
as jsonschema's validation, for the keywords netapply's schema uses.

It answers only whether the value is valid, never why: schema.py validates
with jsonschema whatever it refuses, to find and word the problems. So it
must never accept what jsonschema refuses; refusing what jsonschema accepts
costs only time. Each keyword is checked as jsonschema 4 checks it under
Draft 2020-12 (its _keywords.py and _types.py): a keyword applies only to a
value of its type, booleans are neither integers nor numbers, a float with no
fraction is an integer, `$` in a pattern is the very end (ECMA-262). A schema
with a keyword not handled here (or a `$ref` other than "#/$defs/NAME") gets
no check at all: checker() returns None, and jsonschema validates alone.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

# Keywords that say nothing about validity.
ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "default"})
DEFS_PREFIX = "#/$defs/"


class Unsupported(Exception):
    """The schema has a keyword this module does not check."""


def checker(schema: Any, root: Mapping[str, Any]) -> Check | None:
    """A check of values against schema, whose `$ref`s point into root's
    $defs; None when the schema uses anything not handled here."""
    try:
        return _Compiler(root).compile(schema)
    except Unsupported:
        return None


def python_pattern(pattern: str) -> str:
    """A JSON Schema (ECMA-262) pattern for Python's re: there "$" matches only
    at the very end, while Python's "$" also matches before a final newline
    ("web\\n" would pass)."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern


def is_type(value: object, name: str) -> bool:
    """jsonschema's Draft 2020-12 type checker."""
    if name == "string":
        return isinstance(value, str)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, numbers.Number)
    raise Unsupported(name)


class _Compiler:
    def __init__(self, root: Mapping[str, Any]):
        self.root = root
        self.refs: dict[str, Check] = {}

    def compile(self, schema: Any) -> Check:
        if schema is True:
            return lambda value: True
        if not isinstance(schema, dict):
            raise Unsupported(repr(schema))
        checks = [self._keyword(key, expected, schema) for key, expected in schema.items()
                  if key not in ANNOTATIONS]
        return lambda value: all(check(value) for check in checks)

    def _ref(self, ref: str) -> Check:
        if not ref.startswith(DEFS_PREFIX) or "/" in ref[len(DEFS_PREFIX):]:
            raise Unsupported(ref)
        found = self.refs.get(ref)
        if found is None:
            # Placed first, so that a definition that refers to itself ends.
            self.refs[ref] = lambda value: self.refs[ref](value)
            target = self.root.get("$defs", {}).get(ref[len(DEFS_PREFIX):])
            if target is None:
                raise Unsupported(ref)
            found = self.refs[ref] = self.compile(target)
        return found

    def _keyword(self, key: str, expected: Any, schema: dict[str, Any]) -> Check:
        """The check of one keyword of schema."""
        if key == "$ref":
            return self._ref(expected)
        if key == "type":
            names = [expected] if isinstance(expected, str) else list(expected)
            for name in names:
                is_type(None, name)  # Unsupported for a type not known here
            return lambda value: any(is_type(value, name) for name in names)
        if key == "enum":
            if not all(isinstance(choice, str) for choice in expected):
                raise Unsupported("enum of other than strings")
            choices = frozenset(expected)
            return lambda value: isinstance(value, str) and value in choices
        if key == "properties":
            if "patternProperties" in schema:
                raise Unsupported("patternProperties")
            properties = {name: self.compile(sub) for name, sub in expected.items()}
            return lambda value: not isinstance(value, dict) or all(
                check(value[name]) for name, check in properties.items() if name in value)
        if key == "additionalProperties":
            if "patternProperties" in schema:
                raise Unsupported("patternProperties")
            known = frozenset(schema.get("properties", ()))
            if expected is False:
                return lambda value: not isinstance(value, dict) or all(
                    name in known for name in value)
            extra = self.compile(expected)
            return lambda value: not isinstance(value, dict) or all(
                extra(item) for name, item in value.items() if name not in known)
        if key == "required":
            wanted = tuple(expected)
            return lambda value: not isinstance(value, dict) or all(
                name in value for name in wanted)
        if key == "anyOf":
            branches = [self.compile(branch) for branch in expected]
            return lambda value: any(branch(value) for branch in branches)
        if key == "items":
            if "prefixItems" in schema:
                raise Unsupported("prefixItems")
            item_check = self.compile(expected)
            return lambda value: not isinstance(value, list) or all(
                item_check(item) for item in value)
        return self._bound(key, expected)

    def _bound(self, key: str, expected: Any) -> Check:
        # Written as jsonschema compares (NaN is neither below nor above).
        if key == "minimum":
            return lambda value: not is_type(value, "number") or not value < expected
        if key == "maximum":
            return lambda value: not is_type(value, "number") or not value > expected
        if key == "minLength":
            return lambda value: not isinstance(value, str) or len(value) >= expected
        if key == "maxLength":
            return lambda value: not isinstance(value, str) or len(value) <= expected
        if key == "minProperties":
            return lambda value: not isinstance(value, dict) or len(value) >= expected
        if key == "pattern":
            compiled = re.compile(python_pattern(expected))
            return lambda value: not isinstance(value, str) or compiled.search(value) is not None
        raise Unsupported(key)
