"""`netapply graph --live`: the kernel of this machine against the spec, with
drift marked, each test in its own private namespace."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from reconciler import desired, model
from tests.graphparse import Parsed, parse
from tests.kernelutil import run_cli

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: pic
networks:
  front: {subnet: 172.31.1.0/24}
  back: {subnet: 172.31.2.0/24, internal: true}
containers:
  web:
    networks:
      front: {ipv4_address: 172.31.1.10}
      back: {}
    ports: ["8080:80"]
  db:
    networks: [back]
"""


def live(capsys: pytest.CaptureFixture[str], spec: Path) -> Parsed:
    code, out, err = run_cli(capsys, "graph", "--live", str(spec))
    assert code == 0, err
    return parse(out)


def marked(attrs: dict[str, str], colour: str, style: str) -> bool:
    return attrs.get("color") == colour and style in attrs.get("style", "")


def test_live_graph_marks_a_deleted_veth_missing_and_a_changed_address(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = sandbox / "pic.yaml"
    spec.write_text(SPEC)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, err
    g = live(capsys, spec)
    assert "the kernel matches the spec" in g.label
    assert g.of_kind("container") == {"container/web", "container/db"}
    assert not any("color" in a for a in (*g.nodes.values(), *g.edges.values())
                   if a.get("color") != "gray40")
    assert g.lines(("container/db", "network/back"))[:2] == ["eth0", "172.31.2.2 (auto)"]

    # Someone deletes web's veth on front, and moves db to another address.
    subprocess.run(["ip", "link", "del", desired.host_ifname("pic", "web", "front")], check=True)
    subprocess.run(["ip", "-n", "db", "addr", "del", "172.31.2.2/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", "db", "addr", "add", "172.31.2.77/24", "dev", "eth0"], check=True)
    # ... and changes back's MTU, and drops the project's firewall table.
    subprocess.run(["ip", "link", "set", model.bridge_ifname("pic", "back"), "mtu", "1400"],
                   check=True)
    subprocess.run(["nft", "delete", "table", "inet", "netapply-pic"], check=True)
    g = live(capsys, spec)
    gone = g.edges[("container/web", "network/front")]
    assert marked(gone, "red", "dashed")
    assert "[missing]" in g.lines(("container/web", "network/front"))
    moved = g.edges[("container/db", "network/back")]
    assert marked(moved, "darkorange", "bold")
    assert g.lines(("container/db", "network/back"))[:3] == [
        "eth0", "spec 172.31.2.2/24", "kernel 172.31.2.77/24"]
    assert marked(g.nodes["network/back"], "darkorange", "bold")
    assert "[changed: mtu 1400 (spec 1500)]" in g.lines("network/back")
    assert marked(g.nodes["port/web/tcp/*/8080"], "red", "dashed")
    # The table's other rules (isolation, masquerade) have no place in the picture.
    assert "other difference(s) not drawn" in g.label
    # What did not change is drawn as it is.
    assert "color" not in g.nodes["container/web"]
    assert g.edges[("container/web", "network/back")].get("style") is None
    assert "dashed red: missing in the kernel" in g.label


def test_live_graph_marks_objects_the_spec_no_longer_has(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = sandbox / "pic.yaml"
    spec.write_text(SPEC)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, err
    # db and the published port leave the spec; the kernel still has them.
    spec.write_text(textwrap.dedent("""\
        version: 1
        project: pic
        networks:
          front: {subnet: 172.31.1.0/24}
          back: {subnet: 172.31.2.0/24, internal: true}
        containers:
          web:
            networks:
              front: {ipv4_address: 172.31.1.10}
              back: {}
        """))
    g = live(capsys, spec)
    assert marked(g.nodes["container/db"], "darkorange", "bold")
    assert "[not in the spec]" in g.lines("container/db")
    edge = g.edges[("container/db", "network/back")]
    assert marked(edge, "darkorange", "bold")
    assert "172.31.2.2/24" in g.lines(("container/db", "network/back"))
    port = g.nodes["port/web/tcp/*/8080"]
    assert marked(port, "darkorange", "bold")
    assert ("port/web/tcp/*/8080", "container/web") in g.edges
    assert "color" not in g.nodes["container/web"]


def test_live_graph_of_a_machine_of_a_spec_with_hosts(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mesh = Path(__file__).resolve().parent.parent / "examples" / "overlay" / "mesh.yaml"
    subprocess.run(["ip", "addr", "add", "192.0.2.11/24", "dev", "lo"], check=True)
    code, out, err = run_cli(capsys, "graph", "--live", str(mesh))
    assert code == 0
    assert "This machine is host 'node-a'" in err  # stdout holds the DOT alone
    g = parse(out)
    # Only this machine's share; the overlays span machines, outside its cluster.
    assert g.clusters == {"cluster_host/node-a": {"container/web", "container/agent"}}
    assert g.of_kind("network") == {"network/app", "network/ops"}
    # Nothing applied yet: everything this machine should have is missing.
    for attrs in (g.nodes["container/web"], g.nodes["network/app"],
                  g.edges[("container/web", "network/app")]):
        assert marked(attrs, "red", "dashed")
