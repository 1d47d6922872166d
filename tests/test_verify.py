"""The verification after an apply: by default it reads again what the apply
wrote (and the firewall); `apply --verify-all` reads everything. Both catch a
write that did not take; only --verify-all sees a change made meanwhile to
what the apply did not touch, and the next plan sees it either way."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli, engine
from reconciler import spec as spec_mod
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.resources import Kind
from tests.kernelutil import addresses, run_cli

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: seed
networks:
  alpine-net: {subnet: 172.30.1.0/24}
containers:
  container1: {networks: [alpine-net]}
  container2: {networks: [alpine-net]}
"""
THIRD = "  container3: {networks: [alpine-net]}\n"


class MeddlingKernel(NetlinkKernel):
    """While the apply makes container3, someone deletes container1's address:
    an object the apply does not write."""

    def netns_add(self, name: str, lo_alias: str) -> None:
        subprocess.run(["ip", "-n", "container1", "addr", "flush", "dev", "eth0"], check=True)
        super().netns_add(name, lo_alias)


class MtuIgnoringKernel(NetlinkKernel):
    """Accepts MTU changes and silently drops them: a write that did not take."""

    def link_set(self, ns, ifname, **changes):  # type: ignore[no-untyped-def]
        changes.pop("mtu", None)
        super().link_set(ns, ifname, **changes)


def start(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    spec = sandbox / "seed.yaml"
    spec.write_text(SPEC)
    assert run_cli(capsys, "apply", "--auto-approve", str(spec))[0] == 0
    spec.write_text(SPEC + THIRD)
    return spec


def test_verify_all_sees_a_change_outside_what_the_apply_wrote(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = start(sandbox, capsys)
    monkeypatch.setattr(cli, "NetlinkKernel", MeddlingKernel)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", "--verify-all", str(spec))
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == ("error: failed: verify the kernel after the apply: the kernel did not "
                        "converge after apply; still different:")
    assert any(line.startswith("  create address 172.30.1.2/24 on eth0") for line in lines), err


def test_the_default_verification_leaves_it_to_the_next_plan(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = start(sandbox, capsys)
    monkeypatch.setattr(cli, "NetlinkKernel", MeddlingKernel)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, err
    assert addresses("container3", "eth0") == ["172.30.1.4/24"]
    monkeypatch.undo()
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 2
    assert "create address 172.30.1.2/24 on eth0" in out


@pytest.mark.parametrize("verify_all", [False, True])
def test_both_catch_a_write_that_did_not_take(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    verify_all: bool,
) -> None:
    spec = sandbox / "seed.yaml"
    spec.write_text(SPEC)
    assert run_cli(capsys, "apply", "--auto-approve", str(spec))[0] == 0
    spec.write_text(SPEC.replace("172.30.1.0/24}", "172.30.1.0/24, mtu: 1400}"))
    monkeypatch.setattr(cli, "NetlinkKernel", MtuIgnoringKernel)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec),
                           *(["--verify-all"] if verify_all else []))
    assert code == 1
    assert "did not converge after apply; still different:" in err
    assert "mtu 1500 -> 1400" in err


def test_what_is_read_again_is_what_the_plan_wrote(sandbox: Path) -> None:
    """The narrowed verification reads the namespaces the plan wrote to and no
    other (counted at the kernel interface), and the firewall."""
    first = spec_mod.load_text(SPEC, "seed.yaml")
    kernel = NetlinkKernel()
    try:
        engine.apply(kernel, first, engine.snapshot(kernel, first).plan)
        moved = spec_mod.load_text(SPEC.replace(
            "  container2: {networks: [alpine-net]}",
            "  container2: {networks: {alpine-net: {ipv4_address: 172.30.1.50}}}"), "seed.yaml")
        snap = engine.snapshot(kernel, moved)
        assert {c.key[0] for c in snap.plan.changes} >= {Kind.ADDRESS}
        reread = engine.written(snap.plan)
        assert reread.namespaces == frozenset({"container2"})
        read: list[str] = []
        real = kernel.links

        def links(ns: str) -> Any:
            read.append(ns)
            return real(ns)

        kernel.links = links  # type: ignore[method-assign]
        engine.apply(kernel, moved, snap.plan)
        assert "container1" not in read and "container2" in read
        # With verify_all, every namespace is read again.
        read.clear()
        back = engine.snapshot(kernel, first)
        read.clear()
        engine.apply(kernel, first, back.plan, verify_all=True)
        assert {"container1", "container2"} <= set(read)
    finally:
        kernel.close()
    assert addresses("container2", "eth0") == ["172.30.1.50/24"]  # kept: it is still valid
