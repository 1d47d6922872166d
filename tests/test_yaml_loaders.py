"""Specs are read with libyaml's loader (CSafeLoader) where PyYAML has it, and
every position netapply reports is the one the pure loader gives: the same
file:line:col for each key and list item of every example, and the same
problems, worded and placed alike, for broken specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler import spec as spec_mod
from reconciler import yamlsource
from reconciler.errors import SpecError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (REPO / "examples").rglob("*.yaml"))

pytestmark = pytest.mark.skipif(yamlsource.C_SAFE_LOADER is None,
                                reason="PyYAML without libyaml: one loader only")

HEAD = "version: 1\nproject: p\n"
BROKEN = {
    "unclosed flow": HEAD + "networks:\n  a: {subnet: 10.0.0.0/24\ncontainers: {}\n",
    "tab": HEAD + "networks:\n\ta: {}\n",
    "bad indentation": HEAD + "networks:\n  a:\n    subnet: 10.0.0.0/24\n   mtu: 1400\n",
    "duplicate key": HEAD + "networks:\n  a: {subnet: 10.0.0.0/24}\n  a: {subnet: 10.1.0.0/24}\n",
    "number as key": HEAD + "networks:\n  1: {subnet: 10.0.0.0/24}\n",
    "control character after non-ASCII": HEAD + "# café 🎉\nnetworks: {a: \"x\x07\"}\n",
    "non-ASCII before an error": (HEAD + "networks:\n  a: {subnet: 10.0.0.0/24, labels: "
                                  "{note: \"naïve ünïcödé 🎉\"}}\n  b: [\n"),
    "unknown tag": HEAD + "networks: !!python/object:os.system {}\n",
    "two documents": HEAD + "---\nversion: 1\n",
    "alias to itself": HEAD + "networks: &a {x: *a}\n",
    "semantic problems after non-ASCII": (
        HEAD + "# ünïcödé 🎉 comment\nnetworks:\n  a: {subnet: 10.0.0.0/33, labels: {k: \"é🎉\"}}\n"
        "  b: {subnet: 10.0.1.0/24, mtu: 99999}\ncontainers:\n  web: {networks: [nope]}\n"),
    "anchors and merges": (
        HEAD + "x-base: &base {subnet: 10.0.0.0/24}\nnetworks:\n  a: {<<: *base, mtu: 1}\n"),
}


def both(text: str) -> tuple[tuple[yamlsource.Document, list[object]],
                             tuple[yamlsource.Document, list[object]]]:
    fast, fast_problems = yamlsource.parse(text, "s.yaml")
    pure, pure_problems = yamlsource.parse(text, "s.yaml", fast=False)
    return (fast, list(fast_problems)), (pure, list(pure_problems))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_reads_the_same_with_libyaml_and_takes_that_path(path: Path) -> None:
    text = path.read_text()
    (fast, fast_problems), (pure, pure_problems) = both(text)
    assert fast.data == pure.data
    assert fast.where == pure.where
    assert fast_problems == pure_problems
    if not pure_problems:  # not compose.netapply.yaml, whose !reset no safe loader reads
        assert yamlsource.C_SAFE_LOADER is not None
        taken = yamlsource._parse_c(text, "s.yaml", yamlsource.C_SAFE_LOADER)
        assert taken is not None, "libyaml's loader was not used"
        assert len(pure.where) > 10


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_specs_give_the_same_problems_at_the_same_places(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BROKEN[name]
    (fast, fast_problems), (pure, pure_problems) = both(text)
    assert fast.where == pure.where
    assert fast_problems == pure_problems

    def load() -> list[str]:
        try:
            spec_mod.load_text(text, "s.yaml")
        except SpecError as e:
            return [str(p) for p in e.problems]
        return []

    found_fast = load()
    monkeypatch.setattr(yamlsource, "C_SAFE_LOADER", None)
    assert load() == found_fast
    assert found_fast, f"{name}: no problem found"


def test_a_valid_spec_with_non_ascii_text_has_the_same_positions() -> None:
    text = (HEAD + "# ünïcödé 🎉\nnetworks:\n  a: {subnet: 10.0.0.0/24, labels: {k: \"é🎉\"}}\n"
            "containers:\n  web: {labels: {ü: \"🎉🎉\"}, networks: [a]}\n")
    (fast, _), (pure, _) = both(text)
    assert fast.where == pure.where
    assert fast.where[("containers", "web", "networks", "0")].col == 39  # characters, not bytes


def test_a_long_document_is_counted_before_libyaml_composes_it(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past C_UNCOUNTED_CHARS, nodes are counted from events: one too many
    is reported by the pure loader, at the same place, without composing."""
    monkeypatch.setattr(yamlsource, "MAX_NODES", 50)
    monkeypatch.setattr(yamlsource, "C_UNCOUNTED_CHARS", 10)
    many = "x: [" + ", ".join(str(i) for i in range(100)) + "]\n"
    fast, problems = yamlsource.parse(many, "s.yaml")
    assert not fast.ok
    assert [str(p) for p in problems] == [str(p) for p in yamlsource.parse(
        many, "s.yaml", fast=False)[1]]
    assert "more than 50 keys and values" in str(problems[0])
    few = "x: [1, 2, 3]\n"
    assert yamlsource._within_budget(few, yaml.CSafeLoader)
    assert not yamlsource._within_budget(many, yaml.CSafeLoader)


