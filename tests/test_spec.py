"""Loading specs: defaults, merging directories, and every validation message."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from reconciler import reserved, schema, spec, yamlsource
from reconciler.errors import InternalError, SpecError, Where
from reconciler.model import Driver, NetworkMode, Port, Route, bridge_ifname

REPO = Path(__file__).resolve().parent.parent
HEAD = "version: 1\nproject: shop\n"  # lines 1-2 of every document built by doc()


def doc(body: str) -> str:
    """A spec with version and project; the body starts on line 3."""
    return HEAD + textwrap.dedent(body)


def problems(text: str, filename: str = "s.yaml") -> list[str]:
    """The sorted 'file:line:col: message' lines that loading text reports."""
    with pytest.raises(SpecError) as caught:
        spec.load_text(text, filename)
    return sorted(str(problem) for problem in caught.value.problems)


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(textwrap.dedent(text))


SPEC_EXAMPLE = """\
version: 1
project: shop
hosts:
  node-a: {address: 192.0.2.11}
  node-b: {address: 192.0.2.12}
networks:
  frontend:
    driver: bridge
    subnet: 172.30.1.0/24
    gateway: 172.30.1.1
    ip_range: 172.30.1.128/25
    ipv6: {subnet: "fd00:30:1::/64", gateway: "fd00:30:1::1"}
    mtu: 1500
    interface: br-front
    internal: false
    icc: true
    masquerade: true
    labels: {team: web}
  mesh:
    driver: overlay
    vni: 4097
    port: 4789
    subnet: 10.200.0.0/24
  lan:
    driver: macvlan
    parent: eth1
    mode: bridge
    subnet: 192.168.50.0/24
    gateway: 192.168.50.1
containers:
  web:
    netns: web
    host: node-a
    network_mode: bridge
    networks:
      frontend:
        ipv4_address: 172.30.1.10
        ipv6_address: "fd00:30:1::10"
        mac_address: "02:42:ac:1e:01:0a"
        interface: eth0
        aliases: [www]
      mesh: {}
    default_route: frontend
    routes:
      - {to: 10.99.0.0/16, via: 172.30.1.254}
    ports:
      - "8080:80"
      - "127.0.0.1:5353:53/udp"
      - {published: 8443, target: 443, protocol: tcp, host_ip: 0.0.0.0, network: frontend}
  cache:
    network_mode: host
  batch:
    host: node-b
    network_mode: none
