"""The whole loop on the real kernel, each test in its own private namespace."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli, engine
from reconciler import spec as spec_mod
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.drivers.rtnl import Rtnl
from reconciler.errors import ApplyError, KernelError
from tests.kernelutil import (
    addresses,
    in_ns,
    kernel_snapshot,
    links,
    netns_list,
    run_cli,
)

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed.yaml"
BASE = """\
version: 1
project: shop
networks:
  front:
    subnet: 172.30.1.0/24
    interface: br-front
containers:
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def converge(spec_path: Path) -> int:
    """Apply through the engine and return the number of kernel writes."""
    spec = spec_mod.load(spec_path)
    kernel = NetlinkKernel()
    try:
        snap = engine.snapshot(kernel, spec)
        engine.apply(kernel, spec, snap.plan)
        return kernel.writes
    finally:
        kernel.close()


def plan_json(capsys: pytest.CaptureFixture[str], spec_path: Path) -> dict[str, object]:
    code, out, _ = run_cli(capsys, "plan", "--output", "json", str(spec_path))
    assert code == 0
    doc: dict[str, object] = json.loads(out)
    return doc


def test_seed_apply_ping_by_name_then_nothing_to_do(
    sandbox: Path, capsys: pytest.CaptureFixture[str], have_ping: None
) -> None:
    code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", str(SEED))
    assert code == 2, err
    assert "+ create netns container1" in out
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(SEED))
    assert code == 0, err
    assert "Apply complete" in out
    ping = in_ns("container1", "ping", "-c", "1", "-W", "2", "container2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "172.30.1.3" in ping.stdout
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(SEED))
    assert (code, out.strip()) == (0, "No changes. The kernel matches the spec of project 'seed'.")
    before = kernel_snapshot()
    assert converge(SEED) == 0
    assert kernel_snapshot() == before


EDIT_V1 = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front}
containers:
  web: {networks: [front]}
  db: {networks: [front]}
"""
# mtu changed, web's address pinned, a network and a container added
EDIT_V2 = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front, mtu: 1400}
  back: {subnet: 172.30.2.0/24, interface: br-back}
containers:
  web:
    networks:
      front: {ipv4_address: 172.30.1.50}
      back: {}
  db: {networks: [front]}
  cache: {networks: [front]}
"""
# the network removed again
EDIT_V3 = EDIT_V2.replace("      back: {}\n", "").replace(
    "  back: {subnet: 172.30.2.0/24, interface: br-back}\n", ""
)


