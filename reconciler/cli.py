"""`netapply` command line: arguments and output only; the work is in engine.py."""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

from rich.console import Console
from rich.markup import escape

from reconciler import __version__, lazy, output
from reconciler import spec as spec_mod
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.errors import ApplyError, NetapplyError, Problem, SpecError
from reconciler.executor import Result, describe, internal
from reconciler.model import Container, Runtime
from reconciler.planner import Action, Change
from reconciler.resources import fields_json, is_shared
from reconciler.state.observe import ObservedState, observe

if TYPE_CHECKING:
    import shtab

    from reconciler import (
        compose,
        engine,
        export,
        fleet,
        lock,
        machines,
        planfile,
        projects,
        render,
        runtimes,
        sourcecli,
    )
    from reconciler import expect as expect_mod
    from reconciler import graph as graph_mod
    from reconciler import graphlive as graph_live
    from reconciler import watch as watch_mod
else:  # what a command does not use is never imported (lazy.py)
    shtab = lazy.module("shtab")
    compose, engine, export, fleet, lock, machines, planfile, projects, render, runtimes = (
        lazy.module(f"reconciler.{name}") for name in (
            "compose", "engine", "export", "fleet", "lock", "machines", "planfile", "projects",
            "render", "runtimes"))
    sourcecli = lazy.module("reconciler.sourcecli")
    expect_mod, graph_mod, graph_live, watch_mod = (
        lazy.module(f"reconciler.{name}") for name in ("expect", "graph", "graphlive", "watch"))

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
# Complete this argument with file names: shtab.FILE in the parser that
# `completion` builds (_file_completion); shtab is imported for that command alone.
COMPLETE_FILE = "file names"


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised for main() to report: it exits 1
    (argparse's own 2 is what `plan --detailed-exitcode` means by "changes
    pending"), and is JSON under `--output json`."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


def _with_suggestion(e: _UsageError, argv: Sequence[str]) -> _UsageError:
    """An unrecognized option, with the option it resembles ("--outptu":
    did you mean --output?); argparse may also have taken the option's value
    for SPEC, so the spec argument is named as argparse saw it."""
    if not str(e).startswith("unrecognized arguments:"):
        return e
    known = [o for action in _all_actions(_parser()) for o in action.option_strings]
    hints = []
    for word in argv:
        if word.startswith("--") and word.split("=")[0] not in known:
            close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.8)
            if close:
                hints.append(f"{word.split('=')[0]}: did you mean {close[0]}?")
    return _UsageError(e.parser, f"{e} ({'; '.join(hints)})") if hints else e


def _all_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


def _json_requested(argv: Sequence[str]) -> bool:
    return any(a == "--output=json" or (a == "--output" and b == "json")
               for a, b in zip(argv, [*argv[1:], ""], strict=False))


def problem_json(problem: Problem) -> dict[str, Any]:
    """{"file", "line", "column", "message"}; the place is null for a problem
    that has none (a spec directory with no project)."""
    where = problem.where
    return {"file": where.file if where else None, "line": where.line if where else None,
            "column": where.col if where else None, "message": problem.message}


def error_json(e: NetapplyError) -> dict[str, Any]:
    """A failure that is not about a place in the spec, in problem_json's shape
    (and its hint, when it has one)."""
    doc: dict[str, Any] = {"file": None, "line": None, "column": None, "message": str(e)}
    hint = getattr(e, "hint", "")
    if hint:
        doc["hint"] = hint
    return doc


def _write_json_problems(stream: Any, problems: list[dict[str, Any]],
                         done: Sequence[str] = ()) -> None:
    doc = {"format_version": 1, "errors": problems, "done": list(done)}
    stream.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    stream.flush()


def _labelled(entry: dict[str, Any], fields: dict[str, Any],
              labels: dict[str, dict[str, str]]) -> dict[str, Any]:
    """entry, with "labels" (SPEC.md: shown in plan and show output) when
    `fields` are those of an object of a network that has labels
    (`labels`: Spec.network_labels())."""
    found = labels.get(str(fields.get("network", "")))
    if found:
        entry["labels"] = found
    return entry


def _global_options(default: object) -> _Parser:
    """Options that work before or after the subcommand: the subcommand's copy
    has no default (SUPPRESS), so it never overwrites one given before it."""
    parent = _Parser(add_help=False)
    parent.add_argument("--no-color", action="store_true", default=default,
                        help="plain text output")
    return parent


