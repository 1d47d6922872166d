"""Reading spec files: safe YAML that remembers where every key and list item was written.

PyYAML forgets positions once it builds Python objects, so the node tree is
composed first, the data is constructed from it with the SafeLoader, and both
are walked side by side to map each path to its line and column. Where PyYAML
has its C parser (libyaml), specs are composed with it (CSafeLoader: the same
nodes and marks, about four times faster); a document it refuses is read
again with the pure loader, so that every problem is reported as that one
words and places it. The walk
also returns a cleaned copy of the data: keys that are not strings are
reported and dropped, so later stages only ever see JSON-like values.
The files of a spec directory are merged here too, keeping each entry's position.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.errors import Problem, SpecError, Where

Path = tuple[str, ...]
AnyPath = Sequence[str | int]

# Singular names of the top-level sections, used to name an object in messages.
SECTIONS = {"hosts": "host", "networks": "network", "containers": "container"}
# Top-level lists: the files of a directory add their entries, in file order.
LISTS = ("expect",)

# A document that expands to more values than this is an alias bomb, not a spec.
MAX_VALUES = 200_000
# Keys and values as written (an alias counts once), counted while the document
# is composed: the budget that bounds the time and memory of reading a file
# within MAX_FILE_BYTES (PyYAML composes about 50,000 a second, each ~700 bytes).
# A spec of 10,000 containers has about 50,000.
MAX_NODES = 100_000
# A spec file larger than this is not read at all (10,000 containers take about 1 MiB).
MAX_FILE_BYTES = 16 << 20
MAX_FILES = 1000  # spec files read from one directory


@dataclass
class Document:
    """One parsed file: cleaned data (None when empty or unreadable) and positions."""

    file: str
    data: object = None
    where: dict[Path, Where] = field(default_factory=dict)
    ok: bool = True  # False when the file could not be parsed at all
    # SHA-256 of the bytes read (hex); "" when the file could not be read whole.
    # A saved plan records it, to tell the spec it was made from (planfile.py).
    sha256: str = ""


def describe(path: AnyPath) -> tuple[str, str]:
    """Split a path into the object it belongs to and the field inside it.

    ("containers", "web", "ports", 0, "protocol") -> ("container 'web'", "ports[0].protocol")
    """
    if not path:
        return "spec", ""
    head = str(path[0])
    if head in SECTIONS and len(path) >= 2:
        return f"{SECTIONS[head]} '{path[1]}'", field_label(path[2:])
    if head in LISTS and len(path) >= 2:
        return f"{head}[{path[1]}]", field_label(path[2:])
    return head, field_label(path[1:])


def field_label(rest: AnyPath) -> str:
    """A dotted field name with list indices in brackets: ports[0].protocol."""
    label = ""
    for part in rest:
        if isinstance(part, int):
            label += f"[{part}]"
        else:
            label += f".{part}" if label else part
    return label


def show(value: object) -> str:
    """A short rendering of a user's value for messages; never a full repr dump."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    return f"a YAML {type(value).__name__}"


def position(file: str, mark: yaml.Mark | None) -> Where:
    if mark is None:
        return Where(file, 1, 1)
    return Where(file, mark.line + 1, mark.column + 1)


# libyaml's loader, when PyYAML was built with it (None: the pure one only).
C_SAFE_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)
# A text no longer than this cannot hold more than MAX_NODES nodes (each takes
# at least one character, and one indicator makes at most two empty ones); a
# longer one has its nodes counted as libyaml composes them (_Counted).
C_UNCOUNTED_CHARS = MAX_NODES // 2
# libyaml's composer does not count an alias (it composes nothing for one), so
# as many are allowed for as the text has '*'; a text with more '*' than this
# has its nodes counted from libyaml's events before it is composed instead.
C_ALIAS_SLACK = MAX_NODES // 2


