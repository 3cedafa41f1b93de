"""getsockname() and getpeername(): converted sockets show IP addresses."""
from __future__ import annotations

import errno

from .. import sockaddr
from ..program import PASS
from ..rules import SocketType
from . import receive
from .context import Call
from .identify import Role, identify, known
from .memory import write_sockaddr


def getsockname(call: Call):
    fd, addr, len_ptr = call.args[:3]
    converted = identify(call, fd)
    if converted is None or converted.local is None:
        return PASS
    local = converted.local
    if _may_be_connected(converted) and receive.connected(call, fd):
        local = sockaddr.local_of_connection(local)  # a connected UDP socket has a definite address
    return write_sockaddr(call, addr, len_ptr, sockaddr.pack(local))


def _may_be_connected(converted) -> bool:
    """A UDP socket bound to a wildcard: connected, it shows a definite address."""
    local = converted.local
    return converted.role is Role.LISTENER and converted.socket_type == SocketType.DGRAM \
        and isinstance(local, sockaddr.IPAddr) and local.host.is_unspecified


def compiled_getsockname(ctx):
    """For the notify backend's compiled getsockname (redirect/_fastpath.c,
    which reads and writes the program's memory): the packed address a
    socket of this inode shows, or None (getsockname above answers)."""
    def local(inode: int) -> bytes | None:
        converted = known(ctx.registry, inode)
        if converted is None or converted.local is None or _may_be_connected(converted):
            return None
        return sockaddr.pack(converted.local)
    return local


def getpeername(call: Call):
    fd, addr, len_ptr = call.args[:3]
    converted = identify(call, fd)
    if converted is None:
        return PASS
    if converted.socket_type == SocketType.DGRAM and converted.shown_family is not None:
        return receive.connected_peer(call, converted)  # whoever it is connected to now
    if converted.peer is None:
        return PASS
    if converted.role is Role.CLIENT:
        with call.thread.borrowed_socket(fd) as sock:
            try:
                sock.getpeername()
            except OSError:
                return -errno.ENOTCONN  # not (yet) connected: as the kernel would say
    return write_sockaddr(call, addr, len_ptr, sockaddr.pack(converted.peer))
