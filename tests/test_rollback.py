"""apply --rollback-on-failure and apply --confirm-timeout / netapply confirm:
the project's objects end up as they were before the apply."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler import cli, engine, lock
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.errors import KernelError
from reconciler.resources import Key, Resource
from reconciler.state.observe import observe
from tests.kernelutil import netns_list, run_cli

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent
SEED = (REPO / "examples" / "seed.yaml").read_text()
GROWN = SEED + """\
  container3:
    networks: [alpine-net]
"""


@contextmanager
def read_only_etc_netns() -> Iterator[None]:
    """Writing hosts files fails (EROFS), after the links of an apply are made."""
    subprocess.run(["mount", "-o", "remount,ro", "/etc/netns"], check=True)
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", "/etc/netns"], check=True)


def owned() -> dict[Key, Resource]:
    kernel = NetlinkKernel()
    try:
        now = observe(kernel, "seed").resources
        return engine.rollback_target(now, now)
    finally:
        kernel.close()


def start(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict[Key, Resource]]:
    spec = sandbox / "seed.yaml"
    spec.write_text(SEED)
    assert run_cli(capsys, "apply", "--auto-approve", str(spec))[0] == 0
    spec.write_text(GROWN)
    return spec, owned()


def test_a_failed_apply_is_rolled_back_on_request(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, before = start(sandbox, capsys)
    with read_only_etc_netns():
        code, out, err = run_cli(capsys, "apply", "--auto-approve", "--rollback-on-failure",
                                 str(spec))
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: failed: ") and "(EROFS)" in lines[0]
    assert lines[1] == "What to do: the file system is mounted read-only; remount it read-write."
    assert lines[2] == ("Rolling back (an action failed): restoring what project 'seed' had "
                        "before this apply.")
    assert lines[3].startswith("Rolled back: ")
    assert "done: create netns container3" in out  # it had got that far
    assert owned() == before
    assert "container3" not in netns_list()


def test_without_a_terminal_a_failed_apply_stays_where_it_stopped(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, before = start(sandbox, capsys)
    with read_only_etc_netns():
        code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 1
    assert "Rolling back" not in err and "Fix the cause and run apply again" in err
    assert owned() != before and "container3" in netns_list()


def test_an_apply_not_confirmed_in_time_is_rolled_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, before = start(sandbox, capsys)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--confirm-timeout", "0.5",
                             str(spec))
    assert code == 1
    assert f"Run netapply confirm {spec} within 0.5 s to keep this" in out
    assert "Rolling back (not confirmed within 0.5 s)" in err
    assert owned() == before
    assert not os.path.exists(lock.pending_path("seed"))


def waiting_apply(spec: Path) -> subprocess.Popen[str]:
    """An apply --confirm-timeout that has applied and waits for confirm."""
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "--no-color", "apply", "--auto-approve",
         "--confirm-timeout", "60", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=REPO)
    deadline = time.monotonic() + 30
    while not os.path.exists(lock.pending_path("seed")):
        assert apply.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return apply


def test_a_confirmed_apply_is_kept(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, _ = start(sandbox, capsys)
    apply = waiting_apply(spec)
    assert run_cli(capsys, "confirm", str(spec))[:2] == (
        0, "Confirmed: the apply of project 'seed' is kept.\n")
    out, err = apply.communicate(timeout=30)
    assert apply.returncode == 0, err
    assert "Confirmed: the change is kept." in out
    code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 0, out + err
    assert run_cli(capsys, "confirm", str(spec))[:3] == (
        1, "", "error: no apply of project 'seed' is waiting for confirmation on this machine\n")


def test_on_a_terminal_rollback_is_the_default(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_apply import _on_terminal

    spec, before = start(sandbox, capsys)
    with read_only_etc_netns():
        code, output = _on_terminal(["--no-color", "apply", str(spec)], "yes")
    assert code == 1
    assert "Rolling back (an action failed)" in output
    assert owned() == before


def test_confirm_refuses_a_pending_file_whose_apply_is_gone(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_private(lock.pending_path("seed"), f"{gone.pid}\n")
    assert run_cli(capsys, "confirm", str(REPO / "examples" / "seed.yaml"))[:3] == (
        1, "", "error: no apply of project 'seed' is waiting for confirmation on this machine\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM])
def test_an_interruption_while_waiting_for_confirmation_rolls_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str], signum: int
) -> None:
    """Ctrl-C, the operator's session hanging up, or systemctl stop."""
    spec, before = start(sandbox, capsys)
    apply = waiting_apply(spec)
    apply.send_signal(signum)
    _, err = apply.communicate(timeout=30)
    assert apply.returncode == 1
    assert "Rolling back (interrupted before it was confirmed)" in err
    assert owned() == before


BASE = """\
version: 1
project: seed
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front}
  back: {subnet: 172.30.2.0/24, mtu: 1400}
containers:
  web:
    networks: [front, back]
    ports: ["8080:80"]
  db: {networks: [back]}
"""


class FailsOnce(NetlinkKernel):
    """The real kernel, except that the first hosts file link fails: the last
    kind of write of an apply, after every link, address and table change."""

    failed = False

    def write_link(self, path: str, target: str) -> None:
        if not FailsOnce.failed:
            FailsOnce.failed = True
            raise KernelError(f"link {path}", errno.ENOSPC)
        super().write_link(path, target)


def test_a_rollback_restores_what_was_changed_and_deleted_too(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = sandbox / "seed.yaml"
    spec.write_text(BASE)
    assert run_cli(capsys, "apply", "--auto-approve", str(spec))[0] == 0
    before = owned()
    # An MTU changed, a port moved (the firewall), db removed, cache added.
    spec.write_text(BASE.replace("mtu: 1400", "mtu: 1450").replace("8080:80", "8081:80")
                    .replace("  db: {networks: [back]}", "  cache: {networks: [front]}"))
    monkeypatch.setattr(cli, "NetlinkKernel", FailsOnce)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--rollback-on-failure",
                             str(spec))
    assert code == 1
    assert "failed: create hosts file /etc/netns/cache/hosts" in err
    for step in ("delete netns db", "update in place bridge", "nftables table",
                 "create netns cache"):
        assert step in out, step
    assert "Rolled back: " in err
    assert owned() == before
    assert run_cli(capsys, "plan", "--detailed-exitcode", str(spec))[0] == 2

