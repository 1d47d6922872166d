"""The observer on the in-memory kernel: what it cannot read fails the plan
(never "foreign"), and what interrupted runs left is the project's to remove."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from reconciler import engine
from reconciler.drivers.memory import MemoryKernel
from reconciler.errors import KernelError
from reconciler.planner import Action
from reconciler.resources import Kind
from reconciler.spec import load_text
from reconciler.state.observe import observe

SPEC = """\
version: 1
project: sc
networks:
  front: {subnet: 172.30.1.0/24}
containers:
  web: {networks: [front]}
  db: {networks: [front]}
"""


class Unreadable:
    """A kernel on which reading netns `name` fails with `err`."""

    def __init__(self, inner: MemoryKernel, name: str, err: int):
        self._inner, self._name, self._err = inner, name, err

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def links(self, ns: str) -> Any:
        if ns == self._name:
            raise KernelError(f"list links in netns {ns}", self._err)
        return self._inner.links(ns)


def applied() -> tuple[MemoryKernel, Any]:
    spec = load_text(SPEC, "sc.yaml")
    kernel = MemoryKernel()
    engine.apply(kernel, spec, engine.snapshot(kernel, spec).plan)
    return kernel, spec


def test_an_unreadable_namespace_fails_the_plan_and_is_not_called_foreign() -> None:
    kernel, spec = applied()
    for err in (errno.EMFILE, errno.EPERM, errno.EIO):
        with pytest.raises(KernelError) as caught:
            engine.snapshot(Unreadable(kernel, "web", err), spec)  # type: ignore[arg-type]
        assert caught.value.errno == err
        assert str(caught.value).startswith(
            "read netns web to find out whether project 'sc' owns it: ")
    assert "ulimit -n" in KernelError("x", errno.EMFILE).hint


def test_a_namespace_gone_since_it_was_listed_is_neither_owned_nor_foreign() -> None:
    kernel, _ = applied()
    seen = observe(Unreadable(kernel, "web", errno.ENOENT), "sc")  # type: ignore[arg-type]
    assert (Kind.NETNS, "web") not in seen.resources
    assert "web" not in seen.foreign.netns
    assert (Kind.NETNS, "db") in seen.resources


def test_leftovers_under_the_spec_names_are_removed() -> None:
    kernel, spec = applied()
    kernel.files["/etc/netns/db/hosts.netapply-tmp"] = "half"
    kernel.files["/etc/netns/.netapply-sc/x.netapply-tmp"] = ""
    kernel.files["/etc/netns/other/hosts.netapply-tmp"] = "someone else's"
    snap = engine.snapshot(kernel, spec, destroy=True)
    leftovers = sorted(c.key for c in snap.plan.changes if c.key[0] == Kind.LEFTOVER_FILE)
    assert leftovers == [(Kind.LEFTOVER_FILE, "/etc/netns/.netapply-sc/x.netapply-tmp"),
                         (Kind.LEFTOVER_FILE, "/etc/netns/db/hosts.netapply-tmp")]
    assert all(c.action == Action.DELETE for c in snap.plan.changes)
    engine.apply(kernel, spec, snap.plan, destroy=True)
    assert list(kernel.files) == ["/etc/netns/other/hosts.netapply-tmp"]
