"""Saved plans without a kernel: the fingerprint, what differs, the file format
and how it is written (planfile.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import engine, planfile, runtimes
from reconciler import spec as spec_mod
from reconciler.drivers.memory import MemoryKernel
from reconciler.model import Runtime
from reconciler.ports import Held
from reconciler.resources import Bridge, Kind
from reconciler.state.observe import Foreign

SPEC = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front}
containers:
  web:
    networks: [front]
    ports: ["8080:80"]
"""
VERSION = "9.9.9"
ENGINES = {Runtime.DOCKER: "unix:///d.sock", Runtime.PODMAN: "unix:///p.sock"}


def applied() -> tuple[spec_mod.Spec, engine.Snapshot]:
    """The spec applied to an in-memory kernel, and a snapshot of it afterwards."""
    spec = spec_mod.load_text(SPEC, "shop.yaml")
    kernel = MemoryKernel()
    engine.apply(kernel, spec, engine.snapshot(kernel, spec).plan)
    return spec, engine.snapshot(kernel, spec)


def fingerprint_of(spec: spec_mod.Spec, snap: engine.Snapshot,
                   digests: dict[str, str] | None = None,
                   host: str | None = None) -> planfile.Fingerprint:
    return planfile.fingerprint("/specs/shop.yaml", digests or {"/specs/shop.yaml": "aa"},
                                runtimes.Resolution(spec, {}), snap, host)


def with_foreign(snap: engine.Snapshot, **fields: object) -> engine.Snapshot:
    observed = dataclasses.replace(
        snap.observed, foreign=dataclasses.replace(snap.observed.foreign, **fields))
    return dataclasses.replace(snap, observed=observed)


def test_an_unchanged_world_has_an_equal_fingerprint() -> None:
    spec, snap = applied()
    first, again = fingerprint_of(spec, snap), fingerprint_of(*applied())
    assert planfile.differences(first, again) == []
    assert first.digest == again.digest
    objects = first.groups[planfile.Group.OBJECTS]
    assert (Kind.BRIDGE, "front") in objects
    assert len(objects) == len(snap.observed.resources)


def test_a_changed_object_is_named_by_kind_and_key() -> None:
    spec, snap = applied()
    bridge = snap.observed.resources[(Kind.BRIDGE, "front")]
    assert isinstance(bridge, Bridge)
    changed = dict(snap.observed.resources)
    changed[bridge.key] = dataclasses.replace(bridge, mtu=1400)
    address = next(k for k in changed if k[0] == Kind.ADDRESS and k[1] == "veth")
    del changed[address]
    now = dataclasses.replace(snap, observed=dataclasses.replace(snap.observed,
                                                                 resources=changed))
    found = planfile.differences(fingerprint_of(spec, snap), fingerprint_of(spec, now))
    assert found == [
        f"kernel object {' '.join(address)} disappeared",
        "kernel object bridge front changed",
    ]


def test_spec_files_host_and_runtime_containers() -> None:
    spec, snap = applied()
    saved = fingerprint_of(spec, snap, {"/specs/a.yaml": "1", "/specs/b.yaml": "2"}, "a")
    now = fingerprint_of(spec, snap, {"/specs/a.yaml": "3", "/specs/c.yaml": "4"}, "b")
    assert planfile.differences(saved, now) == [
        "this machine is host 'b'; the plan was made for host 'a'",
        "spec file /specs/a.yaml changed",
        "spec file /specs/b.yaml is gone",
        "spec file /specs/c.yaml is new",
    ]
    web = dataclasses.replace(spec.containers["web"], runtime=Runtime.DOCKER)
    spec = dataclasses.replace(spec, containers={"web": web})
    before = runtimes.Running(Runtime.DOCKER, "web", "a" * 64, 100, "/h", "none")
    after = dataclasses.replace(before, id="b" * 64, pid=200)
    fp = [planfile.fingerprint("/s", {}, runtimes.Resolution(spec, running), snap, None)
          for running in ({"web": before}, {"web": after}, {})]
    assert planfile.differences(fp[0], fp[1]) == [
        f"runtime container 'web' changed (was docker container web ({'a' * 12}), pid 100, "
        f"now docker container web ({'b' * 12}), pid 200)"]
    assert planfile.differences(fp[1], fp[2])[0].endswith(", now not attached)")