def test_edits_converge_in_place(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(sandbox / "shop.yaml", EDIT_V1)
    converge(spec)
    assert addresses("db", "eth0") == ["172.30.1.2/24"]  # by name: db .2, web .3
    assert addresses("web", "eth0") == ["172.30.1.3/24"]

    write(spec, EDIT_V2)
    doc = plan_json(capsys, spec)
    by_key = {tuple(c["key"]): c for c in doc["changes"]}  # type: ignore[attr-defined]
    assert by_key[("bridge", "front")]["action"] == "update"
    assert by_key[("bridge", "front")]["reason"] == "mtu 1500 -> 1400"
    assert by_key[("veth", "db", "front")]["action"] == "update"
    converge(spec)
    assert links()["br-front"]["mtu"] == 1400
    assert links("db")["eth0"]["mtu"] == 1400
    assert addresses("web", "eth0") == ["172.30.1.50/24"]
    assert addresses("web", "eth1") == ["172.30.2.2/24"]
    assert addresses("db", "eth0") == ["172.30.1.2/24"]  # not renumbered
    assert addresses("cache", "eth0") == ["172.30.1.3/24"]  # web's old address is free again
    hosts = Path("/etc/netns/cache/hosts").read_text()
    assert "172.30.1.50\tweb\n" in hosts and "172.30.1.2\tdb\n" in hosts

    write(spec, EDIT_V3)
    converge(spec)
    assert "eth1" not in links("web")
    assert "br-back" not in links()
    assert "br-front" in links()
    assert converge(spec) == 0


def test_adding_a_container_does_not_renumber_others(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    converge(SEED)
    assert addresses("container1", "eth0") == ["172.30.1.2/24"]
    assert addresses("container2", "eth0") == ["172.30.1.3/24"]
    # "aaa" sorts first: on an empty machine it would get .2, here it must not.
    grown = write(sandbox / "seed.yaml", SEED.read_text() + "  aaa:\n    networks: [alpine-net]\n")
    converge(grown)
    assert addresses("container1", "eth0") == ["172.30.1.2/24"]
    assert addresses("container2", "eth0") == ["172.30.1.3/24"]
    assert addresses("aaa", "eth0") == ["172.30.1.4/24"]
    assert links("container1")["eth0"]["address"] == "02:42:ac:1e:01:02"


def test_destroy_removes_owned_and_keeps_foreign(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["ip", "link", "add", "br-mine", "type", "bridge"], check=True)
    subprocess.run(["ip", "netns", "add", "mine"], check=True)
    converge(SEED)
    code, out, _ = run_cli(capsys, "show", str(SEED))
    assert code == 0 and "netns container1" in out
    code, out, _ = run_cli(capsys, "show", "--output", "json", str(SEED))
    shown = json.loads(out)
    assert shown["project"] == "seed"
    assert {"kind": "netns", "key": ["netns", "container1"], "name": "container1",
            "lo_up": True} in shown["resources"]
    code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(SEED))
    assert code == 0, err
    assert netns_list() == ["mine"]
    assert sorted(links()) == ["br-mine", "lo"]
    assert not any(Path("/etc/netns").iterdir())
    assert "  destroyed: container1: delete netns container1" in out
    code, out, _ = run_cli(capsys, "show", str(SEED))
    assert out.strip() == "Project 'seed' owns nothing on this machine."
    code, out, _ = run_cli(capsys, "destroy", "--auto-approve", str(SEED))
    assert (code, out.strip()) == (
        0, "Nothing to destroy: project 'seed' owns nothing on this machine.")


def test_foreign_object_with_a_desired_name_is_an_error(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["ip", "netns", "add", "container1"], check=True)
    subprocess.run(["ip", "link", "add", "br-front", "type", "bridge"], check=True)
    spec = write(sandbox / "shop.yaml", BASE + "  container1:\n    networks: [front]\n")
    before = kernel_snapshot()
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 1
    assert err.splitlines() == [
        f"error: {spec}:6:5: network 'front': interface br-front exists and is not owned "
        "by project 'shop'",
        f"error: {spec}:8:3: container 'container1': netns container1 exists and is not "
        "owned by project 'shop'",
        "2 problem(s); nothing was changed.",
    ]
    assert kernel_snapshot() == before


def test_invalid_spec_changes_nothing(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(sandbox / "shop.yaml", BASE + """\
      web:
        networks:
          front: {ipv4_address: 172.30.2.10}
    """)
    before = kernel_snapshot()
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: {spec}:10:19: container 'web': ipv4_address 172.30.2.10 is outside "
        "network 'front' (172.30.1.0/24)"
    )
    assert kernel_snapshot() == before


class FailingKernel(NetlinkKernel):
    """The real kernel, except that the Nth write fails (ENOSPC, which nothing retries)."""

    fail_at = 5

    def _fail(self, what: str) -> None:
        if self.writes + 1 == self.fail_at:
            self.writes += 1
            raise KernelError(what, errno.ENOSPC)

    def _write(self, what: str, fn):  # type: ignore[no-untyped-def]
        self._fail(what)
        return super()._write(what, fn)

    def netns_add(self, name: str, lo_alias: str) -> None:
        self._fail(f"create netns {name}")
        super().netns_add(name, lo_alias)

    def write_file(self, path: str, content: str) -> None:
        self._fail(f"write {path}")
        super().write_file(path, content)

    def write_link(self, path: str, target: str) -> None:
        self._fail(f"link {path}")
        super().write_link(path, target)

    def nft_apply(self, commands: list[dict[str, Any]], what: str) -> None:
        self._fail(what)
        super().nft_apply(commands, what)

    def sysctl_set(self, name: str, value: str) -> None:
        self._fail(f"set {name}")
        super().sysctl_set(name, value)


# A cold apply of the seed example takes 25 writes: the firewall table, IPv4
# forwarding, 15 links, addresses and routes, 5 IPv6 address generation modes
# (the bridge and both ends of two veths: an IPv4-only network), 3 files.
SEED_WRITES = 25


def test_seed_write_count_is_what_the_crash_test_sweeps(sandbox: Path) -> None:
    assert converge(SEED) == SEED_WRITES


def test_kernel_error_mid_apply_reports_and_next_apply_converges(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "NetlinkKernel", FailingKernel)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(SEED))
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: failed: host: create ")  # whose network: the host's
    assert lines[0].endswith("No space left on device (ENOSPC)")
    assert lines[1] == ("What to do: a limit is reached: when making a namespace, the kernel's "
                        "user.max_net_namespaces (sysctl); when writing a file, the disk is "
                        "full; raise the limit or free space, then apply again.")
    assert lines[2].startswith("Already done (")
    assert "Fix the cause and run apply again" in err
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(SEED))
    assert code == 0, err
    assert converge(SEED) == 0


