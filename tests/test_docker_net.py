"""Docker network semantics with real traffic: a reachability matrix.

The test's own namespace (the `sandbox` fixture) plays the host. A hand-made
namespace `outside` is a machine on the host's uplink (up0, 203.0.113.0/24)
with no route to the container subnets, so whatever it sees from a container
must have been masqueraded. Small servers in the namespaces answer each TCP
connection (or UDP datagram) with who they are and which source address they
saw, so a client learns both whether it got through and how it was translated.
"""

from __future__ import annotations

import ipaddress
import json
import re
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kernelutil import in_ns, ip_json, kernel_snapshot, links, netns_list, run_cli

pytestmark = pytest.mark.kernel

PROJECT = "dock"
TABLE = f"netapply-{PROJECT}"
HOST_UP = "203.0.113.1"
OUTSIDE = "203.0.113.2"
# Tables the project does not own: never changed, even by a project whose name
# is a prefix of theirs.
FOREIGN_TABLES = ("foreign", "netapply-dock2")

DOCK = """\
version: 1
project: dock
networks:
  front: {subnet: 172.31.1.0/24, interface: br-front}
  quiet: {subnet: 172.31.2.0/24, interface: br-quiet, icc: false}
  vault: {subnet: 172.31.3.0/24, interface: br-vault, internal: true}
containers:
  web:
    networks: [front]
    ports: ["8080:80", "127.0.0.1:8081:80", "5353:53/udp"]
  api: {networks: [front, vault]}
  q1: {networks: [quiet], ports: ["9090:80"]}
  q2: {networks: [quiet]}
  db: {networks: [vault]}
  cache: {networks: [vault]}
"""
SUBNETS = {"front": "172.31.1.0/24", "quiet": "172.31.2.0/24", "vault": "172.31.3.0/24"}
BRIDGES = ("br-front", "br-quiet", "br-vault")

# Answers every TCP connection on port 80 (and, with "udp", every datagram on
# port 53) with "<name> saw <source address>". Prints "ready" once listening.
SERVER = """\
import select, socket, sys
name, udp = sys.argv[1], "udp" in sys.argv[2:]
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 80))
tcp.listen(64)
socks = [tcp]
if udp:
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.bind(("0.0.0.0", 53))
    socks.append(dgram)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        if s is tcp:
            conn, peer = tcp.accept()
            try:
                conn.sendall(f"{name} saw {peer[0]}".encode())
            except OSError:
                pass
            conn.close()
        else:
            data, peer = s.recvfrom(512)
            s.sendto(f"{name} saw {peer[0]}".encode(), peer)
"""

# One attempt: prints "ok:<answer>", "timeout", "refused", "unreachable" or "error:<errno>".
CLIENT = """\
import errno, socket, sys
host, port, proto, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=timeout)
        data = b""
        while chunk := s.recv(512):
            data += chunk
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(b"hello")
        data = s.recv(512)
    print("ok:" + data.decode())
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        print("unreachable")
    else:
        print("error:" + errno.errorcode.get(e.errno or 0, str(e)))
"""

OK_TIMEOUT = 2.0  # only paid when an expected connection fails
FAIL_TIMEOUT = 0.5  # paid by every expected failure that is a silent drop
READY_TIMEOUT = 10.0


