"""`netapply import compose`: each Compose key and what it becomes, comments
for the keys netapply has nothing for, names, ports, bad input, the path
through `docker compose config` (a stand-in program) and without it, and the
committed example. No kernel and no Docker needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import compose, spec, yamlsource
from reconciler.errors import NetapplyError, SpecError
from tests import engines
from tests.kernelutil import run_cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "compose"
FILE = "compose.yaml"


def converted(text: str, project: str = "demo", **options: Any) -> compose.Imported:
    """Convert a Compose file given as text (read as compose.read reads it)."""
    doc, problems = yamlsource.parse(textwrap.dedent(text), FILE, compose.ComposeLoader)
    assert problems == []
    assert isinstance(doc.data, dict)
    return compose.convert(doc.data, project, file=FILE, where=doc.where, **options)


def imported(text: str, project: str = "demo", **options: Any) -> tuple[dict[str, Any], str]:
    """The spec (as data) and its text; it must validate."""
    result = converted(text, project, **options)
    assert result.problems == (), result.text
    loaded = spec.load_text(result.text, "imported.yaml")
    assert loaded.project == yaml.safe_load(result.text)["project"]
    return yaml.safe_load(result.text), result.text


def comments(text: str) -> list[str]:
    """The comments of a spec, wrapped lines joined again, without '# '."""
    found: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#   ") and found:
            found[-1] += " " + stripped[4:]
        elif stripped.startswith("# "):
            found.append(stripped[2:])
    return found


def commented(text: str, fragment: str) -> bool:
    return any(fragment in c for c in comments(text))


def structure_problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        converted(text)
    return [str(p) for p in caught.value.problems]


# --- networks --------------------------------------------------------------------------


def test_bridge_network_keys_map_to_spec_keys() -> None:
    data, text = imported("""
        services:
          web: {image: x, networks: [front]}
        networks:
          front:
            driver: bridge
            ipam:
              config:
                - {subnet: 172.30.1.0/24, gateway: 172.30.1.254, ip_range: 172.30.1.128/25}
            driver_opts:
              com.docker.network.bridge.name: br-front
              com.docker.network.driver.mtu: "1400"
              com.docker.network.bridge.enable_icc: "false"
              com.docker.network.bridge.enable_ip_masquerade: "false"
            labels: [team=web, tier]
    """)
    assert data["networks"] == {"front": {
        "subnet": "172.30.1.0/24", "gateway": "172.30.1.254", "ip_range": "172.30.1.128/25",
        "icc": False, "interface": "br-front", "masquerade": False, "mtu": 1400,
        "labels": {"team": "web", "tier": ""}}}
    assert not commented(text, "networks.front")


def test_internal_network_has_no_masquerade_and_says_why() -> None:
    data, text = imported("""
        services:
          db: {image: x, networks: [back]}
        networks:
          back:
            internal: true
            ipam: {config: [{subnet: 172.30.2.0/24}]}
            labels: {owner: ops, size: 5}
            driver_opts: {com.docker.network.bridge.enable_ip_masquerade: "true"}
    """)
    assert data["networks"]["back"] == {"subnet": "172.30.2.0/24", "internal": True,
                                        "labels": {"owner": "ops", "size": "5"}}
    assert commented(text, "networks.back.driver_opts."
                           "com.docker.network.bridge.enable_ip_masquerade: an internal network")


def test_macvlan_and_ipvlan_take_parent_and_mode() -> None:
    data, _ = imported("""
        services:
          a: {image: x, networks: [lan, l3]}
        networks:
          lan:
            driver: macvlan
            driver_opts: {parent: eth1, macvlan_mode: private}
            ipam: {config: [{subnet: 192.168.50.0/24, gateway: 192.168.50.1}]}
          l3:
            driver: ipvlan
            driver_opts: {parent: eth2, ipvlan_mode: l3}
            ipam: {config: [{subnet: 192.168.60.0/24}]}
    """)
    assert data["networks"]["lan"] == {"driver": "macvlan", "subnet": "192.168.50.0/24",
                                       "gateway": "192.168.50.1", "mode": "private",
                                       "parent": "eth1"}
    assert data["networks"]["l3"] == {"driver": "ipvlan", "subnet": "192.168.60.0/24",
                                      "mode": "l3", "parent": "eth2"}


def test_ipv6_needs_enable_ipv6_and_its_subnet() -> None:
    data, text = imported("""
        services:
          a: {image: x, networks: [dual, v4only, nosubnet]}
        networks:
          dual:
            enable_ipv6: true
            ipam:
              config:
                - subnet: 172.30.1.0/24
                - {subnet: "fd00:1::/64", gateway: "fd00:1::1"}
          v4only:
            ipam:
              config:
                - subnet: 172.30.2.0/24
                - subnet: "fd00:2::/64"
          nosubnet:
            enable_ipv6: true
            ipam: {config: [{subnet: 172.30.3.0/24}]}
    """)
    assert data["networks"]["dual"]["ipv6"] == {"subnet": "fd00:1::/64", "gateway": "fd00:1::1"}
    assert "ipv6" not in data["networks"]["v4only"]
    assert commented(text, "networks.v4only.ipam.config[1] (fd00:2::/64) is an IPv6 subnet but "
                           "enable_ipv6 is not true")
    assert "ipv6" not in data["networks"]["nosubnet"]
    assert commented(text, "networks.nosubnet.enable_ipv6 without an IPv6 subnet")


def test_what_a_network_cannot_have_is_a_comment() -> None:
    data, text = imported("""
        services:
          a: {image: x, networks: [front]}
        networks:
          front:
            attachable: true
            name: someone-elses-name
            ipam:
              driver: custom
              options: {a: b}
              config:
                - {subnet: 172.30.1.0/24, aux_addresses: {router: 172.30.1.5}}
                - subnet: 172.30.9.0/24
            driver_opts:
              com.docker.network.bridge.host_binding_ipv4: 127.0.0.1
              com.docker.network.bridge.enable_icc: maybe
              com.docker.network.driver.mtu: "9x"
              parent: eth0
    """)
    assert data["networks"]["front"] == {"subnet": "172.30.1.0/24"}
    assert commented(text, "networks.front.driver_opts.com.docker.network.bridge.enable_icc "
                           "'maybe' is not a value netapply can use")
    assert commented(text, "networks.front.driver_opts.com.docker.network.driver.mtu '9x' is "
                           "not an MTU")
    assert commented(text, "networks.front.driver_opts.parent 'eth0' has no netapply equivalent")
    for fragment in ("networks.front.attachable", "networks.front.name 'someone-elses-name'",
                     "networks.front.ipam.driver 'custom'", "networks.front.ipam.options",
                     "networks.front.ipam.config[0].aux_addresses",
                     "networks.front.ipam.config[1] (172.30.9.0/24) is a second IPv4 subnet",
                     "networks.front.driver_opts.com.docker.network.bridge.host_binding_ipv4"):
        assert commented(text, fragment), fragment


def test_external_overlay_and_unknown_drivers_are_comments_and_not_attached() -> None:
    data, text = imported("""
        services:
          a: {image: x, networks: [ext, swarm, plugin, nolink, ok]}
        networks:
          ext: {external: true}
          swarm: {driver: overlay}
          plugin: {driver: weave}
          nolink: {driver: macvlan}
          ok: {ipam: {config: [{subnet: 172.30.1.0/24}]}}
    """)
    assert list(data["networks"]) == ["ok"]
    assert data["containers"]["a"]["networks"] == ["ok"]
    for fragment in ("networks.ext is external", "networks.swarm uses driver 'overlay'",
                     "networks.plugin uses driver 'weave'",
                     "networks.nolink is a macvlan network without a parent",
                     "services.a.networks.ext: that network is not imported",
                     "services.a.networks.swarm: that network is not imported"):
        assert commented(text, fragment), fragment


def test_the_default_network_gets_the_first_free_slash_24_and_says_so() -> None:
    text = """
        services:
          a: {image: x}
          b: {image: x, networks: [taken]}
        networks:
          taken:
            ipam: {config: [{subnet: 172.30.0.0/23}]}
    """
    result = converted(text)
    data, _ = imported(text)
    assert data["networks"]["default"] == {"subnet": "172.30.2.0/24"}
    assert data["containers"]["a"]["networks"] == ["default"]
    assert commented(result.text, "no subnet in the Compose file (Docker picks one from its "
                                  "pools); netapply needs one: 172.30.2.0/24 is the first /24")
    assert "network 'default' has no subnet in the Compose file: it gets 172.30.2.0/24" in (
        result.notes)
    assert converted(text).text == result.text  # the same file, the same spec


def test_networks_without_subnets_get_one_each_in_name_order() -> None:
    data, _ = imported("""
        services:
          a: {image: x, networks: [zeta, alpha, mid]}
        networks:
          zeta: {}
          alpha:
          mid: {ipam: {config: [{subnet: 172.30.1.0/24}]}}
    """)
    assert {n: v["subnet"] for n, v in data["networks"].items()} == {
        "alpha": "172.30.0.0/24", "mid": "172.30.1.0/24", "zeta": "172.30.2.0/24"}


def test_networks_no_service_uses_are_not_imported() -> None:
    data, text = imported("""
        services:
          a: {image: x, networks: [used]}
        networks:
          used: {}
          spare: {ipam: {config: [{subnet: 172.30.9.0/24}]}}
    """)
    assert list(data["networks"]) == ["used"]
    assert commented(text, "networks.spare is used by no service (Compose does not create it)")


def test_network_names_that_do_not_fit_are_mapped_and_said() -> None:
    result = converted("""
        services:
          a: {image: x, networks: [Front.Net, 9lives, front-net]}
        networks:
          Front.Net: {}
          9lives: {}
          front-net: {}
    """)
    data = yaml.safe_load(result.text)
    assert sorted(data["networks"]) == ["front-net", "front-net-2", "net-9lives"]
    # In Compose's order, by the Compose names: '9lives' < 'Front.Net' < 'front-net'.
    assert data["containers"]["a"]["networks"] == ["net-9lives", "front-net-2", "front-net"]
    assert commented(result.text, "network 'Front.Net' is 'front-net-2' here")
    assert "network '9lives' is imported as 'net-9lives'" in result.notes
    assert result.problems == ()


# --- containers and names --------------------------------------------------------------


def test_a_service_is_the_docker_container_compose_names() -> None:
    data, text = imported("""
        services:
          web: {image: x, networks: []}
          db: {image: x, container_name: shop-db}
          Admin: {image: x}
          1worker: {image: x}
    """, project="shop")
    containers = data["containers"]
    assert containers["web"] == {"runtime": "docker", "runtime_name": "shop-web-1",
                                 "networks": ["default"]}
    assert containers["db"]["runtime_name"] == "shop-db"
    assert containers["db"]["networks"] == {"default": {"aliases": ["shop-db"]}}
    assert containers["admin"]["runtime_name"] == "shop-Admin-1"
    assert containers["admin"]["networks"] == {"default": {"aliases": ["Admin"]}}
    assert containers["svc-1worker"]["runtime_name"] == "shop-1worker-1"
    assert commented(text, "service '1worker' is container 'svc-1worker' here")


@pytest.mark.parametrize(("given", "env", "declared", "directory", "expected"), [
    ("cli", "env", "named", "dir", "cli"),
    (None, "env", "named", "dir", "env"),
    (None, None, "My_App.Two", "dir", "my_apptwo"),
    (None, None, None, "My Proj.X", "myprojx"),
    (None, None, "__", "__Ab-c_d", "ab-c_d"),
])
def test_the_compose_project_name_comes_from_where_compose_takes_it(
        tmp_path: Path, given: str | None, env: str | None, declared: str | None,
        directory: str, expected: str) -> None:
    file = tmp_path / directory / FILE
    environ = {"COMPOSE_PROJECT_NAME": env} if env else {}
    assert compose.project_name(given, environ, declared, str(file)) == expected


def test_a_project_name_compose_refuses_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NetapplyError, match=r"--project 'My_App': a Compose project name"):
        compose.project_name("My_App", {}, None, str(tmp_path / FILE))
    with pytest.raises(NetapplyError, match="no Compose project name"):
        compose.project_name(None, {}, None, str(tmp_path / "..." / FILE))


def test_the_netapply_project_fits_its_rule_and_says_when_it_changed() -> None:
    data, text = imported("services: {web: {image: x}}", project="my_very_long_project_name")
    assert data["project"] == "my-very-long-pro"
    assert data["containers"]["web"]["runtime_name"] == "my_very_long_project_name-web-1"
    assert commented(text, "the Compose project is 'my_very_long_project_name'; a netapply "
                           "project matches ^[a-z][a-z0-9-]{0,15}$, so it is 'my-very-long-pro'")
    assert compose.netapply_project("2_fast") == "fast"
    assert compose.netapply_project("42") == compose.DEFAULT_PROJECT
    data, text = imported("services: {web: {image: x}}", project="shop")
    assert data["project"] == "shop" and not commented(text, "Compose project")


def test_attachment_options_map_to_spec_keys() -> None:
    data, text = imported("""
        services:
          web:
            image: x
            networks:
              front:
                ipv4_address: 172.30.1.10
                ipv6_address: "fd00:1::10"
                mac_address: "02:42:ac:1e:01:0a"
                aliases: [www, "not a name"]
                interface_name: eth7
                link_local_ips: [169.254.1.1]
                driver_opts: {com.docker.network.endpoint.ifname: other, x: y}
              back:
                driver_opts: {com.docker.network.endpoint.ifname: eth9}
        networks:
          front:
            enable_ipv6: true
            ipam: {config: [{subnet: 172.30.1.0/24}, {subnet: "fd00:1::/64"}]}
          back: {ipam: {config: [{subnet: 172.30.2.0/24}]}}
    """)
    assert data["containers"]["web"]["networks"] == {
        "back": {"interface": "eth9"},
        "front": {"ipv4_address": "172.30.1.10", "ipv6_address": "fd00:1::10",
                  "mac_address": "02:42:ac:1e:01:0a", "interface": "eth7",
                  "aliases": ["www"]}}
    for fragment in ("services.web.networks.front.aliases: 'not a name' is not a DNS name",
                     "services.web.networks.front.link_local_ips: not supported",
                     "services.web.networks.front.driver_opts.x has no netapply equivalent",
                     "services.web.networks.front.driver_opts."
                     "com.docker.network.endpoint.ifname: interface_name is used"):
        assert commented(text, fragment), fragment


def test_a_service_mac_address_goes_to_its_first_network() -> None:
    data, text = imported("""
        services:
          web: {image: x, mac_address: "02:42:ac:1e:00:0b", networks: [b, a]}
          db: {image: x, mac_address: "02:42:ac:1e:00:0c", network_mode: none}
        networks: {a: {}, b: {}}
    """)
    assert data["containers"]["web"]["networks"] == {
        "a": {"mac_address": "02:42:ac:1e:00:0b"}, "b": {}}
    assert commented(text, "services.db.mac_address")


def test_networks_are_listed_in_the_order_compose_connects_them() -> None:
    data, _ = imported("""
        services:
          web:
            image: x
            networks:
              c: {}
              a: {}
              b: {priority: 5}
          list: {image: x, networks: [c, a, b]}
        networks: {a: {}, b: {}, c: {}}
    """)
    assert list(data["containers"]["web"]["networks"]) == ["b", "a", "c"]
    assert data["containers"]["list"]["networks"] == ["a", "b", "c"]


def test_gw_priority_chooses_the_default_route() -> None:
    data, _ = imported("""
        services:
          web:
            image: x
            networks:
              a: {}
              b: {gw_priority: 10}
              c: {gw_priority: 20}
          same:
            image: x
            networks: {a: {gw_priority: 1}, b: {}}
          inside:
            image: x
            networks: {a: {}, c: {gw_priority: 30}}
        networks:
          a: {}
          b: {}
          c: {internal: true}
    """)
    assert data["containers"]["web"]["default_route"] == "b"  # c is internal: no way out
    assert "default_route" not in data["containers"]["same"]  # a is first anyway
    assert "default_route" not in data["containers"]["inside"]


# --- ports -------------------------------------------------------------------------------


@pytest.mark.parametrize(("written", "ports", "comment"), [
    ('"8080:80"', ["8080:80"], None),
    ("8080:80", ["8080:80"], None),
    ("22:22", ["22:22"], None),  # YAML 1.2, as Compose reads it: not base 60
    ('"127.0.0.1:5353:53/udp"', ["127.0.0.1:5353:53/udp"], None),
    ('"8000-8002:80-82"', ["8000:80", "8001:81", "8002:82"], None),
    ('"127.0.0.1:8000-8001:80-81/udp"', ["127.0.0.1:8000:80/udp", "127.0.0.1:8001:81/udp"],
     None),
    ("80", None, "ports '80': no published port: Docker picks a random host port"),
    ('"127.0.0.1::80"', None, "ports '127.0.0.1::80': no published port"),
    ('"[::1]:80:80"', None, "ports '[::1]:80:80': host_ip is IPv6"),
    ('"9000-9005:90"', None, "ports '9000-9005:90': published '9000-9005' is not one port"),
    ('"8080:80/sctp"', None, "ports '8080:80/sctp': protocol sctp is not supported"),
    ('"8000-8002:80-81"', None, "the published and target ranges differ in length"),
    ('"${PORT}:80"', None, "ports '${PORT}:80': a variable that was not expanded"),
    ('"1.2.3:80:80"', None, "'1.2.3' is not an IP address"),
])
def test_short_port_syntax(written: str, ports: list[str] | None, comment: str | None) -> None:
    data, text = imported(f"""
        services:
          web: {{image: x, ports: [{written}]}}
    """)
    assert data["containers"]["web"].get("ports") == ports
    if comment:
        assert commented(text, f"services.web.{comment}" if comment.startswith("ports")
                         else comment), comments(text)


def test_long_port_syntax() -> None:
    data, text = imported("""
        services:
          web:
            image: x
            ports:
              - {target: 443, published: 8443, protocol: tcp, host_ip: 127.0.0.1, mode: host,
                 name: https, app_protocol: https}
              - {target: 53, published: "5353", protocol: UDP}
              - {target: 80}
              - {target: 81, published: "8000-8010"}
    """)
    assert data["containers"]["web"]["ports"] == ["127.0.0.1:8443:443", "5353:53/udp"]
    assert commented(text, "services.web.ports '127.0.0.1:8443:443': mode host, app_protocol, "
                           "name not imported")
    assert commented(text, "services.web.ports '80': no published port")
    assert commented(text, "services.web.ports '8000-8010:81': published '8000-8010' is not "
                           "one port")


def test_ports_need_a_bridge_network_that_is_not_internal() -> None:
    data, text = imported("""
        services:
          db: {image: x, networks: [back], ports: ["5432:5432"]}
          lan: {image: x, networks: [back, mac], ports: ["80:80"]}
          web: {image: x, networks: [back, front], ports: ["8080:80"]}
        networks:
          back: {internal: true}
          front: {}
          mac: {driver: macvlan, driver_opts: {parent: eth1}}
    """)
    assert "ports" not in data["containers"]["db"]
    assert commented(text, "services.db.ports '5432:5432': the service has no bridge network "
                           "that is not internal")
    assert "ports" not in data["containers"]["lan"]
    assert data["containers"]["web"]["ports"] == ["8080:80"]


# --- network_mode and the keys netapply has nothing for ---------------------------------


def test_network_modes() -> None:
    data, text = imported("""
        services:
          quiet: {image: x, network_mode: none, ports: ["80:80"]}
          hosted: {image: x, network_mode: host}
          sidecar: {image: x, network_mode: "service:quiet"}
          other: {image: x, network_mode: "container:abc"}
          old: {image: x, network_mode: bridge}
    """)
    containers = data["containers"]
    assert containers["quiet"] == {"runtime": "docker", "runtime_name": "demo-quiet-1",
                                   "network_mode": "none"}
    assert commented(text, "services.quiet.ports: no ports with network_mode none")
    assert containers["hosted"] == {"network_mode": "host"}
    assert "sidecar" not in containers and "other" not in containers
    assert commented(text, "services.sidecar.network_mode service:quiet: it shares that "
                           "container's namespace")
    assert containers["old"] == {"runtime": "docker", "runtime_name": "demo-old-1"}
    assert commented(text, "services.old.network_mode 'bridge': Docker's default bridge")
    assert "networks" not in data or data["networks"] in ({}, None)


def test_service_keys_without_an_equivalent_are_comments() -> None:
    _, text = imported("""
        services:
          web:
            image: x
            command: [sleep, "1"]
            volumes: [data:/data]
            environment: {A: b}
            healthcheck: {test: ["CMD", "true"]}
            entrypoint: null
            hostname: web1
            dns: 192.0.2.53
            dns_search: example.com
            extra_hosts: ["a=192.0.2.1"]
            links: [db]
            expose: ["80"]
            sysctls: {net.ipv4.ip_forward: 1}
            deploy: {replicas: 3}
          db: {image: x, scale: 2}
    """)
    for key in ("hostname", "dns", "dns_search", "extra_hosts", "links", "expose", "sysctls"):
        assert commented(text, f"services.web.{key} has no netapply equivalent:"), key
    assert commented(text, "services.web: command, deploy, environment, healthcheck, image, "
                           "volumes: no netapply equivalent (not networking)")
    assert commented(text, "services.web runs 3 replicas; only the first")
    assert commented(text, "services.db runs 2 replicas")


def test_top_level_keys_without_an_equivalent_are_comments() -> None:
    _, text = imported("""
        version: "3.9"
        name: shop
        x-common: {image: x}
        services: {web: {image: x}}
        volumes: {data: {}}
        secrets: {s: {file: ./s}}
        include: [other.yaml]
    """)
    assert commented(text, "compose: top-level secrets, version, volumes, x-common: no netapply "
                           "equivalent")
    assert commented(text, "compose: include is not followed")


def test_inactive_profiles_are_not_imported() -> None:
    text = """
        services:
          web: {image: x}
          debug: {image: x, profiles: [debug]}
    """
    data, spec_text = imported(text)
    assert list(data["containers"]) == ["web"]
    assert commented(spec_text, "services.debug has profiles debug, none of them active")
    data, _ = imported(text, profiles=frozenset({"debug"}))
    assert list(data["containers"]) == ["debug", "web"]
    data, _ = imported(text, normalised=True)  # docker compose config already chose
    assert list(data["containers"]) == ["debug", "web"]


def test_no_value_of_the_compose_file_ends_a_comment() -> None:
    data, text = imported("""
        services:
          web: {image: x, networks: [front]}
        networks:
          front:
            driver_opts:
              "evil\\nversion: 2": "\\u2028containers: {x: {}}\\x85networks: {}"
    """)
    assert set(data) == {"version", "project", "networks", "containers"}
    assert list(data["containers"]) == ["web"] and list(data["networks"]) == ["front"]
    assert commented(text, "evil\\u000aversion: 2") and commented(text, "\\u2028containers")


# --- bad input -------------------------------------------------------------------------


def test_problems_of_the_structure_are_listed_at_their_place() -> None:
    assert structure_problems("""
        services:
          web: [a]
          api:
            networks: 5
          db:
            networks: [nope]
            ports: [{published: 80}, true]
          both:
            network_mode: none
            networks: [x]
          net:
            networks: {x: {priority: high}}
        networks:
          x:
            internal: "yes"
            ipam: {config: {subnet: 10.0.0.0/8}}
        containers: {}
    """) == [
        "compose.yaml:3:3: services.web must be a mapping (got a list)",
        "compose.yaml:5:5: services.api.networks must be a list or a mapping of network "
        "names (got 5)",
        "compose.yaml:7:16: services.db: network 'nope' is not defined in the top-level "
        "networks",
        "compose.yaml:8:13: services.db.ports[0] has no target",
        "compose.yaml:8:30: services.db.ports[1] must be text like \"8080:80\" or a mapping "
        "with target and published",
        "compose.yaml:11:5: services.both: network_mode and networks cannot both be set "
        "(Compose refuses it too)",
        "compose.yaml:13:20: services.net.networks.x.priority must be a number (got 'high')",
        "compose.yaml:16:5: networks.x.internal must be true or false (got 'yes')",
        "compose.yaml:17:12: networks.x.ipam.config must be a list",
        "compose.yaml:18:1: 'containers' is not a top-level key of a Compose file (those are "
        "services, networks, volumes, configs, secrets, name, include, version and x- "
        "extensions)",
    ]


@pytest.mark.parametrize(("content", "message"), [
    (b"services:\n  web:\n    image: [x\n",
     "F:4:1: YAML syntax error: expected ',' or ']', but got '<stream end>'"),
    (b"- a\n- b\n", "F:1:1: a Compose file is a mapping with keys like services and networks "
                    "(got a list)"),
    (b"", "F:1:1: a Compose file is a mapping with keys like services and networks (got "
          "nothing)"),
    (b"services:\n  web:\n    image: x\ncontainers: {}\n",
     "F:4:1: 'containers' is not a top-level key of a Compose file"),
    (b"services:\n  web:\n    image: \xff\n", "F:3:12: YAML: the file is not UTF-8 text"),
    (b"services:\n  web: {}\n  web: {}\n", "F:3:3: services: web is defined twice"),
])
def test_bad_input_is_one_line_at_its_place_and_exit_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        content: bytes, message: str) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker: the file is read as it is
    file = tmp_path / FILE
    file.write_bytes(content)
    code, out, err = run_cli(capsys, "import", "compose", str(file))
    assert (code, out) == (1, "")
    assert err.startswith("error: " + message.replace("F:", f"{file}:")), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_file_or_a_directory_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing.yaml"
    assert run_cli(capsys, "import", "compose", str(missing)) == (
        1, "", f"error: {missing}: cannot read the Compose file: No such file or directory\n")
    assert run_cli(capsys, "import", "compose", str(tmp_path)) == (
        1, "", f"error: {tmp_path}: cannot read the Compose file: Is a directory\n")


def test_a_spec_that_does_not_validate_is_printed_with_its_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    file = tmp_path / FILE
    file.write_text(textwrap.dedent("""\
        services:
          web:
            image: x
            networks: {front: {ipv4_address: 10.9.9.9}}
        networks:
          front: {ipam: {config: [{subnet: 172.30.1.0/24}]}}
    """))
    code, out, err = run_cli(capsys, "import", "compose", str(file))
    assert code == 1
    line = out.splitlines().index("        ipv4_address: 10.9.9.9") + 1
    assert (f"error: imported spec:{line}:9: container 'web': ipv4_address 10.9.9.9 is outside "
            "network 'front' (172.30.1.0/24)") in err
    assert "The imported spec does not validate" in err


# --- with and without docker compose --------------------------------------------------------


FAKE_DOCKER = """\
#!/bin/sh
PATH=/usr/bin:/bin
echo "$@" >> "$FAKE_LOG"
case "$1 $2" in
  "compose version") [ -n "$FAKE_NO_PLUGIN" ] && exit 1; echo "Docker Compose version v2.99.0";;
  *)
    if [ -n "$FAKE_FAIL" ]; then echo 'level=fatal msg="bad compose file"' >&2; exit 15; fi
    echo 'time="x" level=warning msg="the attribute \\"version\\" is obsolete"' >&2
    cat "$FAKE_JSON";;
