"""`netapply watch` as a subprocess, on the real kernel in a private namespace:
spec edits, invalid specs, drift, nftables flushes, signals, and resources
staying flat over many cycles. Waits poll with a deadline; nothing sleeps a
fixed time to let something happen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reconciler import watch as watch_mod
from reconciler.drivers import events as events_mod
from reconciler.drivers.rtnl import Rtnl
from tests.kernelutil import addresses, in_ns, lock_held, netns_list

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent
SPEC = """\
version: 1
project: w
networks:
  front: {subnet: 172.30.1.0/24, interface: br-w}
containers:
  web:
    networks:
      front: {ipv4_address: 172.30.1.10}
"""
DB = "  db: {networks: [front]}\n"


def wait_for(what: str, check: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.01)


class Watch:
    """A `netapply watch` process and its JSON log."""

    def __init__(self, spec: Path, log: Path, *args: str):
        self.log = log
        self.spec = spec
        self.stderr = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "watch", "--log-format", "json", *args,
             str(spec)],
            stdout=subprocess.DEVNULL, stderr=self.stderr, cwd=REPO,
        )

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON log line: {line}")
            if event is None or record.get("event") == event:
                found.append(record)
        return found

    def reconciles(self) -> list[dict[str, Any]]:
        return self.records("reconcile")

    def quiet(self, seconds: float = 1.0, within: float = 10.0) -> int:
        """Wait until no reconcile happened for `seconds`; how many there were."""
        deadline = time.monotonic() + within
        count, since = len(self.reconciles()), time.monotonic()
        while time.monotonic() - since < seconds:
            assert time.monotonic() < deadline, "the watcher never settles: " + str(
                self.reconciles()[-5:])
            time.sleep(0.05)
            now = len(self.reconciles())
            if now != count:
                count, since = now, time.monotonic()
        return count

    def started(self) -> None:
        wait_for("the first reconcile", lambda: len(self.reconciles()) >= 1, 10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=10)
        self.stderr.close()
        return code


@contextmanager
def watching(tmp: Path, text: str = SPEC, *args: str) -> Iterator[Watch]:
    spec = tmp / "w.yaml"
    spec.write_text(text)
    watch = Watch(spec, tmp / "watch.log", *args)
    try:
        yield watch
    finally:
        watch.stop()


def addrs(ns: str, ifname: str) -> list[str]:
    """The addresses on a link, [] while the namespace or link is not (yet) there."""
    try:
        return addresses(ns, ifname)
    except subprocess.CalledProcessError:
        return []


def link_names(ns: str | None = None) -> set[str]:
    if ns is None:
        with Rtnl() as sock:
            return {link.ifname for link in sock.links()}
    out = subprocess.run(["ip", "-n", ns, "-j", "link"], capture_output=True, text=True)
    return {link["ifname"] for link in json.loads(out.stdout or "[]")}


def nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def test_spec_edits_converge_and_own_writes_do_not_loop(sandbox: Path) -> None:
    with watching(sandbox) as watch:
        watch.started()
        assert watch.reconciles()[0]["result"] == "converged"
        assert netns_list() == ["web"]
        settled = watch.quiet()
        # Add a container, change an address: each converges within 2 s.
        watch.spec.write_text(SPEC + DB)
        wait_for("db is made", lambda: "db" in netns_list() and in_ns("db", "true").returncode
                 == 0 and bool(addrs("db", "eth0")))
        watch.spec.write_text((SPEC + DB).replace("172.30.1.10", "172.30.1.20"))
        wait_for("web's address changes", lambda: addrs("web", "eth0") == ["172.30.1.20/24"])
        # The engine's own writes lead to a few reconciles that write nothing,
        # then the watcher settles.
        after = watch.quiet()
        tail = watch.reconciles()[settled:after]
        assert any(r["actions"] > 0 for r in tail)
        assert tail[-1]["actions"] == 0
        assert all(r["result"] == "converged" for r in tail)
        assert after - settled < 10


def test_editor_style_rename_bursts_make_a_leading_and_at_most_one_trailing_reconcile(
    sandbox: Path
) -> None:
    with watching(sandbox, SPEC, "--debounce", "0.5") as watch:
        watch.started()
        before = watch.quiet()
        # An editor writes a new file and renames it over the spec, several
        # times in a burst.
        for text in (SPEC, SPEC + DB, SPEC + DB):
            tmp = watch.spec.with_name(".w.yaml.swp")
            tmp.write_text(text)
            os.replace(tmp, watch.spec)
        wait_for("db is made", lambda: "db" in netns_list())
        watch.quiet()
        # The first rename starts a reconcile at once; the others, queued
        # meanwhile, make at most one more.
        spec_triggered = [r for r in watch.reconciles()[before:] if "spec" in r["trigger"]]
        assert 1 <= len(spec_triggered) <= 2, spec_triggered
        assert sum(r["actions"] > 0 for r in spec_triggered) == 1


def test_a_single_edit_goes_at_once_not_after_the_quiet_period(sandbox: Path) -> None:
    """Leading edge: with a 30 s debounce, an edit made while watch is idle is
    applied long before 30 s could pass; its reconcile is triggered by the
    spec alone and reads only what changed."""
    with watching(sandbox, SPEC, "--debounce", "30") as watch:
        watch.started()
        # The start's own notifications make one trailing reconcile (after at
        # most BURST_MAX); then watch is idle.
        count = watch.quiet(watch_mod.BURST_MAX + 1, within=30)
        watch.spec.write_text(SPEC.replace("172.30.1.10", "172.30.1.20"))
        wait_for("the edit is applied", lambda: addrs("web", "eth0") == ["172.30.1.20/24"], 10)
        wait_for("its reconcile is logged", lambda: len(watch.reconciles()) > count)
        edit = watch.reconciles()[count]
        assert edit["trigger"] == "spec" and edit["actions"] > 0
        assert not edit["full_read"]


def test_a_spec_directory_behind_a_swapped_link_is_followed(sandbox: Path) -> None:
    """git-sync's way: each revision is checked out into its own directory and
    a symbolic link is swapped to it in one rename."""
    for name, text in (("rev1", SPEC), ("rev2", SPEC + DB)):
        (sandbox / name).mkdir()
        (sandbox / name / "w.yaml").write_text(text)
    current = sandbox / "current"
    current.symlink_to("rev1")
    log = sandbox / "watch.log"
    watch = Watch(current, log)
    try:
        watch.started()
        assert netns_list() == ["web"]
        (sandbox / "next").symlink_to("rev2")
        os.replace(sandbox / "next", current)
        wait_for("rev2 is applied", lambda: sorted(netns_list()) == ["db", "web"])
        (sandbox / "rev2" / "w.yaml").write_text(SPEC)  # edited in the new revision
        wait_for("the edit in rev2 is applied", lambda: netns_list() == ["web"])
    finally:
        assert watch.stop() == 0


def test_an_invalid_spec_changes_nothing_and_its_fix_is_applied(sandbox: Path) -> None:
    with watching(sandbox, SPEC + DB) as watch:
        watch.started()
        wait_for("db is made", lambda: "db" in netns_list())
        watch.quiet()
        watch.spec.write_text(SPEC + "  db: {networks: [front]\n")  # broken YAML
        wait_for("the error is logged", lambda: any(
            r["result"] == "invalid spec" for r in watch.reconciles()))
        record = next(r for r in watch.reconciles() if r["result"] == "invalid spec")
        assert record["errors"][0].startswith(f"{watch.spec}:10:1: YAML syntax error")
        assert watch.process.poll() is None
        assert sorted(netns_list()) == ["db", "web"]  # nothing torn down
        # Drift meanwhile is repaired against the last good spec.
        subprocess.run(["ip", "netns", "del", "db"], check=True)
        wait_for("db is back", lambda: "db" in netns_list() and bool(addrs("db", "eth0")))
        watch.spec.write_text(SPEC)  # fixed, without db
        wait_for("db is removed", lambda: netns_list() == ["web"])


def test_drift_is_repaired_and_foreign_changes_are_left_alone(sandbox: Path) -> None:
    with watching(sandbox) as watch:
        watch.started()
        watch.quiet()
        host_end = next(n for n in link_names() if n.startswith("veth"))
        subprocess.run(["ip", "link", "del", host_end], check=True)
        wait_for("the veth is back", lambda: host_end in link_names()
                 and addrs("web", "eth0") == ["172.30.1.10/24"])
        # Each repair ends before the next tampering: the address seen back does
        # not mean the route after it is made yet.
        watch.quiet()
        subprocess.run(["ip", "-n", "web", "addr", "del", "172.30.1.10/24", "dev", "eth0"],
                       check=True)
        wait_for("the address is back", lambda: addrs("web", "eth0") == ["172.30.1.10/24"])
        watch.quiet()
        # The log says what was repaired, naming the container.
        repair = next(r for r in reversed(watch.reconciles()) if r["actions"])
        assert "web: create address 172.30.1.10/24 on eth0" in repair["steps"]
        subprocess.run(["ip", "netns", "del", "web"], check=True)
        wait_for("the namespace is back", lambda: "web" in netns_list()
                 and addrs("web", "eth0") == ["172.30.1.10/24"])
        subprocess.run(["nft", "flush", "ruleset"], check=True)
        wait_for("the table is back", lambda: "netapply-w" in nft_tables())
        watch.quiet()
        # Someone else's link and route in web's namespace: a reconcile runs
        # (the namespace is the project's) and leaves them.
        count = len(watch.reconciles())
        for cmd in (["ip", "-n", "web", "link", "add", "fx0", "type", "veth", "peer", "name",
                     "fx1"],
                    ["ip", "-n", "web", "link", "set", "fx0", "up"],
                    ["ip", "-n", "web", "addr", "add", "10.77.0.1/24", "dev", "fx0"],
                    ["ip", "-n", "web", "route", "add", "10.78.0.0/16", "via", "10.77.0.2"]):
            subprocess.run(cmd, check=True)
        wait_for("a reconcile", lambda: len(watch.reconciles()) > count)
        watch.quiet()
        assert {"fx0", "fx1"} <= link_names("web")
        routes = subprocess.run(["ip", "-n", "web", "route"], capture_output=True,
                                text=True).stdout
        assert "10.78.0.0/16 via 10.77.0.2" in routes
        assert all(r["result"] == "converged" for r in watch.reconciles()[count:])


def test_failures_are_retried_and_sighup_resyncs(sandbox: Path) -> None:
    # A foreign namespace takes the name the spec wants: every reconcile fails
    # until it is gone, and the watcher keeps retrying.
    subprocess.run(["ip", "netns", "add", "web"], check=True)
    with watching(sandbox) as watch:
        watch.started()
        wait_for("two failed reconciles", lambda: sum(
            r["result"] == "failed" for r in watch.reconciles()) >= 2, 5)
        failed = watch.reconciles()[0]
        assert "netns web exists and is not owned by project 'w'" in failed["errors"][0]
        assert watch.reconciles()[0]["trigger"] == "start"
        assert "retry" in watch.reconciles()[1]["trigger"].split(",")
        subprocess.run(["ip", "netns", "del", "web"], check=True)
        wait_for("converged after a retry", lambda: watch.reconciles()[-1]["result"]
                 == "converged", 5)
        assert watch.process.poll() is None
        count = watch.quiet()
        watch.process.send_signal(signal.SIGHUP)
        wait_for("a resync", lambda: len(watch.reconciles()) > count)
        assert "sighup" in watch.reconciles()[count]["trigger"].split(",")
        assert watch.reconciles()[count]["full_read"]  # a resync trusts no cache


def exits_within_a_second(watch: Watch, signum: int) -> int:
    watch.process.send_signal(signum)
    deadline = time.monotonic() + 1
    while watch.process.poll() is None:
        assert time.monotonic() < deadline, f"still running 1 s after signal {signum}"
        time.sleep(0.01)
    return watch.process.returncode


def test_a_kernel_error_is_retried_until_it_goes(sandbox: Path) -> None:
    with watching(sandbox) as watch:
        watch.started()
        watch.quiet()
        # /etc/netns read-only: writing db's hosts file fails with EROFS.
        subprocess.run(["mount", "-o", "remount,ro", "/etc/netns"], check=True)
        try:
            watch.spec.write_text(SPEC + DB)
            wait_for("a failed retry", lambda: any(
                r["result"] == "failed" and "retry" in r["trigger"].split(",")
                for r in watch.reconciles()), 20)
            # The kernel events of the failing reconcile's own writes wait for
            # the retry instead of making it fail again at once.
            failures = [r for r in watch.reconciles() if r["result"] == "failed"]
            assert all("retry" in r["trigger"] for r in failures[1:]), failures
            failed = next(r for r in watch.reconciles() if r["result"] == "failed")
            assert "Read-only file system" in failed["errors"][0]
            assert watch.process.poll() is None
        finally:
            subprocess.run(["mount", "-o", "remount,rw", "/etc/netns"], check=True)
        # The next retry comes after the backoff so far (it doubles per failure),
        # unless an event comes first.
        wait_for("converged again", lambda: watch.reconciles()[-1]["result"] == "converged"
                 and "db" in netns_list(), 20)


def test_watch_applies_the_share_of_the_host_it_is_told(sandbox: Path) -> None:
    spec = SPEC.replace("networks:\n  front", "hosts:\n  a: {address: 192.0.2.11}\n"
                        "  b: {address: 192.0.2.12}\nnetworks:\n  front")
    spec = spec.replace("  web:\n", "  web:\n    host: a\n")
    spec += "  db: {host: b, networks: [front]}\n"
    with watching(sandbox, spec, "--host", "a") as watch:
        watch.started()
        assert watch.reconciles()[0]["result"] == "converged"
        assert netns_list() == ["web"]


def test_sigterm_stops_at_once_with_exit_0(sandbox: Path) -> None:
    with watching(sandbox) as watch:
        watch.started()
        assert exits_within_a_second(watch, signal.SIGTERM) == 0
        assert watch.records()[-1]["event"] == "stop"


def test_sigint_during_an_apply_stops_between_two_actions(sandbox: Path) -> None:
    many = SPEC + "".join(f"  c{i:03}: {{networks: [front]}}\n" for i in range(150))
    with watching(sandbox, many) as watch:
        wait_for("the apply has begun", lambda: len(netns_list()) > 1, 10)
        assert exits_within_a_second(watch, signal.SIGINT) == 0
        last = watch.reconciles()[-1]
        assert (last["result"], last["detail"]) == ("stopped", "stopped between two actions")
        assert 0 < last["actions"] < 150 * 4
    # What it left is a state apply continues from.
    result = subprocess.run([sys.executable, "-m", "reconciler.cli", "apply", "--auto-approve",
                             str(sandbox / "w.yaml")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert len(netns_list()) == 151


def test_resync_runs_on_its_own_and_text_logs_on_request(sandbox: Path) -> None:
    spec = sandbox / "w.yaml"
    spec.write_text(SPEC)
    log = sandbox / "watch.log"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "watch", "--log-format", "text",
             "--resync", "0.2", str(spec)], stderr=err, cwd=REPO)
        try:
            wait_for("two resyncs", lambda: log.read_text().count("reconcile (resync)") >= 2, 5)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
    lines = log.read_text().splitlines()
    # (Plan notes, such as IPv4 forwarding being switched on, come first.)
    first = next(line for line in lines if "reconcile (" in line)
    assert "reconcile (start): converged" in first
    assert "reconcile (resync): converged, 0 action(s) in" in log.read_text()


def test_retries_back_off_up_to_a_minute() -> None:
    delays = [0.0]
    for _ in range(8):
        delays.append(watch_mod.next_backoff(delays[-1]))
    assert delays[1:] == [1, 2, 4, 8, 16, 32, 60, 60]


def _fds(pid: int) -> int:
    """Open descriptors when nothing is in flight: the least of a few samples
    (a reconcile holds its netlink sockets while it runs)."""
    samples = []
    for _ in range(10):
        samples.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.05)
    return min(samples)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_many_cycles_leave_descriptors_and_memory_flat(sandbox: Path) -> None:
    cycles = int(os.environ.get("NETAPPLY_WATCH_CYCLES", "200"))
    with watching(sandbox, SPEC, "--debounce", "0.02") as watch:
        watch.started()
        pid = watch.process.pid

        def cycle(i: int) -> None:
            mtu = 1400 + i % 2 * 100
            watch.spec.write_text(SPEC.replace("interface: br-w", f"interface: br-w, mtu: {mtu}"))
            with Rtnl() as sock:
                def done() -> bool:
                    return any(x.ifname == "br-w" and x.mtu == mtu for x in sock.links())
                wait_for(f"cycle {i}", done, 5)

        for i in range(20):  # warm up: imports, caches, the allocator's pools
            cycle(i)
        watch.quiet(1.0)
        fds, rss = _fds(pid), _rss_kib(pid)
        for i in range(20, cycles):
            cycle(i)
        watch.quiet(1.0)
        assert _fds(pid) == fds
        # Flat, up to the allocator's noise: no growth per cycle.
        assert _rss_kib(pid) - rss < 4096, (rss, _rss_kib(pid))


def test_a_reconcile_waits_for_another_run_holding_the_lock(sandbox: Path) -> None:
    with lock_held("w", "/run/netapply") as holder, \
            watching(sandbox, SPEC, "--lock-timeout", "0.2") as watch:
        watch.started()
        first = watch.reconciles()[0]
        assert first["result"] == "failed"
        assert f"another netapply run (PID {holder.pid}" in first["errors"][0]
        assert netns_list() == []
        holder.send_signal(signal.SIGKILL)
        wait_for("converged once the holder is gone", lambda: "web" in netns_list(), 5)


PATH_SPEC = """\
version: 1
project: w
networks:
  front: {{subnet: 172.30.1.0/24, interface: br-w}}
