"""Internal networks reach only themselves and their own gateway (SPEC.md,
Internal networks; issue 15, part 7), with real connections: whatever routes
a container of an internal network is given, the host's other addresses (an
outside address, another network's gateway) do not answer it."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kernelutil import run_cli

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: intl
networks:
  priv: {subnet: 172.31.63.0/24, internal: true, ipv6: {subnet: "fd00:63::/64"}}
  other: {subnet: 172.31.64.0/24}
containers:
  e:
    networks: [priv]
    routes: [{to: 198.18.0.0/24, via: 172.31.63.1}, {to: 172.31.64.0/24, via: 172.31.63.1}]
  f: {networks: [priv]}
  o: {networks: [other]}
"""
PORT = 8000
CONNECT = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
"""


@contextmanager
def host_server() -> Iterator[None]:
    """A TCP service of the host on every address of it (IPv4 and IPv6)."""
    server = socket.create_server(("::", PORT), family=socket.AF_INET6, dualstack_ipv6=True)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        server.close()


def reaches(ns: str, address: str) -> bool:
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, address,
                           str(PORT)], capture_output=True, timeout=10)
    return done.returncode == 0


def test_an_internal_container_reaches_its_gateway_and_nothing_else_of_the_host(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p"],
                   check=True)
    subprocess.run(["ip", "addr", "add", "198.18.0.1/24", "dev", "up0"], check=True)
    subprocess.run(["ip", "link", "set", "up0", "up"], check=True)
    spec = sandbox / "intl.yaml"
    spec.write_text(SPEC)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    with host_server():
        assert reaches("e", "172.31.63.1")  # its own gateway address
        assert reaches("e", "fd00:63::1")
        assert not reaches("e", "198.18.0.1")  # the host's outside address, routed there
        assert not reaches("e", "172.31.64.1")  # another network's gateway
        assert reaches("o", "198.18.0.1")  # a non-internal network is not filtered so
    ping = subprocess.run(["ip", "netns", "exec", "e", "ping", "-c", "1", "-W", "2", "f"],
                          capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout  # its own network
