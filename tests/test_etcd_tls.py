"""etcd over TLS with client certificates (--cacert, --cert, --key, as
etcdctl names them): one etcd member with --client-cert-auth inside the
test's sandbox, certificates made with the openssl CLI in tmp_path. push and
plan --source work with the right files, and every wrong one is said in one
line (no traceback) that names what is wrong."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.sources import etcd as etcd_mod
from tests.kernelutil import run_cli

PORT = 23796  # client port; the peer port is PORT + 1 (the namespace is the test's own)
NET = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24}
"""


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path  # the client's, signed by ca
    key: Path
    stranger: Path  # a client certificate signed by another CA (key: key)
    other_ca: Path


def _openssl(work: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)


def _issue(work: Path, name: str, ca: str, extensions: str, key: str | None = None) -> None:
    """name.pem signed by ca (ca.pem, ca.key), for name.key (made unless key is given)."""
    key = key or f"{name}.key"
    if not (work / key).exists():
        _openssl(work, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", key)
    (work / f"{name}.ext").write_text(extensions)
    _openssl(work, "req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", f"{name}.csr")
    _openssl(work, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
             f"{ca}.key", "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
             "-out", f"{name}.pem")


def make_pki(work: Path) -> Pki:
    """A throwaway CA; etcd's certificate for IP 127.0.0.1 (also for client
    authentication: etcd 3.4's gateway dials its own port with it, and a
    serverAuth-only certificate makes every request a 503); a client
    certificate; and one from another CA."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing (Debian package openssl)")
    work.mkdir()
    for ca in ("ca", "other-ca"):
        _openssl(work, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1",
                 "-subj", f"/CN=netapply test {ca}")
    _issue(work, "server", "ca", "subjectAltName=IP:127.0.0.1\n"
                                 "extendedKeyUsage=serverAuth,clientAuth\n")
    _issue(work, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _issue(work, "stranger", "other-ca", "extendedKeyUsage=clientAuth\n", key="client.key")
    return Pki(work / "ca.pem", work / "client.pem", work / "client.key",
               work / "stranger.pem", work / "other-ca.pem")


@dataclass(frozen=True)
class TlsEtcd:
    pki: Pki
    url: str  # etcd://127.0.0.1:PORT/netapply/shop

    def good(self) -> list[str]:
        return ["--cacert", str(self.pki.ca), "--cert", str(self.pki.cert),
                "--key", str(self.pki.key)]

    def revision(self) -> int:
        store = etcd_mod.Store(etcd_mod.parse_location(self.url), etcd_mod.Access(
            str(self.pki.ca), str(self.pki.cert), str(self.pki.key)))
        try:
            return store.probe()
        finally:
            store.close()


def _healthy(pki: Pki) -> bool:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.cert), str(pki.key))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{PORT}/health", timeout=1,
                                    context=context) as r:
            return b'"health":"true"' in r.read()
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture
def tls_etcd(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsEtcd]:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is missing: make deps installs etcd-server")
    for name in ("ETCDCTL_USER", "ETCDCTL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    # requests lets this override a session's CA file (psf/requests#3829):
    # --cacert must win over it, as it does for etcdctl.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)
    pki = make_pki(sandbox / "pki")
    server = sandbox / "pki"
    client_url, peer_url = f"https://127.0.0.1:{PORT}", f"http://127.0.0.1:{PORT + 1}"
    log = sandbox / "etcd.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([
            "etcd", "--name", "tls", "--data-dir", str(sandbox / "etcd"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"tls={peer_url}", "--initial-cluster-state", "new",
            "--cert-file", str(server / "server.pem"), "--key-file", str(server / "server.key"),
            "--trusted-ca-file", str(pki.ca), "--client-cert-auth",
            "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "warn",
        ], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _healthy(pki):
            if process.poll() is not None:
                pytest.fail(f"etcd exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"etcd is not healthy within 15 s: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield TlsEtcd(pki, f"etcd://127.0.0.1:{PORT}/netapply/shop")
    finally:
        process.send_signal(signal.SIGKILL)  # by PID: the one started here
        process.wait(timeout=10)


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.kernel
def test_push_plan_and_watch_over_tls_with_a_client_certificate(
        tls_etcd: TlsEtcd, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text(NET)
    code, out, err = run_cli(capsys, "push", str(spec), tls_etcd.url, *tls_etcd.good())
    assert code == 0, err
    revision = int(out)
    assert out == f"{revision}\n" and revision == tls_etcd.revision()
    assert f"to {tls_etcd.url} at revision {revision}" in err

    code, out, err = run_cli(capsys, "plan", "--source", tls_etcd.url, *tls_etcd.good())
    assert code == 0, err
    assert f"Read the spec from {tls_etcd.url} at revision {revision}." in err
    assert "front" in out

    # The watch stream is its own request: it carries the same TLS files.
    store = etcd_mod.Store(etcd_mod.parse_location(tls_etcd.url), etcd_mod.Access.from_env(
        str(tls_etcd.pki.ca), str(tls_etcd.pki.cert), str(tls_etcd.pki.key), environ={}))
    events = store.watch("/netapply/shop/", revision, idle=2)
    try:
        assert etcd_mod.Event("/netapply/shop/net.yaml", revision, False) in \
            [next(events), next(events)]
    finally:
        events.close()
        store.close()


@pytest.mark.kernel
def test_a_wrong_or_missing_tls_file_is_said_in_one_line(
        tls_etcd: TlsEtcd, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text(NET)
    pki, url = tls_etcd.pki, tls_etcd.url
    before = tls_etcd.revision()
    client = ["--cert", str(pki.cert), "--key", str(pki.key)]

    # Without --cacert, etcd's certificate (from an unknown CA) is not trusted.
    line = one_line_error(*run_cli(capsys, "push", str(spec), url, *client)[::2])
    assert "TLS: certificate verify failed: unable to get local issuer certificate" in line
    assert "give etcd's CA with --cacert" in line and line.endswith("nothing was pushed.")
    # ... nor with a CA that did not sign it.
    line = one_line_error(*run_cli(capsys, "plan", "--source", url, "--cacert",
                                   str(pki.other_ca), *client)[::2])
    assert f"certificate verify failed: unable to get local issuer certificate: etcd's " \
        f"certificate is not signed by --cacert {pki.other_ca}" in line
    # A URL naming a host the certificate is not for.
    line = one_line_error(*run_cli(capsys, "plan", "--source",
                                   f"etcd://localhost:{PORT}/netapply/shop",
                                   *tls_etcd.good())[::2])
    assert "Hostname mismatch" in line and "does not name the host in the URL" in line

    # Without a client certificate, etcd (--client-cert-auth) ends the handshake:
    # Go closes it or sends "bad certificate", depending on timing.
    line = one_line_error(*run_cli(capsys, "push", str(spec), url, "--cacert",
                                   str(pki.ca))[::2])
    assert "TLS: etcd ended the handshake (" in line
    assert "it requires a client certificate; give --cert and --key" in line
    line = one_line_error(*run_cli(capsys, "plan", "--source", url, "--cacert",
                                   str(pki.ca))[::2])
    assert "it requires a client certificate" in line
    # A client certificate from a CA etcd does not trust.
    line = one_line_error(*run_cli(capsys, "push", str(spec), url, "--cacert", str(pki.ca),
                                   "--cert", str(pki.stranger), "--key", str(pki.key))[::2])
    assert f"TLS: etcd refused the client certificate --cert {pki.stranger}" in line

    # No TLS option at all: plain http to a TLS port.
    line = one_line_error(*run_cli(capsys, "push", str(spec), url)[::2])
    assert "closed the connection without an answer (if it serves TLS, give --cacert" in line
    # Files that are not there are named before anything is sent.
    missing = tmp_path / "missing.pem"
    line = one_line_error(*run_cli(capsys, "push", str(spec), url, "--cacert", str(missing),
                                   *client)[::2])
    assert line == f"error: --cacert {missing}: no such file; nothing was pushed."
    line = one_line_error(*run_cli(capsys, "plan", "--source", url, "--cacert", str(pki.ca),
                                   "--cert", str(missing), "--key", str(pki.key))[::2])
    assert line == f"error: --cert {missing}: no such file"
    # --key not the key of --cert.
    line = one_line_error(*run_cli(capsys, "plan", "--source", url, "--cacert", str(pki.ca),
                                   "--cert", str(pki.cert), "--key",
                                   str(pki.ca.with_suffix(".key")))[::2])
    assert f"is not the key of --cert {pki.cert}" in line

    assert tls_etcd.revision() == before  # nothing was written
