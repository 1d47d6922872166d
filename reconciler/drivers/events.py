"""Kernel notifications that may mean a project's objects changed.

Netlink sockets subscribed to link, address, route and neighbour changes in
the host namespace and in every namespace the project owns, and to nftables
changes in the host namespace. A message only says "look again" (watch mode
is level-based), so this module decides relevance cheaply and never what
changed:
- in an owned namespace, any change of a link, address or route, and of a
  static neighbour entry (not the ones the kernel learns from traffic);
- in the host namespace, changes of owned links (their alias says so) and of
  addresses, routes and static neighbour or forwarding entries on them;
- in nftables, anything touching the project's table (a `flush ruleset`
  deletes it).

Beside that decision, every message marks the part of the kernel it is about
as to be read again (Marks: watch mode's cache of the observation, see
state/cache.py), relevant or not: a namespace, the host namespace, nftables.
A lost message (ENOBUFS), or a listener that starts (over), marks everything.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from reconciler.drivers import rtnl
from reconciler.drivers.kernel import NETNS_DIR, NUD_NOARP, NUD_PERMANENT
from reconciler.drivers.netlink import in_namespace
from reconciler.errors import KernelError
from reconciler.resources import DOCKER_USER_CHAIN, DOCKER_USER_TABLE, owner_alias

RTNLGRP_LINK, RTNLGRP_NEIGH = 1, 3
RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE = 5, 7
RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE = 9, 11
RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE = 8, 19
GROUPS = (RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE,
          RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE)
RTM_NEWRULE, RTM_DELRULE = 32, 33
RCVBUF = 1 << 20  # bytes of notifications a listening socket holds before it loses some
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFGENMSG_SIZE = 4
NFTA_NAME = 1  # the table's name: NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, ...
NFTA_RULE_CHAIN = 2
NFTA_CHAIN_NAME = 3
# nf_tables.h message types (the low byte of the netlink message type)
NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN = 2, 3, 5
NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 6, 8
STATIC = NUD_NOARP | NUD_PERMANENT
HOST = ""
NFT = "\0nftables"  # the nftables socket's key among the namespaces' ones

Notify = Callable[[str], None]


class Marks(Protocol):
    """Where the parts of the kernel a message is about are marked to be read
    again (state/cache.py's ObservedCache)."""

    def everything(self) -> None: ...
    def namespace(self, ns: str) -> None: ...
    def host(self, index: int | None = None) -> None:
        """The host namespace changed: its link `index`, or (None) anything else."""
    def nft(self) -> None: ...


class _NoMarks:
    def everything(self) -> None:
        pass

    def namespace(self, ns: str) -> None:
        pass

    def host(self, index: int | None = None) -> None:
        pass

    def nft(self) -> None:
        pass


def _subscribed(protocol: int, groups: Iterable[int]) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    mask = 0
    for group in groups:
        mask |= 1 << (group - 1)
    sock.bind((0, mask))
    sock.setblocking(False)
    return sock


Identity = tuple[int, int]  # a namespace's nsfs device and inode


class KernelEvents:
    """A thread that calls notify(what) for each batch of relevant messages.
    `watch(namespaces)` sets the project's namespaces to listen in; the thread
    opens and closes their sockets itself, so no socket is closed under it.
    Listeners are keyed by namespace identity, not by name or path: a name
    whose namespace was made anew, a path that leaves the set and comes back,
    two paths of one namespace all come out right, whether or not the kernel
    gave the new namespace an old inode number. Sockets are the only
    references it holds: closing one lets a namespace that was deleted
    meanwhile go (and while one is open, its namespace's identity cannot be
    given to another). If the thread fails, it says so through on_error, asks
    for a reconcile, and starts over with new sockets."""

    def __init__(self, project: str, nft_table: str, notify: Notify, on_error: Notify,
                 marks: Marks | None = None):
        self.marks: Marks = marks if marks is not None else _NoMarks()
        self.alias_prefix = owner_alias(project) + "/"
        self.nft_table = nft_table
        self.notify = notify
        self.on_error = on_error
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._changed = True  # the wanted namespaces changed since the last sync
        self._sockets: dict[str, socket.socket] = {}  # the host's and nftables'
        self._listeners: dict[Identity, tuple[str, socket.socket]] = {}  # namespace: (name, socket)
        # Wanted namespaces that could not be listened in, with the identity
        # their path had then: said once, and tried again when it changes.
        self._failed: dict[str, Identity | None] = {}
        self._owned_host_links: set[int] = set()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def watch(self, namespaces: Iterable[str]) -> None:
        with self._lock:
            self._wanted = set(namespaces)
            self._changed = True
        self._wake()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join(timeout=2)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already woken
            os.write(self._wake_w, b"x")

    # ---- the thread -----------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception as e:  # a bug or a kernel surprise: start over, never go quiet
                self.on_error(f"kernel notifications failed ({type(e).__name__}: {e}); "
                              "listening again")
                self.notify("kernel notifications restarted")
                self._stopping.wait(1.0)
            finally:
                self._close_all()

    def _close_all(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        for _name, sock in self._listeners.values():
            sock.close()
        self._sockets.clear()
        self._listeners.clear()
        self._failed.clear()
        with self._lock:
            self._changed = True

    def _listen(self) -> None:
        # epoll, not select: a machine with many namespaces has descriptors
        # beyond select's limit of 1024.
        with selectors.DefaultSelector() as selector:
            host = self._sockets[HOST] = _subscribed(rtnl.NETLINK_ROUTE, GROUPS)
            nft = self._sockets[NFT] = _subscribed(NETLINK_NETFILTER, (NFNLGRP_NFTABLES,))
            # What changed before these sockets listened is unknown.
            self.marks.everything()
            self._owned_host_links = self._host_links()
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            selector.register(host, selectors.EVENT_READ, HOST)
            selector.register(nft, selectors.EVENT_READ, NFT)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    ns = key.data
                    if ns is None:
                        _drain_pipe(self._wake_r)
                        self._sync(selector)
                    elif ns == NFT:
                        self._read(nft, self._nft_relevant, "nftables")
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        self._read(key.fileobj, functools.partial(self._route_relevant, ns),
                                   f"netns {ns}" if ns else "host namespace")

    def _sync(self, selector: selectors.BaseSelector) -> None:
        """Listen in exactly the namespaces the wanted names and paths lead to
        now: a listener whose namespace no path leads to any more goes (with its
        socket, the last reference to a namespace deleted meanwhile), and each
        namespace without one gets one. Runs when watch() asked for it (every
        reconcile), not on every message."""
        with self._lock:
            if not self._changed:
                return
            wanted, self._changed = set(self._wanted), False
        current: dict[Identity, str] = {}
        for ns in sorted(wanted):
            identity = _identity(ns)
            if identity is not None:
                current.setdefault(identity, ns)
            elif self._failed.get(ns, ()) is not None:
                self._failed[ns] = None
                self.notify(f"netns {ns} is gone")  # deleted before we could listen
        for identity in list(self._listeners):
            if identity not in current:
                _name, sock = self._listeners.pop(identity)
                selector.unregister(sock)
                sock.close()
        for ns in list(self._failed):
            if ns not in wanted:
                del self._failed[ns]
        for identity, ns in current.items():
            if identity in self._listeners or self._failed.get(ns, ()) == identity:
                continue  # listening, or could not listen there before either: said so then
            try:
                sock = in_namespace(ns, lambda: _subscribed(rtnl.NETLINK_ROUTE, GROUPS))
            except (KernelError, OSError):
                self._failed[ns] = identity
                self.notify(f"netns {ns} is gone")  # deleted before we could listen
                continue
            self._failed.pop(ns, None)
            self._listeners[identity] = (ns, sock)
            selector.register(sock, selectors.EVENT_READ, ns)
            # What changed there between its last reading and now is unknown.
            self.marks.namespace(ns)
            self.notify(f"listening in netns {ns}")

    def _host_links(self) -> set[int]:
        with rtnl.Rtnl() as sock:
            return {link.index for link in sock.links()
                    if (link.alias or "").startswith(self.alias_prefix)}

    def _read(self, sock: socket.socket, relevant: Callable[[bytes, int], str | None],
              where: str) -> None:
        """Read everything queued; notify once if any message is relevant."""
        found: str | None = None
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # messages were lost: look again, at everything
                    self.marks.everything()
                    found = found or f"{where}: notifications overflowed"
                    continue
                raise
            offset = 0
            while offset + rtnl.HEADER.size <= len(data):
                size, kind, _flags, _seq, _pid = rtnl.HEADER.unpack_from(data, offset)
                if size < rtnl.HEADER.size:
                    break
                # Every message is looked at: each marks what it is about.
                what = relevant(data[offset:offset + size], kind)
                if found is None and what is not None:
                    found = f"{where}: {what}"
                offset += (size + 3) & ~3
        if found is not None:
            self.notify(found)

    def _route_relevant(self, ns: str, message: bytes, kind: int) -> str | None:
        self._mark(ns, message, kind)
        body = rtnl.HEADER.size
        if kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
            index = rtnl.IFINFO.unpack_from(message, body)[2]
            attrs = dict(rtnl.attrs(message, body + rtnl.IFINFO.size))
            alias = bytes(attrs.get(rtnl.IFLA_IFALIAS, b"")).split(b"\0", 1)[0].decode(
                errors="replace")
            if ns != HOST:
                return "link changed"
            if alias.startswith(self.alias_prefix):
                if kind == rtnl.RTM_DELLINK:
                    self._owned_host_links.discard(index)
                else:
                    self._owned_host_links.add(index)
                return f"link {alias} changed"
            if index in self._owned_host_links:  # its alias was cleared
                self._owned_host_links.discard(index)
                return "an owned link lost its mark"
            return None
        if kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
            index = rtnl.IFADDR.unpack_from(message, body)[4]
            return "address changed" if ns != HOST or index in self._owned_host_links else None
        if kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
            oif = None
            for key, value in rtnl.attrs(message, body + rtnl.RTMSG.size):
                if key == rtnl.RTA_OIF:
                    oif = rtnl.U32.unpack_from(value)[0]
            return "route changed" if ns != HOST or oif in self._owned_host_links else None
        if kind in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
            # The project's entries are all on owned devices of the host namespace:
            # permanent neighbour entries, and static forwarding entries (bridge
            # family). What the kernel makes by itself (learned, NOARP) is not.
            family, index, state, _flags, _type = rtnl.NDMSG.unpack_from(message, body)
            ours = STATIC if family == rtnl.AF_BRIDGE else NUD_PERMANENT
            if ns == HOST and state & ours and index in self._owned_host_links:
                return "static entry changed"
            return None
        return None

    def _mark(self, ns: str, message: bytes, kind: int) -> None:
        """The part of the kernel a message is about is to be read again: its
        namespace; in the host namespace, the link a link message is about,
        and for any other message everything but the neighbour entries the
        kernel learns (which observation does not read)."""
        if kind in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
            if ns != HOST:
                return
            family, _index, state, _flags, _type = rtnl.NDMSG.unpack_from(
                message, rtnl.HEADER.size)
            if not state & (STATIC if family == rtnl.AF_BRIDGE else NUD_PERMANENT):
                return
        if ns != HOST:
            self.marks.namespace(ns)
        elif kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
            self.marks.host(rtnl.IFINFO.unpack_from(message, rtnl.HEADER.size)[2])
        else:
            self.marks.host()

    def _nft_relevant(self, message: bytes, kind: int) -> str | None:
        """The project's table, or Docker's DOCKER-USER chain (where the project
        keeps accept rules), or the table holding it, changed."""
        if kind >> 8 != NFNL_SUBSYS_NFTABLES:
            return None
        self.marks.nft()  # observation reads every table (names, chains, DNAT rules)
        texts = {key: bytes(value).split(b"\0", 1)[0].decode(errors="replace")
                 for key, value in rtnl.attrs(message, rtnl.HEADER.size + NFGENMSG_SIZE)
                 if key in (NFTA_NAME, NFTA_RULE_CHAIN, NFTA_CHAIN_NAME)}
        name = texts.get(NFTA_NAME)
        if name == self.nft_table:
            return f"table {name} changed"
        if name != DOCKER_USER_TABLE:
            return None
        msg = kind & 0xFF
        chain = {NFT_MSG_NEWCHAIN: NFTA_CHAIN_NAME, NFT_MSG_DELCHAIN: NFTA_CHAIN_NAME,
                 NFT_MSG_NEWRULE: NFTA_RULE_CHAIN, NFT_MSG_DELRULE: NFTA_RULE_CHAIN}.get(msg)
        if msg == NFT_MSG_DELTABLE or (chain and texts.get(chain) == DOCKER_USER_CHAIN):
            return f"{DOCKER_USER_CHAIN} changed"
        return None


def _identity(ns: str) -> Identity | None:
    """Which namespace a name (/run/netns/<ns>) or path (/proc/PID/ns/net)
    leads to now: the device and inode of its nsfs file, which the kernel
    keeps for the namespace's life (ns_common.inum). None when there is none."""
    try:
        st = os.stat(os.path.join(NETNS_DIR, ns))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


__all__ = ["KernelEvents"]