def _file_completion(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """parser, its arguments marked COMPLETE_FILE completed by shtab.FILE."""
    for action in parser._actions:
        if getattr(action, "complete", None) == COMPLETE_FILE:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _file_completion(sub)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="netapply", parents=[_global_options(False)],
        description="Declarative container networking: make the kernel match a YAML spec.",
    )
    parser.add_argument("--version", action="version", version=f"netapply {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    shared = _global_options(argparse.SUPPRESS)

    def command(name: str, help_text: str, optional: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[shared])
        spec = p.add_argument("spec", metavar="SPEC",
                              help="a YAML file or a directory of YAML files",
                              nargs="?" if optional else None)
        spec.complete = COMPLETE_FILE  # type: ignore[attr-defined]
        return p

    p = command("validate", "check a spec without touching the kernel")
    p.add_argument("--output", choices=("text", "json"), default="text")

    def on_host(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--host", metavar="NAME",
            help="in a spec with hosts, the machine this is (default: the host whose address "
                 "is an address of this machine)",
        )
        p.add_argument(
            "--docker-host", metavar="URL",
            help="Docker's API socket for `runtime: docker` containers (default: $DOCKER_HOST, "
                 "else unix:///var/run/docker.sock)")
        p.add_argument(
            "--podman-host", metavar="URL",
            help="Podman's API socket for `runtime: podman` containers (default: "
                 "$CONTAINER_HOST, else unix:///run/podman/podman.sock)")
        return p

    p = sourcecli.options(on_host(command("plan", "show what apply would change", True)))
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--detailed-exitcode", action="store_true",
        help="exit 0 when there are no changes, 2 when there are, 1 on error",
    )
    p.add_argument("--out", metavar="FILE", type=_file_name,
                   help="also save the plan to FILE, for `netapply apply FILE`: it applies "
                        "exactly this plan, or nothing if the spec or the kernel changed")
    for name, text in (
        ("apply", "make the kernel match the spec, or apply a saved plan (plan --out FILE)"),
        ("destroy", "delete everything the project owns"),
    ):
        p = on_host(command(name, text, optional=name == "destroy"))
        if name == "destroy":
            p.add_argument("--project", metavar="NAME", dest="project_name",
                           help="instead of SPEC: the project to destroy, found from the "
                                "kernel's ownership marks (netapply ls lists them)")
        p.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation")
        lock_timeout(p)
        if name == "apply":
            p.add_argument(
                "--rollback-on-failure", action=argparse.BooleanOptionalAction, default=None,
                help="when an action fails, restore what the project had before this apply "
                     "(default: on when run from a terminal, off otherwise)")
            p.add_argument(
                "--confirm-timeout", type=_seconds, default=None, metavar="SECONDS",
                help="after applying, roll back unless `netapply confirm SPEC` is run within "
                     "SECONDS (as netplan try does)")
            p.add_argument(
                "--verify-all", action="store_true",
                help="after applying, read the whole kernel again and compare everything "
                     "(default: what the apply wrote, and the firewall)")
    command("confirm", "keep what an apply --confirm-timeout is waiting to roll back")
    p = on_host(command("check", "check the spec's expectations (expect) with real packets"))
    p.add_argument("--output", choices=("text", "json"), default="text")
    p = sourcecli.options(on_host(command("show", "print what the project owns in the kernel",
                                          True)))
    p.add_argument("--output", choices=("text", "json", "yaml"), default="text",
                   help="yaml: the live state as a spec that, applied, plans nothing")
    p = sourcecli.options(on_host(command(
        "watch", "keep the kernel equal to the spec: apply on every spec change and repair "
                 "drift, until SIGTERM", True)))
    p.add_argument("--resync", type=_seconds, default=60.0, metavar="SECONDS",
                   help="full reconcile at least this often (default 60)")
    p.add_argument("--debounce", type=_seconds, default=0.3, metavar="SECONDS",
                   help="events this close together make one reconcile (default 0.3)")
    p.add_argument("--log-format", choices=("auto", "text", "json"), default="auto",
                   help="auto: text on a terminal, JSON lines otherwise")
    sourcecli.watch_options(p)
    lock_timeout(p)
    import_parser(sub, shared)
    sourcecli.push_parser(sub.add_parser(
        "push", help=sourcecli.PUSH_HELP, description=sourcecli.PUSH_HELP, parents=[shared]))
    projects_parser(sub, shared)
    graph_parser(on_host(command(
        "graph", "draw the project's networks, containers, addresses, published ports and "
                 "machines (Graphviz)")))
    text = "print a shell completion script (bash: save it as " \
        "/etc/bash_completion.d/netapply; zsh: as _netapply in a directory of $fpath)"
    p = sub.add_parser("completion", help=text, description=text, parents=[shared])
    p.add_argument("shell", choices=("bash", "zsh"))
    return parser


def graph_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", metavar="FILE", type=_file_name,
                   help="write the picture to FILE.svg, FILE.png (drawn by Graphviz's dot) or "
                        "FILE.dot (default: DOT on stdout)")
    p.add_argument("--live", action="store_true",
                   help="draw this machine's kernel with drift from the spec marked (needs "
                        "root; default: the spec alone, without the kernel)")


def import_parser(sub: argparse._SubParsersAction[_Parser], shared: _Parser) -> None:
    text = "print a netapply spec for the networking of another tool's file"
    p = sub.add_parser("import", help=text, description=text, parents=[shared])
    p.add_argument("format", choices=("compose",), help="compose: a Docker Compose file")
    p.add_argument("file", metavar="FILE").complete = COMPLETE_FILE  # type: ignore[attr-defined]
    p.add_argument("--project", metavar="NAME",
                   help="the Compose project name (as docker compose -p; default: "
                        "COMPOSE_PROJECT_NAME, the file's name:, or its directory)")


def projects_parser(sub: argparse._SubParsersAction[_Parser], shared: _Parser) -> None:
    text = "list the netapply projects found in the kernel, and what looks broken"
    p = sub.add_parser("ls", help=text, description=text, parents=[shared])
    p.add_argument("--output", choices=("text", "json"), default="text")
    text = "print a project's live state as a spec, from the kernel alone (no spec needed)"
    p = sub.add_parser("export", help=text, description=text, parents=[shared])
    p.add_argument("--project", metavar="NAME", dest="project_name", required=True)
    p.add_argument("--output", choices=("yaml", "json"), default="yaml")


def lock_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="how long to wait for another run changing the project on this "
                        "machine (default 30)")


def _file_name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("an empty file name")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 86400 seconds")
    return value


