"""Paths netapply writes as root, resolved without following a link.

/run/netns, /etc/netns and /run/netapply are netapply's to write in, but
anyone with root may have put a symbolic link there (to /tmp, to another
directory, dangling). Following it would write, chmod or delete outside those
directories. So every path is walked from "/" one component at a time with
O_NOFOLLOW | O_DIRECTORY (openat(2)), and the last step is made relative to
the directory's descriptor (mkdirat, openat, unlinkat, renameat, symlinkat,
readlinkat, fstatat with AT_SYMLINK_NOFOLLOW). A link, or anything else that
is not a directory, where a directory is needed raises InTheWay; it is a
foreign object, which the observer reports at plan time.

A file that is no regular file is never opened for reading or writing (a FIFO
would block the open), and what is opened is opened with O_NONBLOCK.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from reconciler.drivers.kernel import FileType

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class InTheWay(OSError):
    """A component of a path is not the directory netapply needs there: a
    symbolic link (never followed) or another kind of file. errno is ELOOP for
    a link, ENOTDIR otherwise."""

    def __init__(self, path: str, found: FileType, target: str | None = None):
        self.path = path
        self.found = found
        self.target = target
        err = errno.ELOOP if found == FileType.LINK else errno.ENOTDIR
        super().__init__(err, describe(path, found, target), path)

    def __str__(self) -> str:
        return self.strerror or ""


def describe(path: str, found: FileType, target: str | None = None) -> str:
    """"/etc/netns/web is a symbolic link to /tmp", "/run/netns/x is a FIFO"."""
    text = f"{path} is {found.value}"
    return f"{text} to {target}" if found == FileType.LINK and target is not None else text


def _nsfs_device() -> int:
    """The device number of nsfs, the file system of namespace files: a
    namespace bind-mounted on a file shows this device (namespaces(7))."""
    return os.stat("/proc/self/ns/net").st_dev


_NSFS: list[int] = []


def type_of(st: os.stat_result) -> FileType:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return FileType.DIRECTORY
    if stat.S_ISLNK(mode):
        return FileType.LINK
    if stat.S_ISREG(mode):
        if not _NSFS:
            _NSFS.append(_nsfs_device())
        if st.st_dev == _NSFS[0]:
            return FileType.NAMESPACE
        return FileType.FILE if st.st_size else FileType.EMPTY
    if stat.S_ISFIFO(mode):
        return FileType.FIFO
    if stat.S_ISSOCK(mode):
        return FileType.SOCKET
    return FileType.DEVICE


def entry_type(dir_fd: int, name: str) -> FileType | None:
    """The type of name in the directory dir_fd, links not followed; None if absent."""
    try:
        return type_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
    except FileNotFoundError:
        return None


def _link_target(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def open_dir(path: str, create: int | None = None) -> int:
    """A descriptor of the directory at the absolute path, reached without
    following a link. create: the mode to make missing components with
    (else FileNotFoundError). InTheWay when a component is no directory."""
    if not os.path.isabs(path):
        raise ValueError(f"not an absolute path: {path}")
    fd = os.open("/", DIR_FLAGS)
    walked = ""
    try:
        for part in [p for p in path.split("/") if p]:
            walked += "/" + part
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile: look again
                    os.mkdir(part, create, dir_fd=fd)
                nxt = _open_existing(fd, part, walked)
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise _in_the_way(fd, part, walked) from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_existing(dir_fd: int, part: str, walked: str) -> int:
    try:
        return os.open(part, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        raise _in_the_way(dir_fd, part, walked) from None


def _in_the_way(dir_fd: int, part: str, walked: str) -> OSError:
    found = entry_type(dir_fd, part)
    if found is None:  # gone meanwhile
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), walked)
    return InTheWay(walked, found, _link_target(dir_fd, part))


@contextlib.contextmanager
def directory(path: str, create: int | None = None) -> Iterator[int]:
    """open_dir as a context: the descriptor is closed at the end."""
    fd = open_dir(path, create)
    try:
        yield fd
    finally:
        os.close(fd)


def file_type(path: str) -> FileType | None:
    """What is at path, no link followed on the way or at the end; None when
    it is absent or a component on the way is not a directory."""
    parent, name = os.path.split(path)
    if not name:
        return FileType.DIRECTORY  # "/"
    try:
        with directory(parent) as fd:
            return entry_type(fd, name)
    except (FileNotFoundError, InTheWay):
        return None


def entries(path: str) -> dict[str, FileType]:
    """The entries of the directory at path with their types (none is
    opened); {} when it is absent or not a directory reached without links."""
    try:
        with directory(path) as fd:
            found: dict[str, FileType] = {}
            for entry in os.scandir(fd):
                # The directory's own record of the type (d_type) where it says
                # enough; a regular file is looked at (its size, or a namespace
                # mounted on it), as is anything the file system did not type.
                if entry.is_symlink():
                    found[entry.name] = FileType.LINK
                elif entry.is_dir(follow_symlinks=False):
                    found[entry.name] = FileType.DIRECTORY
                else:
                    kind = entry_type(fd, entry.name)
                    if kind is not None:
                        found[entry.name] = kind
            return found
    except (FileNotFoundError, InTheWay):
        return {}


def read_text(path: str) -> str | None:
    """The text of the regular file at path (bytes that are not UTF-8
    replaced); None when there is no regular file there reached without links."""
    parent, name = os.path.split(path)
    try:
        with directory(parent) as dir_fd:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, InTheWay):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # the file itself is a link
            return None
        raise
    return read_fd(fd)


def rename(dir_fd: int, src: str, dst: str) -> None:
    """Rename src to dst in the directory dir_fd (renameat(2): replaces dst,
    a link at dst included, without following it)."""
    os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_fd(fd: int) -> str | None:
    """The text of the open file fd if it is a regular file, else None; closes fd."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def read_link(path: str) -> str | None:
    """The target of the symbolic link at path; None when there is none."""
    parent, name = os.path.split(path)
    try:
        with directory(parent) as fd:
            return os.readlink(name, dir_fd=fd)
    except (FileNotFoundError, InTheWay):
        return None
    except OSError as e:
        if e.errno == errno.EINVAL:  # not a link
            return None
        raise


def list_dir(path: str) -> list[str]:
    """Sorted entry names; [] when path is absent or not a directory reached
    without links."""
    try:
        with directory(path) as fd:
            return sorted(os.listdir(fd))
    except (FileNotFoundError, InTheWay):
        return []