def py(script: str, *args: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", script, *args]


def sh(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr.strip()}"
    return done.stdout


def nft_table(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nft", "-j", "list", "table", "inet", name], capture_output=True, text=True, check=False
    )


def foreign_tables() -> dict[str, str]:
    listed = {name: nft_table(name) for name in FOREIGN_TABLES}
    assert all(done.returncode == 0 for done in listed.values()), listed
    return {name: done.stdout for name, done in listed.items()}


def make_foreign_tables() -> None:
    for name in FOREIGN_TABLES:
        sh("nft", "add", "table", "inet", name)
        sh("nft", "add", "chain", "inet", name, "c")
        sh("nft", "add", "rule", "inet", name, "c", "ip", "saddr", "172.31.0.0/16", "counter")


def make_outside() -> None:
    """A machine on the host's uplink: veth up0 <-> outside:eth0, no routes back."""
    sh("ip", "netns", "add", "outside")
    sh("ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", "outside")
    sh("ip", "addr", "add", f"{HOST_UP}/24", "dev", "up0")
    sh("ip", "link", "set", "up0", "up")
    sh("ip", "-n", "outside", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
    sh("ip", "-n", "outside", "link", "set", "eth0", "up")
    sh("ip", "-n", "outside", "link", "set", "lo", "up")


def address_in(ns: str, network: str) -> str:
    """The address a namespace has in a network's subnet, as the kernel reports it."""
    subnet = ipaddress.ip_network(SUBNETS[network])
    found = [
        a["local"]
        for link in ip_json(ns, "addr", "show")
        for a in link.get("addr_info", [])
        if a["family"] == "inet" and ipaddress.ip_address(a["local"]) in subnet
    ]
    assert len(found) == 1, f"{ns} on {network}: {found}"
    return str(found[0])


@contextmanager
def servers(*specs: tuple[str, str, bool]) -> Iterator[None]:
    """(netns, name, with_udp): start each server and wait until it listens;
    stop them all (by their own pid) on the way out."""
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for ns, name, udp in specs:
            cmd = ["ip", "netns", "exec", ns, *py(SERVER, name, *(["udp"] if udp else []))]
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            procs.append((name, proc))
        deadline = time.monotonic() + READY_TIMEOUT
        for name, proc in procs:
            assert proc.stdout is not None
            ready = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready[0] else ""
            if line.strip() != "ready":
                proc.kill()
                _, err = proc.communicate(timeout=5)
                pytest.fail(f"server {name} did not start: {err.strip() or 'no answer'}")
        yield
    finally:
        for _, proc in procs:
            proc.terminate()
        for _, proc in procs:
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def connect(ns: str | None, host: str, port: int, proto: str = "tcp", *, expect_ok: bool) -> str:
    """One client attempt from a namespace (None: the host itself)."""
    timeout = OK_TIMEOUT if expect_ok else FAIL_TIMEOUT
    cmd = py(CLIENT, host, str(port), proto, str(timeout))
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or f"error:{done.stderr.strip()}"


def ping(ns: str, host: str) -> str:
    done = in_ns(ns, "ping", "-n", "-c", "1", "-W", "1", host)
    return "ok" if done.returncode == 0 else "fail"


def verdict(raw: str, expected: str) -> str:
    """What a raw result means for the comparison: every failure is "fail";
    an answer keeps "<server> saw <source>", or just the server where the
    expected source is "*" (not part of the semantics checked)."""
    if not raw.startswith("ok"):
        return "fail"
    if expected.endswith(" saw *"):
        return raw.rsplit(" saw ", 1)[0] + " saw *"
    return raw


def check_matrix(results: dict[str, str], expected: dict[str, str]) -> None:
    assert results.keys() == expected.keys()
    got = {key: verdict(raw, expected[key]) for key, raw in results.items()}
    if got != expected:
        width = max(map(len, expected))
        wide = max(map(len, expected.values()))
        lines = [
            f"{'  ' if got[k] == expected[k] else 'XX'} {k:<{width}}  "
            f"expected {expected[k]:<{wide}}  got {results[k]}"
            for k in expected
        ]
        pytest.fail("reachability matrix differs (XX):\n" + "\n".join(lines), pytrace=False)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_reachability_matrix(
    sandbox: Path, capsys: pytest.CaptureFixture[str], have_ping: None
) -> None:
    make_outside()
    make_foreign_tables()
    foreign_before = foreign_tables()
    spec = write(sandbox / "dock.yaml", DOCK)

    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    # (plan may add notes, e.g. about the other project's table)
    assert code == 0, out + err
    assert "No changes. The kernel matches the spec of project 'dock'." in out, out
    assert nft_table(TABLE).returncode == 0, f"no nftables table inet {TABLE} after apply"
    assert foreign_tables() == foreign_before

    web = address_in("web", "front")
    api_front, api_vault = address_in("api", "front"), address_in("api", "vault")
    q1, q2 = address_in("q1", "quiet"), address_in("q2", "quiet")
    db, cache = address_in("db", "vault"), address_in("cache", "vault")

    # (key, from namespace or None for the host, to address, port, protocol, expected);
    # expected is "fail" or "ok:<server> saw <source>" (source "*": not checked).
    checks: list[tuple[str, str | None, str, int, str, str]] = [
        # one network, icc on
        ("web -> api (front)", "web", api_front, 80, "tcp", f"ok:api saw {web}"),
        ("api -> web (front)", "api", web, 80, "tcp", f"ok:web saw {api_front}"),
        # icc: false: not to each other, the host still reaches both
        ("q1 -> q2 (quiet, icc false)", "q1", q2, 80, "tcp", "fail"),
        ("q2 -> q1 (quiet, icc false)", "q2", q1, 80, "tcp", "fail"),
        # port isolation also cuts what the host routes back into the bridge
        ("q2 -> up0:9090 (q1's published port)", "q2", HOST_UP, 9090, "tcp", "fail"),
        ("outside -> up0:9090 (q1's published port)", "outside", HOST_UP, 9090, "tcp",
         f"ok:q1 saw {OUTSIDE}"),
        ("host -> q1 (direct)", None, q1, 80, "tcp", "ok:q1 saw *"),
        ("host -> q2 (direct)", None, q2, 80, "tcp", "ok:q2 saw *"),
        # internal network: inside yes, outside no
        ("db -> cache (vault)", "db", cache, 80, "tcp", f"ok:cache saw {db}"),
        ("api -> db (vault)", "api", db, 80, "tcp", f"ok:db saw {api_vault}"),
        ("db -> outside (internal)", "db", OUTSIDE, 80, "tcp", "fail"),
        # different networks
        ("web -> q1 (no shared network)", "web", q1, 80, "tcp", "fail"),
        ("q1 -> web (no shared network)", "q1", web, 80, "tcp", "fail"),
        ("web -> db (only api is on vault)", "web", db, 80, "tcp", "fail"),
        # out through the uplink, masqueraded
        ("web -> outside (masqueraded)", "web", OUTSIDE, 80, "tcp", f"ok:outside saw {HOST_UP}"),
        ("q1 -> outside (masqueraded)", "q1", OUTSIDE, 80, "tcp", f"ok:outside saw {HOST_UP}"),
        # published ports, from outside (client address kept) and from the host
        ("outside -> up0:8080", "outside", HOST_UP, 8080, "tcp", f"ok:web saw {OUTSIDE}"),
        ("outside -> up0:8081 (127.0.0.1 only)", "outside", HOST_UP, 8081, "tcp", "fail"),
        ("outside -> up0:5353/udp", "outside", HOST_UP, 5353, "udp", f"ok:web saw {OUTSIDE}"),
        ("outside -> up0:5353/tcp (udp only)", "outside", HOST_UP, 5353, "tcp", "fail"),
        ("q1 -> up0:8080 (from another network)", "q1", HOST_UP, 8080, "tcp", "ok:web saw *"),
        # hairpin: the same network through a host address, masqueraded to the gateway
        ("api -> up0:8080 (same network)", "api", HOST_UP, 8080, "tcp", "ok:web saw 172.31.1.1"),
        ("web -> up0:8080 (its own port)", "web", HOST_UP, 8080, "tcp", "ok:web saw 172.31.1.1"),
        ("host -> 127.0.0.1:8081", None, "127.0.0.1", 8081, "tcp", "ok:web saw *"),
        ("host -> 127.0.0.1:8080", None, "127.0.0.1", 8080, "tcp", "ok:web saw *"),
        ("host -> up0:8080", None, HOST_UP, 8080, "tcp", "ok:web saw *"),
        ("host -> web (direct)", None, web, 80, "tcp", "ok:web saw *"),
    ]
    # With routes added by hand (outside routes the subnets to the host, db gets
    # a default route): only published ports get in, nothing leaves an internal
    # network, and it is the firewall that says so, not a missing route.
    routed = [
        ("outside -> web (direct, routed)", "outside", web, 80, "tcp", "fail"),
        ("outside -> db (direct, routed)", "outside", db, 80, "tcp", "fail"),
        ("db -> outside (internal, routed)", "db", OUTSIDE, 80, "tcp", "fail"),
    ]
    hand_routes = [
        ("outside", "172.31.0.0/16", HOST_UP),
        ("db", "default", "172.31.3.1"),
    ]
    pings = [
        ("ping q1 -> gateway 172.31.2.1 (icc false)", "q1", "172.31.2.1", "ok"),
        ("ping q1 -> q2 (icc false)", "q1", q2, "fail"),
        ("ping cache -> gateway 172.31.3.1 (internal)", "cache", "172.31.3.1", "ok"),
    ]

    results: dict[str, str] = {}
    expected: dict[str, str] = {}
    with servers(
        ("web", "web", True), ("api", "api", False), ("q1", "q1", False), ("q2", "q2", False),
        ("db", "db", False), ("cache", "cache", False), ("outside", "outside", False),
    ):
        for key, ns, host, port, proto, want in checks:
            results[key] = connect(ns, host, port, proto, expect_ok=want != "fail")
            expected[key] = want
        added = []
        try:
            for ns, to, via in hand_routes:
                sh("ip", "-n", ns, "route", "add", to, "via", via)
                added.append((ns, to, via))
            for key, ns, host, port, proto, want in routed:
                results[key] = connect(ns, host, port, proto, expect_ok=want != "fail")
                expected[key] = want
        finally:
            for ns, to, via in added:
                sh("ip", "-n", ns, "route", "del", to, "via", via)
        for key, ns, host, want in pings:
            results[key] = ping(ns, host)
            expected[key] = want
    check_matrix(results, expected)

    # Traffic moved counters and conntrack, not anything apply manages.
    code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 0, "plan after traffic: " + out + err
    assert "No changes." in out, "plan after traffic: " + out
    assert foreign_tables() == foreign_before

    code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(spec))
    assert code == 0, out + err
    gone = nft_table(TABLE)
    assert gone.returncode != 0, f"table inet {TABLE} left after destroy:\n{gone.stdout}"
    assert foreign_tables() == foreign_before
    left = links()
    assert not [b for b in BRIDGES if b in left], sorted(left)
    assert "up0" in left
    assert netns_list() == ["outside"]


CLASHES = {
    "same port on all addresses": ('"8080:80"', '"8080:81"'),
    "one address inside all addresses": ('"8080:80"', '"127.0.0.1:8080:81"'),
    "udp on one address": (
        '"127.0.0.1:5353:53/udp"', "{published: 5353, target: 54, protocol: udp}"
    ),
}


@pytest.mark.parametrize("first,second", CLASHES.values(), ids=CLASHES.keys())
def test_port_published_twice_is_rejected_before_the_kernel(
    sandbox: Path, capsys: pytest.CaptureFixture[str], first: str, second: str
) -> None:
    spec = write(
        sandbox / "clash.yaml",
        f"""\
        version: 1
        project: dock
        networks:
          front: {{subnet: 172.31.1.0/24, interface: br-front}}
        containers:
          a:
            networks: [front]
            ports: [{first}]
          b:
            networks: [front]
            ports:
              - {second}
        """,
    )
    line = spec.read_text().splitlines().index(f"      - {second}") + 1
    make_foreign_tables()
    before = (kernel_snapshot(), sh("nft", "-j", "list", "ruleset"))
    for command in ("validate", "plan", "apply"):
        args = (command, "--auto-approve") if command == "apply" else (command,)
        code, out, err = run_cli(capsys, *args, str(spec))
        assert code == 1, f"{command}: {out}{err}"
        assert re.search(
            rf"{re.escape(str(spec))}:{line}:\d+: container 'b': .*already published"
            r" by container 'a'",
            err,
        ), f"{command}: {err}"
        assert "nothing was changed" in err
    assert (kernel_snapshot(), sh("nft", "-j", "list", "ruleset")) == before
    assert json.loads(before[1])["nftables"]  # the foreign tables were there to compare


TWO_PROJECTS = {
    "red": "version: 1\nproject: red\nnetworks:\n  net: {subnet: 172.31.4.0/24}\n"
           "containers:\n  r1: {networks: [net]}\n",
    "blue": "version: 1\nproject: blue\nnetworks:\n  net: {subnet: 172.31.5.0/24}\n"
            "containers:\n  b1: {networks: [net]}\n",
}


def test_projects_are_isolated_from_each_other(
    sandbox: Path, capsys: pytest.CaptureFixture[str], have_ping: None
) -> None:
    """Two projects' tables each guard their own networks: neither project's
    containers reach the other's, both still reach the host and each other's
    gateway is just another host address."""
    for name, text in TWO_PROJECTS.items():
        code, out, err = run_cli(capsys, "apply", "--auto-approve",
                                 str(write(sandbox / f"{name}.yaml", text)))
        assert code == 0, out + err
    r1, b1 = "172.31.4.2", "172.31.5.2"
    with servers(("r1", "r1", False), ("b1", "b1", False)):
        results = {
            "r1 -> b1": connect("r1", b1, 80, expect_ok=False),
            "b1 -> r1": connect("b1", r1, 80, expect_ok=False),
            "host -> r1": connect(None, r1, 80, expect_ok=True),
            "host -> b1": connect(None, b1, 80, expect_ok=True),
        }
        results["ping r1 -> b1"] = ping("r1", b1)
    check_matrix(results, {
        "r1 -> b1": "fail", "b1 -> r1": "fail",
        "host -> r1": "ok:r1 saw *", "host -> b1": "ok:b1 saw *",
        "ping r1 -> b1": "fail",
    })
    # Destroying one project leaves the other's table and traffic alone.
    code, _, _ = run_cli(capsys, "destroy", "--auto-approve", str(sandbox / "red.yaml"))
    assert code == 0
    assert nft_table("netapply-red").returncode != 0
    assert nft_table("netapply-blue").returncode == 0
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(sandbox / "blue.yaml"))
    assert code == 0, out


