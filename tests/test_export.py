"""Live state as a spec (`export --project`, `show --output yaml`), every project
on the machine (`ls`) and `destroy --project`, on the real kernel."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler import lock
from reconciler import spec as spec_mod
from tests.kernelutil import (
    REPO,
    addresses,
    assert_same_kernel,
    kernel_snapshot,
    links,
    lock_held,
    netns_list,
    run_cli,
)

pytestmark = pytest.mark.kernel

# The examples one machine runs in the sandbox, with what the overlay needs:
# the host it is, and that host's underlay address on an interface here.
# examples/docker, examples/podman and examples/compose need running engines:
# not covered here.
ROUND_TRIP = {
    "seed.yaml": None,
    "shop.yaml": None,
    "overlay/mesh.yaml": ("node-a", "192.0.2.11/24"),
}


def _underlay(address: str) -> None:
    subprocess.run(["ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1"],
                   check=True)
    subprocess.run(["ip", "addr", "add", address, "dev", "under0"], check=True)
    subprocess.run(["ip", "link", "set", "under0", "up"], check=True)


# What the kernel numbers or draws anew when an object is made again: link
# indexes and the namespace ids of veth peers, and the MACs netapply leaves to
# the kernel (host ends of veths, VXLAN devices), with what derives from them
# (IPv6 link-local addresses, the bridges' own and learned forwarding entries,
# their multicast entries). Everything netapply sets must come back the same.
RENUMBERED = {"ifindex", "link_index", "link_netnsid", "master_index"}
RANDOM = "<mac the kernel chose>"


def _comparable(value: Any, random: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _comparable(v, random) for k, v in value.items() if k not in RENUMBERED}
    if isinstance(value, list):
        items = [_comparable(v, random) for v in value]
        if not all(isinstance(v, dict) for v in items):
            return items
        kept = [v for v in items if v.get("scope") != "link"  # link-local addresses
                # and their local routes, which appear when duplicate address
                # detection ends (the kernel's timing), derived from random MACs
                and not str(v.get("dst", "")).startswith("fe80:")
                and "self" not in v.get("flags", ())  # the kernel's multicast fdb entries
                and not ((v.get("mac") and v.get("state") in ("", RANDOM))
                         or v.get("mac") == RANDOM)]  # learned entries, own entries
        return sorted(kept, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, str) and value in random:
        return RANDOM
    return value


def _kernel() -> Any:
    """kernel_snapshot without what the kernel chooses itself, and nft rules
    without their handles."""
    snap = kernel_snapshot()
    random = {link["address"] for link in snap["link:None"]
              if link["ifname"].startswith(("veth", "vx-"))}
    for item in snap["nft"]["nftables"]:
        for body in item.values():
            if isinstance(body, dict):
                body.pop("handle", None)
    return _comparable(snap, random)


def _export(capsys: pytest.CaptureFixture[str], project: str) -> str:
    code, out, err = run_cli(capsys, "export", "--project", project)
    assert code == 0, err
    assert err == ""  # no "applied as it is, this spec would still change" note
    return out


# Every option the examples leave at its default, and the cases where the
# export must say what the order of the attachments would not give. (ipvlan
# is left out: this machine's kernel has no ipvlan driver.)
RICH = """\
version: 1
project: rich
networks:
  quiet:
    subnet: 10.50.0.0/24
    gateway: 10.50.0.254
    icc: false
    masquerade: false
    mtu: 1400
    interface: br-quiet
  dual:
    subnet: 10.51.0.0/24
    ipv6: {subnet: "fd00:51::/64", gateway: "fd00:51::fe"}
  lan:
    driver: macvlan
    parent: lan0
    mode: private
    subnet: 192.168.77.0/24
    gateway: 192.168.77.254
  flat:
    driver: macvlan
    parent: lan1
    mode: vepa
    subnet: 192.168.78.0/24
containers:
  web:
    netns: web-ns
    networks:
      quiet: {interface: front, aliases: [www, site]}
      dual: {interface: back, mac_address: "02:00:00:00:00:51"}
    default_route: {ipv4: dual, ipv6: dual}
    routes: [{to: 10.99.0.0/16, via: 10.50.0.254}]
    ports: ["0.0.0.0:8080:80", "5353:53/udp",
            {published: 8443, target: 443, host_ip: 127.0.0.1, network: dual}]
  lanner:
    networks: [dual, lan]
    default_route: lan
  flatter:
    networks: [flat]
