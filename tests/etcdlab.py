"""A 3-member etcd cluster for tests, inside the test's sandbox: Debian's
etcd-server (`make deps`), members listening on loopback (and, for lab
machines, on an address of the sandbox's underlay bridge), data in a
temporary directory; each member started and stopped by its PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CLUSTER_TOKEN = "netapply-test"
# Client ports of the three members; each peer port is the client port + 1.
CLIENT_PORTS = (23790, 23792, 23794)


class Member:
    def __init__(self, cluster: EtcdCluster, index: int):
        self.cluster = cluster
        self.name = f"m{index}"
        self.client_port = CLIENT_PORTS[index]
        self.peer_port = self.client_port + 1
        self.data = cluster.work / self.name
        self.log = cluster.work / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        assert self.process is None
        hosts = ["127.0.0.1", *self.cluster.extra_hosts]
        clients = ",".join(f"http://{h}:{self.client_port}" for h in hosts)
        peers = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.cluster.members)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([
                "etcd", "--name", self.name, "--data-dir", str(self.data),
                "--listen-client-urls", clients, "--advertise-client-urls", clients,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", peers, "--initial-cluster-token", CLUSTER_TOKEN,
                "--initial-cluster-state", "new",
                # Quick elections on loopback; a small WAL for a test.
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--snapshot-count", "10000", "--log-level", "warn",
            ], stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """SIGKILL, as a crashed machine; by PID."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return bool(json.load(r).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False


class EtcdCluster:
    """Three members on 127.0.0.1 (client ports CLIENT_PORTS), also listening
    on extra_hosts (an address of this namespace) for the lab machines."""

    def __init__(self, work: Path, extra_hosts: tuple[str, ...] = ()):
        if shutil.which("etcd") is None:
            pytest.fail("etcd is missing: make deps installs etcd-server")
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.extra_hosts = extra_hosts
        self.members: list[Member] = []
        self.members = [Member(self, i) for i in range(3)]

    def endpoints(self, host: str = "127.0.0.1") -> str:
        return ",".join(f"{host}:{m.client_port}" for m in self.members)

    def url(self, prefix: str, host: str = "127.0.0.1") -> str:
        return f"etcd://{self.endpoints(host)}/{prefix}"

    def start(self) -> None:
        for member in self.members:
            member.start()
        self.wait_healthy()

    def wait_healthy(self, members: list[Member] | None = None, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        for member in members or self.members:
            while not member.healthy():
                if member.process is not None and member.process.poll() is not None:
                    pytest.fail(f"etcd {member.name} exited: {member.log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"etcd {member.name} is not healthy within {seconds} s")
                time.sleep(0.05)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def call(self, path: str, body: dict[str, object], member: int = 0) -> dict[str, object]:
        """One request to the JSON gateway of a member (test set-up only)."""
        request = urllib.request.Request(
            f"http://{self.members[member].endpoint}/v3/{path}", json.dumps(body).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as r:
            found: dict[str, object] = json.load(r)
            return found

    def revision(self) -> int:
        header = self.call("kv/range", {"key": "AA==", "count_only": True})["header"]
        assert isinstance(header, dict)
        return int(header["revision"])

    def compact(self, revision: int | None = None) -> None:
        self.call("kv/compaction", {"revision": revision or self.revision(), "physical": True})


def os_env_without_etcd() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