def test_keys_are_read_as_their_tags_say() -> None:
    """A key's text is taken as is only where YAML reads it as text (a plain
    `b`, a quoted "c", a `!!str 1`); `!!int "3"` is a number, reported."""
    text = (HEAD + "networks:\n  !!str 1: {subnet: 10.0.0.0/24}\n  b: {subnet: 10.1.0.0/24}\n"
            '  "c": {}\n  !!int "3": {subnet: 10.2.0.0/24}\n')
    (fast, fast_problems), (pure, pure_problems) = both(text)
    assert (fast.data, fast.where, fast_problems) == (pure.data, pure.where, pure_problems)
    assert pure.data == {"version": 1, "project": "p", "networks": {
        "1": {"subnet": "10.0.0.0/24"}, "b": {"subnet": "10.1.0.0/24"}, "c": {}}}
    assert [pure.where[("networks", name)].line for name in ("1", "b", "c")] == [4, 5, 6]
    assert [str(p) for p in pure_problems] == [
        "s.yaml:7:3: networks: key '3' is read by YAML as 3, not as text; quote it"]


def test_libyaml_counts_nodes_as_it_composes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past C_UNCOUNTED_CHARS, a document is counted while libyaml composes
    it, not in a pass of its own; an alias counts as one node, as the pure
    loader counts it (each '*' of the text is taken for one)."""
    assert yamlsource.C_SAFE_LOADER is not None
    monkeypatch.setattr(yamlsource, "MAX_NODES", 50)
    monkeypatch.setattr(yamlsource, "C_UNCOUNTED_CHARS", 10)
    counted: list[str] = []
    within_budget = yamlsource._within_budget

    def spy(text: str, loader_class: type[yaml.SafeLoader]) -> bool:
        counted.append(text)
        return within_budget(text, loader_class)

    monkeypatch.setattr(yamlsource, "_within_budget", spy)
    nodes_40 = "x: [" + ", ".join(str(i) for i in range(39)) + "]\n"  # 41 with the root
    # 46 nodes and 9 aliases: too many only with the aliases counted.
    aliased = "a: &a 1\n" + nodes_40 + "y: [" + ", ".join(["*a"] * 9) + "]\n"
    for text, fits in [(nodes_40, True), (aliased, False),
                       ("a: &a 1\n" + "b: [" + ", ".join(["*a"] * 20) + "]\n", True)]:
        taken = yamlsource._parse_c(text, "s.yaml", yamlsource.C_SAFE_LOADER)
        _, pure_problems = yamlsource.parse(text, "s.yaml", fast=False)
        assert (taken is not None) == fits == (pure_problems == []), text
        if not fits:
            assert "more than 50 keys and values" in str(pure_problems[0])
    assert counted == []
    monkeypatch.setattr(yamlsource, "C_ALIAS_SLACK", 5)  # more '*' than that: events counted
    many_stars = "# " + "*" * 10 + "\n" + nodes_40
    assert yamlsource._parse_c(many_stars, "s.yaml", yamlsource.C_SAFE_LOADER) is not None
    assert counted == [many_stars]