def parse(
    text: str, file: str, loader_class: type[yaml.SafeLoader] = yaml.SafeLoader,
    fast: bool = True,
) -> tuple[Document, list[Problem]]:
    """Parse one YAML document. Problems are returned, never raised.

    loader_class: a SafeLoader subclass with other scalar rules (Compose files
    are YAML 1.2); specs use the SafeLoader itself, through libyaml where
    PyYAML has it (fast=False: never; a document with problems is read again
    without it, so that they are reported alike).
    """
    if fast and loader_class is yaml.SafeLoader and C_SAFE_LOADER is not None:
        parsed = _parse_c(text, file, C_SAFE_LOADER)
        if parsed is not None:
            return parsed
    try:
        loader = _budgeted(loader_class)(text)
    except yaml.YAMLError as err:  # a character YAML does not allow
        return Document(file, ok=False), [_reader_problem(err, text, file)]
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(file), []
        duplicates = _duplicate_keys(node, file)
        data = loader.construct_document(node)
        walker = _Walker(file, loader)
        cleaned = walker.walk(node, data, ())
        if walker.recursive:
            return Document(file, ok=False), walker.problems
    except yaml.MarkedYAMLError as err:
        return Document(file, ok=False), [_syntax_problem(err, file)]
    except yaml.YAMLError as err:
        return Document(file, ok=False), [_reader_problem(err, text, file)]
    except _TooBig:
        problem = Problem(Where(file, 1, 1), "YAML: the document expands to too many values")
        return Document(file, ok=False), [problem]
    except _TooManyNodes as err:
        problem = Problem(position(file, err.mark), (
            f"YAML: the document has more than {MAX_NODES:,} keys and values, far more than "
            "any spec needs (10,000 containers take about 50,000); it is not read further"))
        return Document(file, ok=False), [problem]
    except RecursionError:
        problem = Problem(Where(file, 1, 1), "YAML: the document is nested too deeply")
        return Document(file, ok=False), [problem]
    finally:
        loader.dispose()
    walker.where[()] = position(file, node.start_mark)
    return Document(file, cleaned, walker.where), duplicates + walker.problems


def _parse_c(
    text: str, file: str, loader_class: type[yaml.SafeLoader]
) -> tuple[Document, list[Problem]] | None:
    """parse() with libyaml's loader; None when the document has any problem
    (or is one too big), which the pure loader then finds and words."""
    loader = _counted(loader_class)(text)
    if len(text) > C_UNCOUNTED_CHARS:
        aliases = text.count("*")  # at least as many as the aliases written
        if aliases <= C_ALIAS_SLACK:
            loader.budget = MAX_NODES - aliases
        elif not _within_budget(text, loader_class):
            loader.dispose()
            return None
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(file), []
        if _duplicate_keys(node, file):
            return None
        data = loader.construct_document(node)
        walker = _Walker(file, loader)
        cleaned = walker.walk(node, data, ())
        if walker.problems:
            return None
    except (yaml.YAMLError, _TooBig, _TooManyNodes, RecursionError):
        return None
    finally:
        loader.dispose()
    walker.where[()] = position(file, node.start_mark)
    return Document(file, cleaned, walker.where), []


class _Counted:
    """Mixed into libyaml's loader: counts the nodes it composes and stops
    past `budget` (None: not counted). Its composer asks the resolver's
    descend_resolver once for every node but an alias, so that is where
    they are counted: one pass, where a count of events first took one more
    (about a sixth of the time of reading a 1000-container file)."""

    budget: int | None = None
    composed = 0

    def descend_resolver(self, current_node: yaml.Node | None, current_index: object) -> None:
        self.composed += 1
        if self.budget is not None and self.composed > self.budget:
            raise _TooManyNodes(None)  # the pure loader finds where, and says it
        super().descend_resolver(current_node, current_index)  # type: ignore[misc]


_COUNTED: dict[type[yaml.SafeLoader], type[yaml.SafeLoader]] = {}


def _counted(loader_class: type[yaml.SafeLoader]) -> type[Any]:
    """loader_class (libyaml's) with _Counted."""
    found = _COUNTED.get(loader_class)
    if found is None:
        found = _COUNTED[loader_class] = type(
            f"Counted{loader_class.__name__}", (_Counted, loader_class), {})
    return found


NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)


