"""Writing a file the user named on the command line (`graph -o FILE`): all
or nothing, never through a symbolic link."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

from reconciler.errors import NetapplyError


def write_whole(path: str, data: bytes) -> None:
    """Write `data` to `path` through a new file beside it, renamed over it
    once complete (rename(2) is atomic): a reader sees the old file or the
    new one, and a failure leaves the old one as it was, with no partial file
    left. NetapplyError, before anything is written, when `path` is a
    symbolic link, a directory or another non-regular file, or an existing
    file this process may not write; and when the directory cannot take the
    file (missing, not a directory, read-only, full)."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    except OSError as e:
        raise NetapplyError(f"{path}: cannot write there: {e.strerror}") from None
    if found is not None:
        if stat.S_ISLNK(found.st_mode):
            raise NetapplyError(f"{path} is a symbolic link; netapply does not write through "
                                "links: name the file itself")
        if not stat.S_ISREG(found.st_mode):
            raise NetapplyError(f"{path} exists and is not a regular file")
        if not os.access(path, os.W_OK):
            raise NetapplyError(f"{path}: cannot write there: permission denied")
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666)
    except OSError as e:
        raise NetapplyError(f"{path}: cannot write there: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise NetapplyError(f"{path}: writing failed: {e.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