def test_a_failed_destroy_says_to_run_destroy_again(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class FailingDelete(NetlinkKernel):
        def netns_del(self, name: str) -> None:
            raise KernelError(f"delete netns {name}", errno.ENOSPC)

    assert run_cli(capsys, "apply", "--auto-approve", str(SEED))[0] == 0
    monkeypatch.setattr(cli, "NetlinkKernel", FailingDelete)
    code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(SEED))
    assert code == 1, out + err
    assert "Fix the cause and run destroy again: it continues from the current state." in err
    monkeypatch.undo()
    assert run_cli(capsys, "destroy", "--auto-approve", str(SEED))[0] == 0


def test_ctrl_c_after_the_kernel_changed_is_a_failure_naming_what_stays(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted in the checks after an apply without rollback: not 130
    ("before anything was changed"), but 1 and the steps left in place."""
    def interrupted(*_args: object) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.Cli, "_expectations_hold", interrupted)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--no-rollback-on-failure",
                             str(SEED))
    assert code == 1 and "Apply complete" in out
    assert err.startswith("error: interrupted\nAlready done (") and ", left in place:" in err


@pytest.mark.parametrize(("code", "reason", "hint"), [
    (errno.EEXIST, "File exists", "something else made an object with that name after"),
    (errno.ENODEV, "No such device", "an interface it needs is gone (deleted meanwhile, or a "
                                     "parent interface that vanished)"),
    (errno.EBUSY, "Device or resource busy", "the device is in use (a port of a bridge or bond"),
    (errno.EPERM, "Operation not permitted", "netapply needs CAP_NET_ADMIN and CAP_SYS_ADMIN"),
])
def test_kernel_errors_name_the_action_the_reason_and_what_to_do(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    code: int, reason: str, hint: str,
) -> None:
    class Refusing(FailingKernel):
        def _fail(self, what: str) -> None:
            if self.writes + 1 == self.fail_at:
                self.writes += 1
                raise KernelError(what, code)

    monkeypatch.setattr(cli, "NetlinkKernel", Refusing)
    status, _, err = run_cli(capsys, "apply", "--auto-approve", str(SEED))
    lines = err.splitlines()
    name = errno.errorcode[code]
    assert status == 1
    assert lines[0].startswith("error: failed: host: create ") and lines[0].endswith(
        f": {reason} ({name})"), lines[0]
    assert lines[1].startswith(f"What to do: {hint}"), lines[1]


def test_a_parent_interface_that_vanishes_mid_apply_is_named(sandbox: Path) -> None:
    subprocess.run(["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p"],
                   check=True)
    spec = spec_mod.load_text(
        "version: 1\nproject: shop\nnetworks:\n  lan: {driver: macvlan, parent: lan0, "
        "subnet: 192.168.50.0/24}\ncontainers:\n  web: {networks: [lan]}\n", "shop.yaml")
    kernel = NetlinkKernel()
    try:
        snap = engine.snapshot(kernel, spec)
        subprocess.run(["ip", "link", "del", "lan0"], check=True)  # between plan and apply
        with pytest.raises(ApplyError) as caught:
            engine.apply(kernel, spec, snap.plan)
    finally:
        kernel.close()
    assert str(caught.value).startswith("failed: web: create macvlan eth0 on lan0 (container web, "
                                         "network lan): look up lan0 in host namespace: No "
                                         "such device (ENODEV)")
    assert caught.value.hint.startswith("an interface it needs is gone")


@pytest.mark.parametrize("fail_at", range(1, SEED_WRITES + 1))
def test_failure_at_any_write_leaves_a_state_the_next_apply_converges_from(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    monkeypatch.setattr(FailingKernel, "fail_at", fail_at)
    spec = spec_mod.load(SEED)
    failing = FailingKernel()
    with pytest.raises(ApplyError):
        engine.apply(failing, spec, engine.snapshot(failing, spec).plan)
    failing.close()
    converge(SEED)
    assert converge(SEED) == 0
    assert netns_list() == ["container1", "container2"]


def test_modes_none_host_and_attached_namespace(
    sandbox: Path, capsys: pytest.CaptureFixture[str], have_ping: None
) -> None:
    subprocess.run(["ip", "netns", "add", "outside"], check=True)
    spec = write(sandbox / "shop.yaml", BASE + """\
      batch:
        network_mode: none
      cache:
        network_mode: host
      ext:
        netns_path: /run/netns/outside
        networks: [front]
      web:
        networks: [front]
    """)
    converge(spec)
    assert sorted(links("batch")) == ["lo"]
    assert links("batch")["lo"]["operstate"] == "UNKNOWN" and "UP" in links("batch")["lo"]["flags"]
    assert "cache" not in netns_list()
    assert addresses("outside", "eth0") == ["172.30.1.2/24"]
    ping = in_ns("web", "ping", "-c", "1", "-W", "2", "172.30.1.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert converge(spec) == 0
    code, _, err = run_cli(capsys, "destroy", "--auto-approve", str(spec))
    assert code == 0, err
    assert netns_list() == ["outside"]  # attached, never deleted
    assert sorted(links("outside")) == ["lo"]


def test_routes_and_ipv6(
    sandbox: Path, capsys: pytest.CaptureFixture[str], have_ping: None
) -> None:
    spec = write(sandbox / "shop.yaml", """\
        version: 1
        project: shop
        networks:
          front:
            subnet: 172.30.1.0/24
            ipv6: {subnet: "fd00:30:1::/64"}
        containers:
          web:
            networks: [front]
            routes:
              - {to: 10.99.0.0/16, via: 172.30.1.254}
          db:
            networks:
              front: {ipv6_address: "fd00:30:1::99"}
    """)
    converge(spec)
    routes = {(r["dst"], r.get("gateway")): r for r in
              json.loads(subprocess.run(["ip", "-j", "-n", "web", "route"], check=True,
                                        capture_output=True, text=True).stdout)}
    assert ("default", "172.30.1.1") in routes
    assert ("10.99.0.0/16", "172.30.1.254") in routes
    assert routes[("default", "172.30.1.1")]["protocol"] == "78"
    assert addresses("db", "eth0", "inet6") == ["fd00:30:1::99/64"]
    ping = in_ns("web", "ping", "-6", "-c", "1", "-W", "2", "db")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert converge(spec) == 0


def test_drift_is_repaired(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    converge(SEED)
    subprocess.run(["ip", "-n", "container1", "link", "set", "eth0", "mtu", "1300"], check=True)
    subprocess.run(["ip", "-n", "container2", "addr", "flush", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", "container1", "link", "set", "lo", "down"], check=True)
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(SEED))
    assert code == 2
    assert "mtu 1300 -> 1500" in out
    converge(SEED)
    assert links("container1")["eth0"]["mtu"] == 1500
    assert addresses("container2", "eth0") == ["172.30.1.3/24"]
    assert converge(SEED) == 0


def test_not_root_is_one_sentence(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    public = Path("/tmp") / f"netapply-test-{os.getpid()}.yaml"
    public.write_text(SEED.read_text())
    public.chmod(0o644)
    try:
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
             sys.executable, "-m", "reconciler.cli", "plan", str(public)],
            capture_output=True, text=True, cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        public.unlink()
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: netapply needs CAP_NET_ADMIN and CAP_SYS_ADMIN to read and change network "
        "namespaces: run it as root (for example with sudo)"
    )


def _on_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin/stdout, answering its prompt."""
    import pty
    import select

    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", *args],
        stdin=child, stdout=child, stderr=child, close_fds=True,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"},
    )
    os.close(child)
    output = b""
    answered = False
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output from netapply for 30 s: {output!r}")
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if not answered and b"Only 'yes' will be accepted" in output:
            os.write(main, answer.encode() + b"\n")
            answered = True
    os.close(main)
    return proc.wait(timeout=30), output.decode(errors="replace")


