"""apply --rollback-on-failure and apply --confirm-timeout / netapply confirm:
the project's objects end up as they were before the apply."""

from __future__ import annotations

import errno
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli, desired, engine, lock
from reconciler.drivers import ops
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
    # The steps done before the failure, then the rollback that undoes them.
    assert lines[2] == "Already done (4 step(s)):"
    assert lines[3:7] == [f"  {step}" for step in out.replace("  done: ", "").splitlines()[-4:]]
    assert lines[7] == ("Rolling back (an action failed): restoring what project 'seed' had "
                        "before this apply.")
    assert lines[8].startswith("Rolled back: ")
    assert "done: container3: create netns container3" in out  # it had got that far
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
    name = signal.Signals(signum).name
    assert f"Rolling back (interrupted by {name} before it was confirmed)" in err
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
    assert "failed: cache: create hosts file /etc/netns/cache/hosts" in err
    for step in ("delete netns db", "update in place bridge", "nftables table",
                 "create netns cache"):
        assert step in out, step
    assert "Rolled back: " in err
    assert owned() == before
    assert run_cli(capsys, "plan", "--detailed-exitcode", str(spec))[0] == 2



# ---- every way out after the first write: rolled back --------------------------------------
# Output that fails (a pipe whose reader is gone, a terminal that hung up, a
# closed stderr) decides nothing; signals in every phase (tests/test_crash.py
# sweeps them); a pending file that cannot be written; a verification that
# raises; a bug.

def leftovers() -> list[str]:
    """Pending confirm files left in the lock directory."""
    return sorted(f for f in os.listdir("/run/netapply") if ".confirm" in f)


def stopped(pid: int) -> bool:
    """Whether process pid is stopped (SIGSTOP), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def exit_code(pid: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"netapply did not end within {timeout} s")
        time.sleep(0.02)


def hung_up(argv: list[str], until: bytes | None = None, pause: bool = False) -> int:
    """Run `python -m ARGV` on a new pseudo-terminal that is its controlling
    terminal (pty.fork), read what it prints until `until` appears or (pause)
    it stopped itself, then close the terminal's master side as a dropped SSH
    session does: the kernel sends SIGHUP, and writes to the terminal fail
    with EIO. Returns the exit status."""
    pid, master = pty.fork()
    if pid == 0:  # the child: nothing but exec
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", *argv])
    output = b""
    deadline = time.monotonic() + 60
    while not ((until is not None and until in output) or (pause and stopped(pid))):
        assert time.monotonic() < deadline, output.decode(errors="replace")[-2000:]
        if select.select([master], [], [], 0.05)[0]:
            try:
                output += os.read(master, 65536)
            except OSError:  # EIO: it ended
                break
    os.close(master)
    if pause:
        os.kill(pid, signal.SIGCONT)
    return exit_code(pid)


def test_a_terminal_hanging_up_while_waiting_for_confirmation_rolls_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's example: the rollback used to die printing "Rolling back"
    to the dead terminal (EIO) and the change stayed."""
    spec, before = start(sandbox, capsys)
    code = hung_up(["reconciler.cli", "--no-color", "apply", "--auto-approve",
                    "--confirm-timeout", "60", str(spec)], until=b"to keep this")
    assert code == 1
    assert owned() == before
    assert "container3" not in netns_list() and leftovers() == []


def test_a_terminal_gone_without_a_hangup_signal_still_rolls_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A terminal that is not the controlling one: no SIGHUP, only EIO on
    every write; the confirm timeout rolls back."""
    spec, before = start(sandbox, capsys)
    master, child = pty.openpty()
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "--no-color", "apply", "--auto-approve",
         "--confirm-timeout", "1", str(spec)],
        stdin=child, stdout=child, stderr=child, start_new_session=True, cwd=REPO)
    os.close(child)
    output = b""
    while b"to keep this" not in output:
        assert select.select([master], [], [], 30)[0], output
        output += os.read(master, 65536)
    os.close(master)
    assert apply.wait(timeout=60) == 1
    assert owned() == before and leftovers() == []


def test_a_terminal_hanging_up_between_two_actions_rolls_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Paused right after its 3rd kernel write (tests/killer.py), the terminal
    hangs up, the run continues: it stops at the next step and rolls back,
    while its progress display and messages meet EIO."""
    spec, before = start(sandbox, capsys)
    code = hung_up(["tests.killer", "STOP@write:3", "--no-color", "apply", "--auto-approve",
                    str(spec)], pause=True)
    assert code == 1
    assert owned() == before and "container3" not in netns_list()


