"""Socket files on disk: clearing stale ones before a bind, removing ours after.

A path that is not a socket is never deleted; a socket somebody listens on is
never replaced; a file is only removed if it is still the one we created.
"""
from __future__ import annotations

import errno
import os
import socket
import stat


def clear_stale(path: bytes, socket_type: int) -> int:
    """Make way for a bind at `path`: 0 if the path is free (a dead socket file
    is removed), else the errno the bind should fail with."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    except OSError:
        return 0  # let the bind itself report what is wrong (EACCES, ENOTDIR...)
    if not stat.S_ISSOCK(st.st_mode):
        return errno.EADDRINUSE
    if is_alive(path, socket_type):
        return errno.EADDRINUSE
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        return err.errno
    return 0


def _listed(path: bytes, socket_type: int) -> bool:
    """Whether /proc/net/unix shows a socket of this type bound at path (one
    bound but not listening yet counts: it is about to be used); then there is
    no need to disturb it with a probe."""
    try:
        with open("/proc/net/unix", "rb") as table:
            next(table)
            for line in table:
                fields = line.rstrip(b"\n").split(None, 7)  # the path may hold spaces
                if len(fields) == 8 and fields[7] == path and int(fields[4], 16) == socket_type:
                    return True
    except OSError:
        pass
    return False


def is_alive(path: bytes, socket_type: int) -> bool:
    """Whether a socket is bound (datagram) or listening (stream) at path."""
    if _listed(path, socket_type):
        return True
    probe = socket.socket(socket.AF_UNIX, socket_type | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as err:
        if err.errno == errno.EPROTOTYPE:  # a socket of the other type: not ours to judge
            return True
        return err.errno != errno.ECONNREFUSED  # EAGAIN (full backlog), EACCES: assume alive
    finally:
        probe.close()
    return True


def file_id(path: bytes) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def remove_if_ours(path: bytes, ident: tuple[int, int] | None) -> bool:
    """Unlink path if it is still the file we created (not a newer one)."""
    if ident is None or file_id(path) != ident:
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