"""


# Networks whose order no one chain of the table holds: the internal one has
# no guard rule (no port on 127.0.0.1), the others no input rule, and the
# macvlan network no rule at all. Each chain's rules follow the spec's order,
# so the export must merge them to give it back.
ORDERED = """\
version: 1
project: rich
networks:
  zeta:
    subnet: 10.60.0.0/24
  alpha:
    subnet: 10.61.0.0/24
    internal: true
  mid:
    subnet: 10.62.0.0/24
  mv:
    driver: macvlan
    parent: mvpar0
    subnet: 192.168.79.0/24
containers:
  web:
    networks: [zeta, alpha]
    ports: ["8080:80"]
  db:
    networks: [alpha]
  app:
    networks: [mid, mv]
    ports: ["9090:90"]
"""


def _parent(name: str) -> None:
    """An interface to be a macvlan parent (this kernel has no dummy driver)."""
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"],
                   check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


@pytest.mark.parametrize("example", sorted(ROUND_TRIP))
def test_export_destroy_apply_the_export_gives_the_same_kernel(
    sandbox: Path, capsys: pytest.CaptureFixture[str], example: str
) -> None:
    path = REPO / "examples" / example
    args: list[str] = []
    if ROUND_TRIP[example] is not None:
        host, address = ROUND_TRIP[example]
        _underlay(address)
        args = ["--host", host]
    project = spec_mod.load(path).project
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *args, str(path))
    assert code == 0, out + err
    before = _kernel()
    exported = sandbox / "exported.yaml"
    exported.write_text(_export(capsys, project))
    code, out, err = run_cli(capsys, "validate", str(exported))
    assert code == 0, out + err
    # Defaults are omitted; what was allocated is explicit.
    data = spec_mod.load(exported)
    assert all(a.ipv4_address is not None for c in data.containers.values()
               for a in c.attachments)
    assert "mtu: 1500" not in exported.read_text()
    code, out, err = run_cli(capsys, "destroy", "--auto-approve", *args, str(path))
    assert code == 0, out + err
    assert netns_list() == []
    # The exported spec, with no --host: the machine is found by its address.
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(exported))
    assert code == 0, out + err
    assert_same_kernel(_kernel(), before)
    for spec in (exported, path):
        code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", *(
            args if spec == path else []), str(spec))
        assert code == 0, out + err
        assert "No changes" in out


@pytest.mark.parametrize("text,parents", [(RICH, ("lan0", "lan1")), (ORDERED, ("mvpar0",))],
                         ids=["every-option", "network-order"])
def test_export_round_trip_of_every_option(
    sandbox: Path, capsys: pytest.CaptureFixture[str], text: str, parents: tuple[str, ...]
) -> None:
    for parent in parents:
        _parent(parent)
    spec = sandbox / "rich.yaml"
    spec.write_text(text)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    before = _kernel()
    exported = sandbox / "exported.yaml"
    exported.write_text(_export(capsys, "rich"))
    code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(spec))
    assert code == 0, out + err
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(exported))
    assert code == 0, out + err
    assert_same_kernel(_kernel(), before)
    # The spec the project came from plans nothing against the kernel the
    # export made: the bridge networks are in the spec's order (that of the
    # macvlan networks is nowhere in the kernel: they have no rules).
    code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 0, out + err
    again, original = spec_mod.load(exported), spec_mod.load(spec)

    def bridges(spec: Any) -> list[str]:
        return [n.name for n in spec.networks.values() if str(n.driver) == "bridge"]

    assert bridges(again) == bridges(original)
    if text == ORDERED:
        assert list(again.networks) == ["zeta", "alpha", "mid", "mv"]
    if text == RICH:
        assert again.networks["quiet"] == original.networks["quiet"]
        assert again.containers["web"].netns == "web-ns"


def test_export_of_the_overlay_names_the_machines_and_remote_members(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _underlay("192.0.2.11/24")
    mesh = REPO / "examples" / "overlay" / "mesh.yaml"
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--host", "node-a", str(mesh))
    assert code == 0, out + err
    text = _export(capsys, "mesh")
    assert "#   - the names of the machines: each is named by its address here" in text
    spec = spec_mod.load_text(text)
    assert {h.name: str(h.address) for h in spec.hosts.values()} == {
        "192.0.2.11": "192.0.2.11", "192.0.2.12": "192.0.2.12", "192.0.2.13": "192.0.2.13"}
    assert {c.name: c.host for c in spec.containers.values()} == {
        "web": "192.0.2.11", "agent": "192.0.2.11", "db": "192.0.2.12",
        "monitor": "192.0.2.13"}
    assert spec.containers["db"].attachments[0].aliases == ("database",)


def test_show_yaml_is_the_export(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shop = REPO / "examples" / "shop.yaml"
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(shop))
    assert code == 0, out + err
    code, shown, err = run_cli(capsys, "show", "--output", "yaml", str(shop))
    assert code == 0 and err == "", err
    exported = _export(capsys, "shop")
    assert spec_mod.load_text(shown) == spec_mod.load_text(exported)
    # What the kernel cannot tell is said, not guessed.
    assert "#   - labels and ip_range of networks" in shown
    assert "labels" not in shown.split("version: 1")[1]
    assert spec_mod.load_text(shown).containers.keys() == {"proxy", "web", "db", "batch"}
    code, out, err = run_cli(capsys, "export", "--project", "shop", "--output", "json")
    assert code == 0, err
    assert json.loads(out)["spec"] == __import__("yaml").safe_load(exported)


def test_export_of_a_project_the_kernel_does_not_hold(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "export", "--project", "shop")
    assert (code, out) == (1, "")
    assert err == ("error: the kernel holds nothing of project 'shop' (netapply ls lists the "
                   "projects found)\n")
    code, _, err = run_cli(capsys, "export", "--project", "Not_A_Project")
    assert code == 1 and "is not a project name" in err


SEED9 = (REPO / "examples" / "seed.yaml").read_text().replace("172.30.1.0/24", "172.30.9.0/24")


def _ls(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    code, out, err = run_cli(capsys, "ls", "--output", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["unread"] == []
    return {p["project"]: p for p in doc["projects"]}


def _veth_of(container: str) -> str:
    """The host end of a container's veth, by its mark."""
    return next(name for name, link in links().items()
                if f"/veth/{container}/" in (link.get("ifalias") or ""))