def paused(apply: subprocess.Popen[str]) -> None:
    """Wait until apply has stopped itself (tests/killer.py STOP@...)."""
    deadline = time.monotonic() + 60
    while not stopped(apply.pid):
        assert apply.poll() is None, apply.returncode
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_stdout_closed_by_its_reader_after_apply_complete_still_rolls_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's example `| grep -m1 "Apply complete"`: the reader of stdout
    exits once it read that line (here: while the run is paused right after
    printing it, so the next line surely meets EPIPE). The prompt, the
    rollback and its outcome go to stderr; the pending file used to stay,
    and the change with it, with nothing on stderr."""
    spec, before = start(sandbox, capsys)
    apply = subprocess.Popen(
        [sys.executable, "-m", "tests.killer", "STOP@complete:0", "--no-color", "apply",
         "--auto-approve", "--confirm-timeout", "1", str(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert apply.stdout is not None and apply.stderr is not None
    paused(apply)
    read = b""
    while b"Apply complete" not in read:  # what grep -m1 reads before it exits
        chunk = os.read(apply.stdout.fileno(), 65536)
        assert chunk, read
        read += chunk
    apply.stdout.close()
    apply.send_signal(signal.SIGCONT)
    err = apply.stderr.read()
    assert apply.wait(timeout=60) == 1, err
    assert "Run netapply confirm" in err and "within 1 s to keep this" in err
    assert "Rolling back (not confirmed within 1 s)" in err
    assert "Rolled back: " in err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert owned() == before and leftovers() == []


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone (as `| head -c0`
    leaves it): every write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


def test_with_stdout_gone_its_lines_go_to_stderr_and_confirm_still_keeps(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, _ = start(sandbox, capsys)
    stdout = closed_pipe()
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "--no-color", "apply", "--auto-approve",
         "--confirm-timeout", "60", str(spec)],
        stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=REPO)
    os.close(stdout)
    assert apply.stderr is not None
    seen = ""
    while "to keep this" not in seen:
        line = apply.stderr.readline()
        assert line, seen
        seen += line
    # The plan, the progress and the prompt, all moved to stderr.
    assert "netapply will perform these actions" in seen
    assert "  done: container3: create netns container3" in seen
    assert run_cli(capsys, "confirm", str(spec))[0] == 0
    rest = apply.stderr.read()
    assert apply.wait(timeout=30) == 0, seen + rest
    assert "Confirmed: the change is kept." in rest
    assert run_cli(capsys, "plan", "--detailed-exitcode", str(spec))[0] == 0


def test_with_stdout_and_stderr_gone_an_unconfirmed_apply_still_rolls_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stdout a pipe nobody reads, stderr closed (`2>&-`): nothing can be
    printed, and the apply, verification, wait and rollback all still run
    (the run is paused once complete, to see that the change was made)."""
    spec, before = start(sandbox, capsys)
    stdout = closed_pipe()
    apply = subprocess.Popen(
        ["bash", "-c", 'exec "$@" 2>&-', "netapply", sys.executable, "-m", "tests.killer",
         "STOP@complete:0", "--no-color", "apply", "--auto-approve", "--confirm-timeout", "0.5",
         str(spec)], stdout=stdout, text=True, cwd=REPO)
    os.close(stdout)
    paused(apply)
    assert "container3" in netns_list()  # applied, though nothing could be printed
    apply.send_signal(signal.SIGCONT)
    assert apply.wait(timeout=60) == 1
    assert owned() == before and leftovers() == []


def test_stdout_closed_between_two_actions_changes_nothing_in_the_apply(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Paused after its 3rd write, its stdout's reader goes away: it goes on,
    completes and verifies (it used to stop there, BrokenPipeError, with no
    rollback), and says so on stderr."""
    spec, _ = start(sandbox, capsys)
    apply = subprocess.Popen(
        [sys.executable, "-m", "tests.killer", "STOP@write:3", "--no-color", "apply",
         "--auto-approve", "--rollback-on-failure", str(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert apply.stdout is not None and apply.stderr is not None
    paused(apply)
    apply.stdout.close()
    apply.send_signal(signal.SIGCONT)
    err = apply.stderr.read()
    assert apply.wait(timeout=60) == 0, err
    assert "Apply complete: " in err and "Traceback" not in err
    assert run_cli(capsys, "plan", "--detailed-exitcode", str(spec))[0] == 0


def test_a_pending_file_that_cannot_be_written_stops_before_any_change(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/run/netapply full (here: out of inodes once the lock file is made):
    it used to apply, say "Apply complete", then fail and keep the change."""
    spec, before = start(sandbox, capsys)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nr_inodes=2,mode=0700", "netapply-full",
                    "/run/netapply"], check=True)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--confirm-timeout", "30",
                             str(spec))
    assert code == 1
    assert err.splitlines() == [
        "error: cannot write /run/netapply/seed.confirm.staged: No space left on device",
        "Nothing was changed.",
    ]
    assert "done:" not in out and "Apply complete" not in out
    assert owned() == before and "container3" not in netns_list()
    assert leftovers() == []