containers:
  web:
    netns_path: {path}
    networks:
      front: {{ipv4_address: 172.30.1.10}}
"""


def default_via(path: str) -> list[str]:
    """The gateways of the default routes in the namespace at path."""
    out = subprocess.run(["nsenter", f"--net={path}", "ip", "-j", "route", "show", "default"],
                         capture_output=True, text=True)
    return [r.get("gateway", "") for r in json.loads(out.stdout or "[]")]


def tentative(path: str | None) -> str:
    """IPv6 addresses still in duplicate address detection, in the host's
    namespace or the one at path."""
    enter = [] if path is None else ["nsenter", f"--net={path}"]
    return subprocess.run([*enter, "ip", "-6", "addr", "show", "tentative"],
                          capture_output=True, text=True, check=True).stdout


@contextmanager
def container_namespaces(count: int) -> Iterator[list[str]]:
    """Namespaces of processes, as a container engine's are: /proc/PID/ns/net."""
    processes = [subprocess.Popen(["unshare", "--net", "sleep", "600"]) for _ in range(count)]
    try:
        paths = [f"/proc/{p.pid}/ns/net" for p in processes]
        wait_for("the processes' namespaces", lambda: all(
            os.path.exists(path) and os.readlink(path) != os.readlink("/proc/self/ns/net")
            for path in paths), 5)
        yield paths
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_a_namespace_that_leaves_the_spec_and_comes_back_is_heard_again(sandbox: Path) -> None:
    """A -> B -> A: drift in A is repaired at once (no resync in the test's
    time), so watch listens in A again."""
    with container_namespaces(2) as (a, b), \
            watching(sandbox, PATH_SPEC.format(path=a), "--resync", "3600") as watch:
        watch.started()
        wait_for("A has its default route", lambda: default_via(a) == ["172.30.1.1"], 5)
        watch.spec.write_text(PATH_SPEC.format(path=b))
        wait_for("B has it, A not", lambda: default_via(b) == ["172.30.1.1"]
                 and default_via(a) == [], 5)
        watch.quiet()  # A is no longer listened in
        watch.spec.write_text(PATH_SPEC.format(path=a))
        wait_for("A has it again", lambda: default_via(a) == ["172.30.1.1"], 5)
        # The kernel's own follow-ups (IPv6 addresses leaving the tentative
        # state) make reconciles too: the drift must be the only cause left.
        wait_for("no tentative IPv6 address", lambda: not tentative(None)
                 and not tentative(a), 10)
        watch.quiet()
        subprocess.run(["nsenter", f"--net={a}", "ip", "route", "del", "default"], check=True)
        wait_for("the default route in A is repaired", lambda: default_via(a) == ["172.30.1.1"],
                 5)


