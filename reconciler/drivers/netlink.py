"""The real kernel, over rtnetlink (drivers/rtnl.py).

One netlink socket per namespace, opened after entering that namespace and kept
for the whole run (pyroute2's own netns support forks a helper per socket).
Namespaces are created in-process the way iproute2 does: the calling thread
unshares its network namespace, opens the socket it will use there, bind-mounts
the namespace under /run/netns and returns to its own.

Interface indexes come from the kernel, not from a lookup by name before each
change: every link dump of a namespace, the kernel's echo of each link created
(NLM_F_ECHO) and netapply's own renames and deletes keep a name -> index table
per namespace; a name missing there is looked up.

Under /run/netns and /etc/netns no symbolic link is followed, on the way or at
the end (drivers/files.py): what is in the way is reported, never written through.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import ipaddress
import os
import resource
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from reconciler import ports
from reconciler.drivers import announce, conntrack, files, nft
from reconciler.drivers.kernel import (
    ETC_NETNS_DIR,
    GONE,
    NETNS_DIR,
    TMP_SUFFIX,
    AddrInfo,
    FdbInfo,
    FileType,
    LinkInfo,
    NeighInfo,
    NsFile,
    RouteInfo,
)
from reconciler.drivers.rtnl import NetlinkError, Rtnl
from reconciler.errors import KernelError
from reconciler.model import IPAddress
from reconciler.resources import RTPROT_NETAPPLY

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file (Linux 4.11)
OWN_NETNS = "/proc/thread-self/ns/net"
# Namespace files are opened only once known to be nsfs inodes (_open_ns_path);
# these flags are a second guard: no blocking, no controlling terminal.
NS_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
NS_TYPES = {  # CLONE_NEW* -> name, as namespaces(7) calls them
    0x00020000: "mount", 0x02000000: "cgroup", 0x04000000: "UTS", 0x08000000: "IPC",
    0x10000000: "user", 0x20000000: "PID", 0x40000000: "network", 0x00000080: "time",
}
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
SYSCTL_DIR = "/proc/sys"
MODULES_DIR = "/lib/modules"
# Descriptors left free for everything but the namespaces' sockets (files,
# nft's pipes, the lock, an engine's API socket, a namespace entered for a moment).
FD_RESERVE = 32
MIN_SOCKETS = 4  # the host's, and the namespace a step works in, with room to spare
MANAGED_DIRS = (NETNS_DIR, ETC_NETNS_DIR)
LOOPBACK = "lo"
# A namespace's loopback is registered first and always gets this index
# (LOOPBACK_IFINDEX, include/net/net_namespace.h).
LOOPBACK_IFINDEX = 1

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        raise KernelError(what, ctypes.get_errno())


def _setns(fd: int, what: str) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), what)


def _ns_path(ns: str) -> str:
    return ns if ns.startswith("/") else os.path.join(NETNS_DIR, ns)


def _ns_label(ns: str) -> str:
    return f"netns {ns}" if ns else "host namespace"


def _managed(path: str) -> bool:
    """Whether path is in a directory where netapply follows no link."""
    return any(path == d or path.startswith(d + "/") for d in MANAGED_DIRS)


def socket_budget() -> int:
    """How many namespace sockets a run keeps open at once: what the limit
    on open files (RLIMIT_NOFILE, `ulimit -n`) leaves after FD_RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(MIN_SOCKETS, soft - FD_RESERVE)


