"""Reading the host namespace again link by link (Reread.host_links): the
links named are read one by one, the others taken as kept, and the rest of
the host namespace (addresses, routes, bridges' sysctls) read whole. The
result is what a full read gives; a link left out of host_links is not seen
(what makes it cheaper is real)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from reconciler import desired, engine, planner
from reconciler import spec as spec_mod
from reconciler.drivers.events import KernelEvents
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.resources import Kind, Veth
from reconciler.state.cache import ObservedCache
from reconciler.state.observe import ObservedState, Reread
from tests.kernelutil import ip_json, until_started

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: hl
networks:
  front: {subnet: 172.31.7.0/24}
containers:
  web: {networks: [front]}
  db: {networks: [front]}
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _index(name: str) -> int:
    return int(ip_json(None, "link", "show", name)[0]["ifindex"])


@pytest.fixture
def applied(sandbox: Path) -> tuple[NetlinkKernel, spec_mod.Spec, ObservedState]:
    spec = spec_mod.load_text(SPEC)
    kernel = NetlinkKernel()
    snap = engine.snapshot(kernel, spec)
    engine.apply(kernel, spec, snap.plan)
    return kernel, spec, engine.observe_project(kernel, spec)


def _again(kernel: NetlinkKernel, spec: spec_mod.Spec, before: ObservedState,
           links: frozenset[int | str], namespaces: frozenset[str] = frozenset()
           ) -> ObservedState:
    return engine.observe_project(kernel, spec, None, before,
                                  Reread(host=False, host_links=links, nft=False,
                                         netns_dir=False, namespaces=namespaces, tables=False))


def _same(a: ObservedState, b: ObservedState) -> None:
    assert a.resources == b.resources
    assert a.foreign == b.foreign


def test_a_host_end_changed_is_read_by_index_or_name_and_only_then(
    applied: tuple[NetlinkKernel, spec_mod.Spec, ObservedState],
) -> None:
    kernel, spec, before = applied
    veth = before.resources[(Kind.VETH, "web", "front")]
    assert isinstance(veth, Veth)
    _ip("link", "set", "dev", veth.host_ifname, "mtu", "1400")
    fresh = engine.observe_project(kernel, spec)
    changed = fresh.resources[veth.key]
    assert isinstance(changed, Veth) and changed.host_mtu == 1400
    # A port's MTU below its bridge's lowers the bridge's too: the kernel tells
    # of both links (two RTM_NEWLINK), and a plan names the port's bridge too.
    bridge = veth.master_ifname
    assert bridge
    _same(_again(kernel, spec, before,
                 frozenset({_index(veth.host_ifname), _index(bridge)})), fresh)
    _same(_again(kernel, spec, before, frozenset({veth.host_ifname, bridge})), fresh)
    # Not named: taken as kept (the link dump is what is saved).
    stale = _again(kernel, spec, before, frozenset())
    assert stale.resources[veth.key] == veth


def test_links_renamed_deleted_and_added_in_the_host(
    applied: tuple[NetlinkKernel, spec_mod.Spec, ObservedState],
) -> None:
    kernel, spec, before = applied
    web = before.resources[(Kind.VETH, "web", "front")]
    db = before.resources[(Kind.VETH, "db", "front")]
    assert isinstance(web, Veth) and isinstance(db, Veth)
    renamed = _index(web.host_ifname)
    _ip("link", "set", "dev", web.host_ifname, "name", "vrenamed")
    deleted = _index(db.host_ifname)
    _ip("link", "del", db.host_ifname)
    _ip("link", "add", web.host_ifname, "type", "veth", "peer", "name", "foreignp")
    added = {_index(web.host_ifname), _index("foreignp")}
    fresh = engine.observe_project(kernel, spec)
    assert ("", web.host_ifname) in fresh.foreign.links  # its old name, taken
    # db's end went with the pair: its namespace is read again (as its own
    # notification marks it).
    _same(_again(kernel, spec, before, frozenset({renamed, deleted, *added}),
                 frozenset({"db"})), fresh)
    # The same by names (as engine.written gives them).
    _same(_again(kernel, spec, before,
                 frozenset({web.host_ifname, db.host_ifname, "vrenamed", "foreignp"}),
                 frozenset({"db"})), fresh)


def test_a_plan_that_writes_a_host_end_reads_it_and_its_bridge_only() -> None:
    spec = spec_mod.load_text(SPEC)
    veth = desired.build(spec, ObservedState({}))[(Kind.VETH, "web", "front")]
    assert isinstance(veth, Veth) and veth.master_ifname
    reread = engine.written(planner.plan({veth.key: veth}, {}))
    assert not reread.host
    assert reread.host_links == frozenset({veth.host_ifname, veth.master_ifname})


def test_a_port_flag_toggled_from_outside_is_marked_and_read(
    applied: tuple[NetlinkKernel, spec_mod.Spec, ObservedState],
) -> None:
    """`bridge link set ... isolated on` changes the port, told by an
    RTM_NEWLINK of the bridge family: the listener marks that link, and
    reading it alone sees the flag as a full read does."""
    kernel, spec, before = applied
    veth = before.resources[(Kind.VETH, "db", "front")]
    assert isinstance(veth, Veth) and not veth.isolated
    cache = ObservedCache()
    cache.store(before)
    events = KernelEvents("hl", "netapply-hl", lambda _: None, lambda _: None, cache)
    events.start()
    try:
        until_started(cache)
        subprocess.run(["bridge", "link", "set", "dev", veth.host_ifname, "isolated", "on"],
                       check=True)
        index = _index(veth.host_ifname)
        deadline = time.monotonic() + 5
        while not ((reread := cache.take()[0]) and reread.host_links
                   and index in reread.host_links):
            assert time.monotonic() < deadline, "no mark for the port"
            time.sleep(0.01)
    finally:
        events.stop()
    fresh = engine.observe_project(kernel, spec)
    changed = fresh.resources[veth.key]
    assert isinstance(changed, Veth) and changed.isolated
    _same(engine.observe_project(kernel, spec, None, before, reread), fresh)


def test_a_link_read_alone_updates_which_index_a_name_is(sandbox: Path) -> None:
    """After a rename from outside read by index, a change by the old name
    goes to the link that has that name now, never to the renamed one
    through its remembered index."""
    kernel = NetlinkKernel()
    _ip("link", "add", "hla", "type", "veth", "peer", "name", "hlap")
    kernel.links("")  # learns hla -> its index
    first = _index("hla")
    _ip("link", "set", "dev", "hla", "name", "hlb")
    _ip("link", "add", "hla", "type", "veth", "peer", "name", "hlcp")
    assert kernel.link("", first) is not None  # read alone, as a marked link is
    kernel.link_set("", "hla", mtu=1400)
    mtus = {link.ifname: link.mtu for link in kernel.links("")}
    assert mtus["hla"] == 1400 and mtus["hlb"] == 1500