def _objects() -> dict[str, Any]:
    """Namespaces, their links and addresses, and the nftables tables (not the
    IPv6 address states, which settle by themselves a moment after an apply)."""
    return {"netns": netns_list(), **{
        ns or "host": {name: (link.get("ifalias"), addresses(ns, name))
                       for name, link in links(ns).items()}
        for ns in [None, *netns_list()]},
        "nft": subprocess.run(["nft", "list", "ruleset"], check=True, capture_output=True,
                              text=True).stdout}


def test_ls_and_destroy_project_leave_other_projects_and_foreign_objects(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = sandbox / "seed.yaml"
    seed.write_text(SEED9)
    shop = REPO / "examples" / "shop.yaml"
    for spec in (seed, shop):
        code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
        assert code == 0, out + err
    subprocess.run(["ip", "link", "add", "br-foreign", "type", "bridge"], check=True)
    subprocess.run(["ip", "netns", "add", "foreign"], check=True)

    found = _ls(capsys)
    assert sorted(found) == ["seed", "shop"]  # the foreign bridge is no project
    assert not found["seed"]["broken"] and not found["shop"]["broken"]
    assert [(n["name"], n["subnet"]) for n in found["shop"]["networks"]] == [
        ("backend", "172.30.2.0/24"), ("frontend", "172.30.1.0/24")]
    assert sorted(c["name"] for c in found["shop"]["containers"]) == [
        "batch", "db", "proxy", "web"]
    assert [(p["host_ip"], p["published"], p["container"], p["target"])
            for p in found["shop"]["ports"]] == [
        (None, 8080, "proxy", 80), ("127.0.0.1", 8443, "proxy", 443)]
    code, text, _ = run_cli(capsys, "ls")
    assert code == 0
    assert "project seed: 1 network(s), 2 container(s), 0 published port(s); ok" in text

    # Broken pieces: a container namespace without its veth, a bridge without
    # the firewall table.
    subprocess.run(["ip", "link", "del", _veth_of("db")], check=True)
    subprocess.run(["nft", "delete", "table", "inet", "netapply-seed"], check=True)
    found = _ls(capsys)
    assert found["shop"]["problems"] == [
        "namespace db: container db has no link on network backend, which its hosts file "
        "lists it on"]
    assert found["seed"]["problems"] == [
        "network(s) alpine-net have no firewall table (inet netapply-seed): no isolation, "
        "masquerade or published ports"]

    # Same confirmation as destroy SPEC: without a terminal, --auto-approve.
    before = _objects()
    code, _, err = run_cli(capsys, "destroy", "--project", "shop")
    assert code == 1 and "pass --auto-approve" in err
    with lock_held("shop", lock.LOCK_DIR) as holder:
        code, _, err = run_cli(capsys, "destroy", "--project", "shop", "--auto-approve",
                               "--lock-timeout", "0.3")
        assert code == 1 and f"PID {holder.pid}" in err
    assert _objects() == before

    code, out, err = run_cli(capsys, "destroy", "--project", "shop", "--auto-approve")
    assert code == 0, out + err
    assert "nothing owned by project 'shop' is left" in out
    assert sorted(_ls(capsys)) == ["seed"]
    assert netns_list() == ["container1", "container2", "foreign"]
    code, out, err = run_cli(capsys, "destroy", "--project", "seed", "--auto-approve")
    assert code == 0, out + err
    assert _ls(capsys) == {}
    assert netns_list() == ["foreign"]
    assert sorted(links()) == ["br-foreign", "lo"]
    assert json.loads(subprocess.run(["nft", "-j", "list", "tables"], check=True,
                                     capture_output=True, text=True).stdout)["nftables"][1:] == []


def test_destroy_needs_a_spec_or_a_project(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "destroy", "--auto-approve")
    assert (code, err) == (1, "error: destroy needs either SPEC or --project NAME (not both)\n")
    code, _, err = run_cli(capsys, "destroy", "--auto-approve", "--project", "seed",
                           str(REPO / "examples" / "seed.yaml"))
    assert code == 1


@pytest.mark.parametrize("container", ["web", "batch"])
def test_ls_names_a_container_whose_namespace_is_gone(
    sandbox: Path, capsys: pytest.CaptureFixture[str], container: str
) -> None:
    shop = REPO / "examples" / "shop.yaml"
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(shop))
    assert code == 0, out + err
    # `ip netns del` takes the container's veths with it; its hosts file, and
    # the hosts tables of its peers, still name it.
    subprocess.run(["ip", "netns", "del", container], check=True)
    problem = (f"container {container}: its namespace is gone; its hosts file "
               f"/etc/netns/{container}/hosts is left")
    shop_ls = _ls(capsys)["shop"]
    assert shop_ls["broken"] and shop_ls["problems"] == [problem]
    code, text, _ = run_cli(capsys, "ls")
    assert code == 0  # broken is not unread
    assert "2 published port(s); broken" in text
    assert f"  problem: {problem}" in text
    # Made again without the project's mark, it is not the project's.
    subprocess.run(["ip", "netns", "add", container], check=True)
    assert _ls(capsys)["shop"]["problems"] == [
        f"container {container}: its namespace is no longer the project's (no mark on its "
        f"loopback); its hosts file /etc/netns/{container}/hosts is left"]


def test_ls_shows_a_bridge_without_an_address_as_incomplete(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["ip", "link", "add", "brfoo", "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", "brfoo", "alias", "netapply/fake/bridge/x"],
                   check=True)
    fake = _ls(capsys)["fake"]
    assert fake["networks"] == [{"name": "x", "driver": "bridge", "subnet": None,
                                 "device": "brfoo"}]
    assert fake["broken"]
    assert "network x: its bridge brfoo has no address, so its subnet is unknown " \
        "(incomplete)" in fake["problems"]
    code, text, _ = run_cli(capsys, "ls")
    assert code == 0
    assert "  network x: bridge brfoo, no address (incomplete)" in text
    assert "None" not in text
