"""The whole import: a Compose file (its name, or its data) -> the spec text
and notes (`import_file`, `convert`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from reconciler import spec as spec_mod
from reconciler import yamlsource
from reconciler.compose.converter import _Converter
from reconciler.compose.reading import project_name, read, run_config
from reconciler.compose.yamltext import _Block, _Comment, _lines
from reconciler.errors import Problem, SpecError, Where

# A Compose variable, $NAME or ${NAME...}; `$$` is a literal dollar.
VARIABLE = re.compile(r"(?<!\$)\$\{?([A-Za-z_][A-Za-z0-9_]*)")
IMPORTED = "imported spec"  # the file name in problems of the generated spec


@dataclass(frozen=True)
class Imported:
    """The result of an import: the spec as YAML text, notes for the user
    (stderr), and the problems the spec still has (empty when it validates;
    positions are lines of `text`, in a file called "imported spec")."""

    text: str
    notes: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()


HOW_TO_USE = ("Run the services with network_mode: none (a Compose override file, as in "
              "netapply's examples/compose), then netapply apply this spec.")


def convert(data: dict[str, Any], project: str, *, file: str = "compose.yaml",
            where: dict[yamlsource.Path, Where] | None = None, normalised: bool = False,
            profiles: frozenset[str] = frozenset(), remarks: tuple[str, ...] = ()
            ) -> Imported:
    """A Compose project (the file's data) -> the netapply spec for its networking.

    project: the Compose project name (see project_name). normalised: the data
    came from `docker compose config` (profiles already applied). profiles:
    the active Compose profiles otherwise. remarks: about how the file was
    read; each becomes a comment at the top of the spec and a note.

    Raises SpecError listing every problem of the Compose file's structure
    (at file:line:col where `where` knows it). The returned spec is checked
    with the spec loader; its problems are in Imported.problems.
    """
    converter = _Converter(data, where or {}, file, project, normalised, profiles)
    spec = converter.convert()
    if converter.problems:
        raise SpecError(converter.problems)
    title = (f"netapply spec of the networking of the Compose file {os.path.basename(file)} "
             f"(project {project!r}), made by `netapply import compose`. Each Compose key "
             f"netapply has nothing for is a comment. {HOW_TO_USE}")
    head = _Block([_Comment(title), *(_Comment(f"compose: {r}") for r in remarks)])
    sections = []
    for item in spec.items:  # comments, version and project first; then one block a section
        if isinstance(item, tuple) and isinstance(item[1], _Block):
            sections.append(_Block([item]))
        else:
            head.items.append(item)
    text = "\n\n".join("\n".join(_lines(block, 0)) for block in [head, *sections]) + "\n"
    try:
        spec_mod.load_text(text, IMPORTED)
        problems: tuple[Problem, ...] = ()
    except SpecError as e:
        problems = tuple(e.problems)
    return Imported(text, (*remarks, *converter.notes), problems)


def import_file(file: str, project: str | None = None,
                environ: Mapping[str, str] | None = None) -> Imported:
    """`netapply import compose FILE [--project NAME]`.

    The file is read first (so that YAML errors are reported at file:line:col
    either way), then normalised by `docker compose config` where that works;
    otherwise the YAML as read is converted, and the spec and the notes say
    that variables, extends, include and profiles were not resolved.

    Raises SpecError (problems of the Compose file) or NetapplyError.
    """
    environ = os.environ if environ is None else environ
    data, where = read(file)
    name = project_name(project, environ, data.get("name"), file)
    normalised, notes = run_config(file, project)
    if normalised is not None:
        resolved = normalised.get("name")
        imported = convert(normalised, resolved if isinstance(resolved, str) else name,
                           file=file, normalised=True)
        return replace(imported, notes=(*notes, *imported.notes))
    used = sorted(set(VARIABLE.findall(json.dumps(data))))
    unresolved = ("read as plain YAML: ${VARIABLES} were not expanded"
                  + (f" (this file uses {', '.join(used)})" if used else "")
                  + ", and extends, include and profiles are not resolved as docker compose "
                  "would")
    active = frozenset(p for p in environ.get("COMPOSE_PROFILES", "").split(",") if p)
    imported = convert(data, name, file=file, where=where, profiles=active,
                       remarks=(unresolved,))
    # Why docker compose was not used depends on this machine: a note, not a comment.
    return replace(imported, notes=(*notes, *imported.notes))
