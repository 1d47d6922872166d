"""Publishing, moving or removing a port affects flows already in progress
(SPEC.md, Published ports; issue 15, part 2): a UDP client that keeps
sending from one source port reaches the new target within a second,
because netapply deletes that port's connection tracking entries."""

from __future__ import annotations

import subprocess
import sys
import time
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
project: fl
networks:
  n: {{subnet: 172.31.70.0/24}}
containers:
  sink: {{networks: [n]{sink}}}
  sink2: {{networks: [n]{sink2}}}
"""
PUBLISHED = ', ports: ["5514:514/udp"]'
# Appends every datagram's sender to a file.
LISTEN = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 514))
with open(sys.argv[1], "a") as out:
    while True:
        data, peer = s.recvfrom(100)
        out.write(f"{peer[0]}:{peer[1]}\\n")
        out.flush()
"""
# One datagram every 0.1 s from a fixed source port, for at most 60 s.
SEND = """\
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("203.0.113.2", 40000))
for _ in range(600):
    s.sendto(b"x", ("203.0.113.1", 5514))
    time.sleep(0.1)
"""


@contextmanager
def started(*cmd: str) -> Iterator[None]:
    process = subprocess.Popen(list(cmd))
    try:
        yield
    finally:
        process.kill()
        process.wait()


def received(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_udp_flow_follows_the_port_as_it_is_published_moved_and_removed(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_outside()  # a machine on the host's uplink, 203.0.113.2
    spec = sandbox / "fl.yaml"

    def apply(sink: str, sink2: str) -> None:
        spec.write_text(SPEC.format(sink=sink, sink2=sink2))
        code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
        assert code == 0, out + err

    apply("", "")
    got, got2 = sandbox / "sink.txt", sandbox / "sink2.txt"
    with started("ip", "netns", "exec", "sink", sys.executable, "-c", LISTEN, str(got)), \
            started("ip", "netns", "exec", "sink2", sys.executable, "-c", LISTEN, str(got2)), \
            started("ip", "netns", "exec", "outside", sys.executable, "-c", SEND):
        time.sleep(0.5)  # the flow exists (to the host itself) before the port does
        assert received(got) == 0
        apply(PUBLISHED, "")
        wait_for("the flow reaching sink once the port is published",
                 lambda: received(got) > 0, 1)
        apply("", PUBLISHED)
        before = received(got)
        wait_for("the flow reaching sink2 once the port moved", lambda: received(got2) > 0, 1)
        time.sleep(0.3)
        assert received(got) <= before + 1  # at most one in flight while it moved
        apply("", "")
        moved = received(got2)
        time.sleep(0.5)
        assert received(got2) <= moved + 1  # removed: nothing reaches sink2 any more
