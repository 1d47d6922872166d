"""`expect` without a kernel: loading and its errors (file:line:col), where
each check sends its packets, what is skipped on this machine, and the
table. The probes themselves are in tests/test_expect.py (real kernel)."""

from __future__ import annotations

import ipaddress
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler import expect, render
from reconciler import spec as spec_mod
from reconciler.errors import SpecError
from reconciler.model import Spec
from reconciler.state.observe import ObservedState

BASE = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24}
  back: {subnet: 172.30.2.0/24}
containers:
  web: {networks: [front, back]}
  db: {networks: [back]}
  other: {networks: [front]}
  cache: {network_mode: host}
  batch: {network_mode: none}
expect:
"""


def load(entries: str) -> Spec:
    return spec_mod.load_text(BASE + textwrap.dedent(entries), "s.yaml")


def problems(entries: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load(entries)
    return [str(p) for p in caught.value.problems]


def test_entries_load_in_order_with_their_meaning() -> None:
    spec = load("""\
      - {from: web, to: db, port: 5432}
      - {from: web, to: cache, port: 6379, reach: false}
      - {from: other, to: 172.30.2.9, ping: true}
      - {from: batch, to: 127.0.0.1, port: 80}
    """)
    assert [(e.source, e.target, e.port, e.ping, e.reach) for e in spec.expect] == [
        ("web", "db", 5432, False, True),
        ("web", "cache", 6379, False, False),
        ("other", "172.30.2.9", None, True, True),
        ("batch", "127.0.0.1", 80, False, True),
    ]
    assert spec.expect[2].address == ipaddress.ip_address("172.30.2.9")
    assert spec.expect[0].address is None


def test_every_problem_has_its_position() -> None:
    found = problems("""\
      - {from: wbe, to: db, port: 5432}
      - {from: web, to: dbb, port: 5432}
      - {from: web, to: db}
      - {from: web, to: db, port: 5432, ping: true}
      - {from: web, to: 224.0.0.1, ping: true}
      - {from: web, to: batch, ping: true}
      - {from: batch, to: web, ping: true}
      - {from: web, to: "fe80::1", ping: true}
      - {from: web, to: 172.30.1.255, ping: true}
      - {from: web, to: 172.30.2.0, port: 80}
    """)
    assert found == [
        "s.yaml:13:4: expect[0]: from 'wbe' is not a container of the spec "
        "(did you mean 'web'?)",
        "s.yaml:14:15: expect[1]: to 'dbb' is neither a container of the spec nor an IP "
        "address (did you mean 'db'?)",
        "s.yaml:15:3: expect[2]: say what to check: port (a TCP connect to it) or ping: true "
        "(an ICMP echo)",
        "s.yaml:16:35: expect[3]: give port (a TCP connect) or ping: true (an ICMP echo), "
        "not both",
        "s.yaml:17:15: expect[4]: to 224.0.0.1 is multicast (224.0.0.0/4), which no single "
        "host answers at",
        "s.yaml:18:15: expect[5]: to 'batch' has network_mode none: it has only loopback, so "
        "no address of it can be checked from another container",
        "s.yaml:20:15: expect[7]: to fe80::1 is link-local (fe80::/10), which no single host "
        "answers at",
        "s.yaml:21:15: expect[8]: to 172.30.1.255 is the broadcast address of network 'front' "
        "(172.30.1.0/24), which no single host answers at",
        "s.yaml:22:15: expect[9]: to 172.30.2.0 is the network address of network 'back' "
        "(172.30.2.0/24), which no single host answers at",
    ]


def test_schema_problems_name_the_entry() -> None:
    found = problems("""\
      - {from: web, to: db, port: 70000}
      - {from: web, to: db, port: 1, colour: red}
      - {from: web}
    """)
    assert found == [
        "s.yaml:13:23: expect[0]: port must be between 1 and 65535 (got 70000)",
        "s.yaml:14:32: expect[1]: unknown key 'colour'",
        "s.yaml:15:3: expect[2]: to is required",
    ]


def test_a_host_mode_target_needs_a_bridge_gateway_to_be_reached_at() -> None:
    text = BASE.replace("  db: {networks: [back]}", "  db: {networks: [back]}\n"
                        "  lonely: {networks: []}")
    with pytest.raises(SpecError) as caught:
        spec_mod.load_text(text + "  - {from: lonely, to: cache, port: 1}\n"
                           "  - {from: web, to: lonely, port: 1}\n", "s.yaml")
    assert [p.message for p in caught.value.problems] == [
        "expect[0]: to 'cache' shares the host's namespace, which a container reaches at the "
        "gateway of a bridge network; from 'lonely' is on no bridge network with a gateway "
        "(name an address in to instead)",
        "expect[1]: to 'lonely' is attached to no network, so it has no address",
    ]


def test_files_of_a_directory_add_their_entries(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE + "  - {from: web, to: db, port: 1}\n")
    (tmp_path / "b.yaml").write_text("expect:\n  - {from: web, to: nobody, port: 2}\n")
    with pytest.raises(SpecError) as caught:
        spec_mod.load(tmp_path)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'b.yaml'}:2:17: expect[1]: to 'nobody' is neither a container of the "
        "spec nor an IP address"]
    (tmp_path / "b.yaml").write_text("expect:\n  - {from: other, to: db, port: 2}\n")
    assert [(e.index, e.source) for e in spec_mod.load(tmp_path).expect] == [
        (0, "web"), (1, "other")]


def test_where_the_packets_go() -> None:
    spec = load("""\
      - {from: web, to: db, port: 5432}
      - {from: other, to: db, ping: true, reach: false}
      - {from: web, to: web, port: 80}
      - {from: web, to: cache, port: 6379}
      - {from: cache, to: cache, port: 6379}
      - {from: cache, to: other, ping: true}
      - {from: web, to: 10.9.8.7, ping: true}
    """)
    checks = expect.checks(spec, ObservedState({}))
    # Addresses are allocated in container-name order: db .2 on back; other .2,
    # web .3 on front, web .3 on back.
    assert [(c.ns, str(c.address)) for c in checks] == [
        ("web", "172.30.2.2"),  # the shared network, back
        ("other", "172.30.2.2"),  # none shared: db's first network
        ("web", "127.0.0.1"),  # itself
        ("web", "172.30.1.1"),  # the host, at the gateway of web's first bridge network
        ("", "127.0.0.1"),  # the host's own namespace, to itself
        ("", "172.30.1.2"),
        ("web", "10.9.8.7"),
    ]
    assert all(c.runnable for c in checks)


def test_specs_own_example_from_a_loopback_only_container_is_valid_and_noted() -> None:
    """SPEC.md writes {from: batch, to: web, ping: true} with batch in network_mode
    none: it loads, the plan notes that it cannot hold, and it is checked."""
    spec = load("""\
      - {from: batch, to: web, ping: true}
      - {from: batch, to: web, ping: true, reach: false}
      - {from: batch, to: batch, port: 80}
    """)
    checks = expect.checks(spec, ObservedState({}))
    assert all(c.runnable for c in checks) and checks[0].ns == "batch"
    assert expect.notes(checks) == [
        "expect[0]: from 'batch' has network_mode none: its namespace has only loopback, so "
        "this check cannot hold (check it with reach: false, or from another container)"]


MACHINES = """\
version: 1
project: mm
hosts:
  a: {address: 192.0.2.1}
  b: {address: 192.0.2.2}
