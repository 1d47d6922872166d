"""Real container engines for tests: dockerd and Podman's API service, started
inside the test's own network + mount namespace (so their firewall rules and
bridges never reach the machine), each with its own state directories, and
stopped by PID. Images are built locally from Debian's busybox-static: no
registry is ever asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

IMAGE = "netapply-busybox"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ping", "sleep", "cat", "ip", "nc", "httpd", "wget", "hostname", "true")
START_TIMEOUT = 30.0


def require(*programs: str) -> None:
    """Engine tests must not skip where the packages install: fail instead."""
    missing = [p for p in programs if shutil.which(p) is None]
    if not Path(BUSYBOX).exists():
        missing.append(BUSYBOX)
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: make deps installs docker.io, podman, "
                    "runc and busybox-static")


def image_context(root: Path) -> Path:
    """A build context of a scratch image holding busybox and its applets."""
    ctx = root / "image"
    (ctx / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, ctx / "bin" / "busybox")
    for applet in APPLETS:
        link = ctx / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (ctx / "etc").mkdir(exist_ok=True)
    (ctx / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nCMD ["sleep", "3600"]\n')
    return ctx


def _ping(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(4096)
    except OSError:
        return False


def _wait_for(sock: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _ping(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            _stop(proc)
            pytest.fail(f"the engine did not start ({proc.args[0]}):\n{tail}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the engine we started (by its PID), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Engine:
    """One running engine: `url` for netapply, `cli` to drive it as a user would."""

    name: str  # docker | podman
    url: str
    cli: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def api_calls(self) -> list[str]:
        """The API calls the engine logged so far ("GET /v1.41/containers/json"),
        dockerd with --debug only."""
        assert self.log is not None
        calls = []
        for line in self.log.read_text(errors="replace").splitlines():
            if 'msg="Calling ' in line:
                calls.append(line.split('msg="Calling ', 1)[1].split('"', 1)[0])
        return calls

    def run(self, *args: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.cli, *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr}")
        return done

    def start_container(self, name: str, *args: str, network: str = "none") -> str:
        """`docker run -d --name NAME --network none IMAGE` (or with args)."""
        extra = ["--network", network] if network else []
        return self.run("run", "-d", "--name", name, *extra, IMAGE, *args).stdout.strip()

    def inspect(self, name: str) -> dict[str, object]:
        data = json.loads(self.run("inspect", name).stdout)
        assert isinstance(data, list) and data
        return data[0]  # type: ignore[no-any-return]

    def pid(self, name: str) -> int:
        state = self.inspect(name)["State"]
        assert isinstance(state, dict)
        return int(state["Pid"])

    def exec(self, name: str, *args: str, timeout: float = 30
             ) -> subprocess.CompletedProcess[str]:
        return self.run("exec", name, *args, check=False, timeout=timeout)

    def remove_all(self) -> None:
        ids = self.run("ps", "-aq", check=False).stdout.split()
        if ids:
            self.run("rm", "-f", *ids, check=False, timeout=120)


@contextlib.contextmanager
def dockerd(root: Path, iptables: bool = False) -> Iterator[Engine]:
    """dockerd with its own data and exec roots and no bridge of its own.
    `iptables`: its default firewall (FORWARD policy drop, DOCKER-USER)."""
    require("dockerd", "docker")
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    log = root / "dockerd.log"
    args = [
        "dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "dockerd.pid"), "--host", f"unix://{sock}",
        "--bridge", "none", f"--iptables={'true' if iptables else 'false'}",
        "--ip6tables=false", "--userland-proxy=false", "--storage-driver", "vfs",
        "--debug",  # logs every API call, which tests count
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(root / "cli")}
    engine = Engine("docker", f"unix://{sock}", ["docker"], env, proc, log)
    try:
        _wait_for(sock, proc, log)
        ctx = image_context(root)
        engine.run("build", "-q", "-t", IMAGE, str(ctx), timeout=120)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            engine.remove_all()
        _stop(proc)


CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


@contextlib.contextmanager
def podman(root: Path) -> Iterator[Engine]:
    """Podman (rootful) with a temporary root and its Docker-compatible API
    service on a socket of its own. runc and no default ulimits: this
    machine's kernel and limits refuse crun's cgroup setup and Podman's raised
    limits."""
    require("podman", "runc")
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    (root / "tmp").mkdir(exist_ok=True)
    sock = root / "podman.sock"
    log = root / "podman.log"
    cli = ["podman", "--root", str(root / "root"), "--runroot", str(root / "run"),
           "--storage-driver", "vfs", "--tmpdir", str(root / "tmp")]
    env = {**os.environ, "CONTAINERS_CONF": str(conf),
           "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf")}
    (root / "registries.conf").write_text("")
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cli, "system", "service", "--time", "0", f"unix://{sock}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
    engine = Engine("podman", f"unix://{sock}", cli, env, proc)
    try:
        _wait_for(sock, proc, log)
        ctx = image_context(root)
        engine.run("build", "-q", "-t", IMAGE, "-f", str(ctx / "Dockerfile"), str(ctx),
                   timeout=120)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            engine.remove_all()
        _stop(proc)
