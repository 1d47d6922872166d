"""A hypothesis state machine on the real kernel (in a private namespace per
run): rules edit the spec, tamper with the kernel, add foreign objects and
reconcile; after each reconcile the plan must be empty and foreign objects
untouched."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import pytest
from hypothesis import note, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from reconciler.drivers.netlink import NetlinkKernel
from reconciler.resources import Netns, Resource, Veth
from tests.kernelutil import private_namespace, require_sandbox
from tests.propkit import converge, destroy, foreign_view, owned, plan_for
from tests.strategies import (
    ForeignPlan,
    attach_namespace,
    drift_choices,
    foreign_plans,
    load,
    pick_drifts,
    spec_dicts,
    spec_yaml,
)

pytestmark = pytest.mark.kernel


class RealKernelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        require_sandbox()
        self._stack = ExitStack()
        self._stack.enter_context(private_namespace())
        self.kernel = NetlinkKernel()
        self._stack.callback(self.kernel.close)
        attach_namespace(self.kernel)
        self.doc: dict[str, Any] = {}
        self.foreign: dict[str, Any] | None = None

    @initialize(doc=spec_dicts())
    def start(self, doc: dict[str, Any]) -> None:
        self.edit_spec(doc)

    @rule(doc=spec_dicts())
    def edit_spec(self, doc: dict[str, Any]) -> None:
        note(f"spec now:\n{spec_yaml(doc)}")
        self.doc = doc

    @rule(choices=drift_choices)
    def tamper(self, choices: list[tuple[int, int]]) -> None:
        resources = list(owned(self.kernel, load(self.doc)).values())
        for drift in pick_drifts(choices, resources):
            note(f"tamper: {drift}")
            drift.apply(self.kernel)
            if isinstance(drift.target, Netns) and drift.what == "delete":
                self._wait_for_teardown(drift.target.name, resources)

    def _wait_for_teardown(self, netns: str, resources: list[Resource]) -> None:
        """The kernel tears a deleted namespace down asynchronously: wait until
        the host ends of its veths are gone, so that what the next rule sees
        (and so what hypothesis draws) does not depend on timing."""
        lingering = {r.host_ifname for r in resources if isinstance(r, Veth) and r.ns == netns}
        deadline = time.monotonic() + 30
        while lingering & {link.ifname for link in self.kernel.links("")}:
            assert time.monotonic() < deadline, f"netns {netns} not torn down in 30 s"
            time.sleep(0.01)

    @precondition(lambda self: self.foreign is None)
    @rule(plan=foreign_plans)
    def add_foreign(self, plan: ForeignPlan) -> None:
        plan.make(self.kernel)
        self.foreign = foreign_view(self.kernel)

    @rule()
    def reconcile(self) -> None:
        spec = load(self.doc)
        converge(self.kernel, spec)
        assert plan_for(self.kernel, spec).empty

    @rule()
    def destroy(self) -> None:
        destroy(self.kernel, load(self.doc))
        assert owned(self.kernel) == {}

    @invariant()
    def foreign_objects_are_never_touched(self) -> None:
        if self.foreign is not None:
            assert foreign_view(self.kernel) == self.foreign

    def teardown(self) -> None:
        self._stack.close()


TestRealKernel = RealKernelMachine.TestCase
TestRealKernel.settings = settings(
    settings.default,
    max_examples=max(25, settings.default.max_examples // 20),
    stateful_step_count=10,
)
