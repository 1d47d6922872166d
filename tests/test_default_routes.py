"""Default routes per family (SPEC.md `default_route`; issue 15, part 5): IPv4
via the first listed non-internal network with a gateway, IPv6 via the first
listed non-internal network with an ipv6 subnet; a name sets each family that
network has; a map sets each family apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import SpecError
from reconciler.spec import load_text
from tests.kernelutil import ip_json, run_cli

NETWORKS = """\
version: 1
project: dr
networks:
  v4net: {subnet: 172.30.41.0/24}
  dual: {subnet: 172.30.42.0/24, ipv6: {subnet: "fd00:42::/64"}}
  v6b: {subnet: 172.30.43.0/24, ipv6: {subnet: "fd00:43::/64"}}
  priv: {subnet: 172.30.44.0/24, internal: true, ipv6: {subnet: "fd00:44::/64"}}
containers:
"""


def defaults(container: str) -> tuple[str | None, str | None]:
    spec = load_text(NETWORKS + container, "s.yaml")
    c = next(iter(spec.containers.values()))
    return c.default_route, c.default_route_ipv6


def problems(container: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_text(NETWORKS + container, "s.yaml")
    return [str(p) for p in caught.value.problems]


def test_each_family_defaults_to_the_first_network_that_has_it() -> None:
    assert defaults("  both: {networks: [v4net, dual]}\n") == ("v4net", "dual")
    assert defaults("  c: {networks: [priv, v4net, v6b, dual]}\n") == ("v4net", "v6b")
    assert defaults("  c: {networks: [v4net]}\n") == ("v4net", None)
    assert defaults("  c: {networks: [priv]}\n") == (None, None)


def test_a_name_sets_each_family_it_has_and_a_map_each_apart() -> None:
    assert defaults("  c: {networks: [v4net, dual], default_route: dual}\n") == ("dual", "dual")
    # v4net has no IPv6: IPv6 keeps its own default.
    assert defaults("  c: {networks: [dual, v6b, v4net], default_route: v4net}\n") == (
        "v4net", "dual")
    assert defaults("  c: {networks: [v4net, dual, v6b], default_route: {ipv6: v6b}}\n") == (
        "v4net", "v6b")
    assert defaults(
        "  c: {networks: [v4net, dual, v6b], default_route: {ipv4: dual, ipv6: v6b}}\n") == (
        "dual", "v6b")


def test_default_route_mistakes_name_the_family() -> None:
    assert problems("  c: {networks: [v4net, dual], default_route: {ipv6: v4net}}\n") == [
        "s.yaml:9:48: container 'c': default_route.ipv6 'v4net' has no ipv6 gateway"]
    assert problems("  c: {networks: [v4net, priv], default_route: {ipv6: priv}}\n") == [
        "s.yaml:9:48: container 'c': default_route.ipv6 'priv' is an internal network, which "
        "has no way out"]
    assert problems("  c: {networks: [v4net], default_route: {ipv4: dual}}\n") == [
        "s.yaml:9:42: container 'c': default_route.ipv4 'dual' is not one of the container's "
        "networks"]
    assert problems("  c: {networks: [v4net], default_route: {ip: v4net}}\n") == [
        "s.yaml:9:42: container 'c': unknown key 'ip' in default_route (did you mean 'ipv6'?)"]
    # The default route is default_route's: a route to ::/0 is still refused.
    found = problems("  c: {networks: [dual], routes: [{to: '::/0', via: 'fd00:42::1'}]}\n")
    assert len(found) == 1 and "use default_route" in found[0]


@pytest.mark.kernel
def test_a_container_gets_each_familys_default_from_its_network(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = sandbox / "dr.yaml"
    spec.write_text(NETWORKS + "  both: {networks: [v4net, dual]}\n"
                    "  split: {networks: [v4net, dual, v6b], default_route: {ipv4: dual, "
                    "ipv6: v6b}}\n")
    code, out, err = run_cli(capsys, "plan", str(spec))
    assert code == 0, err
    assert "route default via fd00:42::1 dev eth1 (IPv6 default from network dual)" in out
    assert "route default via 172.30.41.1 dev eth0 (IPv4 default from network v4net)" in out
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err

    def via(ns: str, family: str) -> list[tuple[str, str]]:
        return [(r["gateway"], r["dev"])
                for r in ip_json(ns, family, "route", "show", "default")]

    assert via("both", "-4") == [("172.30.41.1", "eth0")]
    assert via("both", "-6") == [("fd00:42::1", "eth1")]
    assert via("split", "-4") == [("172.30.42.1", "eth1")]
    assert via("split", "-6") == [("fd00:43::1", "eth2")]
    # An IPv6 destination beyond the networks leaves through dual's gateway.
    got = ip_json("both", "-6", "route", "get", "2001:db8::1")
    assert got[0]["gateway"] == "fd00:42::1" and got[0]["dev"] == "eth1"
    code, _, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 0
