"""Attachments that can never be right are refused before any change (issue 14 §2).

On the real kernel, each test in its own namespace: a netns_path that is the
namespace netapply runs in, one that is no namespace at all (a FIFO must not
make any command hang), and one namespace reached under two references. Every
command that reads the kernel refuses them and the kernel is left as it was.
Commands that could hang run as subprocesses with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler import engine
from reconciler import spec as spec_mod
from reconciler.drivers.memory import MemoryKernel
from reconciler.errors import SpecError
from tests.kernelutil import REPO, kernel_snapshot, netns_list, run_cli

DEADLINE = 60  # seconds for a command that must not hang; it takes well under one
SPEC = """\
version: 1
project: shop
networks:
  front:
    subnet: 172.30.1.0/24
containers:
  web:
    networks: [front]
  side:
    netns_path: {path}
    networks: [front]
"""  # side's netns_path: line 10, column 5
OWN_NAMESPACE = ("is the network namespace netapply runs in (the host's own); attaching to it "
                 "would give the host this container's interfaces and routes (network_mode: "
                 "host shares the host's network)")
COMMANDS = (("plan",), ("apply", "--auto-approve"), ("destroy", "--auto-approve"), ("show",))


def write_spec(directory: Path, path: str, text: str = SPEC) -> Path:
    spec = directory / "shop.yaml"
    spec.write_text(text.replace("{path}", path))
    return spec


def netapply(*args: str) -> subprocess.CompletedProcess[str]:
    """netapply as a separate process, stopped (and the test failed) at DEADLINE."""
    try:
        return subprocess.run([sys.executable, "-m", "reconciler.cli", "--no-color", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"netapply {' '.join(args)} still runs after {DEADLINE} s")


def watch_once(spec: Path, log: Path) -> tuple[list[dict[str, object]], int]:
    """Run `netapply watch` until its first reconcile is logged, then SIGTERM it:
    the log records and the exit status."""
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "watch", "--log-format", "json", str(spec)],
            stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    try:
        deadline = time.monotonic() + DEADLINE
        while '"event": "reconcile"' not in log.read_text():
            assert time.monotonic() < deadline, "watch logged no reconcile: " + log.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return [json.loads(line) for line in log.read_text().splitlines()], code


def own_namespace_paths() -> list[str]:
    # Never /proc/1/ns/net: under the sandbox that is the machine's own namespace.
    return ["/proc/self/ns/net", "/proc/thread-self/ns/net", f"/proc/{os.getpid()}/ns/net"]


@pytest.mark.kernel
@pytest.mark.parametrize("index", range(3), ids=["self", "thread-self", "pid"])
def test_a_netns_path_to_netapply_s_own_namespace_is_refused_by_every_command(
    sandbox: Path, capsys: pytest.CaptureFixture[str], index: int
) -> None:
    path = own_namespace_paths()[index]
    spec = write_spec(sandbox, path)
    before = kernel_snapshot()
    for command in COMMANDS:
        code, _, err = run_cli(capsys, *command, str(spec))
        assert code == 1, (command, err)
        assert err.splitlines()[0] == (
            f"error: {spec}:10:5: container 'side': netns_path {path} {OWN_NAMESPACE}"), command
    assert kernel_snapshot() == before


@pytest.mark.kernel
def test_watch_refuses_netapply_s_own_namespace_and_changes_nothing(sandbox: Path) -> None:
    spec = write_spec(sandbox, "/proc/self/ns/net")  # the watch process's own
    before = kernel_snapshot()
    records, code = watch_once(spec, sandbox / "watch.log")
    assert code == 0
    [reconcile] = [r for r in records if r.get("event") == "reconcile"]
    assert reconcile["result"] == "failed"
    assert reconcile["errors"] == [
        f"{spec}:10:5: container 'side': netns_path /proc/self/ns/net {OWN_NAMESPACE}"]
    assert kernel_snapshot() == before


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays


def _directory(path: Path) -> None:
    path.mkdir()


NOT_NAMESPACES: dict[str, tuple[Callable[[Path], None] | None, str]] = {
    "fifo": (_fifo, "is a FIFO, not a network namespace"),
    "socket": (_socket, "is a socket, not a network namespace"),
    "directory": (_directory, "is a directory, not a network namespace"),
    "device": (None, "is a device file, not a network namespace"),  # /dev/null
    "mount namespace": (None, "is a mount namespace, not a network namespace"),
}


@pytest.mark.kernel
@pytest.mark.parametrize("kind", NOT_NAMESPACES)
def test_a_netns_path_that_is_no_namespace_is_refused_without_hanging(
    sandbox: Path, kind: str
) -> None:
    make, why = NOT_NAMESPACES[kind]
    path = {"device": "/dev/null", "mount namespace": "/proc/self/ns/mnt"}.get(kind)
    if make is not None:
        target = sandbox / f"not-a-netns-{kind}"
        make(target)
        path = str(target)
    assert path is not None
    spec = write_spec(sandbox, path)
    before = kernel_snapshot()
    for command in COMMANDS[:2]:
        result = netapply(*command, str(spec))
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines()[0] == (
            f"error: {spec}:10:5: container 'side': netns_path {path} {why}")
    assert kernel_snapshot() == before
    # destroy and show need nothing from an unattached path: they do their job
    for command in COMMANDS[2:]:
        result = netapply(*command, str(spec))
        assert result.returncode == 0, result.stderr
    assert kernel_snapshot() == before
    records, code = watch_once(spec, sandbox / "watch.log")
    assert code == 0
    [reconcile] = [r for r in records if r.get("event") == "reconcile"]
    assert reconcile["errors"] == [f"{spec}:10:5: container 'side': netns_path {path} {why}"]
    assert kernel_snapshot() == before


@pytest.mark.kernel
def test_a_netns_path_to_another_container_s_named_namespace_is_refused(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = SPEC.split("  side:")[0]
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(write_spec(sandbox, "", base)))
    assert code == 0, err
    assert netns_list() == ["web"]
    before = kernel_snapshot()
    # By its text, validate already knows (the example) ...
    spec = write_spec(sandbox, "/run/netns/web")
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: {spec}:10:5: container 'side': netns_path /run/netns/web is the namespace of "
        "container 'web' (netns web), which netapply makes and deletes with that container; a "
        "container cannot also be attached to it by path")
    # ... and by identity, plan and apply: a link that leads there
    (sandbox / "web-link").symlink_to("/run/netns/web")
    spec = write_spec(sandbox, str(sandbox / "web-link"))
    for command in COMMANDS:
        code, _, err = run_cli(capsys, *command, str(spec))
        assert code == 1, (command, err)
        assert err.splitlines()[0] == (
            f"error: {spec}:10:5: container 'side': netns_path {sandbox / 'web-link'} is the "
            "namespace of container 'web' (netns web), which netapply makes and deletes with "
            "that container; a container cannot also be attached to it by path"), command
    assert kernel_snapshot() == before


@pytest.mark.kernel
def test_two_netns_paths_to_one_namespace_are_refused_naming_both(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["ip", "netns", "add", "outside"], check=True)
    (sandbox / "outside-link").symlink_to("/run/netns/outside")
    text = SPEC.replace("  web:\n    networks: [front]\n",
                        "  web:\n    netns_path: /run/netns/outside\n"
                        "    networks: {front: {interface: eth1}}\n")
    spec = write_spec(sandbox, str(sandbox / "outside-link"), text)  # side: line 11
    before = kernel_snapshot()
    for command in COMMANDS:
        code, _, err = run_cli(capsys, *command, str(spec))
        assert code == 1, (command, err)
        assert err.splitlines()[0] == (
            f"error: {spec}:11:5: container 'side': netns_path {sandbox / 'outside-link'} is "
            "the namespace container 'web' attaches to as netns_path /run/netns/outside; "
            "containers that share a namespace must name it by the same netns_path"), command
    assert kernel_snapshot() == before


def test_a_netns_path_to_a_namespace_the_project_made_for_a_removed_container() -> None:
    kernel = MemoryKernel()
    first = spec_mod.load_text(SPEC.split("  side:")[0], "shop.yaml")
    snap = engine.snapshot(kernel, first)
    engine.apply(kernel, first, snap.plan)
    writes = kernel.writes
    # web leaves the spec; side attaches to web's namespace, which apply would delete
    text = SPEC.replace("  web:\n    networks: [front]\n", "")
    spec = spec_mod.load_text(text.replace("{path}", "/run/netns/web"), "shop.yaml")
    for destroy in (False, True):
        with pytest.raises(SpecError) as caught:
            engine.snapshot(kernel, spec, destroy=destroy)
        assert [str(p) for p in caught.value.problems] == [
            "shop.yaml:8:5: container 'side': netns_path /run/netns/web is namespace 'web', "
            "which project 'shop' made and deletes (no container here uses it)"]
    assert kernel.writes == writes



@pytest.mark.kernel
def test_json_to_a_reader_that_went_away_is_no_traceback(sandbox: Path) -> None:
    """plan/show --output json into a closed pipe: the guard swallows EPIPE."""
    spec = REPO / "examples" / "seed.yaml"
    for command in ("plan", "show"):
        read, write = os.pipe()
        os.close(read)
        done = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", command, "--output", "json", str(spec)],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
            cwd=REPO)
        os.close(write)
        assert "Traceback" not in done.stderr, done.stderr
