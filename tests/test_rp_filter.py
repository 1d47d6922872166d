"""A port published on a container's second network works under strict
reverse-path filtering (issue 15, part 6): the replies leave the container
by its default route, on another network, and arrive at the host on that
network's bridge with a source of the first network."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kernelutil import run_cli
from tests.test_docker_net import make_outside
from tests.test_watch import wait_for

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: rp
networks:
  back: {subnet: 172.31.80.0/24}
  front: {subnet: 172.31.81.0/24}
containers:
  web:
    networks: [back, front]
    ports: [{published: 8090, target: 8000, network: front}]
"""
SERVE = """\
import socket
s = socket.create_server(("0.0.0.0", 8000))
while True:
    conn, _ = s.accept()
    conn.sendall(b"web")
    conn.close()
"""
FETCH = """\
import socket, sys
try:
    with socket.create_connection(("203.0.113.1", 8090), timeout=2) as c:
        sys.exit(0 if c.recv(10) == b"web" else 1)
except OSError:
    sys.exit(1)
"""


@contextmanager
def server() -> Iterator[None]:
    process = subprocess.Popen(["ip", "netns", "exec", "web", sys.executable, "-c", SERVE])
    try:
        def listening() -> bool:
            done = subprocess.run(["ip", "netns", "exec", "web", sys.executable, "-c",
                                   "import socket; socket.create_connection(('127.0.0.1', "
                                   "8000), 1)"], capture_output=True)
            return done.returncode == 0
        wait_for("the server in web", listening, 5)
        yield
    finally:
        process.kill()
        process.wait()


def from_outside() -> bool:
    return subprocess.run(["ip", "netns", "exec", "outside", sys.executable, "-c", FETCH],
                          capture_output=True, timeout=10).returncode == 0


@pytest.mark.parametrize("strict", ["1", "0"])
def test_a_port_on_the_second_network_answers_whatever_rp_filter_says(
    sandbox: Path, capsys: pytest.CaptureFixture[str], strict: str
) -> None:
    Path("/proc/sys/net/ipv4/conf/all/rp_filter").write_text(strict)
    Path("/proc/sys/net/ipv4/conf/default/rp_filter").write_text(strict)
    make_outside()
    spec = sandbox / "rp.yaml"
    spec.write_text(SPEC)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    with server():
        assert from_outside()
