"""`netapply graph SPEC`: the spec drawn with Graphviz, read back with dot itself."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from reconciler import cli
from tests.graphparse import parse

REPO = Path(__file__).resolve().parent.parent
SHOP = REPO / "examples" / "shop.yaml"
MESH = REPO / "examples" / "overlay" / "mesh.yaml"


def graph(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["--no-color", "graph", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_shop_has_a_node_per_container_and_network_and_an_edge_per_attachment(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = graph(capsys, str(SHOP))
    assert (code, err) == (0, "")
    g = parse(out)
    assert g.of_kind("container") == {f"container/{n}" for n in
                                      ("proxy", "web", "db", "batch", "monitor")}
    assert g.of_kind("network") == {"network/frontend", "network/backend"}
    attachments = {e for e in g.edges if e[0].startswith("container/")}
    assert attachments == {("container/proxy", "network/frontend"),
                           ("container/web", "network/frontend"),
                           ("container/web", "network/backend"),
                           ("container/db", "network/backend")}
    # Explicit addresses as written, automatic ones as a first apply allocates them.
    assert g.lines(("container/proxy", "network/frontend"))[:2] == ["eth0", "172.30.1.10"]
    assert g.lines(("container/web", "network/frontend"))[:2] == ["eth0", "172.30.1.128 (auto)"]
    assert "fd00:30:1::3 (auto)" in g.lines(("container/web", "network/frontend"))
    assert g.lines(("container/db", "network/backend")) == ["eth0", "172.30.2.10"]
    assert "alias app" in g.lines(("container/web", "network/backend"))
    assert g.lines("network/backend")[:3] == ["network backend", "bridge 172.30.2.0/24",
                                             "gateway 172.30.2.1"]
    assert "internal" in g.lines("network/backend")
    assert "network_mode host" in g.lines("container/monitor")
    # Published ports: a node each, leading to the container.
    assert g.of_kind("port") == {"port/proxy/tcp/*/8080", "port/proxy/tcp/127.0.0.1/8443"}
    assert g.lines("port/proxy/tcp/127.0.0.1/8443") == ["published 127.0.0.1:8443/tcp"]
    assert g.lines(("port/proxy/tcp/*/8080", "container/proxy")) == ["to 80/tcp", "on frontend"]
    assert g.clusters == {}  # no hosts, no machines drawn


def test_a_network_and_a_container_of_the_same_name_are_two_nodes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path / "same.yaml", """\
        version: 1
        project: same
        networks:
          web: {subnet: 10.1.0.0/24}
        containers:
          web: {networks: [web]}
        """)
    code, out, _ = graph(capsys, str(spec))
    assert code == 0
    g = parse(out)
    assert {"network/web", "container/web"} <= set(g.nodes)
    assert g.lines(("container/web", "network/web")) == ["eth0", "10.1.0.2 (auto)"]


def test_node_ids_are_stable(capsys: pytest.CaptureFixture[str]) -> None:
    _, first, _ = graph(capsys, str(SHOP))
    _, second, _ = graph(capsys, str(SHOP))
    assert first == second


def test_hosts_are_clusters_and_overlays_span_them(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = graph(capsys, str(MESH))
    assert code == 0
    g = parse(out)
    assert g.clusters == {
        "cluster_host/node-a": {"container/web", "container/agent"},
        "cluster_host/node-b": {"container/db"},
        "cluster_host/node-c": {"container/monitor"},
    }
    assert g.cluster_labels["cluster_host/node-a"] == "host node-a (192.0.2.11)"
    assert g.of_kind("network") == {"network/app", "network/ops"}  # outside every machine
    assert ("container/db", "network/app") in g.edges
    assert ("container/monitor", "network/ops") in g.edges


def test_a_local_network_is_drawn_on_each_machine_using_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path / "two.yaml", """\
        version: 1
        project: two
        hosts:
          a: {address: 192.0.2.1}
          b: {address: 192.0.2.2}
        networks:
          lan: {subnet: 10.2.0.0/24}
        containers:
          x: {host: a, networks: [lan], ports: ["8080:80"]}
          y: {host: b, networks: [lan]}
        """)
    code, out, _ = graph(capsys, str(spec))
    assert code == 0
    g = parse(out)
    assert g.clusters == {
        "cluster_host/a": {"network/a/lan", "container/x", "port/x/tcp/*/8080"},
        "cluster_host/b": {"network/b/lan", "container/y"},
    }
    # Each machine allocates its own bridge network's addresses.
    assert g.lines(("container/x", "network/a/lan")) == ["eth0", "10.2.0.2 (auto)"]
    assert g.lines(("container/y", "network/b/lan")) == ["eth0", "10.2.0.2 (auto)"]
    code, out, _ = graph(capsys, "--host", "b", str(spec))
    assert code == 0
    assert parse(out).clusters == {"cluster_host/b": {"network/b/lan", "container/y"}}
    code, _, err = graph(capsys, "--host", "c", str(spec))
    assert code == 1 and "--host c: no such host" in err


def test_svg_is_drawn_by_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "shop.svg"
    code, out, err = graph(capsys, str(SHOP), "-o", str(target))
    assert (code, out) == (0, "")
    assert "Wrote" in err
    text = target.read_text()
    assert "<svg" in text and "container proxy" in text and "published 8080/tcp" in text
    assert sorted(os.listdir(tmp_path)) == ["shop.svg"]  # no temporary file left
    code, _, _ = graph(capsys, str(SHOP), "-o", str(tmp_path / "shop.png"))
    assert code == 0
    assert (tmp_path / "shop.png").read_bytes().startswith(b"\x89PNG")
    code, _, _ = graph(capsys, str(SHOP), "-o", str(tmp_path / "shop.dot"))
    assert code == 0
    assert set(parse((tmp_path / "shop.dot").read_text()).nodes) >= {"container/proxy"}


def test_without_dot_svg_fails_clearly_and_dot_output_still_works(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "shop.svg"
    target.write_text("old picture")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = graph(capsys, str(SHOP), "-o", str(target))
    assert code == 1
    assert "needs Graphviz's `dot` program" in err and "apt-get install graphviz" in err
    assert "Traceback" not in err
    assert target.read_text() == "old picture"
    code, _, _ = graph(capsys, str(SHOP), "-o", str(tmp_path / "shop.dot"))
    assert code == 0
    code, out, _ = graph(capsys, str(SHOP))
    assert code == 0 and out.startswith('graph "netapply-shop"')
    assert sorted(os.listdir(tmp_path)) == ["bin", "shop.dot", "shop.svg"]


def test_an_output_path_that_is_a_link_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "picture.svg"
    link.symlink_to(victim)
    code, _, err = graph(capsys, str(SHOP), "-o", str(link))
    assert code == 1 and "is a symbolic link" in err
    assert victim.read_text() == "keep me" and link.is_symlink()


@pytest.mark.parametrize("where", ["missing/pic.svg", "file/pic.svg", "dir.svg"])
def test_an_output_path_that_cannot_be_written_is_a_clear_error(
        where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.svg").mkdir()
    code, _, err = graph(capsys, str(SHOP), "-o", str(tmp_path / where))
    assert code == 1
    assert err.startswith(f"error: {tmp_path / where}") and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["dir.svg", "file"]


def test_an_unknown_picture_format_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = graph(capsys, str(SHOP), "-o", str(tmp_path / "shop.jpg"))
    assert code == 1 and "unknown picture format" in err
    assert os.listdir(tmp_path) == []


def test_an_invalid_spec_is_reported_with_its_position(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path / "bad.yaml", """\
        version: 1
        project: bad
        networks:
          n: {subnet: 10.3.0.0/24}
        containers:
          c: {networks: [nope]}
        """)
    code, out, err = graph(capsys, str(spec))
    assert code == 1 and out == ""
    assert f"{spec}:6:" in err and "nope" in err