esac
"""


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `docker` on PATH that stands in for the Compose plugin; returns its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "docker"
    program.write_text(FAKE_DOCKER)
    program.chmod(0o755)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_LOG", str(log))
    normalised = {"name": "fromcompose", "services": {"web": {
        "image": "x", "networks": {"default": None},
        "ports": [{"mode": "ingress", "target": 80, "published": "8081", "protocol": "tcp"}]}},
        "networks": {"default": {"name": "fromcompose_default", "ipam": {}}}}
    (tmp_path / "normalised.json").write_text(json.dumps(normalised))
    monkeypatch.setenv("FAKE_JSON", str(tmp_path / "normalised.json"))
    return log


VARIABLE_FILE = """\
services:
  web:
    image: x
    ports: ["${PORT:-8081}:80"]
"""


def test_docker_compose_config_is_used_where_it_is_installed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_docker: Path) -> None:
    file = tmp_path / FILE
    file.write_text(VARIABLE_FILE)
    code, out, err = run_cli(capsys, "import", "compose", "--project", "given", str(file))
    assert code == 0, err
    data = yaml.safe_load(out)
    assert data["project"] == "fromcompose"  # the name docker compose resolved
    assert data["containers"]["web"]["ports"] == ["8081:80"]
    assert not commented(out, "not expanded")
    assert "note: docker compose: warning: the attribute \"version\" is obsolete\n" in err
    assert fake_docker.read_text().splitlines() == [
        "compose version", f"compose -p given -f {file} config --format json"]


@pytest.mark.parametrize("why", ["FAKE_FAIL", "FAKE_NO_PLUGIN"])
def test_without_a_working_docker_compose_the_file_is_read_as_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        fake_docker: Path, why: str) -> None:
    monkeypatch.setenv(why, "1")
    file = tmp_path / FILE
    file.write_text(VARIABLE_FILE)
    code, out, err = run_cli(capsys, "import", "compose", str(file))
    assert code == 0, err
    data = yaml.safe_load(out)
    assert data["project"] == tmp_path.name.lower().replace("_", "-")[:16].rstrip("-")
    assert "ports" not in data["containers"]["web"]
    assert commented(out, "compose: read as plain YAML: ${VARIABLES} were not expanded (this "
                          "file uses PORT)")
    assert "note: read as plain YAML: ${VARIABLES} were not expanded" in err
    expected = ("`docker compose config` failed: fatal: bad compose file" if why == "FAKE_FAIL"
                else "docker compose is not installed (`docker compose version` failed)")
    assert f"note: {expected}\n" in err


def test_without_docker_the_file_is_read_as_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    monkeypatch.setenv("COMPOSE_PROFILES", "debug")
    file = tmp_path / FILE
    file.write_text("name: shop\nservices:\n  debug: {image: x, profiles: [debug]}\n")
    code, out, err = run_cli(capsys, "import", "compose", str(file))
    assert code == 0, err
    assert list(yaml.safe_load(out)["containers"]) == ["debug"]
    assert "note: docker compose is not installed (no docker command)\n" in err


def real_docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True,
                              timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


RICH = """\
name: Rich_Shop
services:
  Web.Front:
    image: x
    container_name: shop-web
    mac_address: 02:42:AC:1E:01:0B
    networks:
      front: {ipv4_address: 172.31.1.10, aliases: [www], priority: 10}
      back: {gw_priority: 3, interface_name: eth5}
    ports: [{target: 443, published: 8443, host_ip: 127.0.0.1}, 2222:22, "8000-8001:80-81",
            "80", "9000-9005:90"]
    dns: 192.0.2.53
  1db: {image: x, networks: [back, ext], expose: ["5432"]}
  host: {image: x, network_mode: host}