class NetlinkKernel:
    """Kernel interface on the running kernel (see drivers/kernel.py)."""

    def __init__(self) -> None:
        self.writes = 0
        self.file_writes = 0  # of `writes`, those to managed files (hosts)
        # Least recently used first. More namespaces than the limit on open
        # files allows are served by closing the least recently used socket.
        self._sockets: dict[str, Rtnl] = {}
        self._budget = socket_budget()
        self._indexes: dict[str, dict[str, int]] = {}  # ns -> ifname -> index
        self._closer = announce.Closer()  # announcement sockets, closed off the apply's path
        # The namespace each netns_path's socket was opened in (nsfs identity).
        self._path_ids: dict[str, tuple[int, int] | None] = {}
        self._kinds: set[str] = set()  # link kinds known to be supported

    # ---- sockets -------------------------------------------------------------

    def _sock(self, ns: str) -> Rtnl:
        sock = self._sockets.pop(ns, None)
        if sock is None:
            while len(self._sockets) >= self._budget:
                self._forget(next(iter(self._sockets)))
            sock = self._open_evicting(ns)
        self._sockets[ns] = sock
        return sock

    def _open_evicting(self, ns: str) -> Rtnl:
        """A new socket in ns; when the process is out of descriptors (another
        part holds more than FD_RESERVE), close cached sockets until it fits."""
        while True:
            try:
                return self._open(ns)
            except (KernelError, OSError) as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE) or not self._sockets:
                    raise
                self._budget = max(1, len(self._sockets) - 1)
                self._forget(next(iter(self._sockets)))

    def _open(self, ns: str) -> Rtnl:
        if ns.startswith("/"):
            self._path_ids[ns] = inspect_ns(ns).identity
        return in_namespace(ns, Rtnl)

    def _forget(self, ns: str) -> None:
        sock = self._sockets.pop(ns, None)
        self._path_ids.pop(ns, None)
        if sock is not None:
            sock.close()

    def forget(self, ns: str) -> None:
        """Close the socket kept for ns (a name of /run/netns that may lead to
        another namespace now); the next request opens one anew."""
        self._forget(ns)

    def forget_moved_paths(self) -> None:
        """Close the sockets of netns_path namespaces whose path leads to another
        namespace now (or none): a process that ended, its PID used again.
        For a run that keeps its sockets across reconciles (watch)."""
        for path, identity in list(self._path_ids.items()):
            if inspect_ns(path).identity != identity:
                self._forget(path)

    def close(self) -> None:
        self._closer.wait()
        for ns in list(self._sockets):
            self._forget(ns)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except NetlinkError as e:
            raise KernelError(what, e.errno or errno.EIO) from None
        except OSError as e:
            raise KernelError(what, e.errno or errno.EIO) from None

    def _write(self, what: str, fn: Callable[[], T]) -> T:
        self.writes += 1
        return self._call(what, fn)

    def _index(self, ns: str, ifname: str) -> int:
        known = self._indexes.setdefault(ns, {})
        index = known.get(ifname)
        if index is None:
            index = known[ifname] = self._call(
                f"look up {ifname} in {_ns_label(ns)}", lambda: self._sock(ns).index(ifname)
            )
        return index

    def _on(self, ns: str, ifname: str, what: str, fn: Callable[[Rtnl, int], Any]) -> None:
        """A change to the link named ifname in ns, by its index."""
        def run() -> None:
            index = self._index(ns, ifname)
            self._write(what, lambda: fn(self._sock(ns), index))

        self._fresh(ns, (ifname,), run)

    def _fresh(self, ns: str, names: tuple[str, ...], run: Callable[[], T]) -> T:
        """run(), again with indexes looked up anew when a remembered one names
        no link any more (ENODEV: deleted from outside, or with its veth peer)."""
        known = self._indexes.get(ns, {})
        remembered = any(name in known for name in names)
        try:
            return run()
        except KernelError as e:
            if e.errno != errno.ENODEV or not remembered:
                raise
            for name in names:
                self._learn(ns, name, None)
            return run()

    def _learn(self, ns: str, ifname: str, index: int | None) -> None:
        """Remember a link's index (from an echo or a rename); None forgets it."""
        known = self._indexes.setdefault(ns, {})
        if index:
            known[ifname] = index
        else:
            known.pop(ifname, None)

    # ---- reads ---------------------------------------------------------------

    def netns_names(self) -> list[str]:
        """Named network namespaces: the entries of /run/netns with a network
        namespace mounted on them. Anything else there (a link, which is not
        followed; a file left by an interrupted create) is not listed."""
        try:
            with files.directory(NETNS_DIR) as fd:
                return [name for name in sorted(os.listdir(fd))
                        if _named_ns_type(fd, name) == CLONE_NEWNET]
        except (FileNotFoundError, files.InTheWay):
            return []
        except OSError as e:
            raise KernelError(f"list {NETNS_DIR}", e.errno or errno.EIO) from None

    def ns_exists(self, ns: str) -> bool:
        if not ns:
            return True
        if ns.startswith("/"):
            return ns_type(ns) == CLONE_NEWNET
        try:
            with files.directory(NETNS_DIR) as fd:
                return _named_ns_type(fd, ns) == CLONE_NEWNET
        except OSError:
            return False

    def ns_file(self, ns: str) -> NsFile:
        return inspect_ns(ns or OWN_NETNS)

    def links(self, ns: str) -> list[LinkInfo]:
        found = self._call(f"list links in {_ns_label(ns)}", lambda: self._sock(ns).links())
        self._indexes[ns] = {link.ifname: link.index for link in found}
        return found

    def link(self, ns: str, ref: int | str) -> LinkInfo | None:
        found = self._call(f"read link {ref} in {_ns_label(ns)}",
                           lambda: self._sock(ns).link(ref))
        # The name -> index table learns what was read, as from a dump: the
        # link's old names (a rename from outside) and a name or index that
        # names no link any more are forgotten, so that no change is ever made
        # by a remembered index that is another link's now.
        known = self._indexes.setdefault(ns, {})
        gone = found.index if found is not None else ref if isinstance(ref, int) else None
        for name in [n for n, i in known.items() if i == gone or n == ref]:
            del known[name]
        if found is not None:
            known[found.ifname] = found.index
        return found

    def addresses(self, ns: str) -> list[AddrInfo]:
        return self._call(
            f"list addresses in {_ns_label(ns)}", lambda: self._sock(ns).addresses()
        )

    def routes(self, ns: str) -> list[RouteInfo]:
        found = self._call(f"list routes in {_ns_label(ns)}",
                           lambda: self._sock(ns).routes(RT_TABLE_MAIN))
        return [RouteInfo(r.dst, r.via, r.oif, r.proto) for r in found]

    def read_file(self, path: str) -> str | None:
        """The text of a regular file (bytes that are not UTF-8 replaced), None
        if there is none (absent, a FIFO, a directory; under /run/netns and
        /etc/netns also a link). A FIFO is never waited on."""
        try:
            if _managed(path):
                return files.read_text(path)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            return files.read_fd(fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise KernelError(f"read {path}", e.errno or errno.EIO) from None

    def policy_routes(self) -> list[tuple[RouteInfo, int, int]]:
        rules = self._call("list policy rules", lambda: self._sock("").rules())
        first: dict[int, int] = {}
        for pref, table in sorted(rules):
            if table not in (RT_TABLE_MAIN, RT_TABLE_LOCAL):
                first.setdefault(table, pref)
        if not first:
            return []
        found = self._call("list routes", lambda: self._sock("").routes())
        return [(RouteInfo(r.dst, r.via, r.oif, r.proto), r.table, first[r.table])
                for r in found if r.table in first]

    def sockets(self) -> list[tuple[str, IPAddress, int]]:
        """From /proc/net/{tcp,tcp6,udp,udp6} of this process's namespace, the
        host's (proc(5))."""
        found: list[tuple[str, IPAddress, int]] = []
        for protocol in ports.PROTOCOLS:
            for suffix in ("", "6"):
                text = self.read_file(f"/proc/self/net/{protocol}{suffix}")
                found.extend((protocol, address, port)
                             for address, port in ports.proc_net_sockets(text or "", protocol))
        return found

    def read_link(self, path: str) -> str | None:
        try:
            return files.read_link(path) if _managed(path) else os.readlink(path)
        except OSError:
            return None  # absent, or no link (EINVAL)

    def list_dir(self, path: str) -> list[str]:
        try:
            return files.list_dir(path) if _managed(path) else sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise KernelError(f"list {path}", e.errno or errno.EIO) from None

    def file_type(self, path: str) -> FileType | None:
        try:
            return files.file_type(path)
        except OSError as e:
            raise KernelError(f"look at {path}", e.errno or errno.EIO) from None

    def dir_entries(self, path: str) -> dict[str, FileType]:
        try:
            return files.entries(path)
        except OSError as e:
            raise KernelError(f"list {path}", e.errno or errno.EIO) from None

    def sysctl_get(self, name: str) -> str | None:
        text = self.read_file(os.path.join(SYSCTL_DIR, name))
        return None if text is None else text.strip()

    def nft_ruleset(self) -> list[dict[str, Any]]:
        return nft.ruleset()

    def nft_tables(self) -> list[tuple[str, str]]:
        return self._call("list the nftables tables over netlink", nft.tables)

    def fdb(self) -> list[FdbInfo]:
        return self._call("list forwarding entries", lambda: self._sock("").fdb())

    def neighbours(self) -> list[NeighInfo]:
        return self._call("list neighbour entries", lambda: self._sock("").neighbours())

    def link_kind_supported(self, kind: str) -> bool:
        """A driver for `kind` is built in or loaded (asked with a link dump,
        which changes nothing), or is a module the kernel would load when a
        link of that kind is made: rtnetlink asks modprobe for
        "rtnl-link-<kind>" (request_module in net/core/rtnetlink.c), an alias
        that depmod lists in modules.alias of the running kernel."""
        if kind in self._kinds:  # a driver, once there, stays (or is loaded again)
            return True
        registered = self._call(
            f"find out whether the kernel supports {kind} links",
            lambda: self._sock("").kind_registered(kind),
        )
        if registered or _module_alias(f"rtnl-link-{kind}"):
            self._kinds.add(kind)
            return True
        return False

    # ---- machine-wide settings -------------------------------------------------

    def sysctl_set(self, name: str, value: str) -> None:
        self.writes += 1
        path = os.path.join(SYSCTL_DIR, name)
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(value)
        except OSError as e:
            what = f"set {name.replace('/', '.')} = {value}"
            raise KernelError(what, e.errno or errno.EIO) from None

    def nft_apply(self, commands: list[dict[str, Any]], what: str) -> None:
        self.writes += 1
        nft.apply(commands, what)

    # ---- namespaces ----------------------------------------------------------

    def netns_add(self, name: str, lo_alias: str) -> None:
        self.writes += 1
        what = f"create netns {name}"
        _prepare_netns_dir(what)
        self._forget(name)
        self._indexes.pop(name, None)
        try:
            with files.directory(NETNS_DIR) as dir_fd:
                fd, made = _netns_file(dir_fd, name, what)
                try:
                    sock = self._mount_netns(lo_alias, fd, what)
                except KernelError:
                    if made:
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=dir_fd)
                    raise
                finally:
                    os.close(fd)
        except files.InTheWay as e:
            raise KernelError(f"{what}: {e}", e.errno or errno.ELOOP) from None
        except OSError as e:
            raise KernelError(what, e.errno or errno.EIO) from None
        while len(self._sockets) >= self._budget:
            self._forget(next(iter(self._sockets)))
        self._sockets[name] = sock
        self._indexes[name] = {LOOPBACK: LOOPBACK_IFINDEX}

    def _mount_netns(self, lo_alias: str, fd: int, what: str) -> Rtnl:
        """A new namespace, made by this thread, which opens there the socket
        it keeps using for it (no second entry into the namespace), marks the
        loopback, bind-mounts the namespace on the file fd (through
        /proc/self/fd, so the mount lands on that very file even if a link took
        its name meanwhile) and returns to its own namespace."""
        target = f"/proc/self/fd/{fd}".encode()
        own = os.open(OWN_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        sock: Rtnl | None = None
        try:
            _check(_libc.unshare(CLONE_NEWNET), what)
            try:
                # The loopback is marked before the bind mount makes the
                # namespace visible, so it is never seen unmarked.
                sock = Rtnl()
                made = sock
                self._call(what, lambda: made.link_set(LOOPBACK_IFINDEX, alias=lo_alias,
                                                       up=True))
                _check(_libc.mount(OWN_NETNS.encode(), target, b"none", MS_BIND, None), what)
            finally:
                _setns(own, "return to own namespace")
        except OSError as e:  # no descriptor left for the socket
            if sock is not None:
                sock.close()
            raise KernelError(what, e.errno or errno.EIO) from None
        except KernelError:
            if sock is not None:
                sock.close()
            raise
        finally:
            os.close(own)
        return sock

    def netns_del(self, name: str) -> None:
        """Unmount and remove /run/netns/<name>: the namespace, or the empty
        file an interrupted create left. Anything else there (a link, which is
        not followed) is not netapply's: EEXIST."""
        self.writes += 1
        self._forget(name)
        self._indexes.pop(name, None)
        what = f"delete netns {name}"
        try:
            with files.directory(NETNS_DIR) as dir_fd:
                found = files.entry_type(dir_fd, name)
                if found is None:
                    return
                if found not in (FileType.NAMESPACE, FileType.EMPTY):
                    described = files.describe(_ns_path(name), found, self.read_link(
                        _ns_path(name)))
                    raise KernelError(f"{what}: {described}", errno.EEXIST)
                _libc.umount2(_ns_path(name).encode(), MNT_DETACH | UMOUNT_NOFOLLOW)
                os.unlink(name, dir_fd=dir_fd)
        except (FileNotFoundError, files.InTheWay):
            pass  # no /run/netns (reached without a link): no namespace of that name
        except OSError as e:
            raise KernelError(what, e.errno or errno.EIO) from None

    # ---- links ---------------------------------------------------------------

    def bridge_add(self, ifname: str, mac: str) -> None:
        index = self._write(f"create bridge {ifname}",
                            lambda: self._sock("").bridge_add(ifname, mac))
        self._learn("", ifname, index)

    def veth_add(
        self, host_ifname: str, host_mtu: int, peer_ns: str, peer_ifname: str, peer_mac: str,
        peer_mtu: int,
    ) -> None:
        what = f"create veth {host_ifname} <-> {peer_ifname} in {_ns_label(peer_ns)}"
        with self._ns_fd(peer_ns, what) as fd:
            index, peer = self._write(
                what,
                lambda: self._sock("").veth_add(
                    host_ifname, host_mtu, peer_ifname, peer_mac, peer_mtu, fd
                ),
            )
        self._learn("", host_ifname, index)
        if peer_ns:  # the peer's index is that in its own namespace (IFLA_LINK_NETNSID)
            self._learn(peer_ns, peer_ifname, peer)

    @contextmanager
    def _ns_fd(self, ns: str, what: str) -> Iterator[int]:
        try:
            fd = _open_ns(ns)
        except OSError as e:
            raise KernelError(what, e.errno or errno.ENOENT) from None
        try:
            yield fd
        finally:
            os.close(fd)

    def link_set(
        self,
        ns: str,
        ifname: str,
        *,
        new_name: str | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        up: bool | None = None,
        master: str | None = None,
        nomaster: bool = False,
        alias: str | None = None,
        isolated: bool | None = None,
        hairpin: bool | None = None,
    ) -> None:
        what = f"set {ifname} in {_ns_label(ns)}"
        names = (ifname,) if master is None else (ifname, master)
        self._fresh(ns, names, lambda: self._link_set(
            ns, ifname, what, new_name=new_name, mtu=mtu, mac=mac, up=up, master=master,
            nomaster=nomaster, alias=alias, isolated=isolated, hairpin=hairpin))

    def _link_set(
        self, ns: str, ifname: str, what: str, *, new_name: str | None, mtu: int | None,
        mac: str | None, up: bool | None, master: str | None, nomaster: bool,
        alias: str | None, isolated: bool | None, hairpin: bool | None,
    ) -> None:
        index = self._index(ns, ifname)
        attrs: dict[str, Any] = {}
        if new_name is not None:
            attrs["ifname"] = new_name
        if mtu is not None:
            attrs["mtu"] = mtu
        if mac is not None:
            attrs["mac"] = mac
        if master is not None:
            attrs["master"] = self._index(ns, master)
        elif nomaster:
            attrs["master"] = 0
        if alias is not None:
            attrs["alias"] = alias
        if isolated is not None:
            attrs["isolated"] = isolated
        if hairpin is not None:
            attrs["hairpin"] = hairpin
        if up is not None:
            attrs["up"] = up
        if not attrs:
            return
        sock = self._sock(ns)
        try:
            self._write(what, lambda: sock.link_set(index, **attrs))
        except KernelError as e:
            if e.errno != errno.EBUSY or "ifname" not in attrs:
                raise
            # Kernels before 6.2 rename only links that are down.
            was_up = next(x.up for x in self._call(what, sock.links) if x.index == index)
            self._write(what, lambda: sock.link_set(index, up=False))
            attrs.setdefault("up", was_up)
            self._write(what, lambda: sock.link_set(index, **attrs))
        if new_name is not None and new_name != ifname:
            self._learn(ns, ifname, None)
            self._learn(ns, new_name, index)

    def link_addr_gen(self, ns: str, ifname: str, enabled: bool,
                      drop_link_local: bool = False) -> None:
        what = (f"{'enable' if enabled else 'disable'} IPv6 address generation on {ifname} "
                f"in {_ns_label(ns)}")
        self._on(ns, ifname, what, lambda sock, index: sock.addr_gen_mode(index, enabled))
        if enabled or not drop_link_local:
            return
        sock, index = self._sock(ns), self._index(ns, ifname)
        for found in self._call(what, sock.addresses):
            if found.index == index and ipaddress.ip_interface(found.cidr).ip.is_link_local:
                try:
                    self._write(what, functools.partial(sock.addr, False, index, found.cidr))
                except KernelError as e:
                    if e.errno not in GONE:  # gone meanwhile (the link went down)
                        raise

    def sublink_add(
        self, kind: str, parent: str, mode: str, ns: str, ifname: str, mac: str | None,
        mtu: int,
    ) -> None:
        what = f"create {kind} {ifname} on {parent} in {_ns_label(ns)}"

        def run() -> None:
            index = self._index("", parent)
            with self._ns_fd(ns, what) as fd:
                # Without an echo: that of a link made in another namespace
                # goes to whichever socket there has this socket's port id.
                self._write(what, lambda: self._sock("").sublink_add(
                    kind, index, mode, ifname, mac, mtu, fd))

        self._fresh("", (parent,), run)

    def vxlan_add(self, ifname: str, vni: int, local: str, port: int, mtu: int) -> None:
        index = self._write(
            f"create vxlan {ifname} (vni {vni}, local {local}, port {port})",
            lambda: self._sock("").vxlan_add(ifname, vni, local, port, mtu),
        )
        self._learn("", ifname, index)

    def fdb_add(self, ifname: str, mac: str, dst: str | None) -> None:
        self._fdb(True, ifname, mac, dst)

    def fdb_del(self, ifname: str, mac: str, dst: str | None) -> None:
        self._fdb(False, ifname, mac, dst)

    def _fdb(self, add: bool, ifname: str, mac: str, dst: str | None) -> None:
        where = f"{ifname} to {dst}" if dst is not None else f"the bridge of {ifname}"
        what = f"{'add' if add else 'delete'} forwarding entry {mac} on {where}"
        self._on("", ifname, what, lambda sock, index: sock.fdb_entry(add, index, mac, dst))

    def neigh_add(self, ifname: str, ip: str, mac: str, replace: bool = False) -> None:
        op = "replace" if replace else "add"
        self._on("", ifname, f"{op} neighbour {ip} {mac} on {ifname}",
                 lambda sock, index: sock.neigh(op, index, ip, mac))

    def neigh_del(self, ifname: str, ip: str) -> None:
        self._on("", ifname, f"delete neighbour {ip} on {ifname}",
                 lambda sock, index: sock.neigh("delete", index, ip))

    def link_del(self, ns: str, ifname: str) -> None:
        what = f"delete {ifname} in {_ns_label(ns)}"
        try:
            self._on(ns, ifname, what, lambda sock, index: sock.link_del(index))
        finally:
            self._learn(ns, ifname, None)  # gone, or unknown: looked up again

    # ---- addresses and routes --------------------------------------------------

    def addr_add(self, ns: str, ifname: str, cidr: str) -> None:
        # No duplicate address detection: the spec already rules out duplicates,
        # and DAD would leave a new IPv6 address unusable for a second or more.
        nodad = ":" in cidr
        self._on(ns, ifname, f"add address {cidr} to {ifname} in {_ns_label(ns)}",
                 lambda sock, index: sock.addr(True, index, cidr, nodad=nodad))

    def addr_del(self, ns: str, ifname: str, cidr: str) -> None:
        self._on(ns, ifname, f"delete address {cidr} from {ifname} in {_ns_label(ns)}",
                 lambda sock, index: sock.addr(False, index, cidr))

    def route_add(self, ns: str, dst: str, via: str, ifname: str, replace: bool = False) -> None:
        op = "replace" if replace else "add"
        self._on(ns, ifname, f"{op} route {dst} via {via} in {_ns_label(ns)}",
                 lambda sock, index: sock.route(op, dst, RTPROT_NETAPPLY, via=via, oif=index))

    def route_del(self, ns: str, dst: str) -> None:
        self._write(
            f"delete route {dst} in {_ns_label(ns)}",
            lambda: self._sock(ns).route("delete", dst, RTPROT_NETAPPLY),
        )

    # ---- files -----------------------------------------------------------------

    def write_file(self, path: str, content: str) -> None:
        data = content.encode()

        def make(dir_fd: int, tmp: str) -> None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
            try:
                os.fchmod(fd, 0o644)  # whatever the umask
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
            finally:
                os.close(fd)

        self._install(path, f"write {path}", make)

    def rewrite_file(self, path: str, content: str) -> None:
        self.writes += 1
        self.file_writes += 1
        data = content.encode()
        try:
            # O_NONBLOCK: a FIFO put there must not hang the apply.
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise KernelError(f"rewrite {path}", e.errno or errno.EIO) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise KernelError(f"rewrite {path}: not a regular file", errno.EINVAL)
            os.ftruncate(fd, 0)
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], written)
        except OSError as e:
            raise KernelError(f"rewrite {path}", e.errno or errno.EIO) from None
        finally:
            os.close(fd)

    def forget_flows(self, protocol: str, port: int) -> None:
        conntrack.forget(protocol, port)

    def announce(self, ns: str, ifname: str) -> None:
        try:
            link = next((k for k in self.links(ns) if k.ifname == ifname), None)
            if link is None or not link.up:
                return
            addresses = [a for a in self.addresses(ns) if a.index == link.index]

            def send_all() -> None:
                for a in addresses:
                    ip = ipaddress.ip_interface(a.cidr).ip
                    if not ip.is_link_local:
                        announce.send(ifname, link.index, link.mac, ip, self._closer)

            in_namespace(ns, send_all)
        except (OSError, KernelError):
            pass  # an announcement only speeds up what neighbours learn anyway

    def write_link(self, path: str, target: str) -> None:
        def make(dir_fd: int, tmp: str) -> None:
            os.symlink(target, tmp, dir_fd=dir_fd)

        self._install(path, f"link {path}", make)

    def _install(self, path: str, what: str, make: Callable[[int, str], None]) -> None:
        """Make the new file (or link) beside path, then replace path in one rename,
        so that a reader never sees a half-written file. Directories on the way
        are made (0755) and reached without following a link."""
        self.writes += 1
        self.file_writes += 1
        parent, name = os.path.split(path)
        tmp = name + TMP_SUFFIX
        try:
            with files.directory(parent, create=0o755) as dir_fd:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                make(dir_fd, tmp)
                files.rename(dir_fd, tmp, name)
        except files.InTheWay as e:
            raise KernelError(f"{what}: {e}", e.errno or errno.ELOOP) from None
        except OSError as e:
            raise KernelError(what, e.errno or errno.EIO) from None

    def remove_file(self, path: str) -> None:
        """Remove the file or link at path (never a link on the way); then its
        directory under /etc/netns if that is left empty."""
        self.writes += 1
        self.file_writes += 1
        parent, name = os.path.split(path)
        try:
            with files.directory(parent) as dir_fd, contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except files.InTheWay as e:
            raise KernelError(f"remove {path}: {e}", e.errno or errno.ELOOP) from None
        except OSError as e:
            raise KernelError(f"remove {path}", e.errno or errno.EIO) from None
        if os.path.dirname(parent) == ETC_NETNS_DIR:
            self._rmdir(parent)  # only when empty: other files there are not ours

    def remove_dir(self, path: str) -> None:
        self.writes += 1
        self.file_writes += 1
        self._rmdir(path)

    @staticmethod
    def _rmdir(path: str) -> None:
        """Remove the directory at path if it is empty (a link is not followed)."""
        parent, name = os.path.split(path)
        try:
            with files.directory(parent) as dir_fd:
                if files.entry_type(dir_fd, name) == FileType.DIRECTORY:
                    os.rmdir(name, dir_fd=dir_fd)
        except files.InTheWay:
            pass  # not reached without a link: not netapply's
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise KernelError(f"remove {path}", e.errno or errno.EIO) from None