def test_foreign_objects_count_only_where_the_checks_look() -> None:
    spec, snap = applied()
    saved = fingerprint_of(spec, snap)
    net = ipaddress.ip_network
    unrelated = with_foreign(
        snap,
        links=snap.observed.foreign.links | {("", "vethdocker1")},
        host_nets=(*snap.observed.foreign.host_nets, (net("10.9.0.0/16"), "a LAN")),
        held_ports=(Held("tcp", None, 22, "sshd"),),
    )
    assert planfile.differences(saved, fingerprint_of(spec, unrelated)) == []
    related = with_foreign(
        snap,
        links=snap.observed.foreign.links | {("", "br-front")},
        host_nets=(*snap.observed.foreign.host_nets, (net("172.30.0.0/16"), "a VPN")),
        held_ports=(Held("tcp", None, 8080, "nginx"),),
    )
    assert planfile.differences(saved, fingerprint_of(spec, related)) == [
        "held port 8080/tcp on * (not the project's) appeared (nginx)",
        "host network 172.30.0.0/16 (not the project's) appeared (a VPN)",
        "link br-front in host (not the project's) appeared",
    ]


def test_namespace_identity_and_missing_paths() -> None:
    spec, snap = applied()
    saved = fingerprint_of(spec, dataclasses.replace(snap, observed=dataclasses.replace(
        snap.observed, ns_ids={"/proc/7/ns/net": (4, 100)})))
    now = fingerprint_of(spec, dataclasses.replace(snap, observed=dataclasses.replace(
        snap.observed, ns_ids={"/proc/7/ns/net": (4, 101)},
        missing_paths={"/proc/8/ns/net": "does not exist"})))
    assert planfile.differences(saved, now) == [
        "namespace /proc/7/ns/net is another namespace now (was 4:100, now 4:101)",
        "netns_path /proc/8/ns/net cannot be attached to now (does not exist)",
    ]


def test_the_fingerprint_survives_json_and_refuses_edits() -> None:
    spec, snap = applied()
    fp = fingerprint_of(spec, snap)
    doc = json.loads(json.dumps(fp.to_json()))
    assert planfile.Fingerprint.from_json(doc) == fp
    doc["groups"]["objects"][0]["value"] = "0" * 32
    with pytest.raises(ValueError, match="digest does not match"):
        planfile.Fingerprint.from_json(doc)


def test_plan_differences() -> None:
    spec, snap = applied()
    fp = fingerprint_of(spec, snap)
    saved = json.loads(json.dumps(planfile.plan_json(snap, "shop", fp)))
    assert planfile.plan_differences(saved, planfile.plan_json(snap, "shop", fp)) == []
    fresh = engine.snapshot(MemoryKernel(), spec)
    now = planfile.plan_json(fresh, "shop", fp)
    found = planfile.plan_differences(saved, now)
    assert "change not in the saved plan: create bridge front" in found
    assert all(f.startswith("change not in the saved plan: ") for f in found)
    assert planfile.plan_differences({**saved, "notes": ["another"]},
                                     planfile.plan_json(snap, "shop", fp)) == []
    assert planfile.shown([str(i) for i in range(25)])[-1] == "... and 5 more"


def saved_text(version: str = VERSION, host: str | None = None) -> str:
    spec, snap = applied()
    return planfile.dumps(planfile.plan_json(snap, "shop", fingerprint_of(spec, snap)),
                          version, host, ENGINES, machine="m1")


def test_a_saved_plan_round_trips_and_is_known_by_content() -> None:
    text = saved_text(host="a")
    assert planfile.is_saved_plan(text.encode()[:256])
    saved = planfile.loads(text.encode(), "p.plan", VERSION)
    assert (saved.project, saved.machine, saved.requested_host) == ("shop", "m1", "a")
    assert saved.engines == ENGINES
    spec, snap = applied()
    assert saved.fingerprint == fingerprint_of(spec, snap)
    # A spec written as JSON (YAML allows it) is no saved plan.
    assert not planfile.is_saved_plan(b'{"version": 1, "project": "shop"}')


