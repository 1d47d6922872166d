"""macvlan and ipvlan networks on the real kernel, on a parent made by the test.

The parent (a veth end standing in for the machine's LAN card) belongs
to someone else: netapply must leave it exactly as it was.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler import engine
from reconciler import spec as spec_mod
from reconciler.drivers.memory import KINDS, MemoryKernel
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.errors import MachineError
from tests.kernelutil import in_ns, kernel_snapshot, links, netns_list, run_cli

pytestmark = pytest.mark.kernel

LAN = """\
version: 1
project: lan
networks:
  lan:
    driver: {driver}
    parent: lan0
    mode: {mode}
    subnet: 192.168.77.0/24
containers:
  a: {{networks: [lan]}}
  b: {{networks: [lan]}}
"""


def make_parent() -> dict[str, Any]:
    # This kernel has no dummy driver; one end of a veth pair is a LAN card too.
    subprocess.run(["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p"],
                   check=True)
    subprocess.run(["ip", "link", "set", "lan0p", "up"], check=True)
    subprocess.run(["ip", "link", "set", "lan0", "up"], check=True)
    return parent()


def parent() -> dict[str, Any]:
    found = links()["lan0"]
    found.pop("stats64", None)
    return dict(found)


def write(path: Path, driver: str, mode: str) -> Path:
    path.write_text(LAN.format(driver=driver, mode=mode))
    return path


def ping(ns: str, address: str) -> bool:
    return in_ns(ns, "ping", "-c1", "-W1", address).returncode == 0


def test_macvlan_bridge_mode_connects_private_mode_separates(
    sandbox: Path, capsys: pytest.CaptureFixture[str], have_ping: None
) -> None:
    before = make_parent()
    spec = write(sandbox / "lan.yaml", "macvlan", "bridge")
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert "create macvlan eth0 on lan0 (container a, network lan)" in out
    eth0 = links("a")["eth0"]
    assert eth0["linkinfo"]["info_kind"] == "macvlan"
    assert eth0["linkinfo"]["info_data"]["mode"] == "bridge"
    assert eth0["address"] == "02:42:c0:a8:4d:02"  # Docker's MAC rule, as on bridges
    assert ping("a", "192.168.77.3")  # b, over the parent, in bridge mode
    assert "nftables" not in out  # no bridge network: no firewall
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 0, out

    write(spec, "macvlan", "private")
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert "a macvlan/ipvlan link keeps its namespace, parent and mode (bridge -> private)" in out
    assert links("a")["eth0"]["linkinfo"]["info_data"]["mode"] == "private"
    assert not ping("a", "192.168.77.3")

    code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert netns_list() == []
    assert parent() == before


def test_missing_parent_is_an_error_before_any_change(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(sandbox / "lan.yaml", "macvlan", "bridge")
    before = kernel_snapshot()
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: {spec}:6:5: network 'lan': parent interface lan0 does not exist on this machine"
    )
    assert kernel_snapshot() == before


def test_ipvlan_on_this_kernel(
    sandbox: Path, capsys: pytest.CaptureFixture[str], have_ping: None
) -> None:
    """validate never needs the driver; apply either works or stops before any
    change with one sentence, depending on the running kernel."""
    make_parent()
    spec = write(sandbox / "lan.yaml", "ipvlan", "l2")
    code, out, _ = run_cli(capsys, "validate", str(spec))
    assert code == 0, out
    kernel = NetlinkKernel()
    supported = kernel.link_kind_supported("ipvlan")
    kernel.close()
    before = kernel_snapshot()
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    if not supported:
        assert code == 1
        assert err.splitlines()[0] == (
            f"error: {spec}:5:5: network 'lan': the running kernel has no ipvlan driver "
            "(module ipvlan is neither built in nor loadable); load it or use another driver"
        )
        assert kernel_snapshot() == before
        pytest.skip("this kernel has no ipvlan: checked that apply stops before any change")
    assert code == 0, out + err
    assert ping("a", "192.168.77.3")


def test_a_kernel_without_the_driver_refuses_before_planning() -> None:
    """The same check on the memory kernel, so it runs whatever the test machine has."""
    kernel = MemoryKernel(kinds=KINDS - {"macvlan"})
    kernel.bridge_add("lan0", "02:00:00:00:00:01")
    spec = spec_mod.load_text(LAN.format(driver="macvlan", mode="bridge"), "lan.yaml")
    with pytest.raises(MachineError) as caught:
        engine.snapshot(kernel, spec)
    assert [p.message for p in caught.value.problems] == [
        "network 'lan': the running kernel has no macvlan driver (module macvlan is neither "
        "built in nor loadable); load it or use another driver"
    ]
    assert kernel.writes == 1  # the parent, made above: nothing else


def test_passthru_converges_and_leaves_the_parents_address(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """passthru hands the parent's address to its one macvlan link; setting a MAC
    on that link would change the parent's."""
    before = make_parent()
    spec = write(sandbox / "lan.yaml", "macvlan", "passthru")
    spec.write_text(spec.read_text().replace("  b: {networks: [lan]}\n", ""))
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert links("a")["eth0"]["address"] == before["address"]
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 0, out
    assert parent()["address"] == before["address"]
