"""Runtime containers with real engines: Docker and Podman containers named in
the spec, networked by netapply, reached by name with `docker exec`.

One private namespace for the module holds dockerd (with its default
firewall on: FORWARD policy drop and DOCKER-USER) and Podman's API service;
each test uses its own project and removes its containers. Nothing here
skips where the packages install (tests/engines.py fails instead).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engines import Engine, dockerd, podman
from tests.kernelutil import REPO, ip_json, private_namespace, require_sandbox, run_cli
from tests.test_watch import Watch, wait_for

pytestmark = pytest.mark.kernel

DOCKER_SEED = REPO / "examples" / "docker" / "seed.yaml"
PODMAN_SEED = REPO / "examples" / "podman" / "seed.yaml"


@dataclass
class Engines:
    docker: Engine
    podman: Engine
    root: Path


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    require_sandbox()
    root = tmp_path_factory.mktemp("engines")
    with private_namespace(), dockerd(root / "docker", iptables=True) as docker, \
            podman(root / "podman") as pod:
        yield Engines(docker, pod, root)


@pytest.fixture
def docker(engines: Engines) -> Iterator[Engine]:
    yield engines.docker
    engines.docker.remove_all()


@pytest.fixture
def pod(engines: Engines) -> Iterator[Engine]:
    yield engines.podman
    engines.podman.remove_all()


def hosts_opts(engine: Engine) -> list[str]:
    return [f"--{engine.name}-host", engine.url]


def links_in(engine: Engine, name: str) -> list[str]:
    """The interface names inside a container's namespace, read from outside."""
    out = subprocess.run(
        ["nsenter", f"--net=/proc/{engine.pid(name)}/ns/net", "ip", "-j", "link", "show"],
        check=True, capture_output=True, text=True).stdout
    return sorted(link["ifname"] for link in json.loads(out))


def docker_user_rules() -> list[str]:
    out = subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], check=True,
                         capture_output=True, text=True).stdout
    return out.splitlines()


def seed(capsys: pytest.CaptureFixture[str], engine: Engine, spec: Path) -> None:
    """Docker's bridge tutorial verbatim, with netapply in the middle."""
    hosts = engine.inspect("container1")["HostsPath"]
    assert isinstance(hosts, str)
    inode = os.stat(hosts).st_ino
    engine_lines = Path(hosts).read_text()
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(engine), str(spec))
    assert code == 0, out + err
    ping = engine.exec("container1", "ping", "-c", "1", "-W", "2", "container2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "172.30.1.3" in ping.stdout
    # The block is in the file the engine bind-mounts (same inode), after its lines.
    assert os.stat(hosts).st_ino == inode
    text = Path(hosts).read_text()
    assert text.startswith(engine_lines)
    assert "172.30.1.2\tcontainer1" in text and "172.30.1.3\tcontainer2" in text
    code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", *hosts_opts(engine),
                             str(spec))
    assert code == 0, out + err
    code, out, _ = run_cli(capsys, "show", *hosts_opts(engine), str(spec))
    assert code == 0
    short = str(engine.inspect("container1")["Id"])[:12]
    assert f"{engine.name} container container1 ({short})" in out
    code, out, err = run_cli(capsys, "destroy", "--auto-approve", *hosts_opts(engine), str(spec))
    assert code == 0, out + err
    # The containers keep running, with their loopback only, and the engine's
    # hosts file as the engine wrote it.
    for name in ("container1", "container2"):
        state = engine.inspect(name)["State"]
        assert isinstance(state, dict) and state["Running"]
        assert links_in(engine, name) == ["lo"]
    assert Path(hosts).read_text() == engine_lines
    assert os.stat(hosts).st_ino == inode


