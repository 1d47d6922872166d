"""Runtime containers without an engine: the spec keys, the hosts block, what
a resolved or skipped container makes, and the DOCKER-USER rules (pure code
and the memory kernel; tests/test_runtimes.py runs the real engines)."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler import desired, engine, firewall, planner
from reconciler.drivers import ops
from reconciler.drivers.memory import MemoryKernel
from reconciler.errors import KernelError, SpecError
from reconciler.model import Runtime, Spec
from reconciler.resources import (
    DockerUser,
    HostsBlock,
    Kind,
    hosts_block_of,
    splice_hosts_block,
)
from reconciler.spec import load_text
from reconciler.state.observe import Foreign, NftChain, ObservedState, observe
from reconciler.watch import runtime_names

SPEC = """\
version: 1
project: rt
networks:
  front: {subnet: 172.30.5.0/24}
containers:
  web:
    runtime: docker
    runtime_name: shop-web-1
    networks: {front: {aliases: [www]}}
  db: {runtime: podman, networks: [front]}
  plain: {networks: [front]}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_text(text, "s.yaml")
    return sorted(str(p) for p in caught.value.problems)


def test_runtime_keys_load_unresolved() -> None:
    spec = load_text(SPEC)
    web = spec.containers["web"]
    assert (web.runtime, web.engine_name, web.netns, web.netns_path) == (
        Runtime.DOCKER, "shop-web-1", None, None)
    assert not web.running  # until the engine was asked
    assert spec.containers["db"].engine_name == "db"
    assert spec.containers["plain"].running
    assert runtime_names(spec) == {Runtime.DOCKER: frozenset({"shop-web-1"}),
                                   Runtime.PODMAN: frozenset({"db"})}


MISTAKES = """\
version: 1
project: rt
containers:
  a: {runtime: docker}
  b: {runtime: docker, runtime_name: a}
  c: {runtime: docker, netns: c}
  d: {runtime: podman, netns_path: /proc/1/ns/net}
  e: {runtime_name: x}
  f: {runtime: podman, network_mode: host}
"""


def test_runtime_mistakes_are_errors_with_positions() -> None:
    # Every problem at once: g's schema problem beside the others' semantic ones.
    assert problems(MISTAKES + "  g: {runtime: rkt}\n") == sorted([
        *problems(MISTAKES),
        "s.yaml:10:7: container 'g': runtime must be one of docker, podman (got 'rkt')",
    ])
    assert problems(MISTAKES) == [
        "s.yaml:5:24: container 'b': docker container 'a' is already used by container 'a'",
        "s.yaml:6:24: container 'c': runtime docker and netns cannot both be set (the engine's "
        "container has its own namespace)",
        "s.yaml:7:24: container 'd': runtime podman and netns_path cannot both be set (the "
        "engine's container has its own namespace)",
        "s.yaml:8:7: container 'e': runtime_name needs runtime (docker or podman)",
        "s.yaml:9:7: container 'f': network_mode host cannot be combined with runtime",
    ]


def test_the_same_name_in_two_engines_is_two_containers() -> None:
    load_text(SPEC.replace("runtime: podman", "runtime: docker, runtime_name: db"))
    load_text(SPEC.replace("db: {runtime: podman", "shop-web-1: {runtime: podman"))


ENGINE_LINES = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"


def test_hosts_block_is_spliced_in_after_the_engines_lines_and_out_again() -> None:
    once = splice_hosts_block(ENGINE_LINES, "rt", "172.30.5.2\tweb\n")
    assert once.startswith(ENGINE_LINES)
    assert hosts_block_of(once, "rt") == "172.30.5.2\tweb\n"
    twice = splice_hosts_block(once, "rt", "172.30.5.3\tweb\n")
    assert twice.count("BEGIN netapply") == 1
    assert hosts_block_of(twice, "rt") == "172.30.5.3\tweb\n"
    assert splice_hosts_block(twice, "rt", None) == ENGINE_LINES
    # Another project's block, and a file without a final newline, are kept.
    other = splice_hosts_block(ENGINE_LINES.rstrip("\n"), "other", "10.0.0.1\tx\n")
    mine = splice_hosts_block(other, "rt", "172.30.5.2\tweb\n")
    assert hosts_block_of(mine, "other") == "10.0.0.1\tx\n"
    assert splice_hosts_block(mine, "rt", None) == other
    # A block cut short (no end marker) is no block: it is written again whole.
    assert hosts_block_of(mine.rsplit("# END", 1)[0], "rt") is None


