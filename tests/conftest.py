"""Fixtures. Every test that touches the kernel gets its own private network and
mount namespace (with tmpfs on /run/netns and /etc/netns), entered in-process
for the test and left afterwards; the test suite itself also runs under
scripts/sandbox, so nothing can reach the machine's own namespace."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.etcdlab import EtcdCluster
from tests.kernelutil import private_namespace, require_sandbox


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: needs root and a private namespace (sandbox)")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """A fresh network + mount namespace for one test. Yields a scratch dir."""
    require_sandbox()
    with private_namespace():
        yield tmp_path


@pytest.fixture
def cluster(sandbox: Path) -> Iterator[EtcdCluster]:
    """A 3-member etcd on loopback inside the test's namespace (tests/etcdlab.py),
    started and stopped by PID."""
    found = EtcdCluster(sandbox / "etcd")
    try:
        found.start()
        yield found
    finally:
        found.stop()


@pytest.fixture
def have_ping() -> None:
    if shutil.which("ping") is None:
        pytest.fail("ping is missing: make deps installs iputils-ping")


# Hypothesis profiles: "ci" (the default) keeps the whole suite within a few
# minutes on 2 cores; HYPOTHESIS_PROFILE=long explores much deeper.
settings.register_profile(
    "ci", max_examples=400, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