def test_seed_example_with_docker_and_its_default_firewall(
    docker: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("container1", "container2"):
        docker.start_container(name)
    # dockerd's firewall drops what it forwards, bridged frames included.
    assert "-P FORWARD DROP" in subprocess.run(
        ["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
    before = docker_user_rules()
    code, out, _ = run_cli(capsys, "plan", *hosts_opts(docker), str(DOCKER_SEED))
    assert code == 0
    assert "accept rule(s) in DOCKER-USER (ip filter)" in out
    seed(capsys, docker, DOCKER_SEED)
    assert docker_user_rules() == before  # destroy took the project's rules out


def test_docker_user_rules_are_the_projects_and_repaired(
    docker: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("container1", "container2"):
        docker.start_container(name)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(docker),
                             str(DOCKER_SEED))
    assert code == 0, out + err
    rules = docker_user_rules()
    ours = [r for r in rules if "netapply/seed" in r]
    assert len(ours) == 2 and all(r.endswith("-j ACCEPT") for r in ours), rules
    # Before Docker's own RETURN, which stays.
    assert rules.index("-A DOCKER-USER -j RETURN") > max(rules.index(r) for r in ours)
    # Docker's restart flushing the chain (as `iptables -F DOCKER-USER`) is drift.
    subprocess.run(["iptables", "-w", "-F", "DOCKER-USER"], check=True)
    assert docker.exec("container1", "ping", "-c", "1", "-W", "1", "container2").returncode != 0
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", *hosts_opts(docker),
                           str(DOCKER_SEED))
    assert code == 2 and "DOCKER-USER" in out
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(docker),
                             str(DOCKER_SEED))
    assert code == 0, out + err
    assert docker.exec("container1", "ping", "-c", "1", "-W", "2", "container2").returncode == 0
    code, _, _ = run_cli(capsys, "destroy", "--auto-approve", *hosts_opts(docker),
                         str(DOCKER_SEED))
    assert code == 0
    assert not [r for r in docker_user_rules() if "netapply" in r]


def test_seed_example_with_podman(pod: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("container1", "container2"):
        pod.start_container(name)
    seed(capsys, pod, PODMAN_SEED)


RUNTIME_NAME = """\
version: 1
project: rn
networks:
  front: {subnet: 172.30.7.0/24}
containers:
  web:
    runtime: docker
    runtime_name: shop-web-1
    networks: {front: {ipv4_address: 172.30.7.10, aliases: [www]}}
  db:
    runtime: docker
    runtime_name: shop-db-1
    networks: {front: {ipv4_address: 172.30.7.20}}
"""


def test_runtime_name_and_a_stopped_container_skipped_while_another_changes(
    docker: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "rn.yaml"
    spec.write_text(RUNTIME_NAME)
    docker.start_container("shop-web-1")
    docker.start_container("shop-db-1")
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(docker), str(spec))
    assert code == 0, out + err
    assert docker.exec("shop-db-1", "ping", "-c", "1", "-W", "2", "www").returncode == 0
    docker.run("stop", "-t", "0", "shop-db-1")
    # A change to web while db is stopped: db is reported and skipped, web changes.
    spec.write_text(RUNTIME_NAME.replace("aliases: [www]", "aliases: [www, site]"))
    code, out, err = run_cli(capsys, "plan", *hosts_opts(docker), str(spec))
    assert code == 0, out + err
    assert ("container 'db' (docker container 'shop-db-1'): skipped, it is exited" in out), out
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(docker), str(spec))
    assert code == 0, out + err
    hosts = docker.exec("shop-web-1", "cat", "/etc/hosts").stdout
    assert "172.30.7.10\tweb www site" in hosts
    # Peers still know db by name while it is stopped; it is attached once started.
    assert "172.30.7.20\tdb" in hosts
    docker.run("start", "shop-db-1")
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(docker), str(spec))
    assert code == 0, out + err
    assert docker.exec("shop-db-1", "ping", "-c", "1", "-W", "2", "site").returncode == 0
    code, _, _ = run_cli(capsys, "destroy", "--auto-approve", *hosts_opts(docker), str(spec))
    assert code == 0


def test_a_container_with_its_engines_network_is_refused(
    docker: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "seed.yaml"
    spec.write_text(DOCKER_SEED.read_text())
    docker.start_container("container1", network="host")
    docker.start_container("container2")
    before = ip_json(None, "link", "show")
    code, _, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(docker), str(spec))
    assert code == 1
    assert (f"{spec}:12:5: container 'container1' (docker container 'container1') runs with "
            "the network 'host' of its engine; start it with --network none") in err, err
    assert "nothing was changed" in err
    assert ip_json(None, "link", "show") == before


