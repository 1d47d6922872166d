"""The one module that talks to etcd: etcd3gw, over etcd's HTTP/JSON gateway
(/v3/kv/range, /v3/kv/txn, /v3/watch, /v3/lease/...), which Debian's
etcd-server 3.4 serves on its client port.

Store is a small client for what netapply needs of etcd: a prefix listed at a
revision, transactions (compares and operations built by the functions
below), a prefix watched from a revision, and leases. It fails over between
the cluster's endpoints, authenticates with a user and password when given
(etcd's simple tokens, renewed when refused), and turns every failure into
Unavailable (retry later), Compacted, or StoreError (someone must act).

The watch stream is read here rather than with etcd3gw's Etcd3Client.watch:
that one drops the response that cancels a watch on a compacted revision and
ends silently when the connection goes, and a member that lost quorum keeps a
stream open without events. So a stream that is silent for `idle` seconds
returns, and the caller checks quorum with a linearizable read (probe()).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import etcd3gw
import etcd3gw.exceptions
import requests
import urllib3.exceptions

from reconciler.errors import NetapplyError
from reconciler.sources import Unavailable

SCHEME = "etcd://"
DEFAULT_PORT = 2379
TIMEOUT = 3.0  # seconds for one request to one endpoint
IDLE = 5.0  # seconds of a silent watch stream before quorum is checked again
API = "/v3/"  # etcd >= 3.4 (etcd3gw would otherwise ask /version on first use)


class StoreError(NetapplyError):
    """etcd refused a request (authentication, permission, a bad request):
    the operator must fix the access or the request."""


class Compacted(NetapplyError):
    """The revision asked for is compacted away: list again (a watcher) or
    plan again against a newer revision (a push)."""

    def __init__(self, message: str, revision: int):
        super().__init__(message)
        self.revision = revision  # the oldest revision etcd still has


@dataclass(frozen=True)
class Location:
    """etcd://HOST:PORT[,HOST:PORT...]/PREFIX: endpoints and a key prefix.
    Keys are PREFIX/NAME with the prefix as written after the endpoints
    (its leading "/" kept, as etcdctl users write keys)."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str  # "/netapply/shop": no trailing "/"

    @property
    def url(self) -> str:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return f"{SCHEME}{hosts}{self.prefix}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def name(self, key: str) -> str:
        """The name of a key under the prefix ("" for a key outside it)."""
        head = self.prefix + "/"
        return key[len(head):] if key.startswith(head) else ""

    def shown(self, key: str) -> str:
        """A key as a URL, the "file" named in messages about it."""
        return self.url[: len(self.url) - len(self.prefix)] + key


def is_location(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_location(text: str) -> Location:
    """Raises NetapplyError saying what is wrong with the URL."""
    usage = f"{text!r} is not an etcd location: write etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
    if not is_location(text):
        raise NetapplyError(usage)
    hosts, slash, prefix = text[len(SCHEME):].partition("/")
    prefix = "/" + prefix.strip("/")
    if not slash or prefix == "/" or "@" in hosts:
        raise NetapplyError(usage + (" (credentials go in ETCDCTL_USER and ETCDCTL_PASSWORD)"
                                     if "@" in hosts else " (the PREFIX is required)"))
    endpoints = []
    for item in hosts.split(","):
        host, port = item, str(DEFAULT_PORT)
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else port
        elif ":" in item:
            host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise NetapplyError(f"{usage} ({item!r} is not HOST:PORT)")
        endpoints.append((host, int(port)))
    return Location(tuple(endpoints), prefix)


@dataclass(frozen=True)
class Access:
    """TLS files and credentials, named as etcdctl names them: --cacert,
    --cert, --key; ETCDCTL_USER ("user:password", or the user alone with
    ETCDCTL_PASSWORD). Any TLS file means https."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, cacert: str | None = None, cert: str | None = None,
                 key: str | None = None, environ: Mapping[str, str] = os.environ) -> Access:
        if (cert is None) != (key is None):
            raise NetapplyError("--cert and --key go together (a client certificate and its key)")
        user = environ.get("ETCDCTL_USER") or None
        password = environ.get("ETCDCTL_PASSWORD")
        if user is not None and password is None and ":" in user:
            user, _, password = user.partition(":")
        if user is not None and password is None:
            raise NetapplyError("ETCDCTL_USER names a user without a password: write "
                                "ETCDCTL_USER=user:password, or set ETCDCTL_PASSWORD")
        return cls(cacert, cert, key, user, password)

    @property
    def tls(self) -> bool:
        return self.cacert is not None or self.cert is not None


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Listing:
    """The keys of a prefix at one revision of the store."""

    entries: tuple[Entry, ...]  # sorted by key
    revision: int


@dataclass(frozen=True)
class Event:
    key: str
    revision: int
    deleted: bool


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction (unchanged if it failed)
    ranges: tuple[Listing, ...]  # the range operations' results, in order


# --- transactions: the gateway's JSON, built here -----------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def prefix_end(prefix: str) -> str:
    """The range end covering every key that starts with prefix."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def mod_revision_is(key: str, revision: int) -> dict[str, Any]:
    """Compare: the key was last changed at revision (0: it does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}


def create_revision_is(key: str, revision: int) -> dict[str, Any]:
    """Compare: the key was created at revision (0: it does not exist)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL",
            "create_revision": revision}


