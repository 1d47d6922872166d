"""Human-readable output: plans, observed state, errors (rich markup)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from rich.markup import escape

from reconciler.planner import RANK, Action, Change, Plan, content_changes, rule_changes
from reconciler.resources import HOST_NS, Resource, is_shared, ns_label

if TYPE_CHECKING:
    from reconciler import expect

SYMBOL = {
    Action.CREATE: ("+", "green"),
    Action.UPDATE: ("~", "yellow"),
    Action.REPLACE: ("-/+", "magenta"),
    Action.DELETE: ("-", "red"),
}
VERB = {
    Action.CREATE: "create",
    Action.UPDATE: "update in place",
    Action.REPLACE: "replace",
    Action.DELETE: "delete",
}


def _group_order(ns: str) -> tuple[int, str]:
    return (0 if ns == HOST_NS else 1, ns)


def _grouped(changes: Iterable[Change]) -> dict[str, list[Change]]:
    groups: dict[str, list[Change]] = {}
    for change in changes:
        groups.setdefault(change.ns, []).append(change)
    return {ns: groups[ns] for ns in sorted(groups, key=_group_order)}


def notes_text(notes: Iterable[str]) -> str:
    return "\n".join(f"[yellow]note:[/yellow] {escape(note)}" for note in notes)


def network_tags(res: Resource, network_labels: Mapping[str, Mapping[str, str]] | None) -> str:
    """"  team=web tier=1" for a resource of a network with labels, else ""."""
    found = (network_labels or {}).get(str(getattr(res, "network", "")))
    if not found:
        return ""
    return "  [cyan]" + escape(" ".join(f"{k}={v}" for k, v in sorted(found.items()))) + "[/cyan]"


def plan_text(plan: Plan, project: str, notes: Iterable[str] = (),
              labels: Mapping[str, str] | None = None,
              network_labels: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The plan grouped by namespace; `labels` names namespaces better than
    their path (a runtime container's /proc/PID/ns/net); `network_labels`
    (Spec.network_labels) are shown on the lines of those networks' objects."""
    shown = notes_text(notes)
    if plan.empty:
        return (shown + "\n" if shown else "") + (
            f"[green]No changes.[/green] The kernel matches the spec of project "
            f"'{escape(project)}'."
        )
    lines = [shown, ""] if shown else []
    lines += [f"netapply will perform these actions for project '{escape(project)}':", ""]
    for ns, changes in _grouped(plan.changes).items():
        lines.append(f"  [bold]# {escape(_label(ns, labels))}[/bold]")
        for change in changes:
            symbol, colour = SYMBOL[change.action]
            lines.append(
                f"  [{colour}]{escape(symbol):>3} {VERB[change.action]}[/{colour}] "
                f"{escape(change.title())}  [dim]({escape(change.reason)})[/dim]"
                f"{network_tags(change.resource, network_labels)}"
            )
            if change.action != Action.DELETE:
                for sign, text in rule_changes(change.before, change.after):
                    colour = "green" if sign == "+" else "red"
                    lines.append(f"        [{colour}]{sign} rule {escape(text)}[/{colour}]")
            if change.action == Action.UPDATE:
                for sign, text in content_changes(change.before, change.after):
                    colour = "green" if sign == "+" else "red"
                    lines.append(f"        [{colour}]{sign} {escape(text)}[/{colour}]")
            lines.extend(disruption_lines(plan, change))
        lines.append("")
    counts = plan.counts()
    lines.append(
        f"[bold]Plan:[/bold] {counts['create']} to create, {counts['update']} to update, "
        f"{counts['replace']} to replace, {counts['delete']} to delete."
    )
    if plan.disruption is not None:
        head = "[bold]Disruption:[/bold] " if plan.disruption.disrupted else ""
        lines.append(head + escape(plan.disruption.summary_text()))
    return "\n".join(lines)


def disruption_lines(plan: Plan, change: Change) -> list[str]:
    """What the change interrupts, one `! who: what` line each."""
    if plan.disruption is None:
        return []
    return [f"        [red]! {escape(d.line())}[/red]" for d in plan.disruption.of(change.key)]


def _label(ns: str, labels: Mapping[str, str] | None) -> str:
    label = (labels or {}).get(ns)
    return f"{label}, {ns}" if label else ns_label(ns)