"""


# --- valid specs and defaults ------------------------------------------------------


def test_seed_example_loads_with_defaults() -> None:
    loaded = spec.load(REPO / "examples" / "seed.yaml")
    assert loaded.project == "seed"
    assert loaded.hosts == {}
    net = loaded.networks["alpine-net"]
    assert net.driver == Driver.BRIDGE
    assert net.subnet == ipaddress.IPv4Network("172.30.1.0/24")
    assert net.gateway == ipaddress.IPv4Address("172.30.1.1")
    assert net.interface == bridge_ifname("seed", "alpine-net")
    assert (net.mtu, net.internal, net.icc, net.masquerade) == (1500, False, True, True)
    assert (net.ip_range, net.ipv6_subnet, net.ipv6_gateway, net.vni) == (None, None, None, None)
    assert (net.labels, net.parent, net.mode) == ((), None, None)
    assert list(loaded.containers) == ["container1", "container2"]
    for name, container in loaded.containers.items():
        assert container.network_mode == NetworkMode.BRIDGE
        assert (container.netns, container.netns_path, container.host) == (name, None, None)
        assert container.ns == name
        (attachment,) = container.attachments
        assert (attachment.network, attachment.interface) == ("alpine-net", "eth0")
        assert attachment.ipv4_address is None and attachment.mac_address is None
        assert container.default_route == "alpine-net"
        assert (container.routes, container.ports) == ((), ())


def test_seed_example_positions() -> None:
    path = str(REPO / "examples" / "seed.yaml")
    loaded = spec.load(path)
    assert loaded.locate("networks", "alpine-net") == Where(path, 5, 3)
    assert loaded.locate("networks", "alpine-net", "subnet") == Where(path, 6, 5)
    assert loaded.locate("containers", "container2", "networks", "0") == Where(path, 11, 16)
    # list entries can be found by network name too
    assert loaded.locate("containers", "container2", "networks", "alpine-net") == Where(
        path, 11, 16
    )
    assert loaded.locate("networks", "alpine-net", "interface") == Where(path, 5, 3)


def test_spec_md_example_loads() -> None:
    loaded = spec.load_text(SPEC_EXAMPLE, "shop.yaml")
    assert loaded.hosts["node-a"].address == ipaddress.IPv4Address("192.0.2.11")
    front, mesh, lan = (loaded.networks[n] for n in ("frontend", "mesh", "lan"))
    assert front.interface == "br-front"
    assert front.ipv6_gateway == ipaddress.IPv6Address("fd00:30:1::1")
    assert front.labels == (("team", "web"),)
    assert (mesh.driver, mesh.gateway, mesh.mtu, mesh.vni, mesh.port) == (
        Driver.OVERLAY,
        None,
        1450,
        4097,
        4789,
    )
    assert (lan.parent, lan.mode, lan.gateway) == (
        "eth1",
        "bridge",
        ipaddress.ip_address("192.168.50.1"),
    )
    web = loaded.containers["web"]
    assert [a.interface for a in web.attachments] == ["eth0", "eth1"]
    assert web.attachments[0].aliases == ("www",)
    assert web.attachments[0].mac_address == "02:42:ac:1e:01:0a"
    assert web.routes == (
        Route(ipaddress.ip_network("10.99.0.0/16"), ipaddress.ip_address("172.30.1.254")),
    )
    assert web.ports == (
        Port(8080, 80, "tcp", None, "frontend"),
        Port(5353, 53, "udp", ipaddress.ip_address("127.0.0.1"), "frontend"),
        Port(8443, 443, "tcp", ipaddress.ip_address("0.0.0.0"), "frontend"),
    )
    cache, batch = loaded.containers["cache"], loaded.containers["batch"]
    assert (cache.network_mode, cache.netns, cache.ns, cache.host) == (
        NetworkMode.HOST,
        None,
        None,
        None,
    )
    assert (batch.network_mode, batch.netns, batch.attachments) == (NetworkMode.NONE, "batch", ())


def test_spec_md_example_validates_against_the_shipped_schema() -> None:
    shipped = schema.document()
    jsonschema.Draft202012Validator.check_schema(shipped)
    jsonschema.Draft202012Validator(shipped).validate(yaml.safe_load(SPEC_EXAMPLE))
    # Package data inside reconciler/, so that the wheel carries it.
    assert json.loads((REPO / "reconciler" / "netapply.schema.json").read_text()) == shipped


def test_a_missing_schema_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "SCHEMA_RESOURCE", "absent.schema.json")
    with pytest.raises(InternalError, match=r"package reconciler: cannot read absent\.schema"):
        schema.document()


def test_network_defaults_by_driver() -> None:
    loaded = spec.load_text(
        doc("""\
        hosts: {h: {address: 192.0.2.1}}
        networks:
          mesh: {driver: overlay, vni: 7, subnet: 10.1.0.0/24, ipv6: {subnet: "fd00:1::/64"}}
          mac: {driver: macvlan, parent: eth1, subnet: 10.2.0.0/24, ipv6: {subnet: "fd00:2::/64"}}
          ipv: {driver: ipvlan, parent: eth2, subnet: 10.3.0.0/24}
          closed: {subnet: 10.4.0.0/24, internal: true}
          open: {subnet: 10.5.0.0/24, masquerade: false, icc: false, mtu: 9000}
        """)
    )
    mesh, mac, ipv, closed, open_ = (
        loaded.networks[n] for n in ("mesh", "mac", "ipv", "closed", "open")
    )
    assert (mesh.gateway, mesh.ipv6_gateway, mesh.mtu) == (None, None, 1450)
    assert mac.gateway == ipaddress.ip_address("10.2.0.1")
    assert mac.ipv6_gateway == ipaddress.ip_address("fd00:2::1")
    assert (mac.mode, ipv.mode) == ("bridge", "l2")
    assert (closed.internal, closed.masquerade) == (True, False)
    assert (open_.masquerade, open_.icc, open_.mtu) == (False, False, 9000)


def test_container_defaults() -> None:
    loaded = spec.load_text(
        doc("""\
        networks:
          back: {subnet: 10.1.0.0/24, internal: true}
          front: {subnet: 10.2.0.0/24}
          mesh: {subnet: 10.3.0.0/24}
        containers:
          app:
            networks:
              back: {}
              front:
              mesh: {interface: eth1}
            ports: ["8080:80", "127.0.0.1:53:53/udp", "10.0.0.1:22:22"]
          sidecar: {netns_path: /proc/42/ns/net, networks: [front]}
          lonely: {}
        """)
    )
    app = loaded.containers["app"]
    # eth1 is taken by an explicit name, so the second auto name moves on to eth2
    assert [(a.network, a.interface) for a in app.attachments] == [
        ("back", "eth0"),
        ("front", "eth2"),
        ("mesh", "eth1"),
    ]
    assert app.default_route == "front"  # back is internal
    assert [p.network for p in app.ports] == ["front", "front", "front"]
    assert app.ports[1] == Port(53, 53, "udp", ipaddress.ip_address("127.0.0.1"), "front")
    sidecar = loaded.containers["sidecar"]
    assert (sidecar.netns, sidecar.netns_path, sidecar.ns) == (
        None,
        "/proc/42/ns/net",
        "/proc/42/ns/net",
    )
    lonely = loaded.containers["lonely"]
    assert (lonely.netns, lonely.attachments, lonely.default_route) == ("lonely", (), None)


def test_shared_netns_path_with_distinct_interfaces_is_allowed() -> None:
    loaded = spec.load_text(
        doc("""\
        networks:
          a: {subnet: 10.1.0.0/24}
          b: {subnet: 10.2.0.0/24}
        containers:
          x: {netns_path: /proc/1/ns/net, networks: {a: {interface: eth0}}}
          y: {netns_path: /proc/1/ns/net, networks: {b: {interface: eth1}}}
        """)
    )
    assert loaded.containers["y"].ns == "/proc/1/ns/net"


def test_ports_on_different_addresses_or_hosts_do_not_clash() -> None:
    spec.load_text(
        doc("""\
        hosts: {h1: {address: 192.0.2.1}, h2: {address: 192.0.2.2}}
        networks:
          a: {subnet: 10.1.0.0/24}
        containers:
          x: {host: h1, networks: [a], ports: ["127.0.0.1:80:80", "53:53/udp"]}
          y: {host: h1, networks: [a], ports: ["127.0.0.2:80:80", "53:53/tcp"]}
          z: {host: h2, networks: [a], ports: ["80:80"]}
        """)
    )


# --- directories ---------------------------------------------------------------------


def test_directory_files_are_merged(tmp_path: Path) -> None:
    write(tmp_path, "10-base.yaml", HEAD + "networks:\n  front: {subnet: 10.0.0.0/24}\n")
    write(
        tmp_path,
        "20-apps.yml",
        """\
        project: shop
        containers:
          web: {networks: [front]}
        """,
    )
    write(tmp_path, "30-empty.yaml", "# nothing here yet\n")
    write(tmp_path, "notes.txt", "not a spec")
    loaded = spec.load(tmp_path)
    assert loaded.project == "shop"
    assert list(loaded.networks) == ["front"]
    assert loaded.containers["web"].attachments[0].network == "front"
    assert loaded.locate("containers", "web") == Where(str(tmp_path / "20-apps.yml"), 3, 3)


def test_name_defined_in_two_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", HEAD + "networks:\n  front: {subnet: 10.0.0.0/24}\n")
    write(
        tmp_path,
        "b.yaml",
        "networks:\n  back: {subnet: 10.1.0.0/24}\n  front: {subnet: 10.2.0.0/24}\n",
    )
    with pytest.raises(SpecError) as caught:
        spec.load(str(tmp_path))
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert [str(p) for p in caught.value.problems] == [
        f"{b}:3:3: network 'front': defined twice (first at {a}:4:3)"
    ]


def test_project_must_agree_and_appear(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "project: shop\n")
    write(tmp_path, "b.yaml", "project: store\n")
    with pytest.raises(SpecError) as caught:
        spec.load(tmp_path)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'b.yaml'}:1:1: project: 'store' disagrees with 'shop'"
        f" at {tmp_path / 'a.yaml'}:1:1",
        f"spec: version is required, but none of the files in {tmp_path} sets it",
    ]


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"^spec: .*nope\.yaml does not exist$"):
        spec.load(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"contains no \*\.yaml or \*\.yml files$"):
        spec.load(tmp_path)


def test_file_path_is_reported_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s.yaml").write_text(HEAD + "networks: {a: {subnet: x}}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as caught:
        spec.load("s.yaml")
    assert str(caught.value) == (
        "s.yaml:3:16: network 'a': subnet 'x' is not an IPv4 network"
        " in CIDR form like 172.30.1.0/24"
    )


# --- invalid specs: one row per check ----------------------------------------------------

NETS = """\
networks:
  front: {subnet: 172.30.1.0/24}
  back: {subnet: 172.30.2.0/24, internal: true}