def _within_budget(text: str, loader_class: type[yaml.SafeLoader]) -> bool:
    """Whether the document has at most MAX_NODES nodes (as _Budget counts
    them: one per node event), counted from libyaml's events without composing
    them; stops at the first one too many, or at a syntax error (False)."""
    loader = loader_class(text)
    count = 0
    try:
        while loader.check_event():
            if isinstance(loader.get_event(), NODE_EVENTS):  # type: ignore[no-untyped-call]
                count += 1
                if count > MAX_NODES:
                    return False
    except yaml.YAMLError:
        return False
    finally:
        loader.dispose()
    return True


def _syntax_problem(err: yaml.MarkedYAMLError, file: str) -> Problem:
    mark = err.problem_mark or err.context_mark
    problem, context = err.problem or "", err.context or ""
    if problem.startswith("but "):
        cause = f"{context}, {problem}"
    else:
        cause = f"{problem} ({context})" if context else problem or "the text is not valid YAML"
    if "'\\t'" in problem:
        cause += "; indent with spaces, not tabs"
    kind = "YAML" if isinstance(err, yaml.constructor.ConstructorError) else "YAML syntax error"
    return Problem(position(file, mark), f"{kind}: {cause}")


def _reader_problem(err: yaml.YAMLError, text: str, file: str) -> Problem:
    # ReaderError (a control character) carries a character index, not a mark.
    index = getattr(err, "position", 0) or 0
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    char = getattr(err, "character", None)
    cause = f"character U+{char:04X} is not allowed" if isinstance(char, int) else "unreadable text"
    return Problem(Where(file, line, col), f"YAML syntax error: {cause}")


