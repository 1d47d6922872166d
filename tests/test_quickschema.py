"""The quick yes-or-no check of an entry (fastjsonschema, schema._quick) says
exactly what jsonschema's validation says of each entry of a spec, for
values of every shape YAML can give."""

from __future__ import annotations

import datetime
import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from reconciler import schema

SCHEMAS = schema._schemas()
SECTIONS = sorted(SCHEMAS.entries)


def _keys(node: Any) -> set[str]:
    """Every property name the schema mentions (so that generated mappings
    use them, with right and wrong values)."""
    found: set[str] = set()
    if isinstance(node, dict):
        found.update(node.get("properties", {}))
        for value in node.values():
            found |= _keys(value)
    elif isinstance(node, list):
        for value in node:
            found |= _keys(value)
    return found


KEYS = sorted(_keys(schema.document()))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70_000), st.sampled_from([2**40, -(2**40)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1500.0, 68.5]),
    st.sampled_from(["", "a", "eth0", "lo", ".", "..", "x" * 16, "bridge", "l3s", "tcp", "udp",
                     "docker", "none", "host", "web\n", "10.0.0.1", "Web", "8080:80", "é"]),
    st.text(max_size=6), st.dates(), st.just(datetime.datetime(2020, 1, 1, 12, 0)),
    st.binary(max_size=3),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=5),
    max_leaves=20,
)


def jsonschema_says_valid(section: str, value: Any) -> bool:
    return not any(True for _ in SCHEMAS.top.descend(value, SCHEMAS.entries[section]))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(section=st.sampled_from(SECTIONS), value=VALUES)
def test_the_quick_check_agrees_with_jsonschema(section: str, value: Any) -> None:
    assert SCHEMAS.quick(section)(value) == jsonschema_says_valid(section, value)


@pytest.mark.parametrize("section", SECTIONS)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_quick_check_accepts_what_the_schema_allows(section: str, data: st.DataObject) -> None:
    entry = {**SCHEMAS.entries[section], "$defs": schema.document()["$defs"]}
    value = data.draw(from_schema(entry))
    assert SCHEMAS.quick(section)(value)
    assert jsonschema_says_valid(section, value)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


@pytest.mark.parametrize("section", SECTIONS)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_quick_check_agrees_on_valid_entries_changed_in_one_place(
        section: str, data: st.DataObject) -> None:
    """Where a wrong verdict would let a problem through: an entry the schema
    allows, with one value replaced, one key added or one removed."""
    entry = {**SCHEMAS.entries[section], "$defs": schema.document()["$defs"]}
    value = data.draw(from_schema(entry))
    path = data.draw(st.sampled_from(_paths(value)))
    parent: Any = value
    for step in path[:-1]:
        parent = parent[step]
    change = data.draw(st.sampled_from(["replace", "add", "remove"]))
    if not path or change == "replace":
        replacement = data.draw(VALUES)
        if path:
            parent[path[-1]] = replacement
        else:
            value = replacement
    elif change == "add" and isinstance(parent[path[-1]], dict):
        parent[path[-1]][data.draw(st.sampled_from(KEYS))] = data.draw(VALUES)
    elif isinstance(parent, dict):
        del parent[path[-1]]
    assert SCHEMAS.quick(section)(value) == jsonschema_says_valid(section, value)


@pytest.mark.parametrize("value, valid", [
    ({"mtu": True}, False), ({"mtu": 1500.0}, True), ({"mtu": 1500.5}, False),
    ({"mtu": math.nan}, False), ({"mtu": -0.0}, False), ({"mtu": 65535.0}, True),
    ({"mtu": 67}, False), ({"interface": "br-x\n"}, False), ({"driver": "bridge"}, True),
    ({"labels": {"a": 1}}, False), ({"colour": "red"}, False),
])
def test_the_quick_check_on_networks(value: dict[str, Any], valid: bool) -> None:
    network = {"subnet": "10.0.0.0/24", **value}
    assert SCHEMAS.quick("networks")(network) is valid
    assert jsonschema_says_valid("networks", network) is valid


TOP_KEYS = sorted(schema.document()["properties"])
DOCUMENTS = st.dictionaries(st.sampled_from(TOP_KEYS) | st.text(max_size=3),
                            VALUES | st.dictionaries(st.text(max_size=3), VALUES, max_size=3),
                            max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(document=st.one_of(DOCUMENTS, VALUES))
def test_the_quick_check_of_a_document_agrees_with_jsonschema(document: Any) -> None:
    """A document's top level (its entries aside): jsonschema is asked only
    when the quick check refuses it (schema._top_errors)."""
    valid = not any(True for _ in SCHEMAS.top.iter_errors(document))
    assert SCHEMAS.quick(None)(document) == valid


def test_a_valid_document_does_not_import_jsonschema() -> None:
    """The quick checks answer for a valid spec: jsonschema (some 50 ms of a
    command's start) is imported only to word problems."""
    code = ("import sys; from reconciler import spec; "
            "spec.load_text('version: 1\\nproject: p\\nnetworks: {n: {subnet: 10.0.0.0/24}}\\n"
            "containers: {a: {networks: [n]}}\\n'); print('jsonschema' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