def state_text(resources: Iterable[Resource], project: str,
               labels: Mapping[str, str] | None = None,
               network_labels: Mapping[str, Mapping[str, str]] | None = None) -> str:
    items = [r for r in resources if not is_shared(r)]
    if not items:
        return f"Project '{escape(project)}' owns nothing on this machine."
    groups: dict[str, list[Resource]] = {}
    for res in items:
        groups.setdefault(res.ns, []).append(res)
    lines = [f"Owned by project '{escape(project)}':"]
    for ns in sorted(groups, key=_group_order):
        lines.append(f"  [bold]# {escape(_label(ns, labels))}[/bold]")
        for res in sorted(groups[ns], key=lambda r: (RANK[r.kind], r.key)):
            lines.append(f"    {escape(res.title())}{_details(res)}"
                         f"{network_tags(res, network_labels)}")
    return "\n".join(lines)


SHOWN_FIELDS = (
    "mtu", "mac", "up", "master", "host_ifname", "lo_up", "isolated", "hairpin", "localnet",
    "rp_loose",
    "mode",
)


def _details(res: Resource) -> str:
    shown = []
    for f in dataclasses.fields(res):
        if f.compare and f.name in SHOWN_FIELDS:
            shown.append(f"{f.name}={getattr(res, f.name)}")
    return f"  [dim]{escape(' '.join(shown))}[/dim]" if shown else ""


def runtimes_text(entries: Iterable[Mapping[str, object]]) -> str:
    """The spec's runtime containers: engine, name, short id, or why skipped."""
    lines = []
    for e in entries:
        where = f"{e['runtime']} container {e['name']}"
        if e["attached"]:
            lines.append(f"  {escape(str(e['container']))}: {escape(where)} "
                         f"({escape(str(e['id']))}), attached at {escape(str(e['netns_path']))}")
        else:
            lines.append(f"  {escape(str(e['container']))}: [yellow]{escape(str(e['why']))}"
                         "[/yellow]")
    return "Runtime containers:\n" + "\n".join(lines) if lines else ""


def expectations_text(planned: Sequence[expect.Check]) -> str:
    """The spec's expectations as plan lists them: what is checked after apply."""
    if not planned:
        return ""
    lines = ["Expectations, checked with real packets after apply:"]
    for c in planned:
        e = c.expectation
        to = e.target if c.address is None or str(c.address) == e.target \
            else f"{e.target} ({c.address})"
        must = "must reach" if e.reach else "must not reach"
        tail = f"  [dim]({escape(c.skipped or c.problem)})[/dim]" if not c.runnable else ""
        lines.append(f"  {escape(e.source)} -> {escape(to)} {e.what}: {must}{tail}")
    return "\n".join(lines)


RESULT_COLUMNS = ("from", "to", "what", "expected", "result", "detail")
RESULT_COLOUR = {"holds": "green", "fails": "red", "skipped": "yellow"}


def results_text(results: Sequence[expect.Result]) -> str:
    """A table of checked expectations (from, to, what, expected, result,
    detail), then a summary line."""
    rows = []
    for r in results:
        e = r.check.expectation
        to = e.target if r.check.address is None or str(r.check.address) == e.target \
            else f"{e.target} ({r.check.address})"
        rows.append((e.source, to, e.what, "reach" if e.reach else "no reach",
                     str(r.outcome), r.detail))
    widths = [max(len(row[i]) for row in [RESULT_COLUMNS, *rows]) for i in range(5)]

    def line(row: Sequence[str], colour: str = "") -> str:
        cells = [f"{escape(cell):<{widths[i]}}" if i < 5 else escape(cell)
                 for i, cell in enumerate(row)]
        if colour:
            cells[4] = f"[{colour}]{cells[4]}[/{colour}]"
        return "  ".join(cells).rstrip()

    lines = [line(RESULT_COLUMNS)]
    lines += [line(row, RESULT_COLOUR[row[4]]) for row in rows]
    failing = sum(1 for r in results if r.outcome == "fails")
    checked = sum(1 for r in results if r.outcome != "skipped")
    lines.append("")
    lines.append(f"[red]{failing} of {checked} expectation(s) checked here do not hold.[/red]"
                 if failing else
                 f"[green]All {checked} expectation(s) checked here hold.[/green]")
    return "\n".join(lines)
