"""Specs in a real etcd (a 3-member cluster inside the test's sandbox, see
tests/etcdlab.py): push, its revision guard, concurrent pushes, errors
naming the etcd key, compaction, authentication, and the etcd URL's rules."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.errors import NetapplyError
from reconciler.sources import etcd as etcd_mod
from tests.etcdlab import EtcdCluster, os_env_without_etcd

REPO = Path(__file__).resolve().parent.parent
NET = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24}
"""
APPS = """\
version: 1
project: shop
containers:
  web: {networks: [front]}
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def netapply(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", "--no-color", *args],
                          capture_output=True, text=True, cwd=REPO,
                          env=env or os_env_without_etcd())


def keys(cluster: EtcdCluster, prefix: str) -> dict[str, str]:
    found = cluster.call("kv/range", {"key": b64(prefix), "range_end": b64(
        etcd_mod.prefix_end(prefix))})
    kvs = found.get("kvs", [])
    assert isinstance(kvs, list)
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in kvs}


@pytest.mark.kernel
def test_push_writes_every_file_in_one_revision_and_deletes_those_removed(
        cluster: EtcdCluster, tmp_path: Path) -> None:
    spec = tmp_path / "shop"
    spec.mkdir()
    (spec / "net.yaml").write_text(NET)
    (spec / "apps.yaml").write_text(APPS)
    url = cluster.url("netapply/shop")
    pushed = netapply("push", str(spec), url)
    assert pushed.returncode == 0, pushed.stderr
    revision = int(pushed.stdout)
    assert "wrote apps.yaml, wrote net.yaml" in pushed.stderr
    assert cluster.revision() == revision  # both files (and the marker) in one revision
    assert keys(cluster, "/netapply/shop/") == {
        "/netapply/shop/net.yaml": NET, "/netapply/shop/apps.yaml": APPS,
        "/netapply/shop/.netapply-push": '{"base": 1, "files": ["apps.yaml", "net.yaml"]}'}

    # The spec read back through plan --source is the one pushed (validate would
    # fail without the network from net.yaml).
    plan = netapply("plan", "--source", url)
    assert f"at revision {revision}." in plan.stderr

    # A file gone from the spec is deleted in the same transaction.
    (spec / "apps.yaml").unlink()
    again = netapply("push", str(spec), url)
    assert again.returncode == 0, again.stderr
    assert "deleted apps.yaml" in again.stderr and "wrote" not in again.stderr
    assert "/netapply/shop/apps.yaml" not in keys(cluster, "/netapply/shop/")


@pytest.mark.kernel
def test_two_pushes_based_on_one_revision_one_wins_and_the_other_writes_nothing(
        cluster: EtcdCluster, tmp_path: Path) -> None:
    url = cluster.url("netapply/shop")
    first = tmp_path / "first.yaml"
    first.write_text(NET)
    base = int(netapply("push", str(first), url).stdout)
    specs = []
    for name in ("left", "right"):
        spec = tmp_path / name
        spec.mkdir()
        (spec / "net.yaml").write_text(NET + f"  {name}: {{subnet: 172.30.9.0/24}}\n")
        specs.append(spec)
    runs = [subprocess.Popen([sys.executable, "-m", "reconciler.cli", "--no-color", "push",
                              "--expect-revision", str(base), str(spec), url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env=os_env_without_etcd()) for spec in specs]
    results = [(run.wait(timeout=30), *run.communicate()) for run in runs]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    won = next(out for code, out, _ in results if code == 0)
    lost = next(err for code, _, err in results if code == 1)
    assert (f"changed at revision {int(won)}, after revision {base} this push is based on: "
            "nothing was written") in lost
    winner = "left" if "left:" in keys(cluster, "/netapply/shop/")["/netapply/shop/net.yaml"] \
        else "right"
    assert (specs[0] if winner == "left" else specs[1]).joinpath("net.yaml").read_text() == \
        keys(cluster, "/netapply/shop/")["/netapply/shop/net.yaml"]

    # A pipeline that planned against an older revision is refused the same way,
    # also when what changed was written by hand (etcdctl put).
    cluster.call("kv/put", {"key": b64("/netapply/shop/net.yaml"), "value": b64(NET)})
    stale = netapply("push", "--expect-revision", won.strip(), str(first), url)
    assert stale.returncode == 1
    assert f"changed at revision {cluster.revision()}" in stale.stderr


@pytest.mark.kernel
def test_an_invalid_spec_in_etcd_is_reported_at_its_key_line_and_column(
        cluster: EtcdCluster, tmp_path: Path) -> None:
    cluster.call("kv/put", {"key": b64("/netapply/shop/net.yaml"),
                            "value": b64(NET.replace("172.30.1.0/24", "172.30.1.0/33"))})
    one = f"127.0.0.1:{cluster.members[0].client_port}"
    result = netapply("plan", "--source", f"etcd://{one}/netapply/shop")
    assert result.returncode == 1
    assert f"error: etcd://{one}/netapply/shop/net.yaml:4:11: network 'front': subnet " \
        in result.stderr
    assert "Traceback" not in result.stderr
    # push validates before it writes anything.
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nproject: shop\nnetworks: [oops]\n")
    before = cluster.revision()
    refused = netapply("push", str(bad), f"etcd://{one}/netapply/shop")
    assert refused.returncode == 1 and f"{bad}:3:1:" in refused.stderr
    assert cluster.revision() == before


@pytest.mark.kernel
def test_a_compacted_revision_is_said_so(cluster: EtcdCluster, tmp_path: Path) -> None:
    url = cluster.url("netapply/shop")
    spec = tmp_path / "net.yaml"
    spec.write_text(NET)
    old = int(netapply("push", str(spec), url).stdout)
    netapply("push", str(spec), url)
    cluster.compact()
    result = netapply("push", "--expect-revision", str(old), str(spec), url)
    assert result.returncode == 1
    assert f"revision {old} is compacted; nothing was pushed" in result.stderr
    # A watch from a compacted revision says so too (the follower then lists again).
    store = etcd_mod.Store(etcd_mod.parse_location(url))
    with pytest.raises(etcd_mod.Compacted):
        list(store.watch("/netapply/shop/", old))
    store.close()


@pytest.mark.kernel
def test_user_and_password_come_from_the_environment(cluster: EtcdCluster,
                                                    tmp_path: Path) -> None:
    cluster.call("auth/user/add", {"name": "root", "password": "s3cret"})
    cluster.call("auth/user/grant", {"user": "root", "role": "root"})
    cluster.call("auth/enable", {})
    url = cluster.url("netapply/shop")
    spec = tmp_path / "net.yaml"
    spec.write_text(NET)
    env = os_env_without_etcd()
    anonymous = netapply("push", str(spec), url, env=env)
    assert anonymous.returncode == 1 and "nothing was pushed" in anonymous.stderr
    wrong = netapply("push", str(spec), url, env={**env, "ETCDCTL_USER": "root:nope"})
    assert wrong.returncode == 1
    assert "authentication as user 'root' failed" in wrong.stderr
    ok = netapply("push", str(spec), url, env={**env, "ETCDCTL_USER": "root:s3cret"})
    assert ok.returncode == 0, ok.stderr
    split = netapply("plan", "--source", url,
                     env={**env, "ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": "s3cret"})
    assert f"at revision {int(ok.stdout)}." in split.stderr


def test_etcd_urls_and_credentials_are_checked() -> None:
    found = etcd_mod.parse_location("etcd://10.0.0.1:2379,[fd00::1]:2380,etcd3/netapply/shop/")
    assert found.endpoints == (("10.0.0.1", 2379), ("fd00::1", 2380), ("etcd3", 2379))
    assert found.prefix == "/netapply/shop"
    assert found.key("net.yaml") == "/netapply/shop/net.yaml"
    assert found.shown(found.key("a.yaml")) == \
        "etcd://10.0.0.1:2379,[fd00::1]:2380,etcd3:2379/netapply/shop/a.yaml"
    for bad in ("etcd://h:2379", "etcd://h:2379/", "etcd://h:99999/p", "http://h/p",
                "etcd://u:pw@h/p"):
        with pytest.raises(NetapplyError, match="is not an etcd location"):
            etcd_mod.parse_location(bad)
    assert etcd_mod.Access.from_env(environ={"ETCDCTL_USER": "u:p:q"}).password == "p:q"
    both = etcd_mod.Access.from_env(environ={"ETCDCTL_USER": "u", "ETCDCTL_PASSWORD": "x"})
    assert (both.user, both.password) == ("u", "x")
    with pytest.raises(NetapplyError, match="without a password"):
        etcd_mod.Access.from_env(environ={"ETCDCTL_USER": "u"})
    with pytest.raises(NetapplyError, match="--cert and --key go together"):
        etcd_mod.Access.from_env(cert="c.pem", environ={})
    assert etcd_mod.Access.from_env(cacert="ca.pem", environ={}).tls


def test_plan_takes_either_a_spec_or_a_source() -> None:
    result = netapply("plan")
    assert result.returncode == 1
    assert "plan needs either SPEC or --source URL (not both)" in result.stderr