"""  # lines 3-5


def with_nets(containers: str) -> str:
    """HEAD + NETS + containers; the containers text starts on line 6."""
    return HEAD + NETS + textwrap.dedent(containers)


INVALID = {
    # -- YAML and top level
    "yaml syntax": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/24\n",
        [
            "s.yaml:5:1: YAML syntax error: expected ',' or '}', but got '<stream end>'"
            " (while parsing a flow mapping)"
        ],
    ),
    "tab indentation": (
        HEAD + "networks:\n  a:\n\tsubnet: 10.0.0.0/24\n",
        [
            "s.yaml:5:1: YAML syntax error: found character '\\t' that cannot start any token"
            " (while scanning for the next token); indent with spaces, not tabs"
        ],
    ),
    "empty file": (
        "# only a comment\n",
        ["s.yaml:1:1: spec: the file is empty; a spec needs at least version and project"],
    ),
    "top level is a list": (
        "- version: 1\n",
        [
            "s.yaml:1:1: spec: the top level must be a mapping with keys like version and project"
            " (got a list)"
        ],
    ),
    "two documents": (
        HEAD + "---\nproject: other\n",
        [
            "s.yaml:3:1: YAML syntax error: expected a single document in the stream,"
            " but found another document"
        ],
    ),
    "duplicate key in one file": (
        HEAD + "containers:\n  web: {}\n  web: {}\n",
        ["s.yaml:5:3: container 'web': defined twice (first at s.yaml:4:3)"],
    ),
    "key that is not a string": (
        HEAD + "networks:\n  no: {subnet: 10.0.0.0/24}\n",
        ["s.yaml:4:3: networks: key 'no' is read by YAML as false, not as text; quote it"],
    ),
    "python tag": (
        HEAD + "containers: !!python/object:os.system {}\n",
        [
            "s.yaml:3:13: YAML: could not determine a constructor for the tag"
            " 'tag:yaml.org,2002:python/object:os.system'"
        ],
    ),
    # -- schema
    "missing version and project": (
        "networks: {}\n",
        ["s.yaml:1:1: spec: project is required", "s.yaml:1:1: spec: version is required"],
    ),
    "wrong version": (
        "version: 2\nproject: shop\n",
        ["s.yaml:1:1: version: must be 1 (got 2)"],
    ),
    "project pattern": (
        "version: 1\nproject: Shop\n",
        ["s.yaml:2:1: project: 'Shop' must match ^[a-z][a-z0-9-]{0,15}$"],
    ),
    "project with a trailing newline": (
        'version: 1\nproject: "shop\\n"\n',
        ["s.yaml:2:1: project: 'shop\\n' must match ^[a-z][a-z0-9-]{0,15}$"],
    ),
    "unknown top-level key": (
        HEAD + "netwroks: {}\n",
        ["s.yaml:3:1: spec: unknown key 'netwroks' (did you mean 'networks'?)"],
    ),
    "unknown network key": (
        doc("""\
        networks:
          frontend:
            subnett: 172.30.1.0/24
        """),
        [
            "s.yaml:4:3: network 'frontend': subnet is required",
            "s.yaml:5:5: network 'frontend': unknown key 'subnett' (did you mean 'subnet'?)",
        ],
    ),
    "unknown attachment key": (
        with_nets("containers:\n  web: {networks: {front: {ipv4_adress: 172.30.1.5}}}\n"),
        [
            "s.yaml:7:28: container 'web': unknown key 'ipv4_adress' in networks.front"
            " (did you mean 'ipv4_address'?)"
        ],
    ),
    "enum": (
        HEAD + "containers:\n  web: {network_mode: bridged}\n",
        [
            "s.yaml:4:9: container 'web': network_mode must be one of bridge, host, none"
            " (got 'bridged')"
        ],
    ),
    "network name pattern": (
        HEAD + "networks:\n  Front: {subnet: 10.0.0.0/24}\n",
        ["s.yaml:4:3: networks: name 'Front' must match ^[a-z][a-z0-9_-]{0,30}$"],
    ),
    "wrong type with quoting hint": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/24, ipv6: {subnet: 1:2:3}}\n",
        [
            "s.yaml:4:35: network 'a': ipv6.subnet must be a string (got 3723);"
            " quote it so YAML reads it as text"
        ],
    ),
    "unquoted port read as base-60": (
        with_nets("containers:\n  web: {networks: [front], ports: [22:22]}\n"),
        [
            "s.yaml:7:36: container 'web': ports[0] must be a quoted string like \"8080:80\""
            " or a mapping with published and target (got 1342); quote it so YAML reads it as text"
        ],
    ),
    "networks neither list nor map": (
        with_nets("containers:\n  web: {networks: front}\n"),
        [
            "s.yaml:7:9: container 'web': networks must be a list of network names or a mapping"
            " of network names to attachment options (got 'front')"
        ],
    ),
    "out of range": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/24, mtu: 10}\n",
        ["s.yaml:4:28: network 'a': mtu must be between 68 and 65535 (got 10)"],
    ),
    "route without via": (
        with_nets("containers:\n  web: {networks: [front], routes: [{to: 10.9.0.0/16}]}\n"),
        ["s.yaml:7:37: container 'web': routes[0].via is required"],
    ),
    "null container": (
        HEAD + "containers:\n  web:\n",
        [
            "s.yaml:4:3: container 'web': must be a mapping of container settings,"
            " or {} for all defaults (got nothing)"
        ],
    ),
    # -- references
    "unknown network": (
        with_nets("containers:\n  web: {networks: [front, backend]}\n"),
        ["s.yaml:7:27: container 'web': network 'backend' is not defined in networks"],
    ),
    "network listed twice": (
        with_nets("containers:\n  web: {networks: [front, front]}\n"),
        ["s.yaml:7:27: container 'web': network 'front' is listed twice"],
    ),
    "unknown host": (
        HEAD + "hosts: {a: {address: 192.0.2.1}}\ncontainers:\n  web: {host: b}\n",
        ["s.yaml:5:9: container 'web': host 'b' is not defined in hosts"],
    ),
    "host required when hosts exist": (
        HEAD
        + "hosts: {a: {address: 192.0.2.1}}\ncontainers:\n"
        + "  web: {}\n  cache: {network_mode: host}\n",
        ["s.yaml:5:3: container 'web': host is required because the spec has hosts"],
    ),
    "host address twice": (
        HEAD + "hosts:\n  a: {address: 192.0.2.1}\n  b: {address: 192.0.2.1}\n",
        ["s.yaml:5:7: host 'b': address 192.0.2.1 is already used by host 'a'"],
    ),
    "host address invalid": (
        HEAD + "hosts:\n  a: {address: node-a.example}\n",
        ["s.yaml:4:7: host 'a': address 'node-a.example' is not an IP address"],
    ),
    # -- network addresses
    "subnet not cidr": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0}\n",
        [
            "s.yaml:4:7: network 'a': subnet '10.0.0.0' is not an IPv4 network in CIDR form"
            " like 172.30.1.0/24"
        ],
    ),
    "subnet host bits": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.5/24}\n",
        [
            "s.yaml:4:7: network 'a': subnet 10.0.0.5/24 has host bits set"
            " (did you mean 10.0.0.0/24?)"
        ],
    ),
    "subnet ipv6": (
        HEAD + 'networks:\n  a: {subnet: "fd00::/64"}\n',
        [
            "s.yaml:4:7: network 'a': subnet fd00::/64 is not an IPv4 network"
            " (IPv6 subnets go under ipv6.subnet)"
        ],
    ),
    "subnet too small": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/31}\n",
        ["s.yaml:4:7: network 'a': subnet 10.0.0.0/31 is too small (use /30 or larger)"],
    ),
    "gateway outside": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/24, gateway: 10.0.1.1}\n",
        ["s.yaml:4:28: network 'a': gateway 10.0.1.1 is outside subnet 10.0.0.0/24"],
    ),
    "gateway broadcast": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/24, gateway: 10.0.0.255}\n",
        [
            "s.yaml:4:28: network 'a': gateway 10.0.0.255 is the broadcast address"
            " of subnet 10.0.0.0/24"
        ],
    ),
    "gateway not an address": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/24, gateway: 10.0.0.0/24}\n",
        ["s.yaml:4:28: network 'a': gateway '10.0.0.0/24' is not an IPv4 address"],
    ),
    "ip_range outside": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/24, ip_range: 10.0.1.0/25}\n",
        ["s.yaml:4:28: network 'a': ip_range 10.0.1.0/25 is not inside subnet 10.0.0.0/24"],
    ),
    "ipv6 subnet invalid": (
        HEAD + 'networks:\n  a: {subnet: 10.0.0.0/24, ipv6: {subnet: "fd00::/129"}}\n',
        [
            "s.yaml:4:35: network 'a': ipv6.subnet 'fd00::/129' is not an IPv6 network"
            " in CIDR form like fd00:30:1::/64"
        ],
    ),
    "ipv6 gateway outside": (
        HEAD
        + "networks:\n"
        + '  a: {subnet: 10.0.0.0/24, ipv6: {subnet: "fd00::/64", gateway: "fd01::1"}}\n',
        ["s.yaml:4:56: network 'a': ipv6.gateway fd01::1 is outside ipv6.subnet fd00::/64"],
    ),
    "overlapping subnets": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/16}\n  b: {subnet: 10.0.3.0/24}\n",
        ["s.yaml:5:7: network 'b': subnet 10.0.3.0/24 overlaps subnet 10.0.0.0/16 of network 'a'"],
    ),
    "overlapping ipv6 subnets": (
        doc("""\
        networks:
          a: {subnet: 10.1.0.0/24, ipv6: {subnet: "fd00::/48"}}
          b: {subnet: 10.2.0.0/24, ipv6: {subnet: "fd00:0:0:1::/64"}}
        """),
        [
            "s.yaml:5:35: network 'b': ipv6.subnet fd00:0:0:1::/64 overlaps ipv6.subnet fd00::/48"
            " of network 'a'"
        ],
    ),
    # -- network options
    "bridge device name twice": (
        HEAD + "networks:\n  a: {subnet: 10.1.0.0/24, interface: br-x}\n"
        "  b: {subnet: 10.2.0.0/24, interface: br-x}\n",
        ["s.yaml:5:28: network 'b': interface 'br-x' is already the bridge device of network 'a'"],
    ),
    "bridge device name too long": (
        HEAD + "networks:\n  a: {subnet: 10.1.0.0/24, interface: br-very-long-name}\n",
        ["s.yaml:4:28: network 'a': interface 'br-very-long-name' is longer than 15 characters"],
    ),
    "masquerade on internal": (
        HEAD + "networks:\n  a: {subnet: 10.1.0.0/24, internal: true, masquerade: true}\n",
        ["s.yaml:4:44: network 'a': masquerade cannot be true on an internal network"],
    ),
    "overlay needs hosts": (
        HEAD + "networks:\n  m: {driver: overlay, vni: 5, subnet: 10.1.0.0/24}\n",
        ["s.yaml:4:3: network 'm': overlay networks need a hosts section listing the machines"],
    ),
    "overlay needs vni": (
        HEAD
        + "hosts: {h: {address: 192.0.2.1}}\nnetworks:\n"
        + "  m: {driver: overlay, subnet: 10.1.0.0/24}\n",
        ["s.yaml:5:3: network 'm': vni is required for overlay networks"],
    ),
    "vni twice": (
        HEAD + "hosts: {h: {address: 192.0.2.1}}\nnetworks:\n"
        "  m: {driver: overlay, vni: 5, subnet: 10.1.0.0/24}\n"
        "  n: {driver: overlay, vni: 5, subnet: 10.2.0.0/24}\n",
        ["s.yaml:6:24: network 'n': vni 5 is already used by network 'm'"],
    ),
    "vni on a bridge": (
        HEAD + "networks:\n  a: {subnet: 10.1.0.0/24, vni: 5}\n",
        ["s.yaml:4:28: network 'a': vni only applies to overlay networks"],
    ),
    "macvlan needs parent": (
        HEAD + "networks:\n  lan: {driver: macvlan, subnet: 10.1.0.0/24}\n",
        ["s.yaml:4:3: network 'lan': parent is required for macvlan networks"],
    ),
    "mode of another driver": (
        HEAD + "networks:\n  lan: {driver: macvlan, parent: eth1, mode: l2, subnet: 10.1.0.0/24}\n",
        [
            "s.yaml:4:40: network 'lan': mode l2 is not valid for macvlan networks"
            " (use one of bridge, private, vepa, passthru)"
        ],
    ),
    # -- container addresses
    "address outside subnet": (
        with_nets("containers:\n  web:\n    networks:\n      front: {ipv4_address: 172.30.2.10}\n"),
        [
            "s.yaml:9:15: container 'web': ipv4_address 172.30.2.10 is outside network 'front'"
            " (172.30.1.0/24)"
        ],
    ),
    "address is the gateway": (
        with_nets("containers:\n  web: {networks: {front: {ipv4_address: 172.30.1.1}}}\n"),
        ["s.yaml:7:28: container 'web': ipv4_address 172.30.1.1 is the gateway of network 'front'"],
    ),
    "address is the network address": (
        with_nets("containers:\n  web: {networks: {front: {ipv4_address: 172.30.1.0}}}\n"),
        [
            "s.yaml:7:28: container 'web': ipv4_address 172.30.1.0 is the network address"
            " of network 'front' (172.30.1.0/24)"
        ],
    ),
    "address is the broadcast address": (
        with_nets("containers:\n  web: {networks: {front: {ipv4_address: 172.30.1.255}}}\n"),
        [
            "s.yaml:7:28: container 'web': ipv4_address 172.30.1.255 is the broadcast address"
            " of network 'front' (172.30.1.0/24)"
        ],
    ),
    "address not ipv4": (
        with_nets("containers:\n  web: {networks: {front: {ipv4_address: 'fd00::1'}}}\n"),
        ["s.yaml:7:28: container 'web': ipv4_address 'fd00::1' is not an IPv4 address"],
    ),
    "duplicate address": (
        with_nets(
            "containers:\n  a: {networks: {front: {ipv4_address: 172.30.1.9}}}\n"
            "  b: {networks: {front: {ipv4_address: 172.30.1.9}}}\n"
        ),
        [
            "s.yaml:8:26: container 'b': ipv4_address 172.30.1.9 on network 'front' is already used"
            " by container 'a'"
        ],
    ),
    "ipv6 address without ipv6 network": (
        with_nets("containers:\n  web: {networks: {front: {ipv6_address: 'fd00::5'}}}\n"),
        [
            "s.yaml:7:28: container 'web': ipv6_address is set but network 'front'"
            " has no ipv6 subnet"
        ],
    ),
    "ipv6 address outside": (
        HEAD + 'networks:\n  a: {subnet: 10.1.0.0/24, ipv6: {subnet: "fd00::/64"}}\n'
        "containers:\n  web: {networks: {a: {ipv6_address: 'fd01::5'}}}\n",
        ["s.yaml:6:24: container 'web': ipv6_address fd01::5 is outside network 'a' (fd00::/64)"],
    ),
    "pool exhausted": (
        doc("""\
        networks:
          small: {subnet: 10.1.0.0/24, ip_range: 10.1.0.0/30}
        containers:
          a: {networks: [small]}
          b: {networks: [small]}
          c: {networks: [small]}
        """),
        [
            "s.yaml:4:32: network 'small': 3 containers need an automatic IPv4 address,"
            " but 10.1.0.0/30 has room for 2"
        ],
    ),
    "duplicate mac address": (
        with_nets(
            "containers:\n  a: {networks: {front: {mac_address: '02:00:00:00:00:01'}}}\n"
            "  b: {networks: {front: {mac_address: '02:00:00:00:00:01'}}}\n"
        ),
        [
            "s.yaml:8:26: container 'b': mac_address 02:00:00:00:00:01 on network 'front'"
            " is already used by container 'a'"
        ],
    ),
    "mac address format": (
        with_nets("containers:\n  web: {networks: {front: {mac_address: '02:42:ac'}}}\n"),
        [
            "s.yaml:7:28: container 'web': mac_address '02:42:ac' is not a MAC address"
            " like 02:42:ac:1e:01:0a"
        ],
    ),
    "mac address multicast": (
        with_nets("containers:\n  web: {networks: {front: {mac_address: '01:00:5e:00:00:01'}}}\n"),
        [
            "s.yaml:7:28: container 'web': mac_address 01:00:5e:00:00:01 is a multicast address"
            " (the first byte must be even)"
        ],
    ),
    # -- interfaces and namespaces
    "interface too long": (
        with_nets("containers:\n  web: {networks: {front: {interface: eth-with-a-long-name}}}\n"),
        [
            "s.yaml:7:28: container 'web': networks.front.interface 'eth-with-a-long-name'"
            " is longer than 15 characters"
        ],
    ),
    "interface with a slash": (
        with_nets("containers:\n  web: {networks: {front: {interface: eth/0}}}\n"),
        [
            "s.yaml:7:28: container 'web': networks.front.interface must be an interface name of"
            " 1 to 15 letters, digits, '_', '.' or '-', other than '.' and '..' (got 'eth/0')"
        ],
    ),
    "interface dot-dot": (
        with_nets("containers:\n  web: {networks: {front: {interface: '..'}}}\n"),
        [
            "s.yaml:7:28: container 'web': networks.front.interface must be an interface name of"
            " 1 to 15 letters, digits, '_', '.' or '-', other than '.' and '..' (got '..')"
        ],
    ),
    "interface lo": (
        with_nets("containers:\n  web: {networks: {front: {interface: lo}}}\n"),
        [
            "s.yaml:7:28: container 'web': interface 'lo' is the namespace's loopback device;"
            " choose another name"
        ],
    ),
    "interface twice in a container": (
        with_nets(
            "containers:\n  web:\n    networks:\n      front: {interface: eth0}\n"
            "      back: {interface: eth0}\n"
        ),
        ["s.yaml:10:14: container 'web': interface 'eth0' is already used for network 'front'"],
    ),
    "interface twice in a shared namespace": (
        with_nets(
            "containers:\n  a: {netns_path: /proc/7/ns/net, networks: [front]}\n"
            "  b: {netns_path: /proc/7/ns/net, networks: [back]}\n"
        ),
        [
            "s.yaml:8:46: container 'b': interface 'eth0' is already used by container 'a'"
            " in the same namespace"
        ],
    ),
    "netns shared by name": (
        HEAD + "containers:\n  a: {netns: shared}\n  b: {netns: shared}\n",
        ["s.yaml:5:7: container 'b': netns 'shared' is already used by container 'a'"],
    ),
    "netns shared with a default": (
        HEAD + "containers:\n  a: {}\n  b: {netns: a}\n",
        ["s.yaml:5:7: container 'b': netns 'a' is already used by container 'a'"],
    ),
    "netns not a safe file name": (
        HEAD + "containers:\n  a: {netns: ../etc}\n",
        [
            "s.yaml:4:7: container 'a': netns '../etc' is not safe as a file name (use up to 64"
            " letters, digits, '_', '.' or '-', starting with a letter or digit)"
        ],
    ),
    "netns and netns_path": (
        HEAD + "containers:\n  a: {netns: a, netns_path: /proc/1/ns/net}\n",
        ["s.yaml:4:17: container 'a': netns and netns_path cannot both be set"],
    ),
    "netns_path to another container's netns": (
        HEAD + "containers:\n  web: {}\n  side: {netns_path: /run/netns/web}\n"
        "  other: {netns: own}\n  far: {netns_path: /run/netns//./own/}\n",
        [
            "s.yaml:5:10: container 'side': netns_path /run/netns/web is the namespace of"
            " container 'web' (netns web), which netapply makes and deletes with that container;"
            " a container cannot also be attached to it by path",
            "s.yaml:7:9: container 'far': netns_path /run/netns//./own/ is the namespace of"
            " container 'other' (netns own), which netapply makes and deletes with that"
            " container; a container cannot also be attached to it by path",
        ],
    ),
    "netns_path relative": (
        HEAD + "containers:\n  a: {netns_path: proc/1/ns/net}\n",
        ["s.yaml:4:7: container 'a': netns_path 'proc/1/ns/net' must be an absolute path"],
    ),
    # -- network modes
    "host mode with networks and more": (
        with_nets(
            "containers:\n  c:\n    network_mode: host\n    networks: [front]\n"
            "    ports: ['80:80']\n    netns: c\n"
        ),
        [
            "s.yaml:9:5: container 'c': network_mode host cannot be combined with networks",
            "s.yaml:10:5: container 'c': network_mode host cannot be combined with ports",
            "s.yaml:11:5: container 'c': network_mode host cannot be combined with netns",
        ],
    ),
    "none mode with routes": (
        HEAD + "containers:\n  c: {network_mode: none, default_route: x, routes: []}\n",
        [
            "s.yaml:4:27: container 'c': network_mode none cannot be combined with default_route",
            "s.yaml:4:45: container 'c': network_mode none cannot be combined with routes",
        ],
    ),
    # -- default route and routes
    "default route not attached": (
        with_nets("containers:\n  web: {networks: [front], default_route: back}\n"),
        [
            "s.yaml:7:28: container 'web': default_route 'back' is not one of the container's"
            " networks"
        ],
    ),
    "default route internal": (
        with_nets("containers:\n  web: {networks: [front, back], default_route: back}\n"),
        [
            "s.yaml:7:34: container 'web': default_route 'back' is an internal network,"
            " which has no way out"
        ],
    ),
    "default route without gateway": (
        HEAD + "hosts: {h: {address: 192.0.2.1}}\nnetworks:\n"
        "  m: {driver: overlay, vni: 5, subnet: 10.1.0.0/24}\n"
        "containers:\n  a: {host: h, networks: [m], default_route: m}\n",
        ["s.yaml:7:31: container 'a': default_route 'm' has no gateway"],
    ),
    "route via outside": (
        with_nets(
            "containers:\n  web: {networks: [front], routes: [{to: 10.9.0.0/16, via: 10.8.0.1}]}\n"
        ),
        [
            "s.yaml:7:55: container 'web': routes[0].via 10.8.0.1 is not inside the subnet of any"
            " of the container's networks"
        ],
    ),
    "route to invalid": (
        with_nets(
            "containers:\n"
            "  web: {networks: [front], routes: [{to: 10.9.0.0/33, via: 172.30.1.9}]}\n"
        ),
        [
            "s.yaml:7:38: container 'web': routes[0].to '10.9.0.0/33' is not a network in CIDR form"
            " like 172.30.1.0/24"
        ],
    ),
    "route family mismatch": (
        with_nets(
            "containers:\n  web: {networks: [front], routes: [{to: 'fd00::/8', via: 172.30.1.9}]}\n"
        ),
        [
            "s.yaml:7:54: container 'web': routes[0].via 172.30.1.9 is IPv4 but routes[0].to"
            " fd00::/8 is IPv6"
        ],
    ),
    "route listed twice": (
        with_nets("containers:\n  c:\n    networks: [front]\n    routes:\n"
                  "      - {to: 10.99.0.0/16, via: 172.30.1.254}\n"
                  "      - {to: 10.99.0.0/16, via: 172.30.1.253}\n"),
        ["s.yaml:11:10: container 'c': routes[1].to 10.99.0.0/16 is listed twice (also routes[0])"],
    ),
    "route via the broadcast or network address": (
        with_nets("containers:\n  web:\n    networks: [front]\n    routes:\n"
                  "      - {to: 10.9.0.0/16, via: 172.30.1.255}\n"
                  "      - {to: 10.8.0.0/16, via: 172.30.1.0}\n"),
        [
            "s.yaml:10:27: container 'web': routes[0].via 172.30.1.255 is the broadcast address"
            " of network 'front' (172.30.1.0/24)",
            "s.yaml:11:27: container 'web': routes[1].via 172.30.1.0 is the network address"
            " of network 'front' (172.30.1.0/24)",
        ],
    ),
    # -- values the kernel refuses (reserved.py)
    "host address multicast, loopback or unspecified": (
        HEAD + "hosts:\n  a: {address: 239.1.1.1}\n  b: {address: '::1'}\n"
        "  c: {address: 0.0.0.0}\n  d: {address: 169.254.7.1}\n",
        [
            "s.yaml:4:7: host 'a': address 239.1.1.1 is multicast (224.0.0.0/4): other machines"
            " cannot send VXLAN packets to it",
            "s.yaml:5:7: host 'b': address ::1 is loopback (::1/128): other machines cannot send"
            " VXLAN packets to it",
            "s.yaml:6:7: host 'c': address 0.0.0.0 is unspecified ('this network') (0.0.0.0/8):"
            " other machines cannot send VXLAN packets to it",
        ],
    ),
    "subnet multicast": (
        HEAD + "networks:\n  a: {subnet: 224.0.0.0/24}\n",
        [
            "s.yaml:4:7: network 'a': subnet 224.0.0.0/24 is multicast (224.0.0.0/4): the kernel"
            " routes no unicast traffic to multicast addresses (ENETUNREACH)"
        ],
    ),
    "subnet everything": (
        HEAD + "networks:\n  a: {subnet: 0.0.0.0/0}\n",
        [
            "s.yaml:4:7: network 'a': subnet 0.0.0.0/0 includes 0.0.0.0/8, which is unspecified"
            " ('this network'): the kernel reads 0.0.0.0 as 'any address', and a route to"
            " 0.0.0.0/0 is the default route"
        ],
    ),
    "subnet loopback": (
        HEAD + "networks:\n  a: {subnet: 127.0.0.0/24}\n",
        [
            "s.yaml:4:7: network 'a': subnet 127.0.0.0/24 is loopback (127.0.0.0/8): every"
            " namespace delivers these to its own lo, so no other end is reached"
        ],
    ),
    "subnet link-local": (
        HEAD + "networks:\n  a: {subnet: 169.254.0.0/16}\n",
        [
            "s.yaml:4:7: network 'a': subnet 169.254.0.0/16 is link-local (169.254.0.0/16): the"
            " host routes link-local traffic on its own links (169.254.169.254 is the cloud"
            " metadata service)"
        ],
    ),
    "ipv6 subnet multicast": (
        HEAD + 'networks:\n  a: {subnet: 10.0.0.0/24, ipv6: {subnet: "ff02::/64"}}\n',
        [
            "s.yaml:4:35: network 'a': ipv6.subnet ff02::/64 is multicast (ff00::/8): the kernel"
            " refuses multicast addresses on interfaces (EADDRNOTAVAIL)"
        ],
    ),
    "ipv6 subnet unspecified": (
        HEAD + 'networks:\n  a: {subnet: 10.0.0.0/24, ipv6: {subnet: "::/126"}}\n',
        [
            "s.yaml:4:35: network 'a': ipv6.subnet ::/126 includes ::/128, which is unspecified:"
            " the kernel reads :: as 'any address'"
        ],
    ),
    "ipv6 subnet link-local": (
        HEAD + 'networks:\n  a: {subnet: 10.0.0.0/24, ipv6: {subnet: "fe80::/64"}}\n',
        [
            "s.yaml:4:35: network 'a': ipv6.subnet fe80::/64 is link-local (fe80::/10): the"
            " kernel gives every interface its own fe80:: address and route, so the network"
            " would never converge"
        ],
    ),
    "ipv6 address with a zone": (
        HEAD + 'networks:\n  a: {subnet: 10.0.0.0/24, ipv6: {subnet: "fd00:1::/64"}}\n'
        'containers:\n  c: {networks: {a: {ipv6_address: "fd00:1::10%eth0"}}}\n',
        [
            "s.yaml:6:22: container 'c': ipv6_address 'fd00:1::10%eth0' has a zone index"
            " ('%eth0'); write the address without it (an interface's addresses carry no zone)"
        ],
    ),
    "ipv6 subnet with a zone": (
        HEAD + 'networks:\n  a: {subnet: 10.0.0.0/24, ipv6: {subnet: "fd00:1::%eth0/64"}}\n',
        [
            "s.yaml:4:35: network 'a': ipv6.subnet 'fd00:1::%eth0/64' has a zone index"
            " ('%eth0'); write the address without it (an interface's addresses carry no zone)"
        ],
    ),
    "bridge device reserved or loopback": (
        HEAD + "networks:\n  a: {subnet: 10.0.0.0/24, interface: all}\n"
        "  b: {subnet: 10.0.1.0/24, interface: default}\n"
        "  c: {subnet: 10.0.2.0/24, interface: lo}\n",
        [
            "s.yaml:4:28: network 'a': interface 'all' is reserved: the kernel refuses it"
            " (/proc/sys/net/ipv4/conf/all holds the settings of every interface)",
            "s.yaml:5:28: network 'b': interface 'default' is reserved: the kernel refuses it"
            " (/proc/sys/net/ipv4/conf/default holds the settings of new interfaces)",
            "s.yaml:6:28: network 'c': interface 'lo' is the host's loopback device;"
            " choose another name",
        ],
    ),
    "container interface reserved": (
        with_nets("containers:\n  web: {networks: {front: {interface: all}}}\n"),
        [
            "s.yaml:7:28: container 'web': interface 'all' is reserved: the kernel refuses it"
            " (/proc/sys/net/ipv4/conf/all holds the settings of every interface)"
        ],
    ),
    "parent lo": (
        HEAD + "networks:\n  a: {driver: macvlan, parent: lo, subnet: 10.0.0.0/24}\n"
        "  b: {driver: ipvlan, parent: lo, subnet: 10.0.1.0/24}\n",
        [
            "s.yaml:4:24: network 'a': parent 'lo' is the loopback device; the kernel refuses it"
            " as the parent of macvlan links, which must be an Ethernet device",
            "s.yaml:5:23: network 'b': parent 'lo' is the loopback device; the kernel refuses it"
            " as the parent of ipvlan links, which must be an Ethernet device",
        ],
    ),
    # -- ports
    "port published twice": (
        with_nets(
            "containers:\n  a: {networks: [front], ports: ['127.0.0.1:80:80']}\n"
            "  b: {networks: [front], ports: ['80:8080']}\n"
        ),
        [
            "s.yaml:8:34: container 'b': port 80/tcp on all host addresses is already published"
            " by container 'a'"
        ],
    ),
    "port on an IPv6 host address": (
        with_nets("containers:\n  a: {networks: [front], ports: ['[::1]:80:80', "
                  "{published: 81, target: 80, host_ip: '::'}]}\n"),
        [
            "s.yaml:7:34: container 'a': ports[0] host_ip ::1: ports are published on IPv4 host"
            " addresses only (netapply does not NAT IPv6)",
            "s.yaml:7:49: container 'a': ports[1] host_ip ::: ports are published on IPv4 host"
            " addresses only (netapply does not NAT IPv6)",
        ],
    ),
    "port short syntax": (
        with_nets("containers:\n  a: {networks: [front], ports: ['80', '1:2/sctp', '0:80']}\n"),
        [
            "s.yaml:7:34: container 'a': ports[0] '80' is not a port mapping of the form"
            ' [host_ip:]published:target[/tcp|udp], like "8080:80"',
            "s.yaml:7:40: container 'a': ports[1] protocol 'sctp' must be tcp or udp",
            "s.yaml:7:52: container 'a': ports[2] '0:80': port numbers must be between 1 and 65535",
        ],
    ),
    "port host_ip invalid": (
        with_nets("containers:\n  a: {networks: [front], ports: ['localhost:80:80']}\n"),
        ["s.yaml:7:34: container 'a': ports[0] host_ip 'localhost' is not an IP address"],
    ),
    "port on internal network": (
        with_nets("containers:\n  a: {networks: [back], ports: ['80:80']}\n"),
        [
            "s.yaml:7:33: container 'a': ports[0] needs a bridge network that is not internal,"
            " but the container has none"
        ],
    ),
    "port network internal": (
        with_nets(
            "containers:\n  a: {networks: [front, back],"
            " ports: [{published: 80, target: 80, network: back}]}\n"
        ),
        [
            "s.yaml:7:68: container 'a': ports[0].network 'back' is internal;"
            " internal networks have no published ports"
        ],
    ),
    "port network not attached": (
        with_nets(
            "containers:\n"
            "  a: {networks: [front], ports: [{published: 80, target: 80, network: back}]}\n"
        ),
        [
            "s.yaml:7:62: container 'a': ports[0].network 'back' is not one of the container's"
            " networks"
        ],
    ),
    "port network not a bridge": (
        HEAD + "hosts: {h: {address: 192.0.2.1}}\nnetworks:\n"
        "  m: {driver: overlay, vni: 5, subnet: 10.1.0.0/24}\n"
        "containers:\n"
        "  a: {host: h, networks: [m], ports: [{published: 80, target: 80, network: m}]}\n",
        [
            "s.yaml:7:67: container 'a': ports[0].network 'm' uses driver overlay;"
            " ports are published on bridge networks only"
        ],
    ),
}


@pytest.mark.parametrize("text, expected", INVALID.values(), ids=INVALID.keys())
def test_invalid_spec(text: str, expected: list[str]) -> None:
    assert problems(text) == sorted(expected)


def test_all_problems_at_once() -> None:
    text = with_nets("""\
        containers:
          a: {networks: [front, nowhere]}
          b: {networks: {front: {ipv4_address: 10.0.0.1}}, netns_path: relative}
        """)
    assert problems(text) == [
        "s.yaml:7:25: container 'a': network 'nowhere' is not defined in networks",
        "s.yaml:8:26: container 'b': ipv4_address 10.0.0.1 is outside network 'front'"
        " (172.30.1.0/24)",
        "s.yaml:8:52: container 'b': netns_path 'relative' must be an absolute path",
    ]


def test_all_schema_problems_at_once() -> None:
    text = """\
