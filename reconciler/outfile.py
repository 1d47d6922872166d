"""Writing a file the user named on the command line (`graph -o FILE`,
`plan --out FILE`): all or nothing, never through a symbolic link."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

from reconciler.errors import NetapplyError


def write_whole(path: str, data: bytes, what: str = "the file", mode: int = 0o644) -> None:
    """Write `data` to `path` through a new file (`mode`, before the umask)
    beside it, renamed over it once complete and synced (rename(2) is
    atomic): a reader sees the old file or the new one, and a failure leaves
    the old one as it was, with no partial file left. The directory is opened
    once and every step is relative to it, so a link swapped in meanwhile is
    not followed. NetapplyError ("PATH: cannot write WHAT there: why"), before
    anything is written, when `path` is a symbolic link, a directory or
    another non-regular file, or an existing file this process may not
    write; and when the directory cannot take the file (missing, not a
    directory, read-only, full)."""
    directory, name = os.path.split(path)
    where = f"{path}: cannot write {what} there"
    try:
        dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise NetapplyError(f"{where}: {directory}: {e.strerror}") from None
    try:
        try:
            found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False) if name else None
        except FileNotFoundError:
            found = None
        except OSError as e:
            raise NetapplyError(f"{where}: {e.strerror}") from None
        if not name or (found is not None and stat.S_ISDIR(found.st_mode)):
            raise NetapplyError(f"{where}: it is a directory")
        if found is not None and stat.S_ISLNK(found.st_mode):
            raise NetapplyError(f"{where}: it is a symbolic link; netapply does not write "
                                "through links: name the file itself")
        if found is not None and not stat.S_ISREG(found.st_mode):
            raise NetapplyError(f"{where}: it exists and is not a regular file")
        if found is not None and not os.access(name, os.W_OK, dir_fd=dir_fd):
            raise NetapplyError(f"{where}: permission denied")
        _write_new(dir_fd, name, data, where, mode)
    finally:
        os.close(dir_fd)


def _write_new(dir_fd: int, name: str, data: bytes, where: str, mode: int) -> None:
    temp = f".{name[:200]}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dir_fd)
    except OSError as e:
        raise NetapplyError(f"{where}: {e.strerror}") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        if isinstance(e, OSError):
            raise NetapplyError(f"{where}: {e.strerror}") from None
        raise
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)  # the rename itself lasts
