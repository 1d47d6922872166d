"""Saved plans on the real kernel: `plan --out FILE`, `apply FILE` refusing a
changed spec or kernel without any change, and the re-check after the prompt."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import __version__, cli, planfile
from tests.kernelutil import kernel_snapshot, run_cli

pytestmark = pytest.mark.kernel

V1 = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front}
containers:
  web: {networks: [front]}
"""
V2 = V1 + "  db: {networks: [front]}\n"  # the change the saved plan makes
STALE = "error: the saved plan {} is stale: the spec or the kernel changed since it was made; " \
        "nothing was changed:"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@pytest.fixture
def saved(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """V1 applied, the spec edited to V2, and the plan for V2 saved: (spec, plan)."""
    spec = sandbox / "shop.yaml"
    spec.write_text(V1)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, err
    spec.write_text(V2)
    out_file = sandbox / "reviewed.plan"
    code, out, err = run_cli(capsys, "plan", "--out", str(out_file), str(spec))
    assert code == 0, err
    assert "+ create netns db" in out
    assert f"Saved the plan to {out_file}" in out
    return spec, out_file


def test_a_saved_plan_is_applied_when_nothing_changed(
    saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, out_file = saved
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 0, err
    assert f"Saved plan {out_file}: the spec and the kernel are as they were" in out
    assert "done: db: create netns db" in out
    assert "Apply complete" in out
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert (code, out.strip()) == (0, "No changes. The kernel matches the spec of project 'shop'.")


@pytest.mark.parametrize(("tamper", "differences"), [
    (lambda: ip("link", "set", "br-front", "mtu", "1400"),
     ["kernel object bridge front changed"]),
    (lambda: ip("-n", "web", "addr", "del", "172.30.1.2/24", "dev", "eth0"),
     ["kernel object address veth web front 172.30.1.2/24 disappeared",
      "kernel object route web 0.0.0.0/0 disappeared"]),  # the kernel takes the route with it
])
def test_a_saved_plan_is_refused_after_a_kernel_change(
    saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tamper: object,
    differences: list[str],
) -> None:
    _, out_file = saved
    assert callable(tamper)
    tamper()
    before = kernel_snapshot()
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 1
    assert err.splitlines() == [
        STALE.format(out_file), *(f"  {d}" for d in differences),
        "What to do: make a new plan (netapply plan SPEC --out FILE), review it and apply that.",
    ]
    assert out == ""
    assert kernel_snapshot() == before


def test_a_saved_plan_is_refused_after_a_spec_change(
    saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, out_file = saved
    spec.write_text(V2 + "  cache: {networks: [front]}\n")
    before = kernel_snapshot()
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 1
    assert err.splitlines()[:2] == [STALE.format(out_file), f"  spec file {spec} changed"]
    spec.unlink()
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 1
    assert err.splitlines()[:2] == [STALE.format(out_file), f"  spec: {spec} does not exist"]
    assert kernel_snapshot() == before


def test_a_saved_plan_of_a_spec_directory_sees_a_new_file(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = sandbox / "specs"
    specs.mkdir()
    (specs / "shop.yaml").write_text(V1)
    out_file = sandbox / "p"
    code, _, err = run_cli(capsys, "plan", "--out", str(out_file), str(specs))
    assert code == 0, err
    (specs / "more.yml").write_text("containers:\n  db: {networks: [front]}\n")
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 1
    assert f"  spec file {specs / 'more.yml'} is new" in err.splitlines()
    assert kernel_snapshot()["netns"] == []


def test_a_corrupt_plan_or_one_of_another_version_is_refused(
    saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, out_file = saved
    text = out_file.read_text()
    before = kernel_snapshot()
    out_file.write_text(text[: len(text) // 3])
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 1
    assert err.startswith(f"error: {out_file}: the saved plan is corrupt (")
    doc = planfile.loads(text.encode(), str(out_file), __version__)
    out_file.write_text(planfile.dumps(doc.plan, "0.0.1", None, doc.engines))
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 1
    assert err.strip() == (f"error: {out_file}: the plan was made by netapply 0.0.1, this is "
                           f"netapply {__version__}; make the plan again with this version")
    code, _, err = run_cli(capsys, "destroy", "--auto-approve", str(out_file))
    assert code == 1 and "is a saved plan: only `netapply apply` takes one" in err
    assert kernel_snapshot() == before


HOSTS = """\
version: 1
project: shop
hosts:
  a: {address: 192.0.2.11}
  b: {address: 192.0.2.12}
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front}
containers:
  web: {host: a, networks: [front]}
  db: {host: b, networks: [front]}
"""


def test_a_plan_for_another_host_is_refused(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = sandbox / "shop.yaml"
    spec.write_text(HOSTS)
    out_file = sandbox / "a.plan"
    code, out, err = run_cli(capsys, "plan", "--host", "a", "--out", str(out_file), str(spec))
    assert code == 0, err
    assert "+ create netns web" in out and "netns db" not in out
    code, _, err = run_cli(capsys, "apply", "--auto-approve", "--host", "b", str(out_file))
    assert code == 1
    assert err.strip() == f"error: {out_file}: the plan was made for host 'a', not --host b"
    assert kernel_snapshot()["netns"] == []
    # Chosen by this machine's address, not by --host: the address moved meanwhile.
    ip("link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    ip("addr", "add", "192.0.2.11/24", "dev", "lan0")
    code, out, err = run_cli(capsys, "plan", "--out", str(out_file), str(spec))
    assert code == 0, err
    assert "This machine is host 'a' (192.0.2.11 is an address of this machine)." in out
    ip("addr", "flush", "dev", "lan0")
    ip("addr", "add", "192.0.2.12/24", "dev", "lan0")
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 1
    assert "  this machine is host 'b'; the plan was made for host 'a'" in err.splitlines()
    assert kernel_snapshot()["netns"] == []
    # As the plan asked for --host a, that stands when apply is given none.
    code, _, err = run_cli(capsys, "plan", "--host", "a", "--out", str(out_file), str(spec))
    assert code == 0, err
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(out_file))
    assert code == 0, err
    assert kernel_snapshot()["netns"] == ["web"]


def test_the_json_plan_carries_the_fingerprint(
    saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, out_file = saved
    code, out, err = run_cli(capsys, "plan", "--output", "json", str(spec))
    assert code == 0, err
    doc = json.loads(out)
    fp = doc["fingerprint"]
    assert fp["spec"] == str(spec) and fp["host"] is None
    assert [e["key"] for e in fp["groups"]["spec_files"]] == [[str(spec)]]
    assert ["bridge", "front"] in [e["key"] for e in fp["groups"]["objects"]]
    saved_doc = json.loads(out_file.read_text())
    assert saved_doc["plan"]["fingerprint"]["digest"] == fp["digest"]
    assert saved_doc["plan"]["changes"] == doc["changes"]
    ip("link", "set", "br-front", "mtu", "1400")
    code, out, _ = run_cli(capsys, "plan", "--output", "json", str(spec))
    assert json.loads(out)["fingerprint"]["digest"] != fp["digest"]


def test_an_unwritable_out_changes_nothing(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = sandbox / "shop.yaml"
    spec.write_text(V1)
    target = sandbox / "elsewhere"
    target.write_text("keep")
    (sandbox / "link.plan").symlink_to(target)
    for out_file in (sandbox / "missing" / "p.plan", sandbox / "link.plan", sandbox):
        code, _, err = run_cli(capsys, "plan", "--out", str(out_file), str(spec))
        assert code == 1
        assert err.startswith(f"error: {out_file}: cannot write the plan there: ")
    assert sorted(p.name for p in sandbox.iterdir()) == ["elsewhere", "link.plan", "shop.yaml"]
    assert target.read_text() == "keep"


def answering_yes_while(monkeypatch: pytest.MonkeyPatch, change: object) -> list[str]:
    """The prompt answered `yes` after `change` ran while it waited; the
    prompts seen."""
    asked: list[str] = []

    def confirm(self: cli.Cli, project: str, destroy: bool) -> bool:
        asked.append(project)
        assert callable(change)
        change()
        return True

    monkeypatch.setattr(cli.Cli, "_confirm", confirm)
    return asked


def test_apply_rechecks_after_the_prompt(
    sandbox: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = sandbox / "shop.yaml"
    spec.write_text(V1)
    asked = answering_yes_while(monkeypatch, lambda: ip("link", "add", "br-front", "type",
                                                        "bridge"))
    code, out, err = run_cli(capsys, "apply", str(spec))
    assert asked == ["shop"]
    assert code == 1
    assert err.splitlines() == [
        "error: the spec or the kernel changed while the prompt waited; nothing was changed:",
        f"  the spec no longer fits this machine: {spec}:4:34: network 'front': interface "
        "br-front exists and is not owned by project 'shop'",
        "What to do: run apply again to see the plan for them as they are now.",
    ]
    assert "done:" not in out
    assert kernel_snapshot()["netns"] == []
    ip("link", "del", "br-front")
    # Nothing changes while it waits: applied.
    answering_yes_while(monkeypatch, lambda: None)
    code, out, err = run_cli(capsys, "apply", str(spec))
    assert code == 0, err
    assert "Apply complete" in out
    # The spec edited while the prompt waits.
    spec.write_text(V2)
    answering_yes_while(monkeypatch, lambda: spec.write_text(V1.replace("web", "api")))
    before = kernel_snapshot()
    code, _, err = run_cli(capsys, "apply", str(spec))
    assert code == 1
    assert err.splitlines()[1] == f"  spec file {spec} changed"
    assert kernel_snapshot() == before


def test_a_saved_plan_rechecks_after_the_prompt(
    saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out_file = saved
    changed = changing_while_asked(
        monkeypatch, lambda: ip("-n", "web", "link", "set", "eth0", "mtu", "1400"))
    code, out, err = run_cli(capsys, "apply", str(out_file))
    assert code == 1
    assert "+ create netns db" in out  # the plan was shown
    lines = err.splitlines()
    assert lines[0] == ("error: the spec or the kernel changed while the prompt waited; "
                        "nothing was changed:")
    assert "  kernel object veth web front changed" in lines
    assert kernel_snapshot() == changed[0]


def test_destroy_rechecks_after_the_prompt(
    saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = saved
    changed = changing_while_asked(monkeypatch, lambda: ip("link", "set", "br-front", "mtu",
                                                           "1400"))
    code, _, err = run_cli(capsys, "destroy", str(spec))
    assert code == 1
    assert err.splitlines()[1] == "  kernel object bridge front changed"
    assert kernel_snapshot() == changed[0]


def changing_while_asked(monkeypatch: pytest.MonkeyPatch,
                         change: Callable[[], None]) -> list[dict[str, Any]]:
    """The prompt answered `yes` after `change`; the kernel as it was then."""
    snapshots: list[dict[str, Any]] = []

    def after_change() -> None:
        change()
        snapshots.append(kernel_snapshot())

    answering_yes_while(monkeypatch, after_change)
    return snapshots
