"""`netapply` command line: arguments and output only; the work is in engine.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from reconciler import __version__, compose, engine, lock, machines, render, runtimes
from reconciler import spec as spec_mod
from reconciler import watch as watch_mod
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.errors import ApplyError, ConvergenceError, NetapplyError, SpecError
from reconciler.executor import Result, describe
from reconciler.model import Runtime
from reconciler.planner import Action, Change, Plan
from reconciler.resources import fields_json, is_shared
from reconciler.state.observe import ObservedState

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netapply",
        description="Declarative container networking: make the kernel match a YAML spec.",
    )
    parser.add_argument("--version", action="version", version=f"netapply {__version__}")
    parser.add_argument("--no-color", action="store_true", help="plain text output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("spec", metavar="SPEC", help="a YAML file or a directory of YAML files")
        return p

    command("validate", "check a spec without touching the kernel")

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

    p = on_host(command("plan", "show what apply would change"))
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--detailed-exitcode", action="store_true",
        help="exit 0 when there are no changes, 2 when there are, 1 on error",
    )
    for name, text in (
        ("apply", "make the kernel match the spec"),
        ("destroy", "delete everything the project owns"),
    ):
        p = on_host(command(name, text))
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
    command("confirm", "keep what an apply --confirm-timeout is waiting to roll back")
    p = on_host(command("show", "print what the project owns in the kernel"))
    p.add_argument("--output", choices=("text", "json"), default="text")
    p = on_host(command("watch", "keep the kernel equal to the spec: apply on every spec "
                                 "change and repair drift, until SIGTERM"))
    p.add_argument("--resync", type=_seconds, default=60.0, metavar="SECONDS",
                   help="full reconcile at least this often (default 60)")
    p.add_argument("--debounce", type=_seconds, default=0.3, metavar="SECONDS",
                   help="events this close together make one reconcile (default 0.3)")
    p.add_argument("--log-format", choices=("auto", "text", "json"), default="auto",
                   help="auto: text on a terminal, JSON lines otherwise")
    lock_timeout(p)
    import_parser(sub)
    return parser


def import_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "print a netapply spec for the networking of another tool's file"
    p = sub.add_parser("import", help=text, description=text)
    p.add_argument("format", choices=("compose",), help="compose: a Docker Compose file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--project", metavar="NAME",
                   help="the Compose project name (as docker compose -p; default: "
                        "COMPOSE_PROJECT_NAME, the file's name:, or its directory)")


def lock_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="how long to wait for another run changing the project on this "
                        "machine (default 30)")


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
        self.out = Console(no_color=no_color, highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True)

    def run(self) -> int:
        if self.args.command == "watch":
            return self.watch()
        if self.args.command == "import":
            return self.import_file()
        try:
            spec = spec_mod.load(self.args.spec)
            if self.args.command == "validate":
                return self.validate(spec)
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
            for problem in e.problems:
                self.err.print(f"[red]error:[/red] {escape(str(problem))}")
            self.err.print(f"{len(e.problems)} problem(s); nothing was changed.")
        except ApplyError as e:
            self._report_failure(e)
            if e.done:
                self.err.print(f"Already done ({len(e.done)} step(s)), left in place:")
                for text in e.done:
                    self.err.print(f"  {escape(text)}")
            else:
                self.err.print("Nothing was changed before the failure.")
            self.err.print(
                "Fix the cause and run apply again: it continues from the current state."
            )
        except NetapplyError as e:
            self.err.print(f"[red]error:[/red] {escape(str(e))}")
            hint = getattr(e, "hint", "")
            if hint:
                self.err.print(f"What to do: {escape(hint)}.")
        except KeyboardInterrupt:
            self.err.print("interrupted")
            return 130
        return EXIT_ERROR

    def _engine_urls(self) -> dict[Runtime, str | None]:
        return {Runtime.DOCKER: getattr(self.args, "docker_host", None),
                Runtime.PODMAN: getattr(self.args, "podman_host", None)}

    def _snapshot(self, spec: spec_mod.Spec, kernel: NetlinkKernel,
                  destroy: bool = False) -> engine.Snapshot:
        """Observe and plan, with a note for each runtime container skipped."""
        snap = engine.snapshot(kernel, spec, destroy=destroy, host=self.host)
        return replace(snap, notes=(*self.resolution.notes, *snap.notes))

    def _which_host(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> str | None:
        """Which of a spec's hosts this machine is (it applies only its share);
        says which."""
        chosen = machines.select(spec, self.args.host, engine.local_addresses(kernel))
        if chosen.host is not None:
            text = f"This machine is host '{escape(chosen.host)}' ({escape(chosen.why)})."
            (self.err if getattr(self.args, "output", "text") == "json" else self.out).print(text)
        return chosen.host

    def watch(self) -> int:
        """Runs until SIGTERM; an invalid spec or a failing kernel is logged,
        never the end of it. Only a missing privilege or spec path is."""
        try:
            engine.require_privileges()
            engine.raise_open_files_limit()
            path = Path(self.args.spec)
            if not path.exists():
                raise NetapplyError(f"{path}: no such file or directory")
        except NetapplyError as e:
            self.err.print(f"[red]error:[/red] {escape(str(e))}")
            return EXIT_ERROR
        return watch_mod.run(watch_mod.Options(
            path, self.args.host, self.args.debounce, self.args.resync, self.args.log_format,
            self.args.lock_timeout, self._engine_urls()))

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
        sys.stdout.write(imported.text)
        sys.stdout.flush()
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
        self.out.print(
            f"The spec of project '{escape(spec.project)}' is valid: "
            f"{len(spec.networks)} network(s), {len(spec.containers)} container(s)."
        )
        return EXIT_OK

    def plan(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> int:
        snap = self._snapshot(kernel=kernel, spec=spec)
        if self.args.output == "json":
            doc = {**snap.plan.to_json(spec.project), "notes": list(snap.notes)}
            print(json.dumps(doc, indent=2, sort_keys=True))
        else:
            self.out.print(render.plan_text(snap.plan, spec.project, snap.notes,
                                            self.resolution.labels()))
        if self.args.detailed_exitcode and not snap.plan.empty:
            return EXIT_CHANGES
        return EXIT_OK

    def apply(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> int:
        return self._change(spec, kernel, destroy=False)

    def destroy(self, spec: spec_mod.Spec, kernel: NetlinkKernel) -> int:
        return self._change(spec, kernel, destroy=True)

    def _change(self, spec: spec_mod.Spec, kernel: NetlinkKernel, destroy: bool) -> int:
        # From the observation the plan is made of until the kernel is verified.
        with lock.project_lock(spec.project, self.args.lock_timeout):
            return self._change_locked(spec, kernel, destroy)

    def _change_locked(self, spec: spec_mod.Spec, kernel: NetlinkKernel, destroy: bool) -> int:
        snap = self._snapshot(spec, kernel, destroy=destroy)
        self.out.print(render.plan_text(snap.plan, spec.project, snap.notes,
                                        self.resolution.labels()))
        if snap.plan.empty:
            if destroy:
                engine.destroyed(snap.observed, 0)
            return EXIT_OK
        if not self.args.auto_approve and not self._confirm(spec.project, destroy):
            self.err.print("Cancelled; nothing was changed.")
            return EXIT_ERROR
        timeout = None if destroy else self.args.confirm_timeout
        if destroy or not (self._rollback_on_failure() or timeout is not None):
            result = self._execute(spec, kernel, snap.plan, destroy)
            self._complete(spec, result, destroy)
            return EXIT_OK
        # From here on a hang-up (the operator's session gone) or SIGTERM is an
        # interruption like Ctrl-C: the apply is rolled back.
        with _signals_interrupt():
            try:
                result = self._execute(spec, kernel, snap.plan, destroy)
                self._complete(spec, result, destroy)
                why = self._unconfirmed(spec.project, timeout) if timeout is not None else ""
            except ApplyError as e:
                self._report_failure(e)
                why = "an action failed"
            except ConvergenceError as e:
                self.err.print(f"[red]error:[/red] {escape(str(e))}")
                why = "the kernel did not converge"
        if not why:
            return EXIT_OK
        return self._roll_back(spec, kernel, snap.observed, why)

    def _complete(self, spec: spec_mod.Spec, result: Result, destroy: bool) -> None:
        outcome = (
            f"nothing owned by project '{escape(spec.project)}' is left"
            if destroy
            else "the kernel matches the spec"
        )
        what = "Destroy" if destroy else "Apply"
        self.out.print(f"[green]{what} complete:[/green] {len(result.done)} step(s); {outcome}.")

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
            except NetapplyError as e:
                raise NetapplyError(
                    f"the rollback failed too ({e}); the project's objects are partly "
                    "restored: fix the cause, then apply the spec you want") from None
        self.err.print(f"Rolled back: {len(result.done)} step(s); the project's objects are as "
                       "they were before this apply (IPv4 forwarding, once on, stays on).")
        return EXIT_ERROR

    def _unconfirmed(self, project: str, timeout: float) -> str:
        """Wait for `netapply confirm`, which removes the pending file; why it
        did not come, or "" when it did. Whoever removes the file decides, so a
        confirm at the last moment either keeps the change or is told it is
        too late, never both."""
        pending = lock.pending_path(project)
        deadline = time.monotonic() + timeout
        why = f"not confirmed within {timeout:g} s"
        try:
            lock.write_private(pending, f"{os.getpid()}\n")
            self.out.print(f"Run [bold]netapply confirm {escape(self.args.spec)}[/bold] within "
                           f"{timeout:g} s to keep this; otherwise it is rolled back.")
            while os.path.exists(pending) and time.monotonic() < deadline:
                time.sleep(0.05)
        except KeyboardInterrupt:
            why = "interrupted before it was confirmed"
        try:
            os.unlink(pending)  # claim it: not confirmed
        except FileNotFoundError:
            self.out.print("[green]Confirmed:[/green] the change is kept.")
            return ""
        return why

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

    def _execute(self, spec: spec_mod.Spec, kernel: NetlinkKernel, plan: Plan,
                 destroy: bool) -> Result:
        steps = sum(1 for _ in plan.steps())
        if self.out.is_terminal:
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                console=self.out, transient=True,
            ) as bar:
                task = bar.add_task("applying", total=steps)

                def advance(action: Action, change: Change) -> None:
                    bar.update(task, advance=1, description=escape(describe(action, change)))

                return engine.apply(kernel, spec, plan, destroy, advance, self.host)

        def log(action: Action, change: Change) -> None:
            self.out.print(f"  done: {escape(describe(action, change))}")

        return engine.apply(kernel, spec, plan, destroy, log, self.host)

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
        if self.args.output == "json":
            resources = [
                {"kind": str(r.kind), "key": list(r.key), **fields_json(r)} for r in owned
            ]
            print(json.dumps(
                {"project": spec.project, "resources": resources,
                 "runtime_containers": self.resolution.to_json(),
                 "unread": list(observed.unread)},
                indent=2, sort_keys=True,
            ))
        else:
            self.out.print(render.state_text(owned, spec.project, self.resolution.labels()))
            runtimes_text = render.runtimes_text(self.resolution.to_json())
            if runtimes_text:
                self.out.print(runtimes_text)
        engine.require_read(observed, "what is shown may miss what the project owns there")
        return EXIT_OK


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGHUP and SIGTERM raise KeyboardInterrupt, as SIGINT does."""
    old = {n: signal.signal(n, _interrupt) for n in (signal.SIGHUP, signal.SIGTERM)}
    try:
        yield
    finally:
        for n, handler in old.items():
            signal.signal(n, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    old = {n: signal.signal(n, signal.SIG_IGN)
           for n in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for n, handler in old.items():
            signal.signal(n, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return Cli(args).run()


if __name__ == "__main__":
    sys.exit(main())
