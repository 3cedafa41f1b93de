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


@dataclass(frozen=True)
class Identity:
    euid: int
    egid: int
    groups: tuple[int, ...]
    umask: int
    uids: tuple[int, ...] = ()   # real, effective, saved (what SCM_CREDENTIALS may claim)
    gids: tuple[int, ...] = ()


def of_thread(tid: int) -> Identity:
    """The identity of a (stopped) thread, from /proc/TID/status."""
    fields = {}
    with open(f"/proc/{tid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return Identity(euid=int(fields["Uid"][1]), egid=int(fields["Gid"][1]),
                    groups=tuple(int(g) for g in fields.get("Groups", [])),
                    umask=int(fields["Umask"][0], 8) if "Umask" in fields else 0o022,
                    uids=tuple(int(u) for u in fields["Uid"][:3]), gids=tuple(int(g) for g in fields["Gid"][:3]))


def _ours() -> Identity:
    return Identity(os.geteuid(), os.getegid(), tuple(os.getgroups()), 0)


@contextmanager
def acting_as(tid: int, relative_path: bool = False) -> Iterator[Identity]:
    """Within the block, this thread of the supervisor creates files, passes
    permission checks and connects as thread `tid` of the program would: its
    euid/egid/groups (a root supervisor only; others already are that user),
    its umask, and (for a relative socket path) its working directory."""
    them = of_thread(tid)
    ours = _ours()
    switch = ours.euid == 0 and (them.euid, them.egid, set(them.groups)) != (0, ours.egid, set(ours.groups))
    here = None
    if relative_path:
        here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        there = os.open(f"/proc/{tid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(there)
        finally:
            os.close(there)
    old_umask = os.umask(them.umask)
    try:
        if switch:
            kernel.set_thread_identity(them.euid, them.egid, list(them.groups))
        try:
            yield them
        finally:
            if switch:
                kernel.restore_thread_identity(ours.euid, ours.egid, list(ours.groups))
    finally:
        os.umask(old_umask)
        if here is not None:
            os.fchdir(here)
            os.close(here)
