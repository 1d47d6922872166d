"""Planning only what changed (engine.plan_from's base, engine.scoped) makes
the plan a whole plan makes: after drift, after a spec edit, after both, on
the in-memory kernel with foreign objects around."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given, note
from hypothesis import strategies as st

from reconciler import engine
from reconciler.drivers.memory import MemoryKernel
from reconciler.errors import NetapplyError, SpecError
from reconciler.model import Spec
from reconciler.resources import Address, Kind
from tests import propkit
from tests.propkit import converge, owned
from tests.strategies import (
    CONTAINERS,
    attach_namespace,
    drift_choices,
    foreign_plans,
    load,
    pick_drifts,
    spec_dicts,
    spec_yaml,
    with_container_added,
    with_container_removed,
)


def _same(scoped: engine.Snapshot, whole: engine.Snapshot) -> None:
    assert scoped.plan.changes == whole.plan.changes
    assert scoped.plan.parked == whole.plan.parked
    assert scoped.plan.disruption is not None and whole.plan.disruption is not None
    assert scoped.plan.disruption == whole.plan.disruption
    assert scoped.plan.disruption.summary_json() == whole.plan.disruption.summary_json()
    assert scoped.desired == whole.desired
    assert scoped.notes == whole.notes


def _edited(data: st.DataObject, doc: dict[str, Any]) -> dict[str, Any]:
    """The spec with one container added, removed, or taken off its last
    network, or another spec altogether."""
    changed: dict[str, Any] = {**doc, "containers": dict(doc["containers"])}
    how = data.draw(st.sampled_from(["add", "remove", "detach", "other spec"]), label="edit")
    absent = [c for c in CONTAINERS if c not in doc["containers"]]
    if how == "other spec":
        return data.draw(spec_dicts(), label="S2")
    if how == "add" and absent:
        return with_container_added(data, doc)
    if how == "remove" and doc["containers"]:
        return with_container_removed(data, doc)
    if doc["containers"]:
        name = data.draw(st.sampled_from(sorted(doc["containers"])), label="detached")
        container = dict(changed["containers"][name])
        container["networks"] = list(container.get("networks", []))[:-1]
        changed["containers"][name] = container
    return changed


@given(st.data())
def test_a_plan_against_a_base_is_the_whole_plan(data: st.DataObject) -> None:
    foreign = data.draw(foreign_plans, label="foreign")
    s1 = data.draw(spec_dicts(), label="S1")
    note(f"S1:\n{spec_yaml(s1)}")
    kernel = attach_namespace(MemoryKernel())
    foreign.make(kernel)
    spec1 = load(s1)
    converge(kernel, spec1)
    host = propkit.host_of(spec1)
    base = engine.snapshot(kernel, spec1, host=host)
    assert base.plan.empty
    chosen = pick_drifts(data.draw(drift_choices, label="drift"), list(owned(kernel).values()))
    note(f"drift: {chosen}")
    for drift in chosen:
        drift.apply(kernel)
    spec2, host2 = spec1, host
    if data.draw(st.booleans(), label="edit the spec"):
        s2 = _edited(data, s1)
        note(f"S2:\n{spec_yaml(s2)}")
        try:
            spec2 = load(s2)
        except SpecError:
            assume(False)  # a route via the network it left, say
        host2 = propkit.host_of(spec2)
    # Read in part (the parts drift touched are all read: Reread() is all of it)
    # and in whole: the plan against the base is the whole plan either way.
    observed = engine.observe_project(kernel, spec2, host2, base.observed)
    try:
        whole = engine.plan_from(spec2, observed, host=host2)
    except NetapplyError as e:
        try:
            engine.plan_from(spec2, observed, host=host2, base=base)
        except NetapplyError as again:
            assert str(again) == str(e)
            return
        raise AssertionError(f"the whole plan fails ({e}), the scoped one does not") from None
    _same(engine.plan_from(spec2, observed, host=host2, base=base), whole)
    # A chain of bases, as watch mode makes: the last one applied and verified.
    _, after = engine.apply_verified(kernel, spec2, whole.plan, host=host2, base=whole)
    assert after.plan.empty
    _same(after, engine.plan_from(spec2, after.observed, host=host2))


def _converged(doc: dict[str, Any]) -> tuple[MemoryKernel, Spec, engine.Snapshot]:
    kernel = attach_namespace(MemoryKernel())
    spec = load(doc)
    converge(kernel, spec)
    return kernel, spec, engine.snapshot(kernel, spec)


SHOP = {
    "version": 1, "project": "p",
    "networks": {"front": {"subnet": "10.30.0.0/24"}, "back": {"subnet": "10.31.0.0/24"}},
    "containers": {"web": {"networks": ["front", "back"]}, "db": {"networks": ["back"]},
                   "proxy": {"networks": ["front"]}},
}


def test_an_address_deleted_plans_its_namespace_only() -> None:
    kernel, spec, base = _converged(SHOP)
    address = next(r for r in base.observed.resources.values()
                   if isinstance(r, Address) and r.link[1] == "db")
    kernel.addr_del(address.ns, address.ifname, address.cidr)
    observed = engine.observe_project(kernel, spec, None, base.observed)
    scope = engine.scoped(spec, observed, None, base)
    assert scope is not None
    wanted, keys = scope
    assert wanted is base.desired  # the same spec, no allocation input changed
    assert address.key in keys
    assert {k[1] for k in keys if k[0] == Kind.VETH} == {"db"}  # not web's, not proxy's
    snap = engine.plan_from(spec, observed, base=base)
    # The address, and the default route the kernel removed with it.
    assert [c.key for c in snap.plan.changes] == [address.key, (Kind.ROUTE, "db", "0.0.0.0/0")]
    _same(snap, engine.plan_from(spec, observed))


def test_a_bridge_changed_plans_the_whole() -> None:
    kernel, spec, base = _converged(SHOP)
    bridge = next(r for r in base.observed.resources.values() if r.kind == Kind.BRIDGE)
    kernel.link_set("", bridge.ifname, mtu=1300)  # type: ignore[attr-defined]
    observed = engine.observe_project(kernel, spec, None, base.observed)
    assert engine.scoped(spec, observed, None, base) is None


def test_a_spec_edit_plans_the_containers_it_touches() -> None:
    kernel, spec, base = _converged(SHOP)
    edited = {**SHOP, "containers": {**SHOP["containers"], "db": {"networks": ["front"]}}}  # type: ignore[dict-item]
    spec = load(edited)
    assert spec is not base.spec
    observed = engine.observe_project(kernel, spec, None, base.observed)
    scope = engine.scoped(spec, observed, None, base)
    assert scope is not None
    _, keys = scope
    assert {k[1] for k in keys if k[0] == Kind.VETH} == {"db"}
    _same(engine.plan_from(spec, observed, base=base), engine.plan_from(spec, observed))


def test_a_lost_allocation_record_builds_the_desired_state_again() -> None:
    """b kept 10.30.0.3 after a, which had .2, left; with b's veth deleted (its
    mark holds the allocation record), b gets the lowest free address, .2:
    the desired state must be built again, not taken from the base."""
    three = {"version": 1, "project": "p", "networks": {"front": {"subnet": "10.30.0.0/24"}},
             "containers": {"a": {"networks": ["front"]}, "b": {"networks": ["front"]}}}
    kernel = attach_namespace(MemoryKernel())
    converge(kernel, load(three))
    spec = load({**three, "containers": {"b": {"networks": ["front"]}}})
    converge(kernel, spec)
    base = engine.snapshot(kernel, spec)
    veth = base.observed.resources[(Kind.VETH, "b", "front")]
    kernel.link_del(veth.ns, veth.ifname)  # type: ignore[attr-defined]
    observed = engine.observe_project(kernel, spec, None, base.observed)
    scope = engine.scoped(spec, observed, None, base)
    assert scope is not None and scope[0] is not base.desired
    snap = engine.plan_from(spec, observed, base=base)
    _same(snap, engine.plan_from(spec, observed))
    assert (Kind.ADDRESS, Kind.VETH, "b", "front", "10.30.0.2/24") in snap.desired
