"""Convergence properties, on the in-memory kernel (which the differential test
ties to the real one). Each property is a test that fails when it breaks; a
failing example is printed with its specs as YAML, ready for a bug report."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from reconciler import desired as desired_mod
from reconciler import engine
from reconciler.drivers.memory import MemoryKernel
from reconciler.errors import ApplyError, SpecError
from reconciler.resources import Bridge, HostsFile, Netns, Veth
from reconciler.state.observe import ObservedState
from tests import propkit
from tests.propkit import FailAt, converge, destroy, foreign_view, owned, plan_for
from tests.strategies import (
    CONTAINERS,
    ForeignPlan,
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


def _note_spec(label: str, doc: dict[str, Any]) -> None:
    note(f"{label}:\n{spec_yaml(doc)}")


def reachable_state(data: st.DataObject) -> tuple[MemoryKernel, ForeignPlan, dict[str, Any]]:
    """A kernel in a state an operator can meet: foreign objects, a spec S1
    applied, then drift. Returns the kernel, the foreign plan and S1."""
    foreign = data.draw(foreign_plans, label="foreign")
    s1 = data.draw(spec_dicts(), label="S1")
    _note_spec("S1", s1)
    kernel = attach_namespace(MemoryKernel())
    foreign.make(kernel)
    converge(kernel, load(s1))
    chosen = pick_drifts(data.draw(drift_choices, label="drift"), list(owned(kernel).values()))
    note(f"drift: {chosen}")
    for drift in chosen:
        drift.apply(kernel)
    return kernel, foreign, s1


@given(st.data())
def test_one_pass_convergence_history_independence_order_and_safety(data: st.DataObject) -> None:
    kernel, foreign, _ = reachable_state(data)
    s2 = data.draw(spec_dicts(), label="S2")
    _note_spec("S2", s2)
    spec2 = load(s2)
    untouched = foreign_view(kernel)
    snap = propkit.snapshot(kernel, spec2)
    propkit.check_order(snap.plan, snap.observed.resources)  # 4. order validity
    # Raises unless converged:
    engine.apply(kernel, spec2, snap.plan, host=propkit.host_of(spec2))
    assert plan_for(kernel, spec2).empty  # 1. one-pass convergence
    assert foreign_view(kernel) == untouched  # 5. safety
    # 2. history independence: a fresh machine with the same foreign objects,
    # given S2 with the addresses the endpoints kept, ends in the same state.
    fresh = attach_namespace(MemoryKernel())
    foreign.make(fresh)
    converge(fresh, load(propkit.pinned(s2, owned(kernel, spec2))))
    assert owned(fresh, spec2) == owned(kernel, spec2)
    assert propkit.dump(fresh, kernel) == propkit.dump(kernel, fresh)  # all of the kernel


@given(st.data())
def test_applying_a_converged_spec_writes_nothing(data: st.DataObject) -> None:
    kernel, _, _ = reachable_state(data)
    s2 = data.draw(spec_dicts(), label="S2")
    _note_spec("S2", s2)
    spec2 = load(s2)
    converge(kernel, spec2)
    before, state = kernel.writes, propkit.dump(kernel)
    assert converge(kernel, spec2).empty
    assert kernel.writes == before  # 3. idempotence
    assert propkit.dump(kernel) == state


@given(st.data())
def test_adding_or_removing_a_container_keeps_other_endpoints(data: st.DataObject) -> None:
    doc = data.draw(spec_dicts(min_containers=1), label="S")
    _note_spec("S", doc)
    kernel = attach_namespace(MemoryKernel())
    converge(kernel, load(doc))
    before = propkit.endpoints(owned(kernel))
    absent = [c for c in CONTAINERS if c not in doc["containers"]]
    if absent and data.draw(st.booleans(), label="add"):
        changed = with_container_added(data, doc)
    else:
        changed = with_container_removed(data, doc)
    _note_spec("S'", changed)
    converge(kernel, load(changed))
    after = propkit.endpoints(owned(kernel))
    # On overlays, addresses come from the spec alone (all machines must agree):
    # one moves when a new member's place collides with it, as documented.
    overlays = {n for n, net in doc["networks"].items() if net.get("driver") == "overlay"}
    for endpoint in before.keys() & after.keys():  # 6. sticky allocation
        if endpoint[1] not in overlays:
            assert after[endpoint] == before[endpoint], endpoint


@given(st.data())
def test_a_failure_at_any_write_leaves_a_state_the_next_apply_converges_from(
    data: st.DataObject,
) -> None:
    kernel, _, _ = reachable_state(data)
    s2 = data.draw(spec_dicts(), label="S2")
    _note_spec("S2", s2)
    spec2 = load(s2)
    untouched = foreign_view(kernel)
    writes = propkit.writes_of(kernel, spec2)
    if writes:
        k = data.draw(st.integers(1, writes), label="failing write")
        failing = FailAt(kernel, k)
        with pytest.raises(ApplyError):
            propkit.apply(failing, spec2)  # type: ignore[arg-type]
    assert foreign_view(kernel) == untouched
    converge(kernel, spec2)  # 7. crash recovery
    assert plan_for(kernel, spec2).empty
    assert foreign_view(kernel) == untouched


@given(st.data())
def test_destroy_from_any_state_leaves_nothing_owned(data: st.DataObject) -> None:
    kernel, _, s1 = reachable_state(data)
    spec1 = load(s1)
    untouched = foreign_view(kernel)
    if data.draw(st.booleans(), label="interrupted apply first"):
        s2 = data.draw(spec_dicts(), label="S2")
        writes = propkit.writes_of(kernel, load(s2))
        if writes:
            failing = FailAt(kernel, data.draw(st.integers(1, writes)))
            with pytest.raises(ApplyError):
                spec2 = load(s2)
                propkit.apply(failing, spec2)  # type: ignore[arg-type]
    destroy(kernel, spec1)
    assert owned(kernel) == {}  # 8. destroy leaves no owned object
    assert foreign_view(kernel) == untouched


@given(st.data())
def test_a_foreign_object_with_a_desired_name_is_an_error_and_changes_nothing(
    data: st.DataObject,
) -> None:
    doc = data.draw(spec_dicts(min_containers=1, machines=False), label="S")
    _note_spec("S", doc)
    spec = load(doc)
    wanted = [
        r for r in desired_mod.build(spec, ObservedState({})).values()
        if isinstance(r, Netns | Bridge | Veth | HostsFile)
    ]
    target = data.draw(st.sampled_from(wanted), label="taken name")
    kernel = attach_namespace(MemoryKernel())
    if isinstance(target, Netns):
        kernel.netns_add(target.name, "someone else's")
    elif isinstance(target, Bridge):
        kernel.bridge_add(target.ifname, "02:fa:00:00:00:09")
    elif isinstance(target, Veth):
        kernel.bridge_add(target.host_ifname, "02:fa:00:00:00:09")
    else:
        kernel.write_file(f"/etc/netns/{target.netns}/hosts", "127.0.0.1 localhost\n")
    writes = kernel.writes
    untouched = foreign_view(kernel)
    with pytest.raises(SpecError) as caught:
        converge(kernel, spec)
    assert "exists and is not" in str(caught.value)
    assert kernel.writes == writes  # 5. safety: nothing adopted, nothing changed
    assert foreign_view(kernel) == untouched
