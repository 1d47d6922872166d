"""A port that is taken is never silently taken over (SPEC.md, Published
ports; issue 15, part 1): a listening socket of the host, or another
project's published port, is an error at plan time naming the holder."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from reconciler import ports
from tests.kernelutil import kernel_snapshot, run_cli

SPEC = """\
version: 1
project: {project}
networks:
  front: {{subnet: {subnet}}}
containers:
  web:
    networks: [front]
    ports: [{ports}]
"""


def spec_file(tmp: Path, ports_text: str, project: str = "pt",
              subnet: str = "172.30.50.0/24") -> Path:
    path = tmp / f"{project}.yaml"
    path.write_text(SPEC.format(project=project, subnet=subnet, ports=ports_text))
    return path


def test_proc_net_tables_are_read_as_the_kernel_prints_them() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 0100007F:08AE 00000000:0000 0A 00000000:00000000\n"  # 127.0.0.1:2222 LISTEN
        "   1: 00000000:0050 0100007F:9C40 01 00000000:00000000\n"  # :80 ESTABLISHED
    )
    assert list(ports.proc_net_sockets(tcp, "tcp")) == [
        (ipaddress.ip_address("127.0.0.1"), 2222)]
    tcp6 = ("  sl  local_address rem_address st\n"
            "   0: 00000000000000000000000000000000:0016 0000:0000 0A\n"
            "   1: 0000000000000000FFFF00000100007F:0017 0000:0000 0A\n")
    assert list(ports.proc_net_sockets(tcp6, "tcp")) == [
        (ipaddress.ip_address("::"), 22), (ipaddress.ip_address("127.0.0.1"), 23)]
    udp = "  sl local st\n   0: 00000000:14B2 00000000:0000 07\n"
    assert list(ports.proc_net_sockets(udp, "udp")) == [(ipaddress.ip_address("0.0.0.0"), 5298)]


def test_which_addresses_overlap() -> None:
    def held(address: str | None) -> ports.Held:
        return ports.Held("tcp", ipaddress.ip_address(address) if address else None, 80, "x")

    lo = ipaddress.ip_address("127.0.0.1")
    other = ipaddress.ip_address("192.0.2.1")
    assert held(None).overlaps("tcp", lo, 80)
    assert held("127.0.0.1").overlaps("tcp", None, 80)  # published on every address
    assert held("127.0.0.1").overlaps("tcp", lo, 80)
    assert not held("127.0.0.1").overlaps("tcp", other, 80)
    assert not held(None).overlaps("udp", None, 80) and not held(None).overlaps("tcp", None, 81)
    assert held("::").overlaps("tcp", None, 80)  # dual-stack
    assert not held("::1").overlaps("tcp", None, 80)  # IPv6 only: netapply publishes IPv4


@pytest.mark.kernel
def test_a_listening_socket_of_the_host_is_never_taken_over(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("0.0.0.0", 2222)), \
            socket.create_server(("127.0.0.1", 2223)), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("0.0.0.0", 5514))
        before = kernel_snapshot()
        path = spec_file(sandbox, '"2222:8000", "2223:80", "5514:514/udp"')
        code, out, err = run_cli(capsys, "plan", str(path))
        assert code == 1
        assert err.splitlines()[:3] == [
            f"error: {path}:8:13: container 'web': port 2222/tcp is already taken by a TCP "
            "socket of this machine listening on 0.0.0.0:2222; publish another port, or free "
            "that one",
            f"error: {path}:8:26: container 'web': port 2223/tcp is already taken by a TCP "
            "socket of this machine listening on 127.0.0.1:2223; publish another port, or free "
            "that one",
            f"error: {path}:8:37: container 'web': port 5514/udp is already taken by a UDP "
            "socket of this machine listening on 0.0.0.0:5514; publish another port, or free "
            "that one",
        ], err
        code, _, _ = run_cli(capsys, "apply", "--auto-approve", str(path))
        assert code == 1
        assert kernel_snapshot() == before
        # Another address than the listener's is free; so is the other protocol.
        path = spec_file(sandbox, '"172.30.50.1:2223:80", "2223:80/udp"')
        code, out, err = run_cli(capsys, "apply", "--auto-approve", str(path))
        assert code == 0, out + err


@pytest.mark.kernel
def test_another_projects_port_is_not_moved_and_a_late_listener_is_noted(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ua = spec_file(sandbox, '"8080:8000"', "ua", "172.30.51.0/24")
    ub = spec_file(sandbox, '"8080:8000"', "ub", "172.30.52.0/24")
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(ua))
    assert code == 0, out + err
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(ub))
    assert code == 1
    assert (f"{ub}:8:13: container 'web': port 8080/tcp is already taken by netapply "
            "project 'ua'") in err
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(ua))
    assert code == 0, out  # ua keeps its port
    # A service that starts on the port after ua published it: noted, not fatal.
    with socket.create_server(("0.0.0.0", 8080)):
        code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(ua))
        assert code == 0
        assert ("note: port 8080/tcp, which the project publishes, is also held by a TCP "
                "socket of this machine listening on 0.0.0.0:8080") in out


@pytest.mark.kernel
def test_watch_logs_a_holder_that_appears_later(sandbox: Path) -> None:
    from tests.test_watch import Watch, wait_for

    path = spec_file(sandbox, '"8090:8000"', "uw", "172.30.53.0/24")
    watch = Watch(path, sandbox / "watch.log", "--resync", "0.5")
    try:
        watch.started()
        with socket.create_server(("0.0.0.0", 8090)):
            wait_for("the late holder logged", lambda: any(
                "8090/tcp, which the project publishes, is also held" in r.get("note", "")
                for r in watch.records("note")), 3)
    finally:
        assert watch.stop() == 0
