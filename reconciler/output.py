"""Output that never decides what netapply does.

Where netapply's output goes can vanish while it works: the reader of a pipe
exits (`netapply apply ... | grep -m1 "Apply complete"`: EPIPE), the
operator's terminal hangs up (an SSH session gone: EIO), or a descriptor is
closed (`2>&-`). An apply that has changed the kernel must still finish,
verify, wait for `confirm` and roll back, so every line it prints goes
through a GuardedStream, which swallows these errors:

- stdout gone: what would have gone there goes to stderr from then on (so
  `netapply apply ... | grep -m1 ...` still shows the confirm prompt, the
  outcome and any rollback on the terminal's stderr);
- stderr gone too: output is dropped;
- a gone stream's descriptor is pointed at /dev/null, so text Python still
  holds in its buffer (flushed at exit) goes nowhere instead of raising.

The exit status still tells the outcome.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import TextIO

# Writing to a stream can fail in these ways (and only these are a gone
# stream, not a bug): OSError (EPIPE, EIO, EBADF, ENOSPC on a file), ValueError
# ("I/O operation on closed file").
FAILURES = (OSError, ValueError)


class GuardedStream:
    """A text stream (for rich's Console) over `stream` (None: a descriptor
    closed when Python started). Never raises: the first write or flush that
    fails marks it gone; later text goes to `fallback` (another guarded
    stream), or nowhere. The stream is taken once, not looked up in sys at
    each write: rich's progress display replaces sys.stdout with a proxy that
    writes back through the console."""

    def __init__(self, stream: TextIO | None, fallback: GuardedStream | None = None):
        self._target = stream
        self._fallback = fallback
        self.gone = False
        self.why = ""  # the first failure, when gone ("No space left on device")

    def _stream(self) -> TextIO | None:
        return None if self.gone else self._target

    def write(self, text: str) -> int:
        stream = self._stream()
        if stream is not None:
            try:
                stream.write(text)
                stream.flush()
                return len(text)
            except FAILURES as e:
                self._give_up(stream, e)
        if self._fallback is not None:
            self._fallback.write(text)
        return len(text)

    def flush(self) -> None:
        stream = self._stream()
        if stream is not None:
            try:
                stream.flush()
            except FAILURES as e:
                self._give_up(stream, e)

    def isatty(self) -> bool:
        stream = self._stream()
        try:
            return stream is not None and stream.isatty()
        except FAILURES:
            return False

    def fileno(self) -> int:
        stream = self._stream()
        if stream is None:
            raise io.UnsupportedOperation("the stream is gone")
        return stream.fileno()

    @property
    def encoding(self) -> str:
        stream = self._stream()
        return (getattr(stream, "encoding", None) or "utf-8") if stream else "utf-8"

    def _give_up(self, stream: TextIO, e: Exception) -> None:
        self.gone = True
        self.why = getattr(e, "strerror", None) or str(e)
        # Text left in Python's buffer would be flushed (and fail) again at
        # exit: point the descriptor at /dev/null so it goes nowhere.
        with contextlib.suppress(*FAILURES, AttributeError):
            fd = stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)


def standard_streams(fallback: bool = True) -> tuple[GuardedStream, GuardedStream]:
    """Guarded stdout and stderr; stdout falls back to stderr where its
    lines are reports for a person (apply's progress), not where they are
    the result itself (`fallback` False: a result cut short is an error)."""
    err = GuardedStream(sys.stderr)
    return GuardedStream(sys.stdout, fallback=err if fallback else None), err
