"""Reading a Compose file: as YAML 1.2 the way Compose reads it, through
`docker compose config` where that is installed, and the project's name."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from typing import Any

import yaml

from reconciler import yamlsource
from reconciler.errors import NetapplyError, Problem, SpecError, Where

# netapply's rule for project names (SPEC.md), and Compose's own.
PROJECT_NAME = re.compile(r"[a-z][a-z0-9-]{0,15}")
COMPOSE_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")

DEFAULT_PROJECT = "compose"  # when nothing of a Compose project name fits netapply's rule

DOCKER = "docker"
VERSION_TIMEOUT = 10  # seconds for `docker compose version`
CONFIG_TIMEOUT = 60  # seconds for `docker compose config`; it reads files, no daemon
MAX_FILE_BYTES = yamlsource.MAX_FILE_BYTES


# --- reading -----------------------------------------------------------------------


class ComposeLoader(yaml.SafeLoader):
    """YAML 1.2 scalars, as Compose (go-yaml v3) reads them: `22:22` is text,
    not a base-60 number; `yes`, `on` and dates are text. Compose's merge tags
    `!reset` (drop the value) and `!override` are understood."""


# YAML 1.1's rules for these four kinds go; YAML 1.2's core schema replaces them.
ComposeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag.rsplit(":", 1)[-1] not in ("bool", "int", "float", "timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    """YAML 1.2: 010 is ten (YAML 1.1 read it as octal), 0o10 is eight."""
    assert isinstance(node, yaml.ScalarNode)
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)


def _construct_reset(_loader: yaml.SafeLoader, _node: yaml.Node) -> None:
    return None


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    assert isinstance(node, yaml.ScalarNode)
    return loader.construct_scalar(node)


ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))
ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
ComposeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
ComposeLoader.add_constructor("!reset", _construct_reset)
ComposeLoader.add_constructor("!override", _construct_override)


def read(file: str) -> tuple[dict[str, Any], dict[yamlsource.Path, Where]]:
    """Read a Compose file as YAML 1.2: (data, position of every key and item).

    Raises SpecError (each problem at file:line:col) for text that is not
    YAML or whose top level is not a mapping, NetapplyError for a file that
    cannot be read.
    """
    try:
        # O_NONBLOCK: a FIFO given as the file must not block the open.
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NetapplyError(f"{file}: not a regular file")
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise NetapplyError(f"{file}: cannot read the Compose file: {err.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise NetapplyError(f"{file}: larger than {MAX_FILE_BYTES >> 20} MiB; not read")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError([Problem(Where(file, line, col), "YAML: the file is not UTF-8 text")]
                        ) from None
    doc, problems = yamlsource.parse(text, file, ComposeLoader)
    if problems:
        raise SpecError(problems)
    if not isinstance(doc.data, dict):
        got = "nothing" if doc.data is None else yamlsource.show(doc.data)
        start = doc.where.get((), Where(file, 1, 1))
        raise SpecError([Problem(start, f"a Compose file is a mapping with keys like services "
                                        f"and networks (got {got})")])
    return doc.data, doc.where


def run_config(file: str, project: str | None) -> tuple[dict[str, Any] | None, list[str]]:
    """`docker compose [-p PROJECT] -f FILE config --format json`: the file as
    Compose itself resolves it (variables, extends, include, profiles), and
    notes (its warnings, or why it was not used). None when the plugin is not
    installed or the command fails: the caller reads the file itself.

    The only program netapply starts besides nft: a fixed argument list, no
    shell, stdin closed, the file name as one argument. `config` needs no
    daemon.
    """
    program = shutil.which(DOCKER)
    if program is None:
        return None, ["docker compose is not installed (no docker command)"]
    version = _docker(program, ["compose", "version"], VERSION_TIMEOUT)
    if version is None or version.returncode != 0:
        return None, ["docker compose is not installed (`docker compose version` failed)"]
    args = ["compose", *(["-p", project] if project else []), "-f", file, "config",
            "--format", "json"]
    done = _docker(program, args, CONFIG_TIMEOUT)
    if done is None:
        return None, [f"`docker compose config` did not answer within {CONFIG_TIMEOUT} s"]
    warnings = [_log_message(line) for line in done.stderr.splitlines() if line.strip()][:10]
    if done.returncode != 0:
        why = warnings[-1] if warnings else f"exit status {done.returncode}"
        return None, [f"`docker compose config` failed: {why}"]
    try:
        data = json.loads(done.stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, ["`docker compose config` printed no JSON mapping"]
    return data, [f"docker compose: {line}" for line in warnings]


BACKSLASH_QUOTE, QUOTE = '\\"', '"'
LOG_LINE = re.compile(r'.*\blevel=(\w+) msg="((?:[^"\\]|\\.)*)"')


def _log_message(line: str) -> str:
    """`time=... level=warning msg="..."` (how Compose logs) -> "warning: ..."."""
    match = LOG_LINE.match(line)
    if match is None:
        return line.strip()
    return f"{match[1]}: {match[2].replace(BACKSLASH_QUOTE, QUOTE)}"


def _docker(program: str, args: list[str], timeout: float
            ) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            [program, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    except OSError:
        return None


# --- names -------------------------------------------------------------------------


def normalise_project(text: str) -> str:
    """Compose's rule for a project name taken from `name:` or a directory:
    lowercase, keep only [a-z0-9_-], no leading '_' or '-'."""
    return "".join(re.findall(r"[a-z0-9_-]", text.lower())).lstrip("_-")


def project_name(given: str | None, environ: Mapping[str, str], declared: object,
                 file: str) -> str:
    """The Compose project name, in Compose's order: --project (as `-p`),
    COMPOSE_PROJECT_NAME, the file's top-level `name:`, the file's directory.

    Raises NetapplyError when a given name breaks Compose's rule or nothing
    gives a name.
    """
    for origin, value in (("--project", given),
                          ("COMPOSE_PROJECT_NAME", environ.get("COMPOSE_PROJECT_NAME"))):
        if value:
            if not COMPOSE_PROJECT.fullmatch(value):
                raise NetapplyError(
                    f"{origin} {value!r}: a Compose project name has only lowercase letters, "
                    "digits, '-' and '_', and starts with a letter or digit")
            return value
    if isinstance(declared, str) and normalise_project(declared):
        return normalise_project(declared)
    directory = os.path.basename(os.path.dirname(os.path.abspath(file)))
    name = normalise_project(directory)
    if not name:
        raise NetapplyError(f"{file}: no Compose project name: the file has no `name:` and its "
                            f"directory {directory!r} gives none; pass --project NAME")
    return name


def netapply_project(compose_project: str) -> str:
    """A netapply project (^[a-z][a-z0-9-]{0,15}$, SPEC.md) for a Compose project
    name (^[a-z0-9][a-z0-9_-]*$): '_' becomes '-', leading characters that are
    not letters go, at most 16 remain; DEFAULT_PROJECT when nothing does."""
    text = compose_project.replace("_", "-")
    text = re.sub(r"^[^a-z]+", "", text)[:16].rstrip("-")
    return text or DEFAULT_PROJECT