def test_an_engine_that_does_not_answer_skips_its_containers_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, engines: Engines
) -> None:
    spec = tmp_path / "mixed.yaml"
    spec.write_text("""\
version: 1
project: mixed
networks:
  n: {subnet: 172.30.8.0/24}
containers:
  a: {networks: [n]}
  b: {networks: [n]}
  gone: {runtime: podman, networks: [n]}
""")
    nowhere = f"unix://{tmp_path}/no-podman.sock"
    code, out, err = run_cli(capsys, "apply", "--auto-approve", "--podman-host", nowhere,
                             str(spec))
    assert code == 0, out + err
    assert f"container 'gone' (podman container 'gone'): skipped, podman does not answer at " \
           f"{nowhere} (No such file or directory)" in out
    ping = subprocess.run(["ip", "netns", "exec", "a", "ping", "-c", "1", "-W", "2", "b"],
                          capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout
    # `gone` keeps its name and address for when it comes.
    assert "gone" in Path("/etc/netns/a/hosts").read_text()
    code, _, _ = run_cli(capsys, "destroy", "--auto-approve", "--podman-host", nowhere,
                         str(spec))
    assert code == 0


def watched_seed(engine: Engine, example: Path, tmp_path: Path) -> Watch:
    """The seed example's containers started in the engine, and a watch of the
    spec that has converged and settled (the caller stops it)."""
    for name in ("container1", "container2"):
        engine.start_container(name)
    spec = tmp_path / "seed.yaml"
    spec.write_text(example.read_text())
    watch = Watch(spec, tmp_path / "watch.log", *hosts_opts(engine))
    try:
        watch.started()
        watch.quiet()
    except BaseException:
        watch.stop()
        raise
    return watch


def test_watch_networks_a_restarted_container_again(
    docker: Engine, tmp_path: Path
) -> None:
    watch = watched_seed(docker, DOCKER_SEED, tmp_path)
    try:

        def pings() -> bool:
            return docker.exec("container1", "ping", "-c", "1", "-W", "1",
                               "container2").returncode == 0

        wait_for("container1 reaches container2", pings, 5)
        mac = docker.exec("container2", "cat", "/sys/class/net/eth0/address").stdout
        old = docker.pid("container2")
        docker.run("restart", "-t", "0", "container2")
        assert docker.pid("container2") != old  # a new namespace, without netapply's link
        assert links_in(docker, "container2") == ["lo"] or any(
            "engine" in r["trigger"] for r in watch.reconciles())
        wait_for("container2 networked again after its restart", pings, 2)
        # What brought it back is the engine's event, not a timer.
        wait_for("the reconcile's log line", lambda: any(
            "engine" in r["trigger"] for r in watch.reconciles()), 2)
        # The engine rewrote container2's hosts file at start; the block is back.
        assert "container1" in docker.exec("container2", "cat", "/etc/hosts").stdout
        # The same MAC as before the restart: peers' neighbour entries stay right.
        assert docker.exec("container2", "cat", "/sys/class/net/eth0/address").stdout == mac
        # Docker flushing its chain for users is drift that watch repairs at once.
        subprocess.run(["iptables", "-w", "-F", "DOCKER-USER"], check=True)
        wait_for("the project's DOCKER-USER rules back", lambda: len(
            [r for r in docker_user_rules() if "netapply/seed" in r]) == 2, 2)
        assert pings()
    finally:
        assert watch.stop() == 0


def test_watch_survives_an_engine_restart(tmp_path: Path, engines: Engines) -> None:
    """A second dockerd of its own, stopped and started under a running watch:
    the loss is logged once, and a container started after it comes back is
    networked."""
    root = tmp_path / "d2"
    spec = tmp_path / "one.yaml"
    spec.write_text("""\
version: 1
project: one
networks:
  n: {subnet: 172.30.6.0/24}
containers:
  solo: {runtime: docker, networks: [n]}
  peer: {networks: [n]}
""")
    with dockerd(root) as first:
        watch = Watch(spec, tmp_path / "watch.log", "--docker-host", first.url)
        try:
            watch.started()
            first.start_container("solo")
            wait_for("solo attached", lambda: "eth0" in links_in(first, "solo"), 5)
            first.remove_all()
        except BaseException:
            watch.stop()
            raise
    try:
        wait_for("the lost stream logged", lambda: any(
            "docker events lost" in r.get("error", "") for r in watch.records("error")), 5)
        with dockerd(root) as second:
            second.start_container("solo")
            wait_for("solo attached after the engine came back",
                     lambda: "eth0" in links_in(second, "solo"), 10)
            lost = [r for r in watch.records("error") if "docker events lost" in r["error"]]
            assert len(lost) == 1, lost  # logged once, however many retries
            second.remove_all()
    finally:
        assert watch.stop() == 0


COMPOSE = REPO / "examples" / "compose"


def test_the_compose_example_imported_applied_and_reached(
    docker: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """examples/compose: its services started as Compose names them
    (`<project>-<service>-1`, `--network none` as compose.netapply.yaml says),
    with the commands of compose.yaml; the imported spec applied; names,
    isolation and the published port checked with real packets."""
    import yaml

    services = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        command = service["command"]
        args = ["sh", "-c", command[len("sh -c '"):-1]] if command.startswith("sh -c '") \
            else command.split()
        docker.start_container(f"compose-demo-{name}-1", *args)
    code, out, err = run_cli(capsys, "import", "compose", str(COMPOSE / "compose.yaml"))
    assert code == 0, err
    assert out == (COMPOSE / "netapply.yaml").read_text()
    spec = tmp_path / "spec.yaml"
    spec.write_text(out)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(docker), str(spec))
    assert code == 0, out + err
    ping = docker.exec("compose-demo-client-1", "ping", "-c", "1", "-W", "2", "web")
    assert ping.returncode == 0, ping.stdout + ping.stderr

    def fetch(container: str, url: str) -> str:
        # (busybox-static's wget crashes with -T; docker exec has a timeout.)
        return docker.exec(container, "wget", "-qO-", url, timeout=10).stdout.strip()

    wait_for("web serves", lambda: fetch("compose-demo-client-1", "http://web:8000/") == "web",
             5)
    assert fetch("compose-demo-web-1", "http://backend:9000/") == "api"
    # client is not on `back`: web's address there is out of its reach.
    assert docker.exec("compose-demo-client-1", "ping", "-c", "1", "-W", "1",
                       "172.30.102.10").returncode != 0
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5) as reply:
        assert reply.read().strip() == b"web"
    code, _, _ = run_cli(capsys, "destroy", "--auto-approve", *hosts_opts(docker), str(spec))
    assert code == 0


