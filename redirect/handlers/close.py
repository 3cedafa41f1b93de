"""close(), dup2()/dup3() over an fd, close_range(): when the last reference to a
bound socket goes, its socket file goes too (unless the rule says noremove), and
so does a datagram client's private reply socket."""
from __future__ import annotations

from ..tracee import PASS
from .common import Call

CLOSE_RANGE_CLOEXEC = 4


def close(call: Call):
    return _if_listener(call, call.args[0])


def dup2(call: Call):
    old, new = call.args[:2]
    return PASS if old == new else _if_listener(call, new)


def close_range(call: Call):
    registry = call.ctx.registry
    if call.args[2] & CLOSE_RANGE_CLOEXEC or not (registry.listener_inodes or registry.bound_clients):
        return PASS
    return _run_then_reap(call)


def _if_listener(call: Call, fd: int):
    registry = call.ctx.registry
    if not (registry.listener_inodes or registry.bound_clients) or not registry.owns_file(call.thread.fd_inode(fd)):
        return PASS
    return _run_then_reap(call)


def _run_then_reap(call: Call):
    res = yield from call.thread.run_trapped()
    call.ctx.reap()
    return res