networks:
  front:
    ipam: {config: [{subnet: 172.31.1.0/24, aux_addresses: {r: 172.31.1.5}}]}
    driver_opts: {com.docker.network.driver.mtu: "1400"}
    labels: [team=web]
  back: {internal: true}
  ext: {external: true}
"""


@pytest.mark.skipif(not real_docker_compose(), reason="the docker compose plugin is not "
                                                     "installed")
@pytest.mark.parametrize("source", ["example", "rich"])
def test_docker_compose_and_the_plain_reading_agree(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        source: str) -> None:
    """Both ways of reading give the same spec, but for the remark on variables."""
    if source == "example":
        file = EXAMPLE / FILE
    else:
        file = tmp_path / FILE
        file.write_text(RICH)
    code, with_compose, err = run_cli(capsys, "import", "compose", str(file))
    assert code == 0, err
    monkeypatch.setenv("PATH", str(tmp_path))
    code, plain, err = run_cli(capsys, "import", "compose", str(file))
    assert code == 0, err
    remark = [line for line in plain.splitlines()
              if line.startswith(("# compose: read as plain YAML", "#   are not resolved"))]
    assert len(remark) == 2
    assert [line for line in plain.splitlines() if line not in remark] == [
        line for line in with_compose.splitlines() if "the attribute `version`" not in line]


# --- the example -----------------------------------------------------------------------------


def test_the_committed_example_is_what_the_importer_makes(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # as committed: read without docker compose
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    monkeypatch.chdir(EXAMPLE)
    code, out, err = run_cli(capsys, "import", "compose", FILE)
    assert code == 0, err
    assert out == (EXAMPLE / "netapply.yaml").read_text(), (
        "examples/compose/netapply.yaml is stale: regenerate it with "
        "`netapply import compose compose.yaml > netapply.yaml` in examples/compose")
    example = spec.load(EXAMPLE / "netapply.yaml")
    assert {c.engine_name for c in example.containers.values()} == {
        "compose-demo-web-1", "compose-demo-api-1", "compose-demo-client-1"}


def test_the_override_takes_docker_networking_from_every_service() -> None:
    app, _ = compose.read(str(EXAMPLE / FILE))
    override, _ = compose.read(str(EXAMPLE / "compose.netapply.yaml"))
    assert set(override["services"]) == set(app["services"])
    for name, service in app["services"].items():
        changed = override["services"][name]
        assert changed["network_mode"] == "none", name
        for key in ("networks", "ports"):
            if key in service:  # `!reset`: present, and nothing
                assert key in changed and changed[key] is None, (name, key)


def test_the_example_runs_the_image_the_engine_tests_build() -> None:
    """The README builds netapply-busybox as tests/engines.py does, with the
    same applets, so that the engine tests can run the example as it is."""
    app, _ = compose.read(str(EXAMPLE / FILE))
    assert {s["image"] for s in app["services"].values()} == {engines.IMAGE}
    readme = (EXAMPLE / "README.md").read_text()
    assert f"for applet in {' '.join(engines.APPLETS)}; do" in readme
    assert f"docker build -t {engines.IMAGE} " in readme