def in_namespace(ns: str, make: Callable[[], T]) -> T:
    """make() run inside namespace ns ("" is this thread's own): sockets it
    opens stay bound to ns. Only the calling thread enters ns, and it is back
    in its own namespace when this returns."""
    if not ns:
        return make()
    try:
        target = _open_ns(ns)
    except OSError as e:
        raise KernelError(f"open {_ns_label(ns)}", e.errno or errno.ENOENT) from None
    own = os.open(OWN_NETNS, os.O_RDONLY)
    try:
        _setns(target, f"enter {_ns_label(ns)}")
        try:
            return make()
        finally:
            _setns(own, "return to own namespace")
    finally:
        os.close(target)
        os.close(own)


def _module_alias(alias: str) -> bool:
    """Whether modules.alias of the running kernel names a module for alias;
    False without one (a kernel without modules, or none installed)."""
    path = os.path.join(MODULES_DIR, os.uname().release, "modules.alias")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return any(line.split()[1:2] == [alias] for line in f if line.startswith("alias "))
    except OSError:
        return False
def _open_ns(ns: str) -> int:
    """A descriptor of namespace ns: a name in /run/netns is opened without
    following a link (what netapply made there is never one); a path only once
    it is known to be a namespace file (_open_ns_path)."""
    if ns.startswith("/"):
        return _open_ns_path(ns)
    with files.directory(NETNS_DIR) as dir_fd:
        return os.open(ns, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                       dir_fd=dir_fd)