version: 2
project: shop
networks:
  a: {subnet: 10.0.0.0/24, mtu: big, colour: red}
"""
    assert problems(text) == [
        "s.yaml:1:1: version: must be 1 (got 2)",
        "s.yaml:4:28: network 'a': mtu must be a whole number (got 'big')",
        "s.yaml:4:38: network 'a': unknown key 'colour'",
    ]


def test_semantic_problems_are_found_beside_schema_problems() -> None:
    """Every problem at once: an entry with a schema problem does not hide the
    semantic problems of the others (fixing three no longer reveals five)."""
    text = doc("""\
        networks:
          front: {subnet: 172.30.1.0/24, mtu: big}
          back: {subnet: 172.30.2.0/24}
        containers:
          web: {networks: {front: {}, back: {ipv4_address: 10.0.0.1}, nowhere: {}}}
          db: {networks: [back], colour: red}
          api: {networks: {back: {ipv4_address: 172.30.2.1}}}
        expect:
          - {from: web, to: db, port: 99999}
          - {from: web, to: ghost, port: 80}
          - {from: db, to: web, port: 80}
        """)
    assert problems(text) == [
        "s.yaml:11:25: expect[0]: port must be between 1 and 65535 (got 99999)",
        "s.yaml:12:17: expect[1]: to 'ghost' is neither a container of the spec nor an IP "
        "address",
        "s.yaml:4:34: network 'front': mtu must be a whole number (got 'big')",
        "s.yaml:7:38: container 'web': ipv4_address 10.0.0.1 is outside network 'back'"
        " (172.30.2.0/24)",
        "s.yaml:7:63: container 'web': network 'nowhere' is not defined in networks",
        "s.yaml:8:26: container 'db': unknown key 'colour'",
        "s.yaml:9:27: container 'api': ipv4_address 172.30.2.1 is the gateway of network "
        "'back'",
    ]  # web's attachment to the broken front, and db (broken) in expect, are not faulted


def test_an_unknown_key_hides_nothing_else_of_its_entry() -> None:
    """A misspelt key means nothing: the rest of its network is still checked
    (a tester's case: fixing `mtuu` revealed the overlap and the address)."""
    found = problems(doc("""\
        networks:
          n1: {subnet: 172.31.5.0/24, mtuu: 1400}
          n2: {subnet: 172.31.5.128/25}
        containers:
          a: {networks: {n1: {ipv4_address: 10.9.9.9, aliasses: [x]}}}
        """))
    assert [p.split(": ", 1)[1] for p in found] == [
        "network 'n1': unknown key 'mtuu' (did you mean 'mtu'?)",
        "network 'n2': subnet 172.31.5.128/25 overlaps subnet 172.31.5.0/24 of network 'n1'",
        "container 'a': ipv4_address 10.9.9.9 is outside network 'n1' (172.31.5.0/24)",
        "container 'a': unknown key 'aliasses' in networks.n1 (did you mean 'aliases'?)",
    ]


# --- the schema's findings cached by entry content -----------------------------------

# An entry with three schema problems (an unknown key inside networks, an
# unknown key, a value of the wrong type): its findings are cached by content.
BAD_ENTRY = "{networks: {front: {ipv4_adress: 172.30.1.5}}, colour: red, ports: 8080}"


def test_a_cached_entry_is_reported_where_it_is_now(tmp_path: Path) -> None:
    """The same bad entry, found in the cache, moved to another line, under
    another name and into another file: its problems are where it is now."""
    assert problems(with_nets(f"containers:\n  db: {{}}\n  web: {BAD_ENTRY}\n")) == [
        "s.yaml:8:28: container 'web': unknown key 'ipv4_adress' in networks.front"
        " (did you mean 'ipv4_address'?)",
        "s.yaml:8:55: container 'web': unknown key 'colour'",
        "s.yaml:8:68: container 'web': ports must be a list (got 8080)",
    ]
    validated = schema.ENTRY_CACHE.validated
    write(tmp_path, "a.yaml", HEAD + NETS + "containers:\n  db: {}\n")
    write(tmp_path, "b.yaml", f"containers:\n\n  api:   {BAD_ENTRY}\n")
    with pytest.raises(SpecError) as caught:
        spec.load(tmp_path)
    b = tmp_path / "b.yaml"
    assert [str(p) for p in caught.value.problems] == [
        f"{b}:3:30: container 'api': unknown key 'ipv4_adress' in networks.front"
        " (did you mean 'ipv4_address'?)",
        f"{b}:3:57: container 'api': unknown key 'colour'",
        f"{b}:3:70: container 'api': ports must be a list (got 8080)",
    ]
    assert schema.ENTRY_CACHE.validated == validated  # every entry was found in the cache


@pytest.mark.parametrize("first, then, problem", [
    ("internal: true", "internal: 1", "internal must be true or false (got 1)"),
    ("mtu: 1", "mtu: true", "mtu must be a whole number (got true)"),
    ("mtu: 0.0", "mtu: -0.0", "mtu must be between 68 and 65535 (got -0.0)"),
])
def test_entries_python_finds_equal_are_validated_apart(
        first: str, then: str, problem: str) -> None:
    """true == 1 and 0.0 == -0.0 in Python, not to the schema (nor in its
    messages): a cached result of one is not taken for the other."""
    with contextlib.suppress(SpecError):
        spec.load_text(doc(f"networks:\n  front: {{subnet: 172.30.1.0/24, {first}}}\n"))
    found = problems(doc(f"networks:\n  front: {{subnet: 172.30.1.0/24, {then}}}\n"))
    assert [p.split(": ", 1)[1] for p in found] == [f"network 'front': {problem}"]


def test_an_entry_with_a_bad_name_is_skipped_and_counts_as_defined() -> None:
    """Names are checked against each section's pattern (ECMA-262: `$` is the
    very end, so a trailing newline fails); an entry whose name fails is not
    checked further, and where another names it, it counts as defined."""
    text = doc("""\
        hosts:
          "-a": {address: 192.0.2.1}
        networks:
          Front: {subnet: 10.0.0.0/24}
          back: {subnet: 10.0.0.0/24}
        containers:
          "web\\n": {networks: [Front], colour: 1, host: -a}
          db: {networks: [Front, nowhere], host: -a}
        """)
    assert problems(text) == [
        "s.yaml:10:26: container 'db': network 'nowhere' is not defined in networks",
        "s.yaml:4:3: hosts: name '-a' must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        "s.yaml:6:3: networks: name 'Front' must match ^[a-z][a-z0-9_-]{0,30}$",
        "s.yaml:9:32: container 'web\n': unknown key 'colour'",
        "s.yaml:9:3: containers: name 'web\\n' must match ^[a-z][a-z0-9_.-]{0,62}$",
    ]  # no overlap of back with the broken Front; Front and -a count as defined


def test_the_entry_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "ENTRY_CACHE", schema.EntryCache(2))
    parsed, _ = yamlsource.parse("containers: {a: {colour: 1}, b: {colour: 2}, c: {}}", "s.yaml")
    assert len(schema.problems(parsed)) == 2
    assert (len(schema.ENTRY_CACHE.results), schema.ENTRY_CACHE.validated) == (2, 3)
    parsed, _ = yamlsource.parse("containers: {c: {}, b: {colour: 2}}", "s.yaml")
    assert len(schema.problems(parsed)) == 1
    assert schema.ENTRY_CACHE.validated == 3  # b and c were kept, a was dropped
    parsed, _ = yamlsource.parse("containers: {a: {colour: 1}}", "s.yaml")
    assert len(schema.problems(parsed)) == 1
    assert schema.ENTRY_CACHE.validated == 4