networks:
  mesh: {driver: overlay, vni: 42, subnet: 10.200.0.0/24}
  local: {subnet: 172.30.9.0/24}
containers:
  x: {host: a, networks: [mesh]}
  y: {host: b, networks: [mesh]}
  z: {host: b, networks: [local]}
expect:
  - {from: x, to: y, ping: true}
  - {from: y, to: x, ping: true}
  - {from: x, to: z, port: 80}
"""


def test_from_another_machine_is_skipped_with_a_note() -> None:
    spec = spec_mod.load_text(MACHINES, "m.yaml")
    checks = expect.checks(spec, ObservedState({}), host="a")
    assert checks[0].runnable and checks[0].address in ipaddress.ip_network("10.200.0.0/24")
    assert checks[1].skipped == "from 'y' runs on host 'b': checked there, not on this machine"
    assert expect.notes(checks) == [f"expect[1]: {checks[1].skipped}"]
    assert checks[2].problem.startswith("no address of 'z' is known on this machine")
    # Without the one check that sends packets: nothing is probed, a skipped
    # check is neither held nor failed, one without an address fails.
    results = expect.run(replace(spec, expect=spec.expect[1:]), ObservedState({}), host="a")
    assert [r.outcome for r in results] == [expect.Outcome.SKIPPED, expect.Outcome.FAILS]
    assert [r.reached for r in results] == [None, None]
    assert expect.failed(results) == results[1:]


def test_outcome_is_reach_compared_with_what_happened() -> None:
    spec = load("""\
      - {from: web, to: db, port: 5432}
      - {from: other, to: db, port: 5432, reach: false}
    """)
    must, must_not = expect.checks(spec, ObservedState({}))
    assert expect.Result(must, True, "").outcome == expect.Outcome.HOLDS
    assert expect.Result(must, False, "").outcome == expect.Outcome.FAILS
    assert expect.Result(must_not, False, "").outcome == expect.Outcome.HOLDS
    assert expect.Result(must_not, True, "").outcome == expect.Outcome.FAILS
    # Could not be tried (a namespace that is gone): fails either way.
    assert expect.Result(must_not, None, "").outcome == expect.Outcome.FAILS


def test_table_and_plan_listing() -> None:
    spec = load("""\
      - {from: web, to: db, port: 5432}
      - {from: other, to: db, ping: true, reach: false}
    """)
    planned = expect.checks(spec, ObservedState({}))
    listing = render.expectations_text(planned)
    assert "web -> db (172.30.2.2) tcp/5432: must reach" in listing
    assert "other -> db (172.30.2.2) ping: must not reach" in listing
    table = render.results_text([
        expect.Result(planned[0], False, "refused"), expect.Result(planned[1], False, "no reply")])
    lines = table.splitlines()
    assert lines[0].split() == ["from", "to", "what", "expected", "result", "detail"]
    assert "tcp/5432" in lines[1] and "fails" in lines[1] and lines[1].endswith("refused")
    assert "no reach" in lines[2] and "holds" in lines[2]
    assert "1 of 2 expectation(s) checked here do not hold." in lines[-1]
