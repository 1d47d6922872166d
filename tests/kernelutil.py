"""Helpers for kernel tests: read the kernel independently with `ip -j`, run the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli


def ip_json(ns: str | None, *args: str) -> Any:
    cmd = ["ip", "-j"] + (["-n", ns] if ns else []) + list(args)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def links(ns: str | None = None) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in ip_json(ns, "-d", "link", "show")}


def addresses(ns: str | None, ifname: str, family: str = "inet") -> list[str]:
    found = []
    for link in ip_json(ns, "addr", "show", "dev", ifname):
        for a in link.get("addr_info", []):
            if a["family"] == family and a.get("scope") != "link":
                found.append(f"{a['local']}/{a['prefixlen']}")
    return sorted(found)


def netns_list() -> list[str]:
    return sorted(entry["name"] for entry in ip_json(None, "netns", "list"))


def _without_timers(value: Any) -> Any:
    """Bridge timers tick by themselves; they are not state anyone changed."""
    if isinstance(value, dict):
        return {k: _without_timers(v) for k, v in value.items() if not k.endswith("_timer")}
    if isinstance(value, list):
        return [_without_timers(v) for v in value]
    return value


def kernel_snapshot() -> dict[str, Any]:
    """Everything an apply could change, as `ip` reports it, for before/after checks."""
    snap: dict[str, Any] = {"netns": netns_list()}
    for ns in [None, *snap["netns"]]:
        snap[f"link:{ns}"] = _without_timers(ip_json(ns, "-d", "link", "show"))
        snap[f"addr:{ns}"] = ip_json(ns, "addr", "show")
        snap[f"route:{ns}"] = ip_json(ns, "route", "show", "table", "all")
    etc = Path("/etc/netns")
    snap["files"] = sorted(
        (str(p), p.read_text()) for p in etc.rglob("*") if p.is_file()
    )
    return snap


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["--no-color", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True)
