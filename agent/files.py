"""Reading a file the user named (the config, a `_file` secret) without being held hostage by it:
only a regular file, never more than a limit, never blocking; and `offline()`, under which a
config is validated without reading any file on this machine (`agentctl validate --offline`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# The list of what was skipped while validating offline; None when not offline.
_SKIPPED: ContextVar[list[str] | None] = ContextVar("mamori_offline_skipped", default=None)


@contextmanager
def offline() -> Iterator[list[str]]:
    """Within the block, config validators that would read a file of this machine (a `_file`
    secret, the host's /proc, a CA bundle…) skip it and say so through `skip()`. Yields the list
    of what was skipped ("password_file /run/secrets/pg"), filled as validation goes."""
    skipped: list[str] = []
    token = _SKIPPED.set(skipped)
    try:
        yield skipped
    finally:
        _SKIPPED.reset(token)


def skip(what: str) -> bool:
    """True when validating offline (`what` is then noted as skipped): the caller must not read
    the file. False otherwise. Never raises."""
    skipped = _SKIPPED.get()
    if skipped is None:
        return False
    if what not in skipped:
        skipped.append(what)
    return True


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """At most `limit + 1` bytes of the regular file at `path` (a symlink to one is fine), so a
    caller can tell "over the limit" from "exactly at it". The file is opened non-blocking and
    checked with fstat before any read: a FIFO, a device, a directory or a socket is refused at
    once (never `/dev/zero` read forever, never a FIFO waited on). Raises ValueError with a
    one-line reason that never contains the file's content."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ValueError(exc.strerror or type(exc).__name__) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _kind(mode)
            raise ValueError(f"{kind}, not a regular file" if kind.startswith("a ") else kind)
        data = b""
        while len(data) <= limit:  # read to the limit whatever the size says (/proc says 0)
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ValueError(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    return data


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"
