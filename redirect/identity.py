"""Acting as the program: its credentials, umask and working directory, for the
calls the supervisor makes on its behalf (bind, connect, listen, send on its
sockets, with the supervisor's own copy of the address).

What those calls leave behind must be what the program's own call would have
left: the socket file's owner and mode, the peer credentials a server reads
(SO_PEERCRED names the program's user), the directories it may reach, the
relative path it meant. Only a root supervisor needs to (and can) change its
credentials; every supervisor takes the program's umask and directory.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import kernel
from .program import status_field


@dataclass(frozen=True)
class Identity:
    euid: int
    egid: int
    groups: tuple[int, ...]
    umask: int
    uids: tuple[int, ...] = ()   # real, effective, saved (what SCM_CREDENTIALS may claim)
    gids: tuple[int, ...] = ()


def of_thread(tid: int, status: int | None = None) -> Identity:
    """The identity of a (waiting) thread, from /proc/TID/status (or that
    file open already: `status`)."""
    if status is None:
        with open(f"/proc/{tid}/status", "rb") as opened:
            text = opened.read()
    else:
        text = os.pread(status, 8192, 0)
    uid, gid, umask = (status_field(text, name).split() for name in (b"Uid", b"Gid", b"Umask"))
    return Identity(euid=int(uid[1]), egid=int(gid[1]),
                    groups=tuple(int(g) for g in status_field(text, b"Groups").split()),
                    umask=int(umask[0], 8) if umask else 0o022,
                    uids=tuple(int(u) for u in uid[:3]), gids=tuple(int(g) for g in gid[:3]))


_OURS: list = []


def _ours() -> Identity:
    """The supervisor's own (it only ever changes within acting_as, and back)."""
    if not _OURS:
        _OURS.append(Identity(os.geteuid(), os.getegid(), tuple(os.getgroups()), 0))
    return _OURS[0]


@contextmanager
def acting_as(thread, relative_path: bool = False, makes_files: bool = False) -> Iterator[None]:
    """Within the block, this thread of the supervisor creates files, passes
    permission checks and connects as the program's `thread` would: its
    euid/egid/groups (a root supervisor only; others already are that user),
    its umask (for a call that makes files), and (for a relative socket
    path) its working directory."""
    ours = _ours()
    if ours.euid != 0 and not makes_files and not relative_path:
        yield  # nothing to change: the common case of a send or connect, at no cost
        return
    them = thread.identity()
    tid = thread.tid
    switch = ours.euid == 0 and (them.euid, them.egid, set(them.groups)) != (0, ours.egid, set(ours.groups))
    here = None
    if relative_path:
        here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        there = os.open(f"/proc/{tid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(there)
        finally:
            os.close(there)
    old_umask = os.umask(them.umask) if makes_files else None
    try:
        if switch:
            kernel.set_thread_identity(them.euid, them.egid, list(them.groups))
        try:
            yield
        finally:
            if switch:
                kernel.restore_thread_identity(ours.euid, ours.egid, list(ours.groups))
    finally:
        if old_umask is not None:
            os.umask(old_umask)
        if here is not None:
            os.fchdir(here)
            os.close(here)