def resolved(spec: Spec, *names: str) -> Spec:
    """What runtimes.resolve makes of running containers, without an engine."""
    containers = dict(spec.containers)
    for pid, name in enumerate(names, start=100):
        containers[name] = dataclasses.replace(
            containers[name], netns_path=f"/proc/{pid}/ns/net",
            hosts_path=f"/var/lib/docker/containers/{name}/hosts", running=True)
    return dataclasses.replace(spec, containers=containers)


def test_a_running_container_gets_links_and_a_hosts_block_a_stopped_one_nothing() -> None:
    spec = resolved(load_text(SPEC), "web")
    state = desired.build(spec, ObservedState({}, Foreign()))
    block = state[(Kind.HOSTS_BLOCK, "web")]
    assert isinstance(block, HostsBlock)
    assert block.path == "/var/lib/docker/containers/web/hosts"
    # Itself with its alias and every peer, the stopped db included (it keeps
    # its address and name for when it starts).
    assert block.content == ("172.30.5.2\tdb\n172.30.5.3\tplain\n172.30.5.4\tweb www\n")
    assert (Kind.VETH, "web", "front") in state
    assert not any("db" in key for key in state if key[0] != Kind.HOSTS_TABLE)
    assert "db" in next(r.content for k, r in state.items() if k[0] == Kind.HOSTS_TABLE)


def test_hosts_blocks_round_trip_through_the_memory_kernel() -> None:
    kernel = MemoryKernel()
    spec = resolved(load_text(SPEC), "web", "db")
    for name in ("web", "db"):
        container = spec.containers[name]
        assert container.netns_path and container.hosts_path
        kernel.netns_add(container.netns_path.split("/")[2], "x")
        kernel.files[container.hosts_path] = ENGINE_LINES
    spec = dataclasses.replace(spec, containers={
        n: dataclasses.replace(c, netns_path=f"/run/netns/{c.netns_path.split('/')[2]}")
        if c.netns_path else c for n, c in spec.containers.items()})
    snap = engine.snapshot(kernel, spec)
    engine.apply(kernel, spec, snap.plan)
    assert engine.snapshot(kernel, spec).plan.empty
    web = kernel.files["/var/lib/docker/containers/web/hosts"]
    assert web.startswith(ENGINE_LINES) and "web www" in web
    gone = engine.snapshot(kernel, spec, destroy=True)
    engine.apply(kernel, spec, gone.plan, destroy=True)
    assert kernel.files["/var/lib/docker/containers/web/hosts"] == ENGINE_LINES


def test_memory_kernel_rewrites_only_existing_files_never_links() -> None:
    kernel = MemoryKernel()
    with pytest.raises(KernelError) as caught:
        kernel.rewrite_file("/gone", "x")
    assert caught.value.errno == 2
    kernel.symlinks["/link"] = "/etc/passwd"
    with pytest.raises(KernelError) as caught:
        kernel.rewrite_file("/link", "x")
    assert caught.value.errno == 40


DOCKER_USER_CHAINS = (NftChain("ip", "filter", "FORWARD", "forward", "drop"),
                      NftChain("ip", "filter", "DOCKER-USER", None, None))


def test_docker_user_rules_only_where_docker_made_the_chain() -> None:
    spec = load_text(SPEC)
    without = desired.build(spec, ObservedState({}, Foreign()))
    assert not any(k[0] == Kind.DOCKER_USER for k in without)
    with_docker = desired.build(spec, ObservedState({}, Foreign(nft_chains=DOCKER_USER_CHAINS)))
    user = with_docker[(Kind.DOCKER_USER, "ip")]
    assert isinstance(user, DockerUser)
    assert [r.comment for r in user.rules] == ["netapply/rt: front: from its bridge",
                                               "netapply/rt: front: to its bridge"]


