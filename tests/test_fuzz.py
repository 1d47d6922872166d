"""Hostile and broken input: validate either accepts a spec or lists its
problems, each with file:line:col; it never crashes, and nothing that is
rejected reaches the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from reconciler import cli, schema, yamlsource
from reconciler.errors import SpecError
from reconciler.spec import load, load_text
from tests.kernelutil import kernel_snapshot, private_namespace, require_sandbox

REPO = Path(__file__).resolve().parent.parent
SCHEMA = schema.document()
# Specs only: examples/compose also holds Compose files, which are not specs.
EXAMPLES = [p.read_text() for p in sorted(REPO.glob("examples/**/*.yaml"))
            if not p.name.startswith("compose")]
FILE = "fuzz.yaml"
# What YAML gives meaning to, and what names and addresses are made of.
ALPHABET = st.sampled_from([*":{}[],&*!|>'\"%@`#-?\n\t 0123456789abcdefxyz./", "\u00e9", "\u2028"])


def outcome(text: str) -> str:
    """Load text as a spec: "ok", or "rejected" after checking every problem is
    a sentence at a position in the file. Anything else raised fails the test."""
    try:
        load_text(text, FILE)
    except SpecError as e:
        assert e.problems
        for problem in e.problems:
            assert problem.where is not None and problem.where.file == FILE, str(problem)
            assert problem.where.line >= 1 and problem.where.col >= 1
            assert problem.message and "Traceback" not in problem.message
        return "rejected"
    return "ok"


@settings(suppress_health_check=list(HealthCheck), deadline=None)
@given(from_schema(SCHEMA))
def test_documents_the_schema_allows_are_accepted_or_explained(doc: dict[str, Any]) -> None:
    outcome(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "insert", "duplicate line", "swap lines"]))
        if kind == "delete":
            text = text[:where] + text[where + draw(st.integers(1, 20)):]
        elif kind == "insert":
            text = text[:where] + draw(st.text(ALPHABET, min_size=1, max_size=8)) + text[where:]
        else:
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if kind == "duplicate line":
                lines.insert(i, lines[j])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@given(mutated())
def test_mutations_of_valid_specs_are_accepted_or_explained(text: str) -> None:
    outcome(text)


def test_an_alias_bomb_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    lines = ["version: 1", "project: p", 'a: &a ["x", "x", "x", "x", "x", "x", "x", "x"]']
    previous = "a"
    for name in "bcdefghij":  # 8^10 values once expanded
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 8)}]")
        previous = name
    started = time.monotonic()
    assert [str(p) for p in problems("\n".join(lines))] == [
        f"{FILE}:1:1: YAML: the document expands to too many values"]
    assert time.monotonic() - started < 30  # a guard against hanging, not a timing claim


def test_deep_nesting_and_huge_files_are_refused(tmp_path: Path) -> None:
    deep = "version: 1\nproject: p\nnetworks: " + "[" * 20000 + "]" * 20000 + "\n"
    assert [str(p) for p in problems(deep)] == [
        f"{FILE}:1:1: YAML: the document is nested too deeply"]
    huge = tmp_path / "huge.yaml"
    huge.write_text("version: 1\nproject: p\n#" + "x" * yamlsource.MAX_FILE_BYTES + "\n")
    with pytest.raises(SpecError) as caught:
        load(str(huge))
    assert [str(p) for p in caught.value.problems] == [
        f"{huge}:1:1: spec: the file is larger than 16 MiB, more than any spec needs; "
        "it is not read"]


# Loads a spec in a process of its own: its problems, and its peak memory.
LOAD_AND_MEASURE = """\
import json, resource, sys
from reconciler import spec
try:
    problems, containers = [], len(spec.load(sys.argv[1]).containers)
except spec.SpecError as e:
    problems, containers = [str(p) for p in e.problems], 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"problems": problems, "containers": containers, "peak_mib": peak}))
"""


def load_and_measure(path: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_huge_spec_of_many_small_keys_is_refused_while_it_is_read(tmp_path: Path) -> None:
    """The node budget holds while the document is composed: refused with the
    place where the budget ran out, without composing the rest (which took a
    minute and 1.4 GB)."""
    header = ["version: 1", "project: p", "x:"]
    width = len("  k0000000: 1\n")
    count = (yamlsource.MAX_FILE_BYTES - 1024) // width
    huge = tmp_path / "huge.yaml"
    huge.write_text("\n".join(header) + "\n" + "".join(f"  k{i:07}: 1\n" for i in range(count)))
    assert huge.stat().st_size > 15 << 20
    result = load_and_measure(huge)
    # Nodes: the top mapping, version and project with their values, x and
    # its mapping; then a key and a value per line. The first one too many:
    first = 8
    line = len(header) + 1 + (yamlsource.MAX_NODES + 1 - first) // 2
    col = 3 if (yamlsource.MAX_NODES + 1 - first) % 2 == 0 else width - 1
    assert result["problems"] == [
        f"{huge}:{line}:{col}: YAML: the document has more than 100,000 keys and values, far "
        "more than any spec needs (10,000 containers take about 50,000); it is not read "
        "further"]
    assert result["peak_mib"] < 300, result


def test_a_spec_of_ten_thousand_containers_is_within_the_budget(tmp_path: Path) -> None:
    lines = ["version: 1", "project: p", "networks:", "  front: {subnet: 10.0.0.0/16}",
             "containers:", *(f"  c{i}:\n    networks: [front]" for i in range(10_000))]
    spec = tmp_path / "big.yaml"
    spec.write_text("\n".join(lines) + "\n")
    result = load_and_measure(spec)
    assert (result["problems"], result["containers"]) == ([], 10_000)
    assert result["peak_mib"] < 300, result


def test_a_fifo_or_a_crowded_directory_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError) as caught:
        load(str(fifo))  # would block forever if it were opened for reading as a file
    assert [str(p) for p in caught.value.problems] == [f"spec: {fifo} is not a regular file"]
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    for i in range(yamlsource.MAX_FILES + 1):
        (crowded / f"{i:04}.yaml").write_text("")
    with pytest.raises(SpecError) as caught:
        load(str(crowded))
    assert [str(p) for p in caught.value.problems] == [
        f"spec: {crowded} has 1001 spec files, more than the 1000 netapply reads"]


def problems(text: str) -> list[Any]:
    with pytest.raises(SpecError) as caught:
        load_text(text, FILE)
    return list(caught.value.problems)


@pytest.mark.kernel
@settings(max_examples=20, deadline=None)
@given(mutated())
def test_a_rejected_spec_changes_nothing_in_the_kernel(text: str) -> None:
    """Rejected when loaded, or (when it loads) by the machine: a namespace the
    spec wants is taken by someone else. Either way apply writes nothing."""
    require_sandbox()
    accepted = outcome(text) == "ok"
    with private_namespace(), tempfile.TemporaryDirectory() as work:
        if accepted:
            spec = load_text(text, FILE)
            taken = next((c.netns for c in spec.containers.values() if c.netns), None)
            if taken is None:
                return  # nothing here to be in the way of
            subprocess.run(["ip", "netns", "add", taken], check=True)
        path = Path(work, FILE)
        path.write_text(text)
        before = kernel_snapshot()
        assert cli.main(["--no-color", "apply", "--auto-approve", str(path)]) == 1
        assert kernel_snapshot() == before
