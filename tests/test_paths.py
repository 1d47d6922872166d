"""Nothing netapply writes as root follows a link it did not make; a foreign
thing in /run/netns, /etc/netns or /run/netapply blocks only the name it
collides with, and is reported at plan time; destroy removes the leftovers of
an interrupted run. Each test runs in its own network + mount namespace with a
tmpfs on /run (so /run/netapply itself can be made a link) and a decoy
directory that the links point into: it must never change."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import cli, lock
from tests.kernelutil import (
    kernel_snapshot,
    netns_list,
    private_namespace,
    require_sandbox,
)

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent
SPEC = """\
version: 1
project: nf
networks:
  front: {subnet: 172.30.9.0/24}
containers:
  web: {networks: [front]}
  db: {networks: [front]}
"""
DECOY = Path("/run/decoy")
HANG = 60  # seconds; a FIFO opened for reading would block far longer

_libc = ctypes.CDLL(None, use_errno=True)


# ---- the layout around the test ------------------------------------------------------


@contextlib.contextmanager
def fresh_run() -> Iterator[None]:
    """A tmpfs on /run (inside the private namespace) with /run/netns,
    /run/netapply and the decoy: a file, a directory with a file, mode 1777
    as /tmp has."""
    if _libc.mount(b"tmpfs", b"/run", b"tmpfs", 0, b"mode=0755") != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs on /run")
    Path("/run/netns").mkdir()
    Path(lock.LOCK_DIR).mkdir(mode=0o700)
    DECOY.mkdir()
    DECOY.chmod(0o1777)
    (DECOY / "hosts").write_text("10.9.9.9 decoy\n")
    (DECOY / "dir").mkdir()
    (DECOY / "dir" / "keep").write_text("kept\n")
    yield


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Path]:
    """A private namespace with fresh /run; yields the spec file."""
    require_sandbox()
    with private_namespace(), fresh_run():
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC)
        yield spec


def tree(root: Path) -> dict[str, Any]:
    """Everything under root as lstat sees it: type, mode, owner, content, link target."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk follows no link
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath, name)
            st_ = os.lstat(path)
            entry: tuple[Any, ...] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode),
                                      st_.st_uid)
            if stat.S_ISREG(st_.st_mode):
                entry += (path.read_bytes(),)
            elif stat.S_ISLNK(st_.st_mode):
                entry += (os.readlink(path),)
            out[str(path.relative_to(root))] = entry
    return out


def fifo(path: str | Path) -> None:
    os.mkfifo(path)


def link(path: str | Path, target: str | Path) -> None:
    os.symlink(target, path)