def test_apply_asks_on_a_terminal_with_colour(sandbox: Path) -> None:
    code, out = _on_terminal(["apply", str(SEED)], "no")
    assert code == 1
    assert "\x1b[" in out  # coloured plan
    assert "Cancelled; nothing was changed." in out
    assert netns_list() == []
    code, out = _on_terminal(["apply", str(SEED)], "yes")
    assert code == 0, out
    assert "Apply complete" in out
    assert netns_list() == ["container1", "container2"]


def test_apply_without_terminal_needs_auto_approve(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    code, _, err = run_cli(capsys, "apply", str(SEED))
    assert code == 1
    assert err.strip() == (
        "error: refusing to change the kernel without confirmation: stdin is not a "
        "terminal; pass --auto-approve"
    )
    assert netns_list() == []
    code, out, _ = run_cli(capsys, "apply", "--auto-approve", str(SEED))
    assert code == 0
    # Progress, one line per step, naming the container whose network it changes.
    assert "  done: container1: create netns container1" in out
    assert "  done: host: create bridge " in out


@pytest.mark.parametrize(
    "example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_applies_converges_and_destroys(
    sandbox: Path, capsys: pytest.CaptureFixture[str], example: Path
) -> None:
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(example))
    assert code == 0, out + err
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(example))
    assert code == 0, out
    code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(example))
    assert code == 0, out + err
    assert netns_list() == []
    assert sorted(links()) == ["lo"]


