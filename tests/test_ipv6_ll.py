"""No IPv6 on networks without IPv6 (issue 17): the links of an IPv4-only
network get no IPv6 address at all, link-local included, and that is observed,
planned and repaired like any other attribute; links of a network with IPv6
keep their link-local addresses."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler import desired
from tests.kernelutil import ip_json, links, run_cli

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: ll
networks:
  plain:
    subnet: 172.30.1.0/24
    interface: br-plain
  dual:
    subnet: 172.30.2.0/24
    interface: br-dual
{ipv6}containers:
  a:
    networks: [plain]
  b:
    networks: [dual]
"""
IPV6 = '    ipv6: {subnet: "fd00:30:2::/64"}\n'
PLAIN_HOST = desired.host_ifname("ll", "a", "plain")
DUAL_HOST = desired.host_ifname("ll", "b", "dual")


def write_spec(tmp: Path, ipv6: bool) -> Path:
    path = tmp / "ll.yaml"
    path.write_text(SPEC.format(ipv6=IPV6 if ipv6 else ""))
    return path


def inet6(ns: str | None, ifname: str) -> list[str]:
    """Every IPv6 address of the link (link-local and tentative ones too)."""
    return sorted(f"{a['local']}/{a['prefixlen']}"
                  for link in ip_json(ns, "-6", "addr", "show", "dev", ifname)
                  for a in link.get("addr_info", []))


def mode(ns: str | None, ifname: str) -> Any:
    return links(ns)[ifname].get("inet6_addr_gen_mode")


def wait_link_local(ns: str | None, ifname: str) -> None:
    """Until the kernel gave the link its link-local address (it does as the link
    gets a carrier): then the links that have none had the same time."""
    deadline = time.monotonic() + 10
    while not any(a.startswith("fe80:") for a in inet6(ns, ifname)):
        assert time.monotonic() < deadline, f"no link-local address on {ifname}"
        time.sleep(0.02)


def apply(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(path))
    assert code == 0, err


def plan(capsys: pytest.CaptureFixture[str], path: Path) -> list[dict[str, Any]]:
    code, out, err = run_cli(capsys, "plan", "--output", "json", str(path))
    assert code == 0, err
    changes: list[dict[str, Any]] = json.loads(out)["changes"]
    return changes


def test_links_of_an_ipv4_network_get_no_ipv6_address_those_of_an_ipv6_network_do(
    sandbox: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    apply(capsys, write_spec(sandbox, ipv6=True))
    wait_link_local("b", "eth0")
    wait_link_local(None, DUAL_HOST)
    wait_link_local(None, "br-dual")
    assert inet6("a", "eth0") == []
    assert inet6(None, PLAIN_HOST) == []
    assert inet6(None, "br-plain") == []
    assert [mode("a", "eth0"), mode(None, PLAIN_HOST), mode(None, "br-plain")] == ["none"] * 3
    assert [mode("b", "eth0"), mode(None, DUAL_HOST), mode(None, "br-dual")] == ["eui64"] * 3
    assert "fd00:30:2::2/64" in inet6("b", "eth0")
    assert plan(capsys, write_spec(sandbox, ipv6=True)) == []


def test_address_generation_switched_back_on_from_outside_is_planned_and_repaired(
    sandbox: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_spec(sandbox, ipv6=False)
    apply(capsys, path)
    for ns, ifname in (("a", "eth0"), (None, PLAIN_HOST), (None, "br-plain")):
        cmd = ["ip", *(["-n", ns] if ns else []), "link", "set", "dev", ifname,
               "addrgenmode", "eui64"]
        subprocess.run(cmd, check=True)
    changes = plan(capsys, path)
    updated = {(c["key"][0], c["action"]): (c["before"], c["after"]) for c in changes}
    assert set(updated) == {("bridge", "update"), ("veth", "update")}
    bridge_before, bridge_after = updated[("bridge", "update")]
    assert (bridge_before["ipv6_ll"], bridge_after["ipv6_ll"]) == (True, False)
    veth_before, veth_after = updated[("veth", "update")]
    assert (veth_before["ipv6_ll"], veth_before["host_ipv6_ll"]) == (True, True)
    assert (veth_after["ipv6_ll"], veth_after["host_ipv6_ll"]) == (False, False)
    apply(capsys, path)
    assert [mode("a", "eth0"), mode(None, PLAIN_HOST), mode(None, "br-plain")] == ["none"] * 3
    assert plan(capsys, path) == []


def test_a_network_that_loses_ipv6_loses_the_link_local_addresses_of_its_links(
    sandbox: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    apply(capsys, write_spec(sandbox, ipv6=True))
    wait_link_local("b", "eth0")
    wait_link_local(None, DUAL_HOST)
    path = write_spec(sandbox, ipv6=False)
    apply(capsys, path)
    assert inet6("b", "eth0") == []
    assert inet6(None, DUAL_HOST) == []
    assert inet6(None, "br-dual") == []
    assert plan(capsys, path) == []


def test_links_whose_mtu_was_set_below_ipv6s_minimum_from_outside_are_repaired(
    sandbox: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Below 1280 a link has no IPv6, and its address generation mode cannot be
    # set (EAFNOSUPPORT); with its MTU back, the kernel gives it IPv6 again,
    # address generation on: a link-local address on an IPv4-only network.
    path = write_spec(sandbox, ipv6=True)
    apply(capsys, path)
    ends = (("a", "eth0"), (None, PLAIN_HOST), ("b", "eth0"), (None, DUAL_HOST))
    for ns, ifname in ends:
        cmd = ["ip", *(["-n", ns] if ns else []), "link", "set", "dev", ifname, "mtu", "1000"]
        subprocess.run(cmd, check=True)
    apply(capsys, path)
    assert [mode(ns, ifname) for ns, ifname in ends] == ["none", "none", "eui64", "eui64"]
    assert inet6("a", "eth0") == []
    assert inet6(None, PLAIN_HOST) == []
    assert plan(capsys, path) == []