def _duplicate_keys(root: yaml.Node, file: str) -> list[Problem]:
    """Keys written twice in one mapping (PyYAML silently keeps the last one)."""
    problems: list[Problem] = []
    seen_nodes: set[int] = set()
    todo: list[tuple[yaml.Node, Path]] = [(root, ())]
    while todo:
        node, path = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend((child, (*path, str(i))) for i, child in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = key_node.value
            if key in first:
                ctx, label = describe((*path, key))
                what = f"{label} is defined" if label else "defined"
                earlier = position(file, first[key])
                message = f"{ctx}: {what} twice (first at {earlier})"
                problems.append(Problem(position(file, key_node.start_mark), message))
            else:
                first[key] = key_node.start_mark
            todo.append((value_node, (*path, key)))
    return problems


class _TooBig(Exception):
    pass


class _TooManyNodes(Exception):
    def __init__(self, mark: yaml.Mark | None):
        super().__init__()
        self.mark = mark


class _Budget(yaml.SafeLoader):
    """Counts nodes as they are composed and stops at MAX_NODES, where the
    node that is one too many begins: a huge document is refused after
    composing that many nodes, not after composing all of them."""

    nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooManyNodes(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        return super().compose_node(parent, index)


_BUDGETED: dict[type[yaml.SafeLoader], type[yaml.SafeLoader]] = {yaml.SafeLoader: _Budget}


def _budgeted(loader_class: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    """loader_class (SafeLoader or a subclass with other rules) with _Budget."""
    found = _BUDGETED.get(loader_class)
    if found is None:
        found = _BUDGETED[loader_class] = type(
            f"Budgeted{loader_class.__name__}", (_Budget, loader_class), {})
    return found


STR_TAG = "tag:yaml.org,2002:str"


class _Walker:
    """Walks the node tree and the constructed data in parallel."""

    def __init__(self, file: str, loader: yaml.SafeLoader):
        self.file = file
        self.loader = loader
        self.where: dict[Path, Where] = {}
        self.problems: list[Problem] = []
        self.count = 0
        self.active: set[int] = set()  # collection nodes on the current path
        self.recursive = False

    def walk(self, node: yaml.Node, data: object, path: Path) -> object:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBig
        if id(node) in self.active:
            self._report(node, path, "refers to itself through a YAML alias")
            self.recursive = True
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode) and isinstance(data, dict):
                return self._mapping(node, data, path)
            if isinstance(node, yaml.SequenceNode) and isinstance(data, list):
                return self._sequence(node, data, path)
            return data
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, data: dict[object, object], path: Path) -> object:
        # After construction node.value holds merged (<<) pairs too; the last one wins,
        # as in the constructed dict.
        last: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            # A plain text key is its node's value (what construct_yaml_str
            # gives); only other keys are constructed again (the loader
            # forgets what it constructed once the document is built).
            if key_node.tag == STR_TAG and isinstance(key_node, yaml.ScalarNode):
                key: object = key_node.value
            else:
                key = self.loader.construct_object(key_node, deep=True)
            if isinstance(key, str):
                last[key] = (key_node, value_node)
            else:
                raw = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self._report(
                    key_node,
                    path,
                    f"key {raw!r} is read by YAML as {show(key)}, not as text; quote it",
                )
        cleaned: dict[str, object] = {}
        for key, (key_node, value_node) in last.items():
            if key not in data:
                continue
            child = (*path, key)
            self.where[child] = position(self.file, key_node.start_mark)
            cleaned[key] = self.walk(value_node, data[key], child)
        return cleaned

    def _sequence(self, node: yaml.SequenceNode, data: list[object], path: Path) -> object:
        cleaned: list[object] = []
        for index, (item_node, item) in enumerate(zip(node.value, data, strict=False)):
            child = (*path, str(index))
            self.where[child] = position(self.file, item_node.start_mark)
            cleaned.append(self.walk(item_node, item, child))
        return cleaned

    def _report(self, node: yaml.Node, path: Path, cause: str) -> None:
        ctx, label = describe(path)
        inside = f"in {label}, " if label else ""
        message = f"{ctx}: {inside}{cause}"
        self.problems.append(Problem(position(self.file, node.start_mark), message))


# --- files and directories ---------------------------------------------------------

SPEC_SUFFIXES = (".yaml", ".yml")
REQUIRED_KEYS = ("version", "project")


def read(given: str) -> tuple[list[Document], list[Problem]]:
    """Parse a spec file, or every *.yaml/*.yml file of a directory (sorted by name).

    Raises SpecError only when there is nothing to read at all.
    """
    if os.path.isdir(given):
        return _read_directory(given)
    if not os.path.exists(given):
        raise SpecError([Problem(None, f"spec: {given} does not exist")])
    doc, problems = read_file(given)
    return [doc], problems


def _read_directory(directory: str) -> tuple[list[Document], list[Problem]]:
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.name.endswith(SPEC_SUFFIXES) and not entry.name.startswith(".")
        )
    except OSError as err:
        raise SpecError([Problem(None, f"spec: cannot read {directory}: {err.strerror}")]) from None
    if not names:
        raise SpecError([Problem(None, f"spec: {directory} contains no *.yaml or *.yml files")])
    if len(names) > MAX_FILES:
        raise SpecError([Problem(None, f"spec: {directory} has {len(names)} spec files, more "
                                       f"than the {MAX_FILES} netapply reads")])
    docs: list[Document] = []
    problems: list[Problem] = []
    for name in names:
        doc, found = read_file(os.path.join(directory, name))
        docs.append(doc)
        problems.extend(found)
    return docs, problems


def read_file(file: str) -> tuple[Document, list[Problem]]:
    try:
        # O_NONBLOCK: a FIFO given as the spec must not block the open.
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return Document(file, ok=False), [
                    Problem(None, f"spec: {file} is not a regular file")]
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        return Document(file, ok=False), [
            Problem(None, f"spec: cannot read {file}: {err.strerror}")
        ]
    return parse_bytes(raw, file)