# Every spec among the examples (examples/compose also holds Compose files),
# with what planning it on one machine needs: the host it is, and engines that
# do not answer (their containers are reported and skipped).
EXAMPLE_SPECS = sorted(p for p in REPO.glob("examples/**/*.yaml")
                       if not p.name.startswith("compose."))
HOSTS = {"mesh.yaml": ("node-a", "192.0.2.11/24")}


@pytest.mark.parametrize("example", EXAMPLE_SPECS, ids=lambda p: str(p.relative_to(REPO)))
def test_plan_of_every_example_sends_no_change_to_the_kernel(
    sandbox: Path, capsys: pytest.CaptureFixture[str], example: Path
) -> None:
    """Plan only reads: no netlink request that creates, changes or deletes
    (counted where every request is sent), and nothing different after it,
    also for an overlay, whose vxlan driver plan checks for."""
    args = ["--docker-host", f"unix://{sandbox}/none.sock",
            "--podman-host", f"unix://{sandbox}/none.sock"]
    if example.name in HOSTS:
        host, address = HOSTS[example.name]
        subprocess.run(["ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1"],
                       check=True)
        subprocess.run(["ip", "addr", "add", address, "dev", "under0"], check=True)
        subprocess.run(["ip", "link", "set", "under0", "up"], check=True)
        args += ["--host", host]
    before, sent = kernel_snapshot(), Rtnl.changes_sent
    code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", *args, str(example))
    assert code == 2, out + err  # a plan with changes, not a refusal
    assert Rtnl.changes_sent == sent
    assert kernel_snapshot() == before


def test_shop_example_names_and_isolation(sandbox: Path, have_ping: None) -> None:
    converge(REPO / "examples" / "shop.yaml")
    assert addresses("proxy", "eth0") == ["172.30.1.10/24"]
    assert addresses("web", "eth0") == ["172.30.1.128/24"]  # first of ip_range
    assert links("db")["eth0"]["address"] == "02:42:ac:1e:02:99"
    assert links("db")["eth0"]["mtu"] == 1400
    for target in ("www", "app", "db"):
        ping = in_ns("web", "ping", "-c", "1", "-W", "2", target)
        assert ping.returncode == 0, (target, ping.stdout + ping.stderr)
    # db shares no network with proxy: it has no name for it.
    assert "proxy" not in Path("/etc/netns/db/hosts").read_text()
    # internal network: no default route in db.
    assert "default" not in subprocess.run(
        ["ip", "-n", "db", "route"], capture_output=True, text=True, check=True
    ).stdout


class MtuIgnoringKernel(NetlinkKernel):
    """A kernel that accepts MTU changes and silently drops them."""

    def link_set(self, ns, ifname, **changes):  # type: ignore[no-untyped-def]
        changes.pop("mtu", None)
        super().link_set(ns, ifname, **changes)