def test_a_broken_top_level_key_stops_before_the_semantic_checks() -> None:
    """A failure outside any entry (here the sections' shape) leaves nothing
    whose shape can be trusted: only the schema's problems are reported."""
    found = problems(doc("""\
        networks: [front]
        containers:
          web: {networks: {nowhere: {}}}
        """))
    assert len(found) == 1 and "networks" in found[0] and "nowhere" not in found[0]


GARBAGE = [
    "",
    "\x00",
    "[[[",
    "{a: b",
    "42",
    "~",
    "&a [*a]",
    "version: 1\nproject: shop\nnetworks: &n {a: *n}\n",
    "version: 1\nproject: shop\nnetworks: [1, 2]\n",
    "version: 1\nproject: shop\nexpect: {proxy: [{from: a, to: b, ping: true}]}\n",
    "version: 1\nproject: shop\ncontainers: {a: {networks: {x: [1]}, ports: [{}, [], 1.5]}}\n",
    "version: 1\nproject: shop\nnetworks: {a: {subnet: !!binary aGVsbG8=}}\n",
    "version: 1\nproject: shop\nnetworks: {a: {subnet: 2020-01-01}}\n",
    "version: 1\nproject: shop\n? [a, b]\n: c\n",
    "version: 1\nproject: shop\n1: 2\nnull: 3\n",
    "version: !!set {1}\nproject: {a: b}\n",
    "version: 1\nproject: shop\nnetworks: {a: {subnet: '10.0.0.0/8', labels: {x: [1]}}}\n",
    "version: 1\nproject: shop\n" + "x: " + "[" * 2000 + "]" * 2000 + "\n",
    "a: &a [&b [*a, *a], *b]\n",
    HEAD + "containers: {a: {ports: ['[::1:80:80', ':80:80', '1.2.3.4::80']}}\n",
]


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_raises_only_spec_errors(text: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec.load_text(text, "g.yaml")
    assert caught.value.problems
    for problem in caught.value.problems:
        assert problem.where is not None and problem.where.file == "g.yaml"
        assert "Traceback" not in problem.message and "{'" not in problem.message


def test_unreadable_files_are_spec_errors(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"version: 1\nproject: caf\xe9\n")
    with pytest.raises(SpecError) as caught:
        spec.load(tmp_path / "latin1.yaml")
    assert str(caught.value) == f"{tmp_path / 'latin1.yaml'}:2:13: YAML: the file is not UTF-8 text"


def test_a_route_to_an_attached_subnet_or_default_is_refused() -> None:
    text = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24}