def parse_bytes(raw: bytes, file: str) -> tuple[Document, list[Problem]]:
    """Parse a spec file's bytes (UTF-8, a BOM allowed), read from wherever
    `file` names (a path, or an etcd key's URL). Problems are returned."""
    if len(raw) > MAX_FILE_BYTES:
        return Document(file, ok=False), [Problem(
            Where(file, 1, 1), f"spec: the file is larger than {MAX_FILE_BYTES >> 20} MiB, "
            "more than any spec needs; it is not read")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        problem = Problem(Where(file, line, col), "YAML: the file is not UTF-8 text")
        return Document(file, ok=False, sha256=hashlib.sha256(raw).hexdigest()), [problem]
    doc, problems = parse(text, file)
    doc.sha256 = hashlib.sha256(raw).hexdigest()
    return doc, problems


def shape_problems(doc: Document, in_directory: bool) -> list[Problem]:
    """The top level of a file must be a mapping (an empty file in a directory is fine)."""
    if not doc.ok or isinstance(doc.data, dict):
        return []
    start = Where(doc.file, 1, 1)
    if doc.data is None:
        if in_directory:
            return []
        return [
            Problem(start, "spec: the file is empty; a spec needs at least version and project")
        ]
    cause = (
        f"the top level must be a mapping with keys like version and project (got {show(doc.data)})"
    )
    return [Problem(doc.where.get((), start), f"spec: {cause}")]


def merge(
    docs: list[Document], directory: str | None
) -> tuple[dict[str, Any], dict[Path, Where], list[Problem]]:
    """Merge files as SPEC.md says: sections by name, version and project must agree."""
    merged: dict[str, Any] = {}
    where: dict[Path, Where] = {}
    problems: list[Problem] = []
    for doc in docs:
        if not isinstance(doc.data, dict):
            continue
        owners = _merge_document(doc, merged, where, problems)
        for path, place in doc.where.items():
            if path[:2] in owners or (len(path) < 2 and path not in where):
                where[path] = place
    if all(doc.ok and isinstance(doc.data, dict | None) for doc in docs):
        problems.extend(_missing_keys(merged, docs, directory))
    return merged, where, problems


def _merge_document(
    doc: Document, merged: dict[str, Any], where: dict[Path, Where], problems: list[Problem]
) -> set[Path]:
    """Merge one file into merged; returns the (section, name) entries it contributed."""
    assert isinstance(doc.data, dict)
    owners: set[Path] = set()
    for key, value in doc.data.items():
        if key in SECTIONS:
            section = merged.setdefault(key, {})
            entries = value.items() if isinstance(value, dict) else ()
            for name, item in entries:
                path = (key, name)
                if name in section:
                    ctx, _ = describe(path)
                    message = f"{ctx}: defined twice (first at {where[path]})"
                    problems.append(Problem(doc.where[path], message))
                    continue
                section[name] = item
                owners.add(path)
        elif key in LISTS:
            _merge_list(doc, key, value, merged, where)
        elif key in merged and merged[key] != value:
            message = f"{key}: {show(value)} disagrees with {show(merged[key])} at {where[(key,)]}"
            problems.append(Problem(doc.where[(key,)], message))
        elif key not in merged:
            merged[key] = value
            where[(key,)] = doc.where[(key,)]
    for owner in owners:
        where[owner] = doc.where[owner]
    return owners


def _merge_list(doc: Document, key: str, value: object, merged: dict[str, Any],
                where: dict[Path, Where]) -> None:
    """Append a file's entries of a top-level list, each keeping its position."""
    entries = merged.setdefault(key, [])
    offset = len(entries)
    where.setdefault((key,), doc.where[(key,)])
    if not isinstance(value, list):
        return  # not a list: the schema says so, and nothing of it is merged
    entries.extend(value)
    for path, place in doc.where.items():
        if len(path) >= 2 and path[0] == key:
            where[(key, str(offset + int(path[1])), *path[2:])] = place


def _missing_keys(
    merged: dict[str, Any], docs: list[Document], directory: str | None
) -> list[Problem]:
    if directory is None and docs[0].data is None:
        return []  # already reported as an empty file
    problems = []
    for key in REQUIRED_KEYS:
        if key in merged:
            continue
        if directory is None:
            problems.append(Problem(Where(docs[0].file, 1, 1), f"spec: {key} is required"))
        else:
            message = f"spec: {key} is required, but none of the files in {directory} sets it"
            problems.append(Problem(None, message))
    return problems


def locate(where: dict[Path, Where], path: Path) -> Where | None:
    """The position of path, or of its nearest ancestor that has one."""
    for n in range(len(path), -1, -1):
        found = where.get(path[:n])
        if found is not None:
            return found
    return None