def test_apply_fails_loudly_when_the_kernel_does_not_converge(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    converge(SEED)
    spec = write(sandbox / "seed.yaml", SEED.read_text().replace(
        "subnet: 172.30.1.0/24", "subnet: 172.30.1.0/24\n    mtu: 1400"
    ))
    monkeypatch.setattr(cli, "NetlinkKernel", MtuIgnoringKernel)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == ("error: failed: verify the kernel after the apply: the kernel did not "
                        "converge after apply; still different:")
    assert "  update bridge br-e01ae19469f0 (network alpine-net): mtu 1500 -> 1400" in lines
    # A failed apply: the steps done are named, and stay.
    assert "Already done (3 step(s)), left in place:" in lines


def test_spec_directory_is_merged(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    specdir = sandbox / "spec"
    specdir.mkdir()
    write(specdir / "10-networks.yaml", """\
        version: 1
        project: shop
        networks:
          front: {subnet: 172.30.1.0/24}
    """)
    write(specdir / "20-web.yml", """\
        project: shop
        containers:
          web: {networks: [front]}
    """)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(specdir))
    assert code == 0, out + err
    assert addresses("web", "eth0") == ["172.30.1.2/24"]
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(specdir))
    assert code == 0, out


SWAP_V1 = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24, mtu: 9000}
  back: {subnet: 172.30.2.0/24, ipv6: {subnet: "fd00:2::/64"}}
containers:
  web: {networks: [front, back]}
  db: {networks: [back]}
"""


@pytest.mark.parametrize(
    ("edit", "check"),
    [
        # interface names swap between the two attachments
        (SWAP_V1.replace("[front, back]}\n  db", "[back, front]}\n  db"),
         lambda: addresses("web", "eth0") == ["172.30.2.3/24"]),
        # a network put first in a list that had one
        (SWAP_V1.replace("db: {networks: [back]}", "db: {networks: [front, back]}"),
         lambda: addresses("db", "eth1") == ["172.30.2.2/24"]),
        # IPv6 removed from a network: its default route goes too
        (SWAP_V1.replace(', ipv6: {subnet: "fd00:2::/64"}', ""),
         lambda: addresses("db", "eth0", "inet6") == []),
        # the last port leaves a bridge whose MTU is not 1500
        (SWAP_V1.replace("web: {networks: [front, back]}", "web: {networks: [back]}"),
         lambda: links()["br-" + __import__("hashlib").sha256(b"shop/front").hexdigest()[:12]]
         ["mtu"] == 9000),
    ],
    ids=["swap-interfaces", "prepend-network", "remove-ipv6", "empty-bridge-keeps-mtu"],
)
def test_edits_that_reuse_names_or_drop_families_converge(
    sandbox: Path, edit: str, check: Callable[[], bool]
) -> None:
    spec = write(sandbox / "shop.yaml", SWAP_V1)
    converge(spec)
    write(spec, edit)
    converge(spec)
    assert check()
    assert converge(spec) == 0


def test_leftovers_of_other_tools_do_not_stop_netapply(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("/etc/netns/stray").write_text("not a directory")
    Path("/etc/netns/binary").mkdir()
    Path("/etc/netns/binary/hosts").write_bytes(b"\xff\xfe not utf-8\n")
    Path("/run/netns/stale").write_text("")  # an interrupted `ip netns add`
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(SEED))
    assert code == 0, out + err
    assert Path("/etc/netns/binary/hosts").read_bytes() == b"\xff\xfe not utf-8\n"


def test_netns_path_must_be_a_network_namespace(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(sandbox / "shop.yaml", BASE + "  web:\n    netns_path: /etc/hostname\n"
                 "    networks: [front]\n")
    code, _, err = run_cli(capsys, "plan", str(spec))
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: {spec}:9:5: container 'web': netns_path /etc/hostname is a regular file, "
        "not a network namespace"
    )


class InterruptedKernel(FailingKernel):
    """Ctrl-C arriving during the Nth write."""

    def _fail(self, what: str) -> None:
        if self.writes + 1 == self.fail_at:
            raise KeyboardInterrupt


def test_ctrl_c_mid_apply_reports_what_was_done(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "NetlinkKernel", InterruptedKernel)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(SEED))
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: failed: host: create ")
    assert lines[0].endswith(": interrupted by the user")
    assert lines[1] == "Already done (4 step(s)), left in place:"
    monkeypatch.undo()
    assert converge(SEED) > 0
    assert converge(SEED) == 0