def resealed(text: str, edit: Callable[[dict[str, Any]], object]) -> str:
    """The saved plan edited, with a checksum that matches again."""
    doc = json.loads(text)
    del doc["checksum"]
    edit(doc)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    doc["checksum"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps(doc)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t[: len(t) // 2], "the saved plan is corrupt (JSONDecodeError"),
    (lambda t: t.replace('"create"', '"delete"', 1),
     "the saved plan is corrupt (its checksum does not match its content)"),
    (lambda t: "[1, 2]", "the saved plan is corrupt (it is not a JSON object)"),
    (lambda t: resealed(t, lambda d: d.pop("plan")),
     "the saved plan is corrupt (KeyError: 'plan')"),
    (lambda t: resealed(t, lambda d: d["plan"]["fingerprint"]["groups"].update(x=[])),
     "the saved plan is corrupt ('x' is not a valid Group)"),
])
def test_a_corrupt_plan_is_refused(edit: object, message: str) -> None:
    assert callable(edit)
    with pytest.raises(planfile.PlanFileError) as caught:
        planfile.loads(edit(saved_text()).encode(), "p.plan", VERSION)
    assert str(caught.value).startswith(f"p.plan: {message}")


def test_a_plan_of_another_version_machine_or_host_is_refused() -> None:
    with pytest.raises(planfile.PlanFileError, match=r"made by netapply 9\.9\.9, this is "
                                                     r"netapply 1\.0; make the plan again"):
        planfile.loads(saved_text().encode(), "p.plan", "1.0")
    saved = planfile.loads(saved_text().encode(), "p.plan", VERSION)
    planfile.check_here(saved, None, machine="m1")
    with pytest.raises(planfile.PlanFileError, match="made on machine 'm1', this is 'm2'"):
        planfile.check_here(saved, None, machine="m2")
    hosted = dataclasses.replace(saved, fingerprint=dataclasses.replace(saved.fingerprint,
                                                                        host="a"))
    planfile.check_here(hosted, "a", machine="m1")
    with pytest.raises(planfile.PlanFileError, match="made for host 'a', not --host b"):
        planfile.check_here(hosted, "b", machine="m1")


def test_read_tells_a_plan_from_a_spec(tmp_path: Path) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text(SPEC)
    assert planfile.read(str(spec), VERSION) is None
    assert planfile.read(str(tmp_path), VERSION) is None
    assert planfile.read(str(tmp_path / "nothing"), VERSION) is None
    plan = tmp_path / "reviewed"  # any name
    plan.write_text(saved_text())
    found = planfile.read(str(plan), VERSION)
    assert found is not None and found.project == "shop"


def test_write_is_private_atomic_and_follows_no_link(tmp_path: Path) -> None:
    out = tmp_path / "p.plan"
    planfile.write(str(out), "one")
    planfile.write(str(out), "two")
    assert out.read_text() == "two"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["p.plan"]  # no temporary file left
    target = tmp_path / "target"
    target.write_text("keep")
    link = tmp_path / "link.plan"
    link.symlink_to(target)
    with pytest.raises(planfile.PlanFileError, match="it is a symbolic link"):
        planfile.write(str(link), "x")
    assert target.read_text() == "keep" and link.is_symlink()
    with pytest.raises(planfile.PlanFileError, match="it is a directory"):
        planfile.write(str(tmp_path), "x")
    with pytest.raises(planfile.PlanFileError, match="No such file or directory"):
        planfile.write(str(tmp_path / "missing" / "p.plan"), "x")
    assert sorted(os.listdir(tmp_path)) == ["link.plan", "p.plan", "target"]


def test_spec_read_records_the_bytes_it_parsed(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SPEC)
    (tmp_path / "b.yml").write_text("containers:\n  db: {networks: [front]}\n")
    sources = spec_mod.read(tmp_path)
    assert sources.digests == {
        str(tmp_path / name): hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        for name in ("a.yaml", "b.yml")
    }
    assert set(spec_mod.build(sources).containers) == {"web", "db"}


def test_foreign_defaults_are_empty() -> None:
    spec, snap = applied()
    empty = with_foreign(snap, **{f.name: f.default for f in dataclasses.fields(Foreign)})
    fp = fingerprint_of(spec, empty)
    assert fp.groups[planfile.Group.FOREIGN] == {}