def test_a_no_op_plan_asks_each_engine_one_list_call(
    docker: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """What inspect said is kept (a private file in /run/netapply) while the
    container's main process is the same: a no-op plan lists, and nothing
    more; a restarted container is inspected again."""
    for name in ("container1", "container2"):
        docker.start_container(name)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", *hosts_opts(docker),
                             str(DOCKER_SEED))
    assert code == 0, out + err
    cache = Path("/run/netapply/seed.runtimes.json")
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    before = len(docker.api_calls())
    code, _, _ = run_cli(capsys, "plan", "--detailed-exitcode", *hosts_opts(docker),
                         str(DOCKER_SEED))
    assert code == 0
    calls = docker.api_calls()[before:]
    assert [c.split("?")[0].split("/", 2)[-1] for c in calls] == ["containers/json"], calls
    docker.run("restart", "-t", "0", "container2")
    before = len(docker.api_calls())
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", *hosts_opts(docker),
                           str(DOCKER_SEED))
    assert code == 2 and "create veth eth0 (container container2" in out
    calls = docker.api_calls()[before:]
    assert len([c for c in calls if c.endswith("/json") and "containers/json" not in c]) == 1
    code, _, _ = run_cli(capsys, "destroy", "--auto-approve", *hosts_opts(docker),
                         str(DOCKER_SEED))
    assert code == 0


def test_watch_follows_podmans_events_too(pod: Engine, tmp_path: Path) -> None:
    """Podman's Docker-compatible event stream (it says "died" where Docker
    says "die") is a trigger as Docker's is."""
    watch = watched_seed(pod, PODMAN_SEED, tmp_path)
    try:
        pod.run("restart", "-t", "0", "container2")
        wait_for("a reconcile triggered by podman", lambda: any(
            "engine" in r["trigger"] for r in watch.reconciles()), 2)
        wait_for("container2 named again in its new hosts file", lambda: "container1" in
                 pod.exec("container2", "cat", "/etc/hosts").stdout, 2)
        assert pod.exec("container1", "ping", "-c", "1", "-W", "2",
                        "container2").returncode == 0
    finally:
        assert watch.stop() == 0