def test_a_namespace_made_anew_under_an_old_identity_is_heard(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel gives a new namespace the lowest free inode number, so a name
    that leaves the watched set and is made again often gets its old one. The
    identity is pinned here, so that it is certain."""
    monkeypatch.setattr(events_mod, "_identity", lambda ns: (
        (0, 1) if os.path.exists(os.path.join("/run/netns", ns)) else None))
    heard: list[str] = []
    events = events_mod.KernelEvents("w", "netapply-w", heard.append, heard.append)
    events.start()
    mtu = iter(range(1300, 1500))

    def heard_from_web() -> bool:
        """Change web's loopback until a notification from web comes."""
        subprocess.run(["ip", "-n", "web", "link", "set", "lo", "mtu", str(next(mtu))],
                       check=True)
        time.sleep(0.05)
        return any(text.startswith("netns web:") for text in heard)

    try:
        subprocess.run(["ip", "netns", "add", "web"], check=True)
        events.watch({"web"})
        wait_for("a notification from web", heard_from_web)
        events.watch(set())
        wait_for("no listener left", lambda: not events._listeners)
        subprocess.run(["ip", "netns", "del", "web"], check=True)
        subprocess.run(["ip", "netns", "add", "web"], check=True)
        heard.clear()
        events.watch({"web"})
        wait_for("a notification from the new web", heard_from_web)
    finally:
        events.stop()


def test_a_spec_of_another_project_keeps_the_last_good_one_in_force(sandbox: Path) -> None:
    with watching(sandbox, SPEC, "--resync", "3600") as watch:
        watch.started()
        watch.quiet()
        watch.spec.write_text(SPEC.replace("project: w", "project: other"))
        wait_for("the change is refused", lambda: any(
            r["result"] == "invalid spec" for r in watch.reconciles()))
        refused = next(r for r in watch.reconciles() if r["result"] == "invalid spec")
        assert refused["errors"] == ["the project changed from 'w' to 'other': destroy the old "
                                     "project first, then restart watch"]
        assert refused["detail"] == "the spec is invalid; the last good one stays in force"
        subprocess.run(["ip", "-n", "web", "addr", "del", "172.30.1.10/24", "dev", "eth0"],
                       check=True)
        wait_for("the address is back", lambda: addrs("web", "eth0") == ["172.30.1.10/24"])
        count = watch.quiet()
        watch.process.send_signal(signal.SIGHUP)
        wait_for("a resync", lambda: len(watch.reconciles()) > count)
        assert watch.reconciles()[count]["result"] == "invalid spec"
        watch.quiet()
        subprocess.run(["ip", "netns", "del", "web"], check=True)
        wait_for("the namespace is back", lambda: netns_list() == ["web"]
                 and addrs("web", "eth0") == ["172.30.1.10/24"])
