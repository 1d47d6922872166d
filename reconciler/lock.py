"""One change of a project at a time on a machine.

apply, destroy and each reconcile of watch hold an exclusive flock(2) on
/run/netapply/<project>.lock from the observation they plan from until the
kernel is verified. A second run waits up to its --lock-timeout, then fails
naming the holder's PID. The kernel releases the lock when the holder exits,
even by SIGKILL, so a crash never leaves the project locked. The directory is
0700 and the file 0600: nobody else can take, hold or forge the lock.

The directory is reached without following a link (drivers/files.py): a link
at /run/netapply (to /tmp, say) is refused, never chmod'ed through.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator

from reconciler.drivers import files
from reconciler.drivers.kernel import FileType
from reconciler.errors import NetapplyError

LOCK_DIR = "/run/netapply"
POLL = 0.05


class LockError(NetapplyError):
    """Another netapply run is changing the project on this machine. Wait for it
    to finish, or stop the process named in the message."""


def lock_path(project: str, directory: str = LOCK_DIR) -> str:
    return os.path.join(directory, f"{project}.lock")


def pending_path(project: str, directory: str = LOCK_DIR) -> str:
    """Exists while an apply --confirm-timeout waits; `netapply confirm` removes it."""
    return os.path.join(directory, f"{project}.confirm")


def is_held(project: str, directory: str = LOCK_DIR) -> bool:
    """Whether a run holds the project's lock now."""
    try:
        with files.directory(directory) as dir_fd:
            fd = os.open(f"{project}.lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
                         | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def runtimes_cache_path(project: str, directory: str = LOCK_DIR) -> str:
    """What the engines said of the project's runtime containers (runtimes.py)."""
    return os.path.join(directory, f"{project}.runtimes.json")


def read_private(path: str) -> str | None:
    """The text of a file written by write_private, or None when it is absent
    or not such a file (a link, another owner, writable by others)."""
    directory, name = os.path.split(path)
    try:
        with files.directory(directory) as dir_fd:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def write_private(path: str, content: str) -> None:
    """A file only root can read or write, in the lock directory."""
    fd = _open_private(path, os.O_WRONLY | os.O_TRUNC, "write")
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def project_lock(project: str, timeout: float, directory: str = LOCK_DIR) -> Iterator[None]:
    path = lock_path(project, directory)
    fd = _open_private(path, os.O_RDWR, "open the lock")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _holder(fd)
                    raise LockError(
                        f"project '{project}' is being changed by another netapply run "
                        f"({holder}, lock {path}); waited {timeout:g} s (--lock-timeout)"
                    ) from None
                time.sleep(POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_private(path: str, flags: int, what: str) -> int:
    """Open (making it) a 0600 regular file in a 0700 directory; no link is
    followed on the way or at the end, and a FIFO there is not waited on."""
    directory, name = os.path.split(path)
    try:
        with files.directory(directory, create=0o700) as dir_fd:
            st = os.fstat(dir_fd)
            if st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.fchmod(dir_fd, 0o700)  # made by an older version or by hand: tighten it
            fd = os.open(name, flags | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                         0o600, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP and not isinstance(e, files.InTheWay):  # the file itself
            e = files.InTheWay(path, FileType.LINK, files.read_link(path))
        if isinstance(e, files.InTheWay):
            raise LockError(f"cannot {what} {path}: {e}, which netapply did not make: it "
                            "never follows a link or uses what is in its way; remove it"
                            ) from None
        raise LockError(f"cannot {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockError(f"cannot {what} {path}: it is not a regular file, and netapply did not "
                        "make it; remove it")
    os.set_blocking(fd, True)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o600)
    return fd


def _holder(fd: int) -> str:
    text = ""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"PID {text}" if text.isdigit() else "a process that has not written its PID yet"