class Cli:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.host: str | None = None
        self.resolution = runtimes.Resolution(spec_mod.Spec("", {}, {}), {})
        no_color = bool(args.no_color)
        # Output never decides control flow: a closed pipe or a hung-up
        # terminal must not stop an apply half-way or skip its rollback.
        out, err = output.standard_streams(fallback=args.command in REPORTING)
        self.out = Console(file=cast(TextIO, out), no_color=no_color, highlight=False,
                           soft_wrap=True)
        self.err = Console(file=cast(TextIO, err), no_color=no_color, highlight=False,
                           soft_wrap=True)
        self.done: list[str] = []  # the steps of the running apply that are done
        self.digests: dict[str, str] = {}  # spec file -> SHA-256 of what was read
        self.printed_json = False  # a JSON result is on stdout (errors then go to stderr)

    def run(self) -> int:
        if self.args.command == "completion":
            self.out.file.write(shtab.complete(_file_completion(_parser()),
                                               shell=self.args.shell))
            self.out.file.flush()
            return EXIT_OK
        if self.args.command == "watch":
            return self.watch()
        if self.args.command == "push":
            return sourcecli.push(self.args, self.out, self.err)
        if self.args.command == "import":
            return self.import_file()
        if self.args.command in ("ls", "export"):
            return self.from_kernel()
        try:
            if self.args.spec is not None:
                if self.args.command != "apply" and planfile.is_saved_plan_file(self.args.spec):
                    raise NetapplyError(f"{self.args.spec} is a saved plan: only `netapply "
                                        "apply` takes one; the others take its spec")
                saved = planfile.read(self.args.spec, __version__)
                if saved is not None:
                    return self.apply_saved(saved)
            spec = self._load_spec()
            if self.args.command == "validate":
                return self.validate(spec)
            if self.args.command == "graph" and not self.args.live:
                return self.graph(spec, None)
            engine.require_privileges()
            if self.args.command == "confirm":
                return self.confirm_pending(spec)
            engine.raise_open_files_limit()
            kernel = NetlinkKernel()
            resolver = runtimes.Resolver(self._engine_urls(),
                                         lock.runtimes_cache_path(spec.project))
            try:
                self.host = self._which_host(spec, kernel)
                resolved = resolver.resolve(spec, self.host)
                self.resolution = resolved
                return getattr(self, self.args.command)(  # type: ignore[no-any-return]
                    resolved.spec, kernel)
            finally:
                resolver.close()
                kernel.close()
        except SpecError as e:
            if self._json_errors([problem_json(p) for p in e.problems]):
                return EXIT_ERROR
            for problem in e.problems:
                self.err.print(f"[red]error:[/red] {escape(str(problem))}")
            self.err.print(f"{len(e.problems)} problem(s); nothing was changed.")
        except ApplyError as e:
            if self._json_errors([error_json(e)], e.done):
                return EXIT_ERROR
            self._report_failure(e)
            self._report_done(e.done, left=True)
            verb = "destroy" if self.args.command == "destroy" else "apply"
            self.err.print(
                f"Fix the cause and run {verb} again: it continues from the current state."
            )
        except NetapplyError as e:
            self._report_error(e)
        except KeyboardInterrupt:
            if self.done:  # after the kernel changed (the checks after an apply)
                self.err.print("[red]error:[/red] interrupted")
                self._report_done(self.done, left=True)
                return EXIT_ERROR
            self.err.print("interrupted")
            return 130
        return EXIT_ERROR

    def _report_error(self, e: NetapplyError) -> None:
        """An error and what to do about it: on stderr, or under --output json
        as the JSON errors document."""
        if self._json_errors([error_json(e)]):
            return
        self.err.print(f"[red]error:[/red] {escape(str(e))}")
        hint = getattr(e, "hint", "")
        if hint:
            self.err.print(f"What to do: {escape(hint)}.")

    def _json_errors(self, problems: list[dict[str, Any]], done: Sequence[str] = ()) -> bool:
        """Under `--output json`, the errors as one JSON document on stdout
        (where a pipeline reads the plan), with the steps already done; True
        when written so."""
        if getattr(self.args, "output", "text") != "json" or self.printed_json:
            return False  # stdout holds one JSON document: a result already there stays alone
        _write_json_problems(self.out.file, problems, done)
        return True

    def _load_spec(self) -> spec_mod.Spec:
        """The spec, or for `destroy --project NAME` an empty one of that project
        (what it owns is then found from the kernel's marks alone)."""
        if self.args.command in ("plan", "show"):
            sources = sourcecli.read(self.args, self.err)
            self.digests = sources.digests
            return spec_mod.build(sources)
        project = getattr(self.args, "project_name", None)
        if (project is None) == (self.args.spec is None):
            raise NetapplyError("destroy needs either SPEC or --project NAME (not both)")
        if project is None:
            sources = spec_mod.read(self.args.spec)
            self.digests = sources.digests
            return spec_mod.build(sources)
        if not projects.valid_name(project):
            raise NetapplyError(f"--project {project!r} is not a project name "
                                "(^[a-z][a-z0-9-]{0,15}$)")
        return spec_mod.Spec(project, {}, {})

    def from_kernel(self) -> int:
        """`ls` and `export --project`: no spec, only the kernel's marks."""
        try:
            engine.require_privileges()
            engine.raise_open_files_limit()
            kernel = NetlinkKernel()
            try:
                if self.args.command == "ls":
                    return self.list_projects(kernel)
                return self.export_project(kernel)
            finally:
                kernel.close()
        except NetapplyError as e:
            self._report_error(e)
        except KeyboardInterrupt:
            self.err.print("interrupted")
            return 130
        return EXIT_ERROR

    def list_projects(self, kernel: NetlinkKernel) -> int:
        found, unread = projects.list_projects(kernel)
        if self.args.output == "json":
            self._print_json({"projects": [s.to_json() for s in found],
                              "unread": list(unread)})
        else:
            for summary in found:
                self.out.print(escape(summary.text()))
            if not found:
                self.out.print("No netapply project found in the kernel.")
            for part in unread:
                self.err.print(f"[red]error:[/red] netapply could not read {escape(part)}")
        return EXIT_ERROR if unread or any(s.unread for s in found) else EXIT_OK

    def export_project(self, kernel: NetlinkKernel) -> int:
        project = self.args.project_name
        if not projects.valid_name(project):
            raise NetapplyError(f"--project {project!r} is not a project name "
                                "(^[a-z][a-z0-9-]{0,15}$)")
        observed = observe(kernel, project)
        if not any(not is_shared(r) for r in observed.resources.values()):
            raise NetapplyError(f"the kernel holds nothing of project '{project}' "
                                "(netapply ls lists the projects found)")
        return self._print_export(export.live_spec(project, observed.resources), observed)

    def _print_export(self, exported: export.Exported, observed: ObservedState) -> int:
        """The spec on stdout; on stderr, what applying it would still change
        (nothing, unless the kernel holds what no spec can say)."""
        if self.args.output == "json":
            self._print_json(exported.to_json())
        else:
            self.out.file.write(exported.text())
            self.out.file.flush()
        for change in export.verify(exported, observed):
            self.err.print(f"note: applied as it is, this spec would still change: "
                           f"{escape(change)}")
        engine.require_read(observed, "the spec may miss what the project owns there")
        return EXIT_OK

    def _engine_urls(self) -> dict[Runtime, str | None]:
        return {Runtime.DOCKER: getattr(self.args, "docker_host", None),
                Runtime.PODMAN: getattr(self.args, "podman_host", None)}

    def _snapshot(self, spec: spec_mod.Spec, kernel: NetlinkKernel,
                  destroy: bool = False) -> engine.Snapshot:
        """Observe and plan, with a note for each runtime container skipped
        (and, in etcd, each container whose host is gone)."""
        snap = engine.snapshot(kernel, spec, destroy=destroy, host=self.host)
        return replace(snap, notes=(*self.resolution.notes, *snap.notes, *fleet.gone(spec)))

    def _which_host(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> str | None:
        """Which of a spec's hosts this machine is (it applies only its share);
        says which."""
        chosen = machines.select(spec, self.args.host, engine.local_addresses(kernel))
        if chosen.host is not None:
            text = f"This machine is host '{escape(chosen.host)}' ({escape(chosen.why)})."
            # Not on stdout where stdout is data (JSON, graph's DOT).
            data = getattr(self.args, "output", "text") == "json" or self.args.command == "graph"
            (self.err if data else self.out).print(text)
        return chosen.host

    def watch(self) -> int:
        """Runs until SIGTERM; an invalid spec or a failing kernel is logged,
        never the end of it. Only a missing privilege or spec path is."""
        try:
            engine.require_privileges()
            engine.raise_open_files_limit()
            source = sourcecli.source(self.args)
        except NetapplyError as e:
            self.err.print(f"[red]error:[/red] {escape(str(e))}")
            return EXIT_ERROR
        return watch_mod.run(watch_mod.Options(
            None, self.args.host, self.args.debounce, self.args.resync, self.args.log_format,
            self.args.lock_timeout, self._engine_urls(), source))

    def import_file(self) -> int:
        """The spec on stdout (also when it does not validate, to be fixed by
        hand), notes and problems on stderr; never the kernel."""
        try:
            imported = compose.import_file(self.args.file, self.args.project)
        except SpecError as e:
            for problem in e.problems:
                self.err.print(f"[red]error:[/red] {escape(str(problem))}")
            return EXIT_ERROR
        except NetapplyError as e:
            self.err.print(f"[red]error:[/red] {escape(str(e))}")
            return EXIT_ERROR
        except KeyboardInterrupt:
            self.err.print("interrupted")
            return 130
        self.out.file.write(imported.text)
        self.out.file.flush()
        for note in imported.notes:
            self.err.print(f"note: {escape(note)}")
        for problem in imported.problems:
            self.err.print(f"[red]error:[/red] {escape(str(problem))}")
        if imported.problems:
            self.err.print("The imported spec does not validate: fix the lines named above "
                           "(or the Compose file) before applying it.")
            return EXIT_ERROR
        return EXIT_OK

    def validate(self, spec: spec_mod.Spec) -> int:
        if self.args.output == "json":
            self._print_json({"format_version": 1, "project": spec.project, "errors": [],
                              "networks": sorted(spec.networks),
                              "containers": sorted(spec.containers)})
            return EXIT_OK
        self.out.print(
            f"The spec of project '{escape(spec.project)}' is valid: "
            f"{len(spec.networks)} network(s), {len(spec.containers)} container(s)."
        )
        return EXIT_OK

    def _print_json(self, doc: object) -> None:
        """JSON on stdout, through the same guard as every other line: a reader
        that went away (a closed pipe) is no traceback."""
        self.out.file.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        self.out.file.flush()
        self.printed_json = True

    def plan(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> int:
        if self.args.out:
            self._refuse_out_in_spec()
        snap = self._snapshot(kernel=kernel, spec=spec)
        planned = expect_mod.checks(spec, snap.observed, self.host)
        notes = (*snap.notes, *expect_mod.notes(planned))
        saved: dict[str, Any] = {}
        if self.args.output == "json" or self.args.out:
            saved = planfile.plan_json(snap, spec.project, self._fingerprint(snap))
        if self.args.output == "json":
            doc = {**copy.deepcopy(saved), "notes": list(notes),
                   "expectations": [c.to_json() for c in planned]}
            labels = spec.network_labels()
            for change in doc["changes"]:
                _labelled(change, change["after"] or change["before"], labels)
            self._print_json(doc)
        else:
            self.out.print(render.plan_text(snap.plan, spec.project, notes,
                                            self.resolution.labels(), spec.network_labels()))
            if planned:
                self.out.print("\n" + render.expectations_text(planned))
        if self.args.out:
            self._save_plan(saved)
        if self.args.detailed_exitcode and not snap.plan.empty:
            return EXIT_CHANGES
        return EXIT_OK

    def _fingerprint(self, snap: engine.Snapshot) -> planfile.Fingerprint:
        return planfile.fingerprint(self.args.spec or self.args.source, self.digests,
                                    self.resolution, snap, self.host)

    def _refuse_out_in_spec(self) -> None:
        """plan --out must not write over the spec it plans (one of its
        files, or a new .yaml/.yml file in its directory, which would join
        it): NetapplyError, before anything is read or written."""
        if self.args.spec is None:
            return
        out, spec = os.path.realpath(self.args.out), os.path.realpath(self.args.spec)
        files = {os.path.realpath(f) for f in self.digests} | {spec}
        joins = (os.path.isdir(spec) and os.path.dirname(out) == spec
                 and out.endswith((".yaml", ".yml")))
        if out in files or joins:
            raise NetapplyError(f"--out {self.args.out} is part of the spec {self.args.spec}: "
                                "the saved plan would replace it; save the plan elsewhere")

    def _save_plan(self, doc: dict[str, Any]) -> None:
        """plan --out: the file, or PlanFileError and no file."""
        urls = {rt: runtimes.engine_url(rt, url) for rt, url in self._engine_urls().items()}
        planfile.write(self.args.out, planfile.dumps(doc, __version__, self.args.host, urls))
        (self.err if self.args.output == "json" else self.out).print(
            f"Saved the plan to {escape(self.args.out)}: [bold]netapply apply "
            f"{escape(self.args.out)}[/bold] applies exactly this plan, and nothing if the "
            "spec or the kernel changes first.")

    def apply_saved(self, saved: planfile.SavedPlan) -> int:
        """`apply FILE`: the saved plan, only while the spec files, the runtime
        containers and the kernel are what it was computed from (checked under
        the project's lock); otherwise nothing is changed."""
        planfile.check_here(saved, self.args.host)
        engine.require_privileges()
        engine.raise_open_files_limit()
        # The plan's choices stand in for the options not given again; `confirm`
        # names the spec.
        self.args.spec = saved.fingerprint.spec
        self.args.host = self.args.host or saved.requested_host
        for runtime, url in saved.engines.items():
            if getattr(self.args, f"{runtime}_host", None) is None:
                setattr(self.args, f"{runtime}_host", url)
        kernel = NetlinkKernel()
        try:
            with lock.project_lock(saved.project, self.args.lock_timeout):
                world = self._recheck(
                    kernel, saved.fingerprint, saved.plan, False,
                    f"the saved plan {saved.path} is stale: the spec or the kernel changed "
                    "since it was made",
                    "make a new plan (netapply plan SPEC --out FILE), review it and apply that")
                if world is None:
                    return EXIT_ERROR
                self.out.print(f"Saved plan {escape(saved.path)}: the spec and the kernel are "
                               "as they were when it was made.")
                return self._change_locked(world.spec, kernel, False, world)
        finally:
            kernel.close()

    def _unchanged(self, kernel: NetlinkKernel, project: str, snap: engine.Snapshot,
                   world: planfile.World | None, destroy: bool,
                   why: str) -> planfile.World | None:
        """After the prompt: the world observed again when it is still the one
        `snap` (of `world`, if given) was planned from; else None, said why."""
        expected = world.fingerprint if world is not None else self._fingerprint(snap)
        return self._recheck(kernel, expected, planfile.plan_json(snap, project, expected),
                             destroy, why, "run apply again to see the plan for them as "
                                           "they are now")

    def _recheck(self, kernel: NetlinkKernel, expected: planfile.Fingerprint,
                 plan_doc: Any, destroy: bool, why: str, hint: str) -> planfile.World | None:
        """Read the spec, resolve, observe and plan again: the world, when its
        fingerprint and plan are `expected` and `plan_doc`; else None, with
        what differs printed."""
        try:
            world = planfile.observe(kernel, expected, self.args.host, self._engine_urls(),
                                     destroy)
            # The plan differs whenever its inputs do; said only when they do not.
            found = planfile.differences(expected, world.fingerprint) or (
                planfile.plan_differences(plan_doc, planfile.plan_json(
                    world.snap, world.spec.project, world.fingerprint)))
        except planfile.StalePlan as e:
            found = e.differences
        if not found:
            self.host, self.resolution = world.host, world.resolution
            return world
        self.err.print(f"[red]error:[/red] {escape(why)}; nothing was changed:")
        for line in planfile.shown(found):
            self.err.print(f"  {escape(line)}")
        self.err.print(f"What to do: {escape(hint)}.")
        return None

    def apply(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> int:
        return self._change(spec, kernel, destroy=False)

    def destroy(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> int:
        return self._change(spec, kernel, destroy=True)

    def _change(self, spec: spec_mod.Spec, kernel: NetlinkKernel, destroy: bool) -> int:
        # From the observation the plan is made of until the kernel is verified.
        with lock.project_lock(spec.project, self.args.lock_timeout):
            return self._change_locked(spec, kernel, destroy)

    def _change_locked(self, spec: spec_mod.Spec, kernel: NetlinkKernel, destroy: bool,
                       world: planfile.World | None = None) -> int:
        snap = self._snapshot(spec, kernel, destroy=destroy) if world is None else world.snap
        if destroy and snap.plan.empty:
            engine.destroyed(snap.observed, 0)
            self.out.print(render.notes_text(snap.notes) + "\n" if snap.notes else "", end="")
            self.out.print(f"Nothing to destroy: project '{escape(spec.project)}' owns nothing "
                           "on this machine.")
            return EXIT_OK
        self.out.print(render.plan_text(snap.plan, spec.project, snap.notes,
                                        self.resolution.labels(), spec.network_labels()))
        if snap.plan.empty:
            return EXIT_OK if self._expectations_hold(spec, kernel) else EXIT_ERROR
        if not self.args.auto_approve and not self._confirm(spec.project, destroy):
            self.err.print("Cancelled; nothing was changed.")
            return EXIT_ERROR
        if not self.args.auto_approve and self.args.spec is None:
            # destroy --project: no spec files; the kernel alone must be as shown.
            again = self._snapshot(spec, kernel, destroy=destroy)
            if again.plan.to_json(spec.project) != snap.plan.to_json(spec.project):
                self.err.print("[red]error:[/red] the kernel changed while the prompt waited; "
                               "nothing was changed.")
                self.err.print("What to do: run destroy again to see what it deletes now.")
                return EXIT_ERROR
        elif not self.args.auto_approve:
            # The prompt may have waited for hours: apply only what was shown.
            world = self._unchanged(kernel, spec.project, snap, world, destroy,
                                    "the spec or the kernel changed while the prompt waited")
            if world is None:
                return EXIT_ERROR
            spec, snap = world.spec, world.snap
        timeout = None if destroy else self.args.confirm_timeout
        if destroy or not (self._rollback_on_failure() or timeout is not None):
            result = self._execute(spec, kernel, snap, destroy)
            self._complete(spec, result, destroy)
            return EXIT_OK if destroy or self._expectations_hold(spec, kernel) else EXIT_ERROR
        # From here to the end of a rollback, SIGINT, a hang-up (the operator's
        # session gone) and SIGTERM are recorded, never raised: the apply stops
        # at its next check and is rolled back.
        with _Interruptions() as interruptions:
            return self._apply_or_roll_back(spec, kernel, snap, timeout, interruptions)

    def _apply_or_roll_back(self, spec: spec_mod.Spec, kernel: NetlinkKernel,
                            snap: engine.Snapshot, timeout: float | None,
                            interruptions: _Interruptions) -> int:
        """Apply, verify and (with a timeout) wait for `confirm`; every other
        way out after the first kernel write rolls back: a failed step, a
        failed or interrupted verification, a signal in any phase, no confirm
        in time, a pending file that cannot be made visible, a bug. With a
        timeout, the pending file is written before the first write (a lock
        directory that cannot take it stops the apply with nothing changed)."""
        if timeout is not None:
            try:
                lock.stage_pending(spec.project)
            except NetapplyError as e:
                self.err.print(f"[red]error:[/red] {escape(str(e))}")
                self.err.print("Nothing was changed.")
                return EXIT_ERROR
        try:
            if interruptions.signum is not None:
                self.err.print(f"Interrupted by {interruptions.name}; nothing was changed.")
                return 130
            why = self._apply_and_wait(spec, kernel, snap, timeout, interruptions)
        finally:
            if timeout is not None:
                lock.discard_pending(spec.project)
        if not why:
            return EXIT_OK
        return self._roll_back(spec, kernel, snap.observed, why)

    def _apply_and_wait(self, spec: spec_mod.Spec, kernel: NetlinkKernel, snap: engine.Snapshot,
                        timeout: float | None, interruptions: _Interruptions) -> str:
        """"" when the change is kept, else why it is to be rolled back, with
        the failure reported. Raises nothing but BaseExceptions a signal
        cannot cause (SystemExit)."""
        try:
            result = self._execute(spec, kernel, snap, False, interruptions.check)
            interruptions.check()  # a signal during the verification
            self._complete(spec, result, False)
            if not self._expectations_hold(spec, kernel):
                return "an expectation failed"
            interruptions.check()  # a signal while they were checked
            if timeout is None:
                return ""
            return self._unconfirmed(spec.project, timeout, interruptions)
        except _Interrupted as e:
            self.err.print(f"[red]error:[/red] interrupted by {escape(e.name)}")
            self._report_done(self.done, left=False)
            return f"interrupted by {e.name}"
        except ApplyError as e:
            self._report_failure(e)
            self._report_done(e.done, left=False)
            return "the verification failed" if e.action_text == engine.VERIFY else (
                "an action failed")
        except Exception as e:  # a bug, or a pending file that cannot be made visible
            self.err.print(f"[red]error:[/red] {escape(str(internal(e)))}")
            self._report_done(self.done, left=False)
            return "the apply failed"

    def _complete(self, spec: spec_mod.Spec, result: Result, destroy: bool) -> None:
        outcome = (
            f"nothing owned by project '{escape(spec.project)}' is left"
            if destroy
            else "the kernel matches the spec"
        )
        what = "Destroy" if destroy else "Apply"
        self.out.print(f"[green]{what} complete:[/green] {len(result.done)} step(s); {outcome}.")

    def _expectations_hold(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> bool:
        """After apply has verified the kernel: check the spec's expectations
        (addresses as the kernel has them now), show them, and say whether
        all of those checked here hold."""
        if not spec.expect:
            return True
        results = expect_mod.run(spec, engine.observe_project(kernel, spec, self.host), self.host)
        self.out.print(render.results_text(results))
        for result in expect_mod.failed(results):
            e = result.check.expectation
            where = spec.locate("expect", str(e.index))
            self.err.print(f"[red]error:[/red] {escape(f'{where}: ' if where else '')}"
                           f"expect[{e.index}] does not hold: {escape(e.source)} -> "
                           f"{escape(e.target)} {e.what}: {escape(result.detail)}")
        return not expect_mod.failed(results)

    def check(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> int:
        """The spec's expectations alone, against the kernel as it is."""
        snap = self._snapshot(spec, kernel)
        results = expect_mod.run(spec, snap.observed, self.host)
        notes = [*snap.notes, *expect_mod.notes([r.check for r in results])]
        if not snap.plan.empty:
            notes.append(f"the kernel differs from the spec ({len(snap.plan.changes)} planned "
                         "change(s); run apply): the checks ran against the kernel as it is")
        if self.args.output == "json":
            self._print_json({"project": spec.project, "ok": not expect_mod.failed(results),
                              "expectations": [r.to_json() for r in results],
                              "notes": notes})
        elif not results:
            self.out.print(f"The spec of project '{escape(spec.project)}' has no expectations.")
        else:
            if notes:
                self.out.print(render.notes_text(notes))
            self.out.print(render.results_text(results))
        return EXIT_ERROR if expect_mod.failed(results) else EXIT_OK

    def _rollback_on_failure(self) -> bool:
        """--rollback-on-failure, by default on for interactive use (and always
        with --confirm-timeout)."""
        chosen: bool | None = self.args.rollback_on_failure
        return sys.stdin.isatty() if chosen is None else chosen

    def _roll_back(self, spec: spec_mod.Spec, kernel: NetlinkKernel,
                   before: ObservedState, why: str) -> int:
        self.err.print(f"Rolling back ({why}): restoring what project "
                       f"'{escape(spec.project)}' had before this apply.")
        with _signals_ignored():  # a rollback is not to be interrupted half-way
            try:
                result = engine.rollback(kernel, spec, before, self.host)
            except Exception as e:
                raise NetapplyError(
                    f"the rollback failed too ({internal(e)}); the project's objects are "
                    "partly restored: fix the cause, then apply the spec you want") from None
        self.err.print(f"Rolled back: {len(result.done)} step(s); the project's objects are as "
                       "they were before this apply (IPv4 forwarding, once on, stays on).")
        return EXIT_ERROR

    def _unconfirmed(self, project: str, timeout: float, interruptions: _Interruptions) -> str:
        """Make the staged pending file visible to `netapply confirm` and wait
        until confirm removes it, the timeout passes or a signal comes; why it
        did not come, or "" when it did. Whoever removes the file decides
        (lock.claim_pending), so a confirm at the last moment either keeps the
        change or is told it is too late, never both."""
        lock.publish_pending(project)
        pending = lock.pending_path(project)
        deadline = time.monotonic() + timeout
        self.out.print(f"Run [bold]netapply confirm {escape(self.args.spec)}[/bold] within "
                       f"{timeout:g} s to keep this; otherwise it is rolled back.")
        why = f"not confirmed within {timeout:g} s"
        while os.path.exists(pending) and time.monotonic() < deadline:
            if interruptions.signum is not None:
                why = f"interrupted by {interruptions.name} before it was confirmed"
                break
            time.sleep(CONFIRM_POLL)
        if lock.claim_pending(project):
            return why
        self.out.print("[green]Confirmed:[/green] the change is kept.")
        return ""

    def confirm_pending(self, spec: spec_mod.Spec) -> int:
        pending = lock.pending_path(spec.project)
        # The waiting apply holds the project's lock: a pending file without it
        # is a leftover of an apply that was killed.
        if not os.path.exists(pending) or not lock.is_held(spec.project):
            raise NetapplyError(f"no apply of project '{spec.project}' is waiting for "
                                "confirmation on this machine")
        try:
            os.unlink(pending)
        except FileNotFoundError:
            raise NetapplyError(f"too late: the apply of project '{spec.project}' stopped "
                                "waiting and rolls back") from None
        self.out.print(f"Confirmed: the apply of project '{escape(spec.project)}' is kept.")
        return EXIT_OK

    def _report_failure(self, e: ApplyError) -> None:
        self.err.print(f"[red]error:[/red] {escape(str(e))}")
        if e.hint:
            self.err.print(f"What to do: {escape(e.hint)}.")

    def _report_done(self, done: Sequence[str], left: bool) -> None:
        """The steps done before a failure (left: they stay, no rollback follows)."""
        if not done:
            self.err.print("Nothing was changed before the failure.")
            return
        self.err.print(f"Already done ({len(done)} step(s))"
                       + (", left in place:" if left else ":"))
        for text in done:
            self.err.print(f"  {escape(text)}")

    def _execute(self, spec: spec_mod.Spec, kernel: NetlinkKernel, snap: engine.Snapshot,
                 destroy: bool, check: Callable[[], None] | None = None) -> Result:
        """engine.apply of snap's plan with progress on stdout; `check` runs
        after each step (it stops the apply between two steps by raising).
        The verification takes what it can from snap (engine.verify's base)."""
        plan = snap.plan
        self.done = []
        steps = sum(1 for _ in plan.steps())
        owners = spec.ns_owners()
        if self.out.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                console=self.out, transient=True,
            ) as bar:
                task = bar.add_task("destroying" if destroy else "applying", total=steps)

                def advance(action: Action, change: Change) -> None:
                    self.done.append(describe(action, change, owners))
                    bar.update(task, advance=1, description=escape(self.done[-1]))
                    if check is not None:
                        check()

                return engine.apply(kernel, spec, plan, destroy, advance, self.host,
                                    getattr(self.args, "verify_all", False), snap)

        # Not a terminal: plain lines, written as they are (no markup, no
        # terminal checks per line, which cost rich about 30 per container).
        prefix = f"  {'destroyed' if destroy else 'done'}: "
        stream = self.out.file

        def log(action: Action, change: Change) -> None:
            self.done.append(describe(action, change, owners))
            stream.write(f"{prefix}{self.done[-1]}\n")
            if check is not None:
                check()

        return engine.apply(kernel, spec, plan, destroy, log, self.host,
                            getattr(self.args, "verify_all", False), snap)

    def _confirm(self, project: str, destroy: bool) -> bool:
        if not sys.stdin.isatty():
            raise NetapplyError(
                "refusing to change the kernel without confirmation: stdin is not a terminal; "
                "pass --auto-approve"
            )
        verb = f"destroy everything project '{project}' owns" if destroy else "apply these changes"
        answer = self.out.input(f"Do you want to {verb}? Only 'yes' will be accepted: ")
        return answer.strip() == "yes"

    def show(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> int:
        """What the project owns; what was read, and then an error, when a part
        of the kernel could not be read."""
        observed = engine.observe_project(kernel, spec, self.host)
        owned = [r for r in observed.resources.values() if not is_shared(r)]
        if self.args.output == "yaml":
            return self._print_export(export.live_spec(
                spec.project, observed.resources,
                {str(h.address): h.name for h in spec.hosts.values()},
                {c.netns_path: _where(c) for c in spec.containers.values() if c.netns_path}),
                observed)
        if self.args.output == "json":
            labels = spec.network_labels()
            resources = [
                _labelled({"kind": str(r.kind), "key": list(r.key), **fields}, fields, labels)
                for r, fields in ((r, fields_json(r)) for r in owned)
            ]
            self._print_json({"project": spec.project, "resources": resources,
                              "runtime_containers": self.resolution.to_json(),
                              "unread": list(observed.unread), "notes": fleet.gone(spec)})
        else:
            self.out.print(render.state_text(owned, spec.project, self.resolution.labels(),
                                             spec.network_labels()))
            runtimes_text = render.runtimes_text(self.resolution.to_json())
            if runtimes_text:
                self.out.print(runtimes_text)
            if fleet.gone(spec):  # etcd: containers whose host's lease expired
                self.out.print(render.notes_text(fleet.gone(spec)))
        engine.require_read(observed, "what is shown may miss what the project owns there")
        return EXIT_OK

    def graph(self, spec: spec_mod.Spec, kernel: NetlinkKernel | None) -> int:
        """The picture: of the spec (no kernel), or with --live of this
        machine's kernel against it; DOT on stdout, or a file by -o."""
        fmt = graph_mod.format_of(self.args.out) if self.args.out else "dot"
        if kernel is None:
            if self.args.host is not None:
                machines.select(spec, self.args.host, [])
            topology = graph_mod.from_spec(spec, self.args.host)
        else:
            snap = self._snapshot(spec, kernel)
            topology = graph_live.live(spec, snap.observed, snap.desired, snap.plan.changes,
                                      self.host)
        data = graph_mod.rendered(graph_mod.dot(topology), fmt)
        if not self.args.out:
            self.out.file.write(data.decode())
            self.out.file.flush()
            return EXIT_OK
        graph_mod.save(self.args.out, data)
        self.err.print(f"Wrote {escape(self.args.out)}.")
        return EXIT_OK


def _where(container: Container) -> dict[str, str]:
    """The spec keys naming a container's namespace, for `show --output yaml`."""
    if container.runtime is None:
        return {"netns_path": str(container.netns_path)}
    name = {} if container.engine_name == container.name else {"runtime_name":
                                                                container.engine_name}
    return {"runtime": str(container.runtime), **name}


CONFIRM_POLL = 0.05  # seconds between two looks at the pending file
INTERRUPTING = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)


class _Interrupted(Exception):
    """A recorded signal, raised at a check between two steps of an apply."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _Interruptions:
    """While active (from before the first kernel write of an apply that can
    roll back to the end of its rollback), SIGINT, SIGHUP and SIGTERM are
    recorded, not raised where they land: an exception raised in the middle
    of a step could leave the thread inside a container's namespace, a
    netlink reply unread or a file half-renamed, and a rollback must start
    from a known place. check() raises _Interrupted once one came; the apply
    calls it after every step and after the verification, and the confirm
    wait looks at `signum` while it polls. Python's signal handlers run in the
    main thread between bytecodes (signal module docs), so recording cannot
    be lost; no window is left where a signal's default action (termination)
    applies, as the handlers stay installed until the rollback is over."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interruptions:
        self._old = {n: signal.signal(n, self._record) for n in INTERRUPTING}
        return self

    def __exit__(self, *exc: object) -> None:
        for n, handler in self._old.items():
            signal.signal(n, handler)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def check(self) -> None:
        if self.signum is not None:
            raise _Interrupted(self.name)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIG_IGN, which the `nft` a rollback runs inherits too (execve(2) keeps
    ignored signals): a hang-up sent to the whole session cannot cut it."""
    old = {n: signal.signal(n, signal.SIG_IGN)
           for n in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for n, handler in old.items():
            signal.signal(n, handler)


# Commands whose stdout reports on a change to the kernel: a reader that went
# away must not stop it half-way, and its lines go to stderr instead. The
# others' stdout is their result: one that cannot be written fails them.
REPORTING = ("apply", "destroy", "confirm", "watch")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        e = _with_suggestion(e, argv)
        message = f"{e.parser.prog}: {e}"
        if _json_requested(argv):
            _write_json_problems(output.standard_streams()[0], [
                {"file": None, "line": None, "column": None, "message": message}])
        else:
            e.parser.print_usage(sys.stderr)
            sys.stderr.write(f"{e.parser.prog}: error: {e}\n")
        return EXIT_ERROR
    command = Cli(args)
    code = command.run()
    stdout = command.out.file
    if isinstance(stdout, output.GuardedStream) and stdout.gone and args.command not in REPORTING:
        command.err.print(f"[red]error:[/red] the output could not be written ({stdout.why}): "
                          "what is on stdout is incomplete")
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