class Hung(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: int = HANG) -> Iterator[None]:
    """Fail instead of blocking forever (a FIFO opened for reading)."""
    def alarm(_signum: int, _frame: FrameType | None) -> None:
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def netapply(*args: str) -> tuple[int, str, str]:
    """The CLI in this process (and namespace), its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with no_hang(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--no-color", *args])
    return code, out.getvalue(), err.getvalue()


def apply(spec: Path) -> tuple[int, str, str]:
    return netapply("apply", "--auto-approve", str(spec))


def refused_at_plan(spec: Path, *messages: str, by_apply: tuple[str, ...] = ()) -> None:
    """plan names each message (with its file:line:col) and exits 1; apply is
    refused the same way (or with the messages by_apply) and changes nothing."""
    before = kernel_snapshot()
    code, out, err = netapply("plan", str(spec))
    assert code == 1, out + err
    for message in messages:
        assert message in err, err
    assert "Traceback" not in err
    code, out, err = apply(spec)
    assert code == 1, out + err
    for message in by_apply or messages:
        assert message in err, err
    assert "Traceback" not in err
    assert kernel_snapshot() == before


def converges(spec: Path) -> None:
    code, out, err = apply(spec)
    assert code == 0, out + err
    code, out, err = netapply("plan", "--detailed-exitcode", str(spec))
    assert code == 0, out + err


def destroyed(spec: Path) -> None:
    code, out, err = netapply("destroy", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert netns_list() == []


# ---- /run/netapply --------------------------------------------------------------------


def test_lock_directory_through_a_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o777)
    target.chmod(0o1777)
    directory = tmp_path / "locks"
    link(directory, target)
    with pytest.raises(lock.LockError) as caught, lock.project_lock("nf", 0.1, str(directory)):
        pass
    assert str(caught.value) == (
        f"cannot open the lock {directory}/nf.lock: {directory} is a symbolic link to "
        f"{target}, which netapply did not make: it never follows a link or uses what is in "
        "its way; remove it")
    with pytest.raises(lock.LockError):
        lock.write_private(str(directory / "nf.confirm"), "1\n")
    assert lock.read_private(str(directory / "x")) is None
    assert stat.S_IMODE(target.stat().st_mode) == 0o1777
    assert list(target.iterdir()) == []
    # The lock file itself as a link, or a FIFO (a write open would block):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link(real / "nf.lock", target / "x")
    fifo(real / "other.lock")
    for project in ("nf", "other"):
        with (pytest.raises(lock.LockError, match="remove it"), no_hang(),
              lock.project_lock(project, 0.1, str(real))):
            pass
    assert list(target.iterdir()) == []


def test_run_netapply_as_a_link_is_reported_by_plan_and_apply_chmods_nothing(
    place: Path,
) -> None:
    os.rmdir(lock.LOCK_DIR)
    link(lock.LOCK_DIR, DECOY)
    decoy = tree(DECOY)
    refused_at_plan(
        place,
        f"{place}:2:1: project 'nf': /run/netapply is a symbolic link to /run/decoy, which "
        "project 'nf' did not make: netapply never follows a link or replaces what is in its "
        "way; remove it (netapply holds the lock of a run in /run/netapply)",
        by_apply=("error: cannot open the lock /run/netapply/nf.lock: /run/netapply is a "
                  "symbolic link to /run/decoy, which netapply did not make: it never follows "
                  "a link or uses what is in its way; remove it",))
    code, _, err = netapply("destroy", "--auto-approve", str(place))
    assert code == 1 and "/run/netapply is a symbolic link to /run/decoy" in err, err
    assert tree(DECOY) == decoy


# ---- /run/netns/<name> ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["decoy file", "dangling", "another namespace"])
def test_a_link_at_run_netns_name_is_foreign(place: Path, target: str) -> None:
    where = {"decoy file": DECOY / "hosts", "dangling": DECOY / "missing",
             "another namespace": Path("/run/netns/other")}[target]
    if target == "another namespace":
        subprocess.run(["ip", "netns", "add", "other"], check=True)
    link("/run/netns/web", where)
    decoy = tree(DECOY)
    refused_at_plan(
        place,
        f"{place}:6:3: container 'web': netns web cannot be made: /run/netns/web is a symbolic "
        f"link to {where}, which project 'nf' did not make")
    # destroy leaves the foreign link (and what it points to) alone
    destroyed_ok = netapply("destroy", "--auto-approve", str(place))
    assert destroyed_ok[0] == 0, destroyed_ok
    assert os.readlink("/run/netns/web") == str(where)
    assert tree(DECOY) == decoy
    assert not (DECOY / "missing").exists()


@pytest.mark.parametrize("kind", ["directory", "FIFO", "regular file"])
def test_something_in_the_way_of_run_netns_name_is_found_at_plan(place: Path, kind: str) -> None:
    path = Path("/run/netns/web")
    if kind == "directory":
        path.mkdir()
    elif kind == "FIFO":
        fifo(path)
    else:
        path.write_text("not a namespace\n")
    refused_at_plan(place, f"{place}:6:3: container 'web': netns web cannot be made: "
                           f"/run/netns/web is a {kind}, which project 'nf' did not make")


# ---- /etc/netns/<ns> and /etc/netns/.netapply-<project> ---------------------------------


def test_etc_netns_name_as_a_link_to_a_directory_elsewhere(place: Path) -> None:
    link("/etc/netns/web", DECOY / "dir")
    decoy = tree(DECOY)
    refused_at_plan(
        place,
        f"{place}:6:3: container 'web': /etc/netns/web/hosts cannot be written: /etc/netns/web "
        "is a symbolic link to /run/decoy/dir, which project 'nf' did not make")
    assert tree(DECOY) == decoy


def test_the_project_tables_directory_as_a_link(place: Path) -> None:
    link("/etc/netns/.netapply-nf", DECOY / "dir")
    decoy = tree(DECOY)
    refused_at_plan(
        place,
        f"{place}:2:1: project 'nf': its hosts tables cannot be written: /etc/netns/.netapply-nf "
        "is a symbolic link to /run/decoy/dir, which project 'nf' did not make")
    assert tree(DECOY) == decoy


def test_links_swapped_in_after_apply_are_found_and_not_followed(place: Path) -> None:
    converges(place)
    # Someone moves web's directory and the project's tables elsewhere and
    # leaves links behind: the hosts link would dangle, the tables be written there.
    shutil.move("/etc/netns/web", DECOY / "web")
    link("/etc/netns/web", DECOY / "web")
    shutil.move("/etc/netns/.netapply-nf", DECOY / "tables")
    link("/etc/netns/.netapply-nf", DECOY / "tables")
    decoy = tree(DECOY)
    code, _, err = netapply("plan", str(place))
    assert code == 1, err
    assert "/etc/netns/web is a symbolic link to /run/decoy/web" in err
    assert "/etc/netns/.netapply-nf is a symbolic link to /run/decoy/tables" in err
    destroyed(place)
    assert tree(DECOY) == decoy
    assert os.path.islink("/etc/netns/web") and os.path.islink("/etc/netns/.netapply-nf")


def test_a_file_in_the_way_of_etc_netns_name_is_found_at_plan(place: Path) -> None:
    Path("/etc/netns/web").write_text("in the way\n")
    refused_at_plan(
        place,
        f"{place}:6:3: container 'web': /etc/netns/web/hosts cannot be written: /etc/netns/web "
        "is a regular file, which project 'nf' did not make")


# ---- foreign things elsewhere block nothing ---------------------------------------------


def test_directories_and_fifos_of_other_namespaces_block_no_plan(place: Path) -> None:
    for name in ("unrelated", "unrelated2", "other-project"):
        Path("/etc/netns", name).mkdir()
    Path("/etc/netns/unrelated/hosts").mkdir()
    fifo("/etc/netns/unrelated2/hosts")
    link("/etc/netns/other-project/hosts", DECOY / "hosts")
    fifo("/etc/netns/unrelated3")
    link("/etc/netns/unrelated4", DECOY / "dir")
    fifo("/run/netns/unrelated")
    link("/run/netns/unrelated2", DECOY / "missing")
    Path("/run/netns/unrelated3").mkdir()
    Path("/etc/netns/.netapply-other").mkdir()
    fifo("/etc/netns/.netapply-other/table")
    foreign = tree(Path("/etc/netns")), sorted(os.listdir("/run/netns"))
    decoy = tree(DECOY)
    code, out, err = netapply("plan", str(place))
    assert code == 0, out + err
    converges(place)
    destroyed(place)
    assert (tree(Path("/etc/netns")), sorted(os.listdir("/run/netns"))) == foreign
    assert tree(DECOY) == decoy


# ---- descriptors ------------------------------------------------------------------------


def many(n: int) -> str:
    lines = ["version: 1", "project: sc", "networks:", "  front: {subnet: 10.40.0.0/20}",
             "containers:"]
    lines += [f"  c{i}: {{networks: [front]}}" for i in range(n)]
    return "\n".join(lines) + "\n"


def cli_limited(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "reconciler.cli", "--no-color", *args],
                          capture_output=True, text=True, cwd=REPO, preexec_fn=lower,
                          timeout=600)


def test_more_namespaces_than_open_files_allowed(place: Path) -> None:
    spec = place.parent / "many.yaml"
    spec.write_text(many(320))
    done = cli_limited(300, "apply", "--auto-approve", str(spec))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert len(netns_list()) == 320
    again = cli_limited(300, "plan", "--detailed-exitcode", str(spec))
    assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-2000:])
    gone = cli_limited(300, "destroy", "--auto-approve", str(spec))
    assert gone.returncode == 0, gone.stderr[-2000:]
    assert netns_list() == []


def test_a_limit_too_low_is_refused_before_any_change(place: Path) -> None:
    before = kernel_snapshot()
    done = cli_limited(40, "apply", "--auto-approve", str(place))
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        "error: this process may open only 40 files (ulimit -n; hard limit 40), which is too "
        "low: netapply needs at least 64; raise the limit (`ulimit -n 1024` as root, or "
        "LimitNOFILE= in a systemd unit) and run again")
    assert kernel_snapshot() == before


# ---- leftovers of interrupted runs ------------------------------------------------------


def test_destroy_removes_the_leftovers_it_can_prove_its_own(place: Path) -> None:
    # What interrupted creates leave: an empty file no namespace is mounted on,
    # empty directories, a half-written hosts file; under the spec's names.
    Path("/run/netns/web").touch(mode=0o444)
    Path("/etc/netns/web").mkdir()
    Path("/etc/netns/db").mkdir()
    Path("/etc/netns/db/hosts.netapply-tmp").write_text("half")
    Path("/etc/netns/.netapply-nf").mkdir()
    # The same under names that are not the spec's: not provably netapply's.
    Path("/run/netns/other").touch()
    Path("/etc/netns/other").mkdir()
    code, out, err = netapply("destroy", "--auto-approve", str(place))
    assert code == 0, out + err
    assert sorted(os.listdir("/run/netns")) == ["other"]
    assert sorted(os.listdir("/etc/netns")) == ["other"]
    subprocess.run(["ip", "netns", "add", "web"], check=True)


def killed_inside(point: str, spec: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.killer", f"inside:{point}", "--no-color",
                           "apply", "--auto-approve", str(spec)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("point", ["mount", "rename"])
@pytest.mark.parametrize("then", ["destroy", "apply"])
def test_leftovers_of_a_killed_apply(place: Path, point: str, then: str) -> None:
    killed = killed_inside(point, place)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if point == "mount":  # the namespace's file, nothing mounted on it
        assert sorted(os.listdir("/run/netns")) == ["db"] and netns_list() == []
    else:  # the first hosts table, written beside its place
        tables = os.listdir("/etc/netns/.netapply-nf")
        assert len(tables) == 1 and tables[0].endswith(".netapply-tmp"), tables
    if then == "apply":
        converges(place)
    destroyed(place)
    assert os.listdir("/run/netns") == []
    assert os.listdir("/etc/netns") == []
    for name in ("web", "db"):
        subprocess.run(["ip", "netns", "add", name], check=True)


# ---- every layout: converge, or stop at plan; nothing written outside --------------------

RUN_NETNS = [None, "empty", "file", "dir", "fifo", "link-file", "link-dangling", "link-dir"]
ETC_NETNS = [None, "empty-dir", "file", "fifo", "link-dir", "link-dangling", "hosts-dir",
             "hosts-fifo", "hosts-file", "hosts-link", "hosts-tmp"]
LOCK = ["dir", "absent", "link-dir"]
BENIGN_RUN = {None, "empty"}
BENIGN_ETC = {None, "empty-dir", "hosts-tmp"}


def make(path: Path, kind: str | None) -> None:
    """Put kind at path (a namespace's entry, a directory of /etc/netns)."""
    if kind is None:
        return
    if kind == "empty":
        path.touch(mode=0o444)
    elif kind == "file":
        path.write_text("foreign\n")
    elif kind in ("dir", "empty-dir"):
        path.mkdir()
    elif kind == "fifo":
        fifo(path)
    elif kind == "link-file":
        link(path, DECOY / "hosts")
    elif kind == "link-dir":
        link(path, DECOY / "dir")
    elif kind == "link-dangling":
        link(path, DECOY / "missing" / "deeper")
    else:  # hosts-*: a directory with that at hosts
        path.mkdir()
        inner = {"hosts-dir": "dir", "hosts-fifo": "fifo", "hosts-file": "file",
                 "hosts-link": "link-file"}.get(kind)
        if inner is not None:
            make(path / "hosts", inner)
        else:
            (path / "hosts.netapply-tmp").write_text("half")


@settings(max_examples=200 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 12)
@given(
    lock_dir=st.sampled_from(LOCK),
    run_web=st.sampled_from(RUN_NETNS),
    run_other=st.sampled_from(RUN_NETNS),
    etc_web=st.sampled_from(ETC_NETNS),
    etc_other=st.sampled_from(ETC_NETNS),
    tables=st.sampled_from([None, "empty-dir", "file", "fifo", "link-dir", "link-dangling"]),
)
def test_any_layout_converges_or_stops_at_plan(
    lock_dir: str, run_web: str | None, run_other: str | None,
    etc_web: str | None, etc_other: str | None, tables: str | None,
) -> None:
    require_sandbox()
    with tempfile.TemporaryDirectory() as scratch, private_namespace(), fresh_run():
        spec = Path(scratch, "spec.yaml")
        spec.write_text(SPEC)
        if lock_dir != "dir":
            os.rmdir(lock.LOCK_DIR)
        if lock_dir == "link-dir":
            link(lock.LOCK_DIR, DECOY / "dir")
        make(Path("/run/netns/web"), run_web)
        make(Path("/run/netns/other"), run_other)
        make(Path("/etc/netns/web"), etc_web)
        make(Path("/etc/netns/other"), etc_other)
        make(Path("/etc/netns/.netapply-nf"), tables)
        decoy = tree(DECOY)
        others = tree(Path("/etc/netns/other")) if etc_other else {}
        run_other_before = tree(Path("/run/netns")).get("other")
        benign = (lock_dir != "link-dir" and run_web in BENIGN_RUN and etc_web in BENIGN_ETC
                  and tables in (None, "empty-dir"))
        code, out, err = netapply("plan", str(spec))
        assert "Traceback" not in out + err
        if benign:
            assert code == 0, out + err
        if code == 0:
            converges(spec)
            destroyed(spec)
        else:
            assert err.startswith("error: ") and "problem(s); nothing was changed." in err, err
            before = kernel_snapshot()
            code, out, err = apply(spec)
            assert code == 1 and "Traceback" not in out + err, out + err
            assert kernel_snapshot() == before
        assert tree(DECOY) == decoy
        assert (tree(Path("/etc/netns/other")) if etc_other else {}) == others
        assert tree(Path("/run/netns")).get("other") == run_other_before