def test_a_confirm_while_the_apply_is_still_changing_things_is_refused(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pending file is written before the first change, but under a
    staged name: only an apply that waits can be confirmed."""
    spec, _ = start(sandbox, capsys)
    apply = subprocess.Popen(
        [sys.executable, "-m", "tests.killer", "STOP@write:3", "--no-color", "apply",
         "--auto-approve", "--confirm-timeout", "60", str(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        paused(apply)
        assert leftovers() == ["seed.confirm.staged"]
        assert run_cli(capsys, "confirm", str(spec))[:3] == (
            1, "", "error: no apply of project 'seed' is waiting for confirmation on this "
                   "machine\n")
    finally:
        apply.send_signal(signal.SIGCONT)
    assert apply.stdout is not None
    line = ""
    while "to keep this" not in line:
        line = apply.stdout.readline()
        assert line, "the apply ended before it waited for confirm"
    assert run_cli(capsys, "confirm", str(spec))[0] == 0
    out, err = apply.communicate(timeout=60)
    assert apply.returncode == 0, err
    assert "Confirmed: the change is kept." in out and leftovers() == []


def a_vpn_comes_up_before_the_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the apply's last write and its verification, another tool
    puts an address of the spec's subnet on this machine: the verification
    cannot build the desired state again (a MachineError)."""
    real = engine.observe_project
    calls = []

    def observe_project(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # 1: the plan's, 2: the verification's
            subprocess.run(["ip", "link", "add", "vpn0", "type", "veth", "peer", "name", "vpn0p"],
                           check=True)
            subprocess.run(["ip", "addr", "add", "172.30.1.250/24", "dev", "vpn0"], check=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "observe_project", observe_project)


def test_a_verification_that_raises_is_a_failed_apply_and_is_rolled_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to print "1 problem(s); nothing was changed." after the
    changes, and skip the rollback."""
    spec, before = start(sandbox, capsys)
    a_vpn_comes_up_before_the_verification(monkeypatch)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--rollback-on-failure",
                             str(spec))
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: failed: verify the kernel after the apply: "), lines
    assert "overlaps address 172.30.1.250/24 on vpn0" in lines[0]
    done = [line.removeprefix("  done: ") for line in out.splitlines() if "done: " in line]
    assert lines[1:2 + len(done)] == [f"Already done ({len(done)} step(s)):",
                                      *(f"  {step}" for step in done)]
    assert lines[2 + len(done)].startswith("Rolling back (the verification failed): ")
    assert "nothing was changed" not in err
    assert owned() == before


def test_without_rollback_a_verification_that_raises_names_the_steps_left(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = start(sandbox, capsys)
    a_vpn_comes_up_before_the_verification(monkeypatch)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 1
    assert err.startswith("error: failed: verify the kernel after the apply: ")
    assert "overlaps address 172.30.1.250/24 on vpn0" in err.splitlines()[0]
    assert "left in place:\n  container3: create netns container3\n" in err
    assert "nothing was changed" not in err and "Rolling back" not in err
    assert "container3" in netns_list()


class Bug(Exception):
    pass


@pytest.mark.parametrize("where", ["step", "verification"])
def test_a_bug_after_the_first_write_is_a_failed_apply_and_is_rolled_back(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    where: str
) -> None:
    """An exception that is no NetapplyError (a bug), in the 3rd step or in
    the verification, used to end in a traceback with the change kept."""
    spec, before = start(sandbox, capsys)
    calls = []
    module, name = (ops, "create") if where == "step" else (desired, "build")
    real = getattr(module, name)

    def buggy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == (3 if where == "step" else 2):
            raise Bug("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, buggy)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", "--rollback-on-failure",
                           str(spec))
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith("error: failed: verify the kernel" if where == "verification"
                            else "error: failed: container3: create "), first
    assert first.endswith(": internal error (Bug: boom): a bug in netapply, please report it "
                          "with the spec")
    assert "Already done (" in err and "Rolled back: " in err
    assert owned() == before
