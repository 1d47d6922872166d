"""The real kernel, over rtnetlink (drivers/rtnl.py).

One netlink socket per namespace, opened after entering that namespace and kept
for the whole run (pyroute2's own netns support forks a helper per socket).
Namespaces are created in-process the way iproute2 does: a thread unshares its
network namespace and bind-mounts it under /run/netns.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from reconciler.drivers import nft
from reconciler.drivers.kernel import (
    ETC_NETNS_DIR,
    GONE,
    NETNS_DIR,
    AddrInfo,
    FdbInfo,
    LinkInfo,
    NeighInfo,
    NsFile,
    RouteInfo,
)
from reconciler.drivers.rtnl import NetlinkError, Rtnl
from reconciler.errors import KernelError
from reconciler.resources import RTPROT_NETAPPLY

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file (Linux 4.11)
OWN_NETNS = "/proc/thread-self/ns/net"
# Namespace files are opened only once known to be nsfs inodes (see _open_ns);
# these flags are a second guard: no blocking, no controlling terminal.
NS_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
NS_TYPES = {  # CLONE_NEW* -> name, as namespaces(7) calls them
    0x00020000: "mount", 0x02000000: "cgroup", 0x04000000: "UTS", 0x08000000: "IPC",
    0x10000000: "user", 0x20000000: "PID", 0x40000000: "network", 0x00000080: "time",
}
FILE_KINDS = (  # for "is a FIFO, not a network namespace"
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)
RT_TABLE_MAIN = 254
SYSCTL_DIR = "/proc/sys"
PROBE_IFNAME = "netapply-probe"

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


class NetlinkKernel:
    """Kernel interface on the running kernel (see drivers/kernel.py)."""

    def __init__(self) -> None:
        self.writes = 0
        self.file_writes = 0  # of `writes`, those to managed files (hosts)
        self._sockets: dict[str, Rtnl] = {}

    # ---- sockets -------------------------------------------------------------

    def _sock(self, ns: str) -> Rtnl:
        sock = self._sockets.get(ns)
        if sock is None:
            sock = self._open(ns)
            self._sockets[ns] = sock
        return sock

    def _open(self, ns: str) -> Rtnl:
        return in_namespace(ns, Rtnl)

    def _forget(self, ns: str) -> None:
        sock = self._sockets.pop(ns, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for ns in list(self._sockets):
            self._forget(ns)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except NetlinkError as e:
            raise KernelError(what, e.errno or errno.EIO) from None
        except OSError as e:
            raise KernelError(what, e.errno or errno.EIO) from None

    def _write(self, what: str, fn: Callable[[], Any]) -> None:
        self.writes += 1
        self._call(what, fn)

    def _index(self, ns: str, ifname: str) -> int:
        return self._call(
            f"look up {ifname} in {_ns_label(ns)}", lambda: self._sock(ns).index(ifname)
        )

    # ---- reads ---------------------------------------------------------------

    def netns_names(self) -> list[str]:
        """Named namespaces; entries of /run/netns that are no namespace (left by
        an interrupted create) are not listed."""
        try:
            names = sorted(os.listdir(NETNS_DIR))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise KernelError(f"list {NETNS_DIR}", e.errno or errno.EIO) from None
        return [n for n in names if ns_type(os.path.join(NETNS_DIR, n)) == CLONE_NEWNET]

    def ns_exists(self, ns: str) -> bool:
        return not ns or ns_type(_ns_path(ns)) == CLONE_NEWNET

    def ns_file(self, ns: str) -> NsFile:
        return inspect_ns(_ns_path(ns) if ns else OWN_NETNS)

    def links(self, ns: str) -> list[LinkInfo]:
        return self._call(f"list links in {_ns_label(ns)}", lambda: self._sock(ns).links())

    def addresses(self, ns: str) -> list[AddrInfo]:
        return self._call(
            f"list addresses in {_ns_label(ns)}", lambda: self._sock(ns).addresses()
        )

    def routes(self, ns: str) -> list[RouteInfo]:
        found = self._call(f"list routes in {_ns_label(ns)}", lambda: self._sock(ns).routes())
        return [
            RouteInfo(r.dst, r.via, r.oif, r.proto) for r in found if r.table == RT_TABLE_MAIN
        ]

    def read_file(self, path: str) -> str | None:
        """The text of a file (bytes that are not UTF-8 replaced), None if absent."""
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise KernelError(f"read {path}", e.errno or errno.EIO) from None

    def read_link(self, path: str) -> str | None:
        try:
            return os.readlink(path)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return None  # absent, or no link (EINVAL)

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise KernelError(f"list {path}", e.errno or errno.EIO) from None

    def sysctl_get(self, name: str) -> str | None:
        text = self.read_file(os.path.join(SYSCTL_DIR, name))
        return None if text is None else text.strip()

    def nft_ruleset(self) -> list[dict[str, Any]]:
        return nft.ruleset()

    def fdb(self) -> list[FdbInfo]:
        return self._call("list forwarding entries", lambda: self._sock("").fdb())

    def neighbours(self) -> list[NeighInfo]:
        return self._call("list neighbour entries", lambda: self._sock("").neighbours())

    def link_kind_supported(self, kind: str) -> bool:
        return self._call(
            f"find out whether the kernel supports {kind} links",
            lambda: self._sock("").kind_supported(kind, PROBE_IFNAME),
        )

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
        path = _ns_path(name)
        if ns_type(path) is not None:
            raise KernelError(what, errno.EEXIST)
        try:
            # An existing file that is no namespace is what an interrupted
            # `ip netns add` (or netapply) leaves behind: mount over it. Only
            # over a regular file: a FIFO or device there is someone else's
            # (and opening it must not block).
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC, 0o444)
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            os.close(fd)
        except OSError as e:
            raise KernelError(what, e.errno or errno.EIO) from None
        if not regular:
            raise KernelError(what, errno.EEXIST)
        failure: list[KernelError] = []

        def run() -> None:
            # unshare() changes only this thread's namespace. The loopback is
            # marked before the bind mount makes the namespace visible (and keeps
            # it alive after the thread ends), so it is never seen unmarked.
            try:
                _check(_libc.unshare(CLONE_NEWNET), what)
                with Rtnl() as sock:
                    index = self._call(what, lambda: sock.index("lo"))
                    self._call(what, lambda: sock.link_set(index, alias=lo_alias, up=True))
                src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
                _check(_libc.mount(src, path.encode(), b"none", MS_BIND, None), what)
            except KernelError as e:
                failure.append(e)

        thread = threading.Thread(target=run, name=f"netns-{name}")
        thread.start()
        thread.join()
        if failure:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise failure[0]

    def netns_del(self, name: str) -> None:
        self.writes += 1
        self._forget(name)
        path = _ns_path(name)
        _libc.umount2(path.encode(), MNT_DETACH)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise KernelError(f"delete netns {name}", e.errno or errno.EIO) from None

    # ---- links ---------------------------------------------------------------

    def bridge_add(self, ifname: str, mac: str) -> None:
        self._write(
            f"create bridge {ifname}",
            lambda: self._sock("").bridge_add(ifname, mac),
        )

    def veth_add(
        self, host_ifname: str, host_mtu: int, peer_ns: str, peer_ifname: str, peer_mac: str,
        peer_mtu: int,
    ) -> None:
        what = f"create veth {host_ifname} <-> {peer_ifname} in {_ns_label(peer_ns)}"
        with self._ns_fd(peer_ns, what) as fd:
            self._write(
                what,
                lambda: self._sock("").veth_add(
                    host_ifname, host_mtu, peer_ifname, peer_mac, peer_mtu, fd
                ),
            )

    @contextmanager
    def _ns_fd(self, ns: str, what: str) -> Iterator[int]:
        try:
            fd = _open_ns(_ns_path(ns))
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

    def sublink_add(
        self, kind: str, parent: str, mode: str, ns: str, ifname: str, mac: str | None,
        mtu: int,
    ) -> None:
        what = f"create {kind} {ifname} on {parent} in {_ns_label(ns)}"
        index = self._index("", parent)
        with self._ns_fd(ns, what) as fd:
            self._write(
                what, lambda: self._sock("").sublink_add(kind, index, mode, ifname, mac, mtu, fd)
            )

    def vxlan_add(self, ifname: str, vni: int, local: str, port: int, mtu: int) -> None:
        self._write(
            f"create vxlan {ifname} (vni {vni}, local {local}, port {port})",
            lambda: self._sock("").vxlan_add(ifname, vni, local, port, mtu),
        )

    def fdb_add(self, ifname: str, mac: str, dst: str | None) -> None:
        self._fdb(True, ifname, mac, dst)

    def fdb_del(self, ifname: str, mac: str, dst: str | None) -> None:
        self._fdb(False, ifname, mac, dst)

    def _fdb(self, add: bool, ifname: str, mac: str, dst: str | None) -> None:
        where = f"{ifname} to {dst}" if dst is not None else f"the bridge of {ifname}"
        what = f"{'add' if add else 'delete'} forwarding entry {mac} on {where}"
        index = self._index("", ifname)
        self._write(what, lambda: self._sock("").fdb_entry(add, index, mac, dst))

    def neigh_add(self, ifname: str, ip: str, mac: str, replace: bool = False) -> None:
        index = self._index("", ifname)
        op = "replace" if replace else "add"
        self._write(f"{op} neighbour {ip} {mac} on {ifname}",
                    lambda: self._sock("").neigh(op, index, ip, mac))

    def neigh_del(self, ifname: str, ip: str) -> None:
        index = self._index("", ifname)
        self._write(f"delete neighbour {ip} on {ifname}",
                    lambda: self._sock("").neigh("delete", index, ip))

    def link_del(self, ns: str, ifname: str) -> None:
        what = f"delete {ifname} in {_ns_label(ns)}"
        index = self._index(ns, ifname)
        self._write(what, lambda: self._sock(ns).link_del(index))

    # ---- addresses and routes --------------------------------------------------

    def addr_add(self, ns: str, ifname: str, cidr: str) -> None:
        index = self._index(ns, ifname)
        # No duplicate address detection: the spec already rules out duplicates,
        # and DAD would leave a new IPv6 address unusable for a second or more.
        nodad = ":" in cidr
        self._write(
            f"add address {cidr} to {ifname} in {_ns_label(ns)}",
            lambda: self._sock(ns).addr(True, index, cidr, nodad=nodad),
        )

    def addr_del(self, ns: str, ifname: str, cidr: str) -> None:
        index = self._index(ns, ifname)
        self._write(
            f"delete address {cidr} from {ifname} in {_ns_label(ns)}",
            lambda: self._sock(ns).addr(False, index, cidr),
        )

    def route_add(self, ns: str, dst: str, via: str, ifname: str, replace: bool = False) -> None:
        index = self._index(ns, ifname)
        op = "replace" if replace else "add"
        self._write(
            f"{op} route {dst} via {via} in {_ns_label(ns)}",
            lambda: self._sock(ns).route(op, dst, RTPROT_NETAPPLY, via=via, oif=index),
        )

    def route_del(self, ns: str, dst: str) -> None:
        self._write(
            f"delete route {dst} in {_ns_label(ns)}",
            lambda: self._sock(ns).route("delete", dst, RTPROT_NETAPPLY),
        )

    # ---- files -----------------------------------------------------------------

    def write_file(self, path: str, content: str) -> None:
        def make(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(content)
            os.chmod(tmp, 0o644)

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

    def write_link(self, path: str, target: str) -> None:
        self._install(path, f"link {path}", lambda tmp: os.symlink(target, tmp))

    def _install(self, path: str, what: str, make: Callable[[str], None]) -> None:
        """Make the new file (or link) beside path, then replace path in one rename,
        so that a reader never sees a half-written file."""
        self.writes += 1
        self.file_writes += 1
        tmp = f"{path}.netapply-tmp"
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            make(tmp)
            os.replace(tmp, path)
        except OSError as e:
            raise KernelError(what, e.errno or errno.EIO) from None

    def remove_file(self, path: str) -> None:
        self.writes += 1
        self.file_writes += 1
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise KernelError(f"remove {path}", e.errno or errno.EIO) from None
        parent = os.path.dirname(path)
        if os.path.dirname(parent) == ETC_NETNS_DIR:
            with contextlib.suppress(OSError):
                os.rmdir(parent)  # only when empty: other files there are not ours


def in_namespace(ns: str, make: Callable[[], T]) -> T:
    """make() run inside namespace ns ("" is this thread's own): sockets it
    opens stay bound to ns. Only the calling thread enters ns, and it is back
    in its own namespace when this returns."""
    if not ns:
        return make()
    try:
        target = _open_ns(_ns_path(ns))
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


def ns_type(path: str) -> int | None:
    """The CLONE_NEW* type of the namespace file at path, or None if it is none."""
    try:
        fd = _open_ns(path)
    except OSError:
        return None
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None
    finally:
        os.close(fd)


def inspect_ns(path: str) -> NsFile:
    """What the file at path is: a network namespace and its identity, or why
    not. Nothing but an nsfs inode is ever opened (_open_ns), so a FIFO, a
    socket or a device there cannot block or be acted on."""
    try:
        fd = _open_ns(path)
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


def _open_ns(path: str) -> int:
    """A descriptor of the namespace file at path. The file is first opened with
    O_PATH, which runs no driver code and cannot block (open(2)), and its type
    is checked on that descriptor: only an nsfs inode is then opened for real,
    through /proc/self/fd, so what was checked is what is opened. Raises
    _NotNamespace for any other file, OSError when path cannot be reached."""
    probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        found = os.fstat(probe)
        if not stat.S_ISREG(found.st_mode):
            kind = next((k for test, k in FILE_KINDS if test(found.st_mode)), "a special file")
            raise _NotNamespace(kind)
        if found.st_dev != _nsfs_dev():
            raise _NotNamespace("a regular file")
        return os.open(f"/proc/self/fd/{probe}", NS_OPEN_FLAGS)
    finally:
        os.close(probe)


@functools.cache
def _nsfs_dev() -> int:
    """The device of nsfs, the kernel's one file system of namespace inodes."""
    return os.stat(OWN_NETNS).st_dev


def _prepare_netns_dir(what: str) -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so that
    namespaces created here are visible from other mount namespaces."""
    try:
        os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
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
