"""Least privilege: what works without root, what says which capability it
lacks, file modes, and that nothing is ever run from spec values."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kernelutil import run_cli

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed.yaml"
NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]


@contextmanager
def readable_copy() -> Iterator[Path]:
    """The seed spec where user nobody can read it."""
    public = Path("/tmp") / f"netapply-priv-{os.getpid()}.yaml"
    public.write_text(SEED.read_text())
    public.chmod(0o644)
    try:
        yield public
    finally:
        public.unlink()


def as_nobody(caps: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to change user")
    privileges = [*NOBODY, "--inh-caps=-all"]
    if caps:
        wanted = ",".join(f"+{c}" for c in caps)
        privileges = [*NOBODY, f"--inh-caps={wanted}", f"--ambient-caps={wanted}"]
    return subprocess.run(["setpriv", *privileges, sys.executable, "-m", "reconciler.cli",
                           "--no-color", *args], capture_output=True, text=True, cwd="/",
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_validate_needs_no_privilege() -> None:
    with readable_copy() as spec:
        result = as_nobody([], "validate", str(spec))
    assert (result.returncode, result.stdout) == (
        0, "The spec of project 'seed' is valid: 1 network(s), 2 container(s).\n")


@pytest.mark.kernel
def test_plan_needs_the_capabilities_not_root(sandbox: Path) -> None:
    with readable_copy() as spec:
        result = as_nobody(["net_admin", "sys_admin"], "plan", str(spec))
    assert result.returncode == 0, result.stderr
    assert "Plan: " in result.stdout


@pytest.mark.parametrize("command", ["plan", "apply", "destroy", "watch", "show", "ls",
                                     "export", "graph --live"])
def test_without_the_capabilities_one_sentence_names_them(command: str) -> None:
    with readable_copy() as spec:
        words = command.split()
        args = [*words, str(spec)] if words[0] not in ("ls", "export") else (
            ["export", "--project", "seed"] if words[0] == "export" else ["ls"])
        result = as_nobody([], *args)
    assert result.returncode == 1
    assert result.stderr == (
        "error: netapply needs CAP_NET_ADMIN and CAP_SYS_ADMIN to read and change network "
        "namespaces: run it as root (for example with sudo)\n")


@pytest.mark.kernel
def test_nothing_netapply_writes_is_writable_by_others(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "apply", "--auto-approve", str(SEED))[0] == 0
    written = [p for root in ("/etc/netns", "/run/netapply") for p in Path(root).rglob("*")]
    assert written
    for path in [Path("/run/netapply"), *written]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if not path.is_symlink():
            assert not mode & 0o022, (path, oct(mode))  # no group or world write
    for path in Path("/run/netapply").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# Calls that run programs or code, and where netapply may make them.
RUNS = {("subprocess", "run"), ("subprocess", "Popen"), ("subprocess", "call"),
        ("subprocess", "check_output"), ("subprocess", "check_call"), ("os", "system"),
        ("os", "popen"), ("os", "execv"), ("os", "execvp"), ("os", "spawnv")}


def test_nothing_is_run_from_spec_values() -> None:
    """netapply runs exactly one program on a spec, nft, with a fixed argument
    list and the rules as JSON on stdin; never a shell, never eval/exec. The
    one other program, `docker compose config`, is run by `netapply import
    compose` alone (compose/reading.py), on the Compose file the user names, never on
    a spec."""
    found = []
    importers = set()
    for path in sorted((REPO / "reconciler").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""]
                if any(m.split(".")[0] in ("subprocess", "pty", "shlex") for m in modules):
                    importers.add(f"{path.name}: {', '.join(modules)}")
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile"):
                found.append(f"{path.name}: {func.id}")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
                    func.value.id, func.attr) in RUNS:
                shell = any(k.arg == "shell" for k in node.keywords)
                argv = node.args[0] if node.args else None
                fixed = isinstance(argv, ast.List) and isinstance(argv.elts[0], ast.Name)
                found.append(f"{path.name}: {func.value.id}.{func.attr} shell={shell} "
                             f"fixed_program={fixed}")
    assert importers == {"reading.py: subprocess", "nft.py: subprocess"}  # nothing else starts one
    assert found == ["reading.py: subprocess.run shell=False fixed_program=True",
                     "nft.py: subprocess.run shell=False fixed_program=True"]