def put(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key), "value": base64.b64encode(value).decode()}
    if lease:
        request["lease"] = lease
    return {"request_put": request}


def delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


def get_prefix(prefix: str, keys_only: bool = False) -> dict[str, Any]:
    return {"request_range": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                              "keys_only": keys_only}}


def _listing(result: Mapping[str, Any], revision: int) -> Listing:
    entries = tuple(Entry(
        base64.b64decode(kv["key"]).decode(errors="replace"),
        base64.b64decode(kv.get("value", "")), int(kv.get("mod_revision", 0)),
        int(kv.get("create_revision", 0)), int(kv.get("lease", 0)))
        for kv in result.get("kvs", ()))
    return Listing(tuple(sorted(entries, key=lambda e: e.key)), revision)


def _message(detail: str | None) -> str:
    """The gateway's error text ({"error": ..., "message": ...}) as one line."""
    try:
        doc = json.loads(detail or "")
        return str(doc.get("message") or doc.get("error") or detail)
    except (ValueError, AttributeError):
        return (detail or "no answer").strip().splitlines()[0] if detail else "no answer"


# Errors that say "try another endpoint, or later": etcd3gw's for a refused or
# timed-out connection and HTTP 503/504, and 500, which the gateway answers
# while a leader is being elected.
_RETRYABLE = (etcd3gw.exceptions.ConnectionFailedError,
              etcd3gw.exceptions.ConnectionTimeoutError,
              etcd3gw.exceptions.InternalServerError)


