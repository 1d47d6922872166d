"""Specs that span machines: which host this machine is, and its share."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from reconciler import machines
from reconciler.spec import load_text
from tests.kernelutil import kernel_snapshot, links, netns_list, run_cli

SPEC = """\
version: 1
project: shop
hosts:
  a: {address: 192.0.2.11}
  b: {address: 192.0.2.12}
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front}
  back: {subnet: 172.30.2.0/24, interface: br-back}
containers:
  web: {host: a, networks: [front]}
  db: {host: b, networks: [front, back]}
  cache: {network_mode: host}
"""


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_the_share_of_a_host_is_its_containers_and_their_networks() -> None:
    spec = load_text(SPEC, "shop.yaml")
    a, b = machines.share(spec, "a"), machines.share(spec, "b")
    assert (sorted(a.containers), sorted(a.networks)) == (["cache", "web"], ["front"])
    assert (sorted(b.containers), sorted(b.networks)) == (["cache", "db"], ["back", "front"])
    whole = load_text(SPEC.replace("hosts:\n  a: {address: 192.0.2.11}\n  b: {address: "
                                   "192.0.2.12}\n", "").replace("host: a, ", "")
                      .replace("host: b, ", ""), "shop.yaml")
    assert machines.share(whole, None) is whole


@pytest.mark.parametrize(("requested", "local", "host", "message"), [
    (None, ["10.0.0.1", "192.0.2.12"], "b", ""),
    ("a", ["192.0.2.12"], "a", ""),
    ("c", [], None, "--host c: no such host in the spec (hosts: a, b)"),
    (None, ["10.0.0.1"], None, "none of the hosts' addresses is an address of this machine "
     "(hosts: a, b); pass --host NAME"),
    (None, ["192.0.2.11", "192.0.2.12"], None, "several hosts' addresses are addresses of "
     "this machine (a, b); pass --host NAME"),
])
def test_which_host_this_machine_is(
    requested: str | None, local: list[str], host: str | None, message: str
) -> None:
    spec = load_text(SPEC, "shop.yaml")
    if message:
        with pytest.raises(machines.HostError) as caught:
            machines.select(spec, requested, [ip(x) for x in local])
        assert str(caught.value) == message
    else:
        assert machines.select(spec, requested, [ip(x) for x in local]).host == host


@pytest.mark.kernel
def test_each_machine_applies_its_own_share(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = sandbox / "shop.yaml"
    spec.write_text(SPEC)
    before = kernel_snapshot()
    code, _, err = run_cli(capsys, "plan", str(spec))
    assert (code, err.splitlines()[0]) == (1, "error: none of the hosts' addresses is an "
                                              "address of this machine (hosts: a, b); pass "
                                              "--host NAME")
    assert kernel_snapshot() == before
    subprocess.run(["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p"],
                   check=True)
    subprocess.run(["ip", "addr", "add", "192.0.2.11/24", "dev", "lan0"], check=True)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert out.splitlines()[0] == ("This machine is host 'a' (192.0.2.11 is an address of this "
                                   "machine).")
    assert netns_list() == ["web"]
    assert "br-front" in links() and "br-back" not in links()
    code, out, _ = run_cli(capsys, "plan", "--host", "b", str(spec))
    assert code == 0
    assert out.splitlines()[0] == "This machine is host 'b' (--host b)."
    assert "+ create netns db" in out and "- delete netns web" in out
    code, out, err = run_cli(capsys, "plan", "--output", "json", "--host", "b", str(spec))
    assert out.startswith("{") and "This machine is host 'b'" in err
