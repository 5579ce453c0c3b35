"""Reading a file the user named (the config, a `_file` secret) without being held hostage by it:
only a regular file, never more than a limit, never blocking."""

from __future__ import annotations

import os
import stat


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