containers:
  web:
    networks: [front]
    routes:
      - {to: 172.30.1.0/24, via: 172.30.1.254}
      - {to: 0.0.0.0/0, via: 172.30.1.254}
"""
    with pytest.raises(SpecError) as caught:
        spec.load_text(text, "shop.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:9:10: container 'web': routes[0].to 172.30.1.0/24 is a subnet the "
        "container is attached to, reached directly",
        "shop.yaml:10:10: container 'web': routes[1].to 0.0.0.0/0 is the default route: "
        "use default_route",
    ]


def _usable_inside(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """A subnet of a size validate takes, inside network or around it."""
    longest = 30 if network.version == 4 else 126
    if network.prefixlen <= longest:
        return str(network)
    return str(network.supernet(new_prefix=longest))


@pytest.mark.parametrize("entry", reserved.ADDRESS_CLASSES, ids=lambda e: str(e.network))
def test_every_reserved_address_class_is_refused_as_a_subnet(
    entry: reserved.AddressClass,
) -> None:
    subnet = _usable_inside(entry.network)
    if entry.network.version == 4:
        text = HEAD + f"networks:\n  a: {{subnet: '{subnet}'}}\n"
        label = "subnet"
    else:
        text = HEAD + f"networks:\n  a: {{subnet: 10.0.0.0/24, ipv6: {{subnet: '{subnet}'}}}}\n"
        label = "ipv6.subnet"
    [found] = problems(text)
    assert found.startswith("s.yaml:4:") and f"network 'a': {label} {subnet} " in found
    # ::1/128 fits no usable subnet alone: its /126 is refused for :: first.
    named = reserved.address_class(ipaddress.ip_network(subnet))
    assert named is not None and named.name in found and named.why in found
    assert reserved.address_class(entry.network) == entry


@pytest.mark.parametrize("subnet, ipv6", [
    ("10.0.0.0/8", "fd00::/8"), ("100.64.0.0/10", "2001:db8::/32"),
    ("172.16.0.0/12", "fc00::/7"), ("1.0.0.0/8", "fec0::/10"), ("223.255.255.0/24", "fe00::/9"),
    ("126.255.255.252/30", "::2:0/126"),
])
def test_subnets_next_to_the_reserved_classes_load(subnet: str, ipv6: str) -> None:
    loaded = spec.load_text(doc(f"""\
        networks:
          a: {{subnet: '{subnet}', ipv6: {{subnet: '{ipv6}'}}}}
        """))
    assert str(loaded.networks["a"].subnet) == subnet


@pytest.mark.parametrize("name, problem", [
    ("eth0", None), ("br-0123456789ab", None), ("a.b_c-d", None),
    ("", "is not 1 to 15 bytes long, which the kernel requires"),
    ("x" * 16, "is not 1 to 15 bytes long, which the kernel requires"),
    (".", "is a path name, which the kernel refuses"),
    ("..", "is a path name, which the kernel refuses"),
    ("eth/0", "contains '/', ':' or whitespace, which the kernel refuses"),
    ("eth0:1", "contains '/', ':' or whitespace, which the kernel refuses"),
    ("eth 0", "contains '/', ':' or whitespace, which the kernel refuses"),
    ("all", "is reserved: the kernel refuses it (/proc/sys/net/ipv4/conf/all holds the settings"
            " of every interface)"),
    ("default", "is reserved: the kernel refuses it (/proc/sys/net/ipv4/conf/default holds the"
                " settings of new interfaces)"),
])
def test_interface_names_the_kernel_refuses(name: str, problem: str | None) -> None:
    """The kernel's dev_valid_name() and its reserved names, in one place."""
    assert reserved.ifname_problem(name) == problem