def test_containers_never_reach_the_hosts_loopback_services(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """route_localnet (for ports reached through 127.0.0.1) would let the kernel
    route a container's packets to 127.0.0.1 into the host's loopback services.
    A root process in the container sends there through its gateway; the host's
    service bound to 127.0.0.1 must get nothing, while one bound to the gateway
    address gets the same packet (so the sending itself works)."""
    spec = write(sandbox / "dock.yaml", """\
        version: 1
        project: dock
        networks:
          front: {subnet: 172.31.1.0/24, interface: br-front}
        containers:
          web:
            networks: [front]
            ports: ["8080:80"]
        """)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert Path("/proc/sys/net/ipv4/conf/br-front/route_localnet").read_text().strip() == "1"
    received = {}
    sockets = {}
    for name, address in (("loopback", "127.0.0.1"), ("gateway", "172.31.1.1")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 9999))
        sock.settimeout(FAIL_TIMEOUT if name == "loopback" else OK_TIMEOUT)
        sockets[name] = sock
    try:
        sh("ip", "netns", "exec", "web", "sh", "-c",
           "ip route del local 127.0.0.1 dev lo table local;"
           " ip route del local 127.0.0.0/8 dev lo table local;"
           " sysctl -qw net.ipv4.conf.eth0.route_localnet=1;"
           " ip route add 127.0.0.1/32 via 172.31.1.1 dev eth0")
        for address in ("127.0.0.1", "172.31.1.1"):
            sh("ip", "netns", "exec", "web", *py(
                "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                ".sendto(b'probe', (sys.argv[1], 9999))", address))
        for name, sock in sockets.items():
            try:
                received[name] = sock.recv(64).decode()
            except TimeoutError:
                received[name] = "nothing"
    finally:
        for sock in sockets.values():
            sock.close()
    assert received == {"loopback": "nothing", "gateway": "probe"}