def test_docker_user_rules_converge_in_the_memory_kernel_and_leave_dockers_alone() -> None:
    kernel = MemoryKernel()
    kernel.nft_apply([
        {"add": {"table": {"family": "ip", "name": "filter"}}},
        {"add": {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER"}}},
        {"add": {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER",
                          "expr": [{"return": None}]}}},
    ], "docker")
    spec = load_text(SPEC.replace("  db: {runtime: podman, networks: [front]}\n", "")
                     .replace("runtime: docker\n    runtime_name: shop-web-1\n", ""))
    snap = engine.snapshot(kernel, spec)
    engine.apply(kernel, spec, snap.plan)
    rules = [item["rule"] for item in kernel.nft_ruleset()
             if "rule" in item and item["rule"]["chain"] == "DOCKER-USER"]
    assert [r.get("comment", "") for r in rules] == [
        "netapply/rt: front: from its bridge", "netapply/rt: front: to its bridge", ""]
    # Docker flushing the chain is drift; the project's rules come back on top.
    changed = engine.snapshot(kernel, dataclasses.replace(
        spec, networks={"front": dataclasses.replace(spec.networks["front"], interface="br-x")}))
    assert [c.action for c in changed.plan.changes if c.key[0] == Kind.DOCKER_USER] == [
        planner.Action.UPDATE]
    engine.apply(kernel, spec, engine.snapshot(kernel, spec, destroy=True).plan, destroy=True)
    rules = [item["rule"] for item in kernel.nft_ruleset()
             if "rule" in item and item["rule"]["chain"] == "DOCKER-USER"]
    assert [r.get("comment", "") for r in rules] == [""]  # Docker's RETURN stays


def test_docker_user_update_deletes_by_handle_then_inserts_in_order() -> None:
    before = firewall.docker_user("p", load_text(SPEC).networks.values(), ["ip"])[0]
    before = dataclasses.replace(before, handles=(7, 8))
    after = dataclasses.replace(before, rules=before.rules[:1])
    commands = firewall.docker_user_commands(before, after)
    assert [next(iter(c)) for c in commands] == ["delete", "delete", "insert"]
    assert [c["delete"]["rule"]["handle"] for c in commands[:2]] == [7, 8]
    assert ops  # the same commands run for create/update/delete (drivers/ops.py)


def test_observe_reads_only_the_projects_marked_rules() -> None:
    kernel = MemoryKernel()
    kernel.nft_apply([
        {"add": {"table": {"family": "ip", "name": "filter"}}},
        {"add": {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER"}}},
        {"add": {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER",
                          "comment": "netapply/rt2: x", "expr": [{"accept": None}]}}},
        {"add": {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER",
                          "comment": "netapply/rt: y", "expr": [{"accept": None}]}}},
    ], "docker")
    seen = observe(kernel, "rt").resources[(Kind.DOCKER_USER, "ip")]
    assert isinstance(seen, DockerUser)
    assert [r.comment for r in seen.rules] == ["netapply/rt: y"] and len(seen.handles) == 1


def test_the_forward_drop_note_says_whether_netapply_can_get_through() -> None:
    from reconciler import managers

    with_user = managers.notes(Foreign(nft_chains=DOCKER_USER_CHAINS), filtering=True)
    assert any("accept rules in DOCKER-USER" in n for n in with_user)
    # Without Docker's chain for users (iptables-legacy, another manager), the
    # drop is only named: the user must add accept rules there.
    alone = managers.notes(Foreign(nft_chains=DOCKER_USER_CHAINS[:1]), filtering=True)
    assert any("need accept rules there" in n for n in alone)
    assert not any("DOCKER-USER" in n for n in alone)


def test_a_runtime_container_in_netapply_s_own_or_another_s_namespace_is_refused() -> None:
    """The namespace checks run after resolution, by identity, and name the container."""
    spec = resolved(load_text(SPEC, "s.yaml"), "web", "db")  # /proc/100/..., /proc/101/...
    ids = {"": (4, 1), "plain": (4, 2), "/proc/100/ns/net": (4, 1), "/proc/101/ns/net": (4, 2)}
    with pytest.raises(SpecError) as caught:
        desired.build(spec, ObservedState({}, Foreign(), ns_ids=ids))
    assert [str(p) for p in caught.value.problems] == [
        "s.yaml:7:5: container 'web': docker container 'shop-web-1' (/proc/100/ns/net) is the "
        "network namespace netapply runs in (the host's own); attaching to it would give the "
        "host this container's interfaces and routes (network_mode: host shares the host's "
        "network)",
        "s.yaml:10:8: container 'db': podman container 'db' (/proc/101/ns/net) is the namespace "
        "of container 'plain' (netns plain), which netapply makes and deletes with that "
        "container; a container cannot also be attached to it by path",
    ]


def test_engine_sockets_follow_the_engines_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.runtimes import engine_url

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    assert engine_url(Runtime.DOCKER) == "unix:///var/run/docker.sock"
    assert engine_url(Runtime.PODMAN) == "unix:///run/podman/podman.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///d.sock")
    monkeypatch.setenv("CONTAINER_HOST", "unix:///p.sock")
    assert engine_url(Runtime.DOCKER) == "unix:///d.sock"
    assert engine_url(Runtime.PODMAN) == "unix:///p.sock"
    assert engine_url(Runtime.DOCKER, "unix:///given.sock") == "unix:///given.sock"
