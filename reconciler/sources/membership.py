"""This machine's live registration in etcd: PREFIX/hosts/NAME -> its
underlay address, under a lease of `ttl` seconds kept alive every ttl/3.

While the lease lives, the other machines count this one as a host (see
fleet.py); when it expires (the machine or its watch died, or it lost the
store for longer than the TTL), they drop their forwarding and neighbour
entries for it. A clean stop revokes the lease: the others drop them at
once. A lease found expired (keepalive says 0 seconds left) is replaced and
the key written again, so a machine that comes back is a host again.

Keepalive failures are said once, and their end once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from reconciler import fleet
from reconciler.errors import NetapplyError
from reconciler.model import IPAddress
from reconciler.sources import Notify, Unavailable
from reconciler.sources import etcd as etcd_mod

HOSTS = "hosts"
DEFAULT_TTL = fleet.DEFAULT_TTL


class MembershipError(NetapplyError):
    """This machine cannot register: its name or address is unknown or taken.
    The operator must pass --host NAME or --address ADDR."""


@dataclass(frozen=True)
class Identity:
    """Who registers: as asked (--host, --address), else found (resolve())."""

    name: str | None = None
    address: IPAddress | None = None
    ttl: int = DEFAULT_TTL


def live_hosts(where: etcd_mod.Location, entries: Iterable[etcd_mod.Entry]
               ) -> dict[str, IPAddress]:
    """The registrations among a listing's entries: name -> address (a
    value that is not an address is skipped)."""
    found: dict[str, IPAddress] = {}
    for entry in entries:
        head, _, name = where.name(entry.key).partition("/")
        if head != HOSTS or not fleet.HOST_NAME.fullmatch(name):
            continue
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            found[name] = ipaddress.ip_address(entry.value.decode().strip())
    return found


def resolve(asked: Identity, spec_hosts: Mapping[str, IPAddress],
            local: Callable[[], Iterable[IPAddress]], store: tuple[str, int]
            ) -> tuple[str, IPAddress]:
    """This machine's name and underlay address. The name: --host, else the
    spec's host whose address is this machine's (as watch picks it from
    files), else the machine's host name. The address: --address, else the
    spec's address of that host, else the address this machine reaches the
    store from. Raises MembershipError."""
    name = asked.name
    if name is None:
        mine = set(local())
        matches = sorted(n for n, a in spec_hosts.items() if a in mine)
        name = matches[0] if len(matches) == 1 else socket.gethostname().split(".")[0]
    if not fleet.HOST_NAME.fullmatch(name):
        raise MembershipError(f"this machine's name {name!r} is not a host name "
                              "(^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$): pass --host NAME")
    address = asked.address or spec_hosts.get(name) or _toward(*store)
    if address is None or address.is_loopback or address.is_unspecified:
        raise MembershipError(
            f"cannot tell host '{name}''s underlay address (the store is reached "
            f"{'over loopback' if address is not None else 'by no route'}): pass --address ADDR")
    return name, address


def _toward(host: str, port: int) -> IPAddress | None:
    """The source address the kernel picks to reach host (a UDP connect:
    nothing is sent)."""
    try:
        family, kind, proto, _, target = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            return ipaddress.ip_address(probe.getsockname()[0])
    except (OSError, ValueError, IndexError):
        return None


class Membership:
    """Registers one machine and keeps its lease alive (a thread), until
    leave()."""

    def __init__(self, store: etcd_mod.Store, asked: Identity):
        self.store = store
        self.asked = asked
        self.name: str | None = None
        self.address: IPAddress | None = None
        self.lease = 0
        self.ttl = asked.ttl
        self.status: Notify = lambda _text: None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.failing: str | None = None
        self.lock = threading.Lock()

    @property
    def key(self) -> str:
        return self.store.location.key(f"{HOSTS}/{self.name}")

    def join(self, spec_hosts: Mapping[str, IPAddress],
             local: Callable[[], Iterable[IPAddress]]) -> None:
        """Find who this machine is (once), register, and start keeping the
        lease alive. Raises MembershipError, Unavailable, StoreError."""
        if self.name is None:
            self.name, self.address = resolve(self.asked, spec_hosts, local,
                                              self.store.location.endpoints[0])
        with self.lock:
            self._register()
        if self.thread is None:
            self.thread = threading.Thread(target=self._keep, name="etcd-lease", daemon=True)
            self.thread.start()

    def _register(self) -> None:
        lease = self.store.grant(self.ttl)
        value = str(self.address).encode()
        put = etcd_mod.put(self.key, value, lease)
        result = self.store.txn([etcd_mod.create_revision_is(self.key, 0)], [put],
                                [etcd_mod.get(self.key)])
        if not result.succeeded:
            held = result.ranges[0].entries
            other = held[0].value if held else value
            if other != value:
                self.store.revoke(lease)
                raise MembershipError(
                    f"host '{self.name}' is registered by a live machine at "
                    f"{other.decode(errors='replace')}, not at {self.address}: pass another "
                    "--host NAME (or --address, if that is this machine)")
            # This machine's own registration, from a watch that ended without
            # revoking it (killed): take it over.
            self.store.txn([], [put])
        self.lease = lease

    def _keep(self) -> None:
        while not self.stopping.wait(max(self.ttl / 3, 0.5)):
            try:
                with self.lock:
                    if self.stopping.is_set():
                        return
                    left = self.store.keepalive(self.lease) if self.lease else 0
                    again = left == 0
                    if again:
                        self._register()
                if self.failing is not None:
                    self.failing = None
                    self.status(f"host '{self.name}': registration kept alive again"
                                + (" (its lease had expired: registered anew)" if again else ""))
            except (Unavailable, etcd_mod.StoreError, MembershipError) as e:
                if self.failing is None:
                    self.status(f"host '{self.name}': cannot keep its registration alive: {e}; "
                                "the other machines drop it once its lease expires")
                self.failing = str(e)

    def leave(self) -> None:
        """Stop keeping the lease alive and revoke it: the other machines
        drop this one at once (a clean stop)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        with self.lock:
            if self.lease:
                with contextlib.suppress(Unavailable, etcd_mod.StoreError):
                    self.store.revoke(self.lease)
                self.lease = 0
