"""`expect` checked with real packets, each test in its own private namespace:
checks that hold (a TCP listener started inside the `to` container), a failed
one that rolls an apply back, `reach: false` across isolated networks, pings,
and watch logging a failing one without undoing anything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kernelutil import assert_same_kernel, kernel_snapshot, netns_list, run_cli
from tests.test_apply import converge
from tests.test_watch import wait_for, watching

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: ex
networks:
  front: {subnet: 172.30.1.0/24, interface: br-exf}
  back: {subnet: 172.30.2.0/24, interface: br-exb}
containers:
  web: {networks: [front, back]}
  db: {networks: [back]}
  other: {networks: [front]}
"""
HOLDING = """\
expect:
  - {from: web, to: db, port: 5432}
  - {from: web, to: db, ping: true}
  - {from: other, to: db, port: 5432, reach: false}
  - {from: other, to: db, ping: true, reach: false}
  - {from: other, to: web, ping: true}
"""
SERVER = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""


@contextmanager
def listening(ns: str, port: int) -> Iterator[None]:
    """A TCP server inside namespace ns (run with `ip netns exec`), killed by PID."""
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                               str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        yield
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()


def write(tmp: Path, text: str) -> Path:
    path = tmp / "ex.yaml"
    path.write_text(text)
    return path


def results(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, list[dict[str, object]]]:
    code, out, err = run_cli(capsys, "check", "--output", "json", str(path))
    doc = json.loads(out)
    assert doc["ok"] == (code == 0), err
    return code, doc["expectations"]


def test_expectations_hold_and_fail_as_the_network_does(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(sandbox, SPEC + HOLDING)
    converge(path)
    with listening("db", 5432):
        code, found = results(capsys, path)
        assert code == 0, found
        assert [(r["to"], r["address"], r["what"], r["reached"], r["result"]) for r in found] == [
            ("db", "172.30.2.2", "tcp", True, "holds"),
            ("db", "172.30.2.2", "ping", True, "holds"),
            # other and db share no network: isolated, so neither gets through.
            ("db", "172.30.2.2", "tcp", False, "holds"),
            ("db", "172.30.2.2", "ping", False, "holds"),
            ("web", "172.30.1.3", "ping", True, "holds"),
        ]
        # An apply with nothing to change still checks them.
        code, out, err = run_cli(capsys, "apply", "--auto-approve", str(path))
        assert code == 0, err
        assert "All 5 expectation(s) checked here hold." in out
    # The server is gone: a refused connect is not reached.
    code, found = results(capsys, path)
    assert code == 1
    assert found[0]["result"] == "fails" and found[0]["reached"] is False
    assert found[0]["detail"] == "172.30.2.2:5432 refused the connection (nothing listens there)"
    assert [r["result"] for r in found[1:]] == ["holds"] * 4


def test_reach_false_fails_where_the_network_lets_it_through(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(sandbox, SPEC + "expect:\n  - {from: web, to: db, ping: true, reach: false}\n"
                                 "  - {from: other, to: web, port: 80, reach: false}\n")
    converge(path)
    code, out, _ = run_cli(capsys, "check", str(path))
    assert code == 1
    lines = out.splitlines()
    assert lines[1].split()[:6] == ["web", "db", "(172.30.2.2)", "ping", "no", "reach"]
    assert "fails" in lines[1] and lines[1].endswith("echo reply from 172.30.2.2")
    assert "holds" in lines[2]
    assert "1 of 2 expectation(s) checked here do not hold." in out


def test_a_failed_expectation_rolls_the_apply_back(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    converge(write(sandbox, SPEC))
    before = kernel_snapshot()
    path = write(sandbox, SPEC + "  cache: {networks: [back]}\n"
                                 "expect:\n  - {from: web, to: cache, port: 6379}\n")
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--rollback-on-failure",
                             str(path))
    assert code == 1
    assert "Apply complete" in out  # applied and verified, then checked
    assert f"{path}:12:5: expect[0] does not hold: web -> cache tcp/6379: " in err
    assert "Rolling back (an expectation failed)" in err
    assert_same_kernel(kernel_snapshot(), before)
    assert "cache" not in netns_list()


def test_without_rollback_a_failed_expectation_fails_the_apply_and_keeps_it(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(sandbox, SPEC + "expect:\n  - {from: db, to: 172.30.2.250, ping: true}\n")
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--no-rollback-on-failure",
                             str(path))
    assert code == 1
    assert "no echo reply from 172.30.2.250 within 1 s" in out
    assert "expect[0] does not hold" in err
    assert "Rolling back" not in err
    assert sorted(netns_list()) == ["db", "other", "web"]


def test_plan_lists_them(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(sandbox, SPEC + HOLDING)
    code, out, _ = run_cli(capsys, "plan", str(path))
    assert code == 0
    assert "Expectations, checked with real packets after apply:" in out
    assert "other -> db (172.30.2.2) tcp/5432: must not reach" in out
    code, out, _ = run_cli(capsys, "plan", "--output", "json", str(path))
    listed = json.loads(out)["expectations"]
    assert [(e["from"], e["to"], e["address"], e["port"], e["reach"]) for e in listed[:3]] == [
        ("web", "db", "172.30.2.2", 5432, True), ("web", "db", "172.30.2.2", None, True),
        ("other", "db", "172.30.2.2", 5432, False)]


def test_watch_logs_failing_expectations_and_undoes_nothing(sandbox: Path) -> None:
    text = SPEC + "expect:\n  - {from: web, to: db, port: 5432}\n"
    with watching(sandbox, text) as watch:
        wait_for("the failing expectation logged", lambda: bool(watch.records("expect")), 15)
        record = watch.records("expect")[0]
        assert record["fails"] == ("expect[0]: web -> db tcp/5432 does not hold: 172.30.2.2:5432 "
                                   "refused the connection (nothing listens there)")
        assert watch.reconciles()[0]["result"] == "converged"
        assert sorted(netns_list()) == ["db", "other", "web"]
        with listening("db", 5432):
            watch.process.send_signal(signal.SIGHUP)
            wait_for("holds again", lambda: len(watch.records("expect")) == 2, 15)
        assert watch.records("expect")[1]["holds"] == "every expectation holds again"