class Store:
    """A client for one etcd cluster (any of its endpoints). Thread-safe:
    the watch thread and the reconcile loop share one."""

    def __init__(self, location: Location, access: Access | None = None,
                 timeout: float = TIMEOUT):
        self.location = location
        self.access = access or Access()
        self.timeout = timeout
        for option, path in (("--cacert", self.access.cacert), ("--cert", self.access.cert),
                             ("--key", self.access.key)):
            if path is not None and not os.path.isfile(path):
                raise NetapplyError(f"{option} {path}: no such file")
        protocol = "https" if self.access.tls else "http"
        self.clients = [
            etcd3gw.Etcd3Client(host, port, protocol, ca_cert=self.access.cacert,
                                cert_key=self.access.key, cert_cert=self.access.cert,
                                timeout=timeout, api_path=API)
            for host, port in location.endpoints]
        # Passed with every request: requests lets REQUESTS_CA_BUNDLE or
        # CURL_CA_BUNDLE in the environment override a session's own CA file
        # (psf/requests#3829), and --cacert must win.
        self.verify: str | bool = self.access.cacert or True
        self.current = 0  # the endpoint that answered last
        self.lock = threading.Lock()
        self.token: str | None = None
        self.stream: requests.Response | None = None

    @property
    def where(self) -> str:
        return f"etcd at {', '.join(f'{h}:{p}' for h, p in self.location.endpoints)}"

    # ---- requests ---------------------------------------------------------------

    def _order(self) -> list[int]:
        n = len(self.clients)
        return [(self.current + i) % n for i in range(n)]

    def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST one gateway request to the first endpoint that answers.
        Raises Unavailable when none does, StoreError when etcd refuses it."""
        causes = []
        for index in self._order():
            client = self.clients[index]
            try:
                found = self._post(client, path, body)
            except _RETRYABLE as e:
                host, port = self.location.endpoints[index]
                causes.append(f"{host}:{port}: {_cause(e, self.access)}")
                continue
            except OSError as e:  # requests: a TLS file gone since the start
                raise StoreError(f"{self.where}: {_cause(e, self.access)}") from None
            self.current = index
            return found
        raise Unavailable(f"{self.where}: no endpoint answers ({'; '.join(causes)})")

    def _post(self, client: etcd3gw.Etcd3Client, path: str,
              body: Mapping[str, Any]) -> dict[str, Any]:
        for attempt in (1, 2):
            self._authenticate(client, again=attempt == 2)
            try:
                found: dict[str, Any] = client.post(client.get_url(path), json=body,
                                                    verify=self.verify)
                return found
            except _RETRYABLE:
                raise
            except etcd3gw.exceptions.Etcd3Exception as e:
                message = _message(e.detail_text)
                if attempt == 1 and self.access.user and "token" in message:
                    continue  # an expired simple token: authenticate again
                raise StoreError(f"{self.where}: {path.strip('/')}: {message}") from None
        raise AssertionError("unreachable")

    def _authenticate(self, client: etcd3gw.Etcd3Client, again: bool) -> None:
        if self.access.user is None or (self.token is not None and not again):
            if self.token is not None:
                client.session.headers["Authorization"] = self.token
            return
        try:
            found = client.post(client.get_url("/auth/authenticate"),
                                json={"name": self.access.user, "password": self.access.password},
                                verify=self.verify)
        except _RETRYABLE:
            raise
        except etcd3gw.exceptions.Etcd3Exception as e:
            raise StoreError(f"{self.where}: authentication as user '{self.access.user}' "
                             f"failed: {_message(e.detail_text)}") from None
        with self.lock:
            self.token = str(found["token"])
        for each in self.clients:
            each.session.headers["Authorization"] = self.token

    # ---- reads and writes ----------------------------------------------------------

    def list(self, prefix: str, revision: int | None = None) -> Listing:
        """Every key starting with prefix, at the store's current revision (a
        linearizable read: it fails without quorum) or at `revision`.
        Raises Unavailable, Compacted, StoreError."""
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        if revision is not None:
            body["revision"] = revision
        try:
            found = self.call("kv/range", body)
        except StoreError as e:
            if "compacted" in str(e) and revision is not None:
                raise Compacted(f"{self.where}: revision {revision} is compacted",
                                revision) from None
            raise
        return _listing(found, revision or int(found["header"]["revision"]))

    def probe(self) -> int:
        """The store's revision by a linearizable read (so: quorum is there).
        Raises Unavailable."""
        found = self.call("kv/range", {"key": _b64(self.location.prefix), "count_only": True})
        return int(found["header"]["revision"])

    def txn(self, compares: Sequence[Mapping[str, Any]], success: Sequence[Mapping[str, Any]],
            failure: Sequence[Mapping[str, Any]] = ()) -> TxnResult:
        """One transaction: all of success if every compare holds, else all of
        failure. Raises Unavailable, StoreError. (A transaction that times
        out may still have been applied: the caller reads again.)"""
        found = self.call("kv/txn", {"compare": list(compares), "success": list(success),
                                     "failure": list(failure)})
        revision = int(found["header"]["revision"])
        ranges = tuple(_listing(r["response_range"], revision)
                       for r in found.get("responses", ()) if "response_range" in r)
        return TxnResult(bool(found.get("succeeded", False)), revision, ranges)

    # ---- leases (live membership) ----------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; its id. Raises Unavailable, StoreError."""
        return int(self.call("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew a lease: the seconds it has left, or 0 when it is gone."""
        found = self.call("lease/keepalive", {"ID": lease})
        return max(int(found.get("result", {}).get("TTL", 0)), 0)

    def revoke(self, lease: int) -> None:
        with contextlib.suppress(StoreError):  # already expired
            self.call("kv/lease/revoke", {"ID": lease})

    # ---- watching ------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, idle: float = IDLE) -> Iterator[Event]:
        """The changes to keys starting with prefix from start_revision on, as
        they come. Returns after `idle` seconds without any (the caller probes
        quorum and watches again from the next revision). Raises Compacted
        when start_revision is gone, Unavailable when the stream breaks."""
        body: dict[str, Any] = {"create_request": {
            "key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
            "start_revision": start_revision}}
        index = self.current
        client = self.clients[index]
        try:
            self._authenticate(client, again=False)
            response = client.session.post(client.get_url("watch"), json=body, stream=True,
                                           timeout=(self.timeout, idle), verify=self.verify)
        except (requests.RequestException, *_RETRYABLE) as e:
            self.current = (index + 1) % len(self.clients)
            raise Unavailable(f"{self.where}: cannot watch: {_cause(e, self.access)}") from None
        except OSError as e:  # requests: a TLS file gone since the start
            raise StoreError(f"{self.where}: cannot watch: {_cause(e, self.access)}") from None
        self.stream = response
        try:
            if response.status_code != 200:
                raise StoreError(f"{self.where}: watch: {_message(response.text)}")
            for line in response.iter_lines():
                if line.strip():
                    yield from self._events(json.loads(line))
        except requests.RequestException as e:
            if any(isinstance(a, urllib3.exceptions.ReadTimeoutError) for a in e.args):
                return  # idle: nothing changed
            self.current = (index + 1) % len(self.clients)
            raise Unavailable(f"{self.where}: the watch stream broke: {_cause(e)}") from None
        except (ValueError, AttributeError) as e:
            raise Unavailable(f"{self.where}: the watch stream broke: {e}") from None
        finally:
            self.stream = None
            response.close()
        self.current = (index + 1) % len(self.clients)
        raise Unavailable(f"{self.where}: the watch stream ended")

    def _events(self, chunk: Mapping[str, Any]) -> Iterator[Event]:
        if "error" in chunk:
            raise Unavailable(f"{self.where}: watch: {_message(json.dumps(chunk['error']))}")
        result = chunk.get("result", {})
        if int(result.get("compact_revision", 0)):
            raise Compacted(f"{self.where}: the watched revision is compacted",
                            int(result["compact_revision"]))
        if result.get("canceled"):
            raise Unavailable(f"{self.where}: etcd cancelled the watch: "
                              f"{result.get('cancel_reason') or 'no reason given'}")
        for event in result.get("events", ()):
            kv = event["kv"]
            yield Event(base64.b64decode(kv["key"]).decode(errors="replace"),
                        int(kv.get("mod_revision", 0)), event.get("type") == "DELETE")

    def interrupt(self) -> None:
        """Break a watch that another thread is reading (it raises Unavailable)."""
        stream = self.stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def close(self) -> None:
        self.interrupt()
        for client in self.clients:
            client.session.close()


def _cause(e: BaseException, access: Access | None = None) -> str:
    """Why a request failed, in one line. etcd3gw keeps requests' text in
    detail_text (its str() is empty)."""
    text = str(getattr(e, "detail_text", None) or e) or type(e).__name__
    tls = _tls_cause(text, access or Access())
    if tls:
        return tls
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    return text.splitlines()[0][:200]


# "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)"
# inside requests' "HTTPSConnectionPool(...): Max retries exceeded ... (Caused by ...)".
_SSL_REASON = re.compile(
    r"\[(?:SSL|X509)(?:: (?P<code>[A-Z0-9_]+))?\] (?P<text>[^()]*?)\.?\s*\(_ssl")
# How a TLS server ends the handshake with a client whose certificate it
# refuses: etcd 3.4 (Go) closes it (EOF); others send an alert.
_REFUSED = ("EOF occurred in violation of protocol", "alert certificate required",
            "alert bad certificate", "alert unknown ca", "alert handshake failure",
            "alert certificate unknown", "alert certificate expired")


def _tls_cause(text: str, access: Access) -> str | None:
    """What a TLS failure means for the operator, in etcdctl's terms (None:
    not a TLS failure)."""
    if "SSLError" not in text and "[SSL" not in text and "[X509" not in text:
        if not access.tls and "Remote end closed connection without response" in text:
            return ("the endpoint closed the connection without an answer (if it serves "
                    "TLS, give --cacert, and --cert and --key if it wants a client certificate)")
        return None
    found = _SSL_REASON.search(text)
    reason = found.group("text") if found else next(
        (r for r in _REFUSED if r in text), text.splitlines()[0][:200])
    code = found.group("code") if found else None
    if code == "CERTIFICATE_VERIFY_FAILED":
        if "mismatch" in reason:
            return f"TLS: {reason}: etcd's certificate does not name the host in the URL"
        if access.cacert is None:
            return (f"TLS: {reason}: etcd's certificate is not signed by a CA this machine "
                    "trusts; give etcd's CA with --cacert")
        return f"TLS: {reason}: etcd's certificate is not signed by --cacert {access.cacert}"
    if code == "KEY_VALUES_MISMATCH":
        return f"TLS: --key {access.key} is not the key of --cert {access.cert}"
    if any(r in reason for r in _REFUSED):
        if access.cert is None:
            return (f"TLS: etcd ended the handshake ({reason}): it requires a client "
                    "certificate; give --cert and --key")
        return (f"TLS: etcd refused the client certificate --cert {access.cert} ({reason}): "
                "is it signed by a CA etcd trusts, and made for client authentication?")
    return f"TLS: {reason}"