def _named_ns_type(dir_fd: int, name: str) -> int | None:
    """The CLONE_NEW* type of the namespace mounted on name in dir_fd; None when
    there is none (a link, which is not followed, a plain file, a FIFO)."""
    if files.entry_type(dir_fd, name) != FileType.NAMESPACE:
        return None
    try:
        fd = os.open(name, files.READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    return _closing_ns_type(fd)


def _closing_ns_type(fd: int) -> int | None:
    """The CLONE_NEW* type of the namespace open at fd (None: no namespace);
    fd is closed."""
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None
    finally:
        os.close(fd)


def _netns_file(dir_fd: int, name: str, what: str) -> tuple[int, bool]:
    """The file to mount a new namespace on, opened, and whether it was made
    now. An empty file is what an interrupted `ip netns add` (or netapply)
    leaves behind: it is mounted over. Anything else there is EEXIST."""
    found = files.entry_type(dir_fd, name)
    if found not in (None, FileType.EMPTY):
        target = files.read_link(_ns_path(name)) if found == FileType.LINK else None
        raise KernelError(f"{what}: {files.describe(_ns_path(name), found, target)}",
                          errno.EEXIST)
    flags = files.READ_FLAGS | (os.O_CREAT | os.O_EXCL if found is None else 0)
    fd = os.open(name, flags, 0o444, dir_fd=dir_fd)
    st = os.fstat(fd)
    if files.type_of(st) != FileType.EMPTY:  # changed since it was looked at
        os.close(fd)
        raise KernelError(f"{what}: {_ns_path(name)} changed meanwhile", errno.EEXIST)
    return fd, found is None


def ns_type(path: str) -> int | None:
    """The CLONE_NEW* type of the namespace file at path, or None if it is none."""
    try:
        fd = _open_ns_path(path)
    except OSError:
        return None
    return _closing_ns_type(fd)


def inspect_ns(ns: str) -> NsFile:
    """What ns (an absolute path, or a name in /run/netns) is: a network
    namespace and its identity, or why not. Nothing but a namespace file is
    ever opened (_open_ns), so a FIFO, a socket or a device there cannot block
    or be acted on."""
    try:
        fd = _open_ns(ns)
    except _NotNamespace as e:
        return NsFile(problem=f"is {e.kind}, not a network namespace")
    except (FileNotFoundError, NotADirectoryError):
        return NsFile(problem="does not exist")
    except OSError as e:
        return NsFile(problem=f"cannot be opened ({os.strerror(e.errno or errno.EIO)})")
    try:
        found = os.fstat(fd)
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return NsFile(problem="is not a network namespace")
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        name = NS_TYPES.get(kind, "another kind of")
        return NsFile(problem=f"is a {name} namespace, not a network namespace")
    return NsFile(identity=(found.st_dev, found.st_ino))


class _NotNamespace(OSError):
    """The file exists but is no namespace; `kind` says what it is instead."""

    def __init__(self, kind: str):
        super().__init__(errno.EINVAL, f"{kind}, not a namespace")
        self.kind = kind


def _open_ns_path(path: str) -> int:
    """A descriptor of the namespace file at path (links followed: /proc/PID/ns/net
    is one). The file is first opened with O_PATH, which runs no driver code and
    cannot block (open(2)), and its type is checked on that descriptor: only a
    namespace file is then opened for real, through /proc/self/fd, so what was
    checked is what is opened. Raises _NotNamespace for any other file, OSError
    when path cannot be reached."""
    probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        found = files.type_of(os.fstat(probe))
        if found != FileType.NAMESPACE:
            raise _NotNamespace(found.value)
        return os.open(f"/proc/self/fd/{probe}", NS_OPEN_FLAGS)
    finally:
        os.close(probe)


def _prepare_netns_dir(what: str) -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so that
    namespaces created here are visible from other mount namespaces."""
    try:
        os.close(files.open_dir(NETNS_DIR, create=0o755))
    except files.InTheWay as e:
        raise KernelError(f"{what}: {e}", e.errno or errno.ELOOP) from None
    except OSError as e:
        raise KernelError(what, e.errno or errno.EIO) from None
    path = NETNS_DIR.encode()
    if _libc.mount(b"none", path, None, MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        raise KernelError(what, ctypes.get_errno())
    _check(_libc.mount(path, path, b"none", MS_BIND | MS_REC, None), what)
    _check(_libc.mount(b"none", path, None, MS_SHARED | MS_REC, None), what)


__all__ = ["GONE", "NetlinkKernel", "in_namespace"]
