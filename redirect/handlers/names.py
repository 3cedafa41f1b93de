"""getsockname() and getpeername(): converted sockets show IP addresses."""
from __future__ import annotations

import errno

from .. import sockaddr
from ..tracee import PASS
from .common import Call, identify, write_sockaddr


def getsockname(call: Call):
    fd, addr, len_ptr = call.args[:3]
    converted = identify(call, fd)
    if converted is None or converted.local is None:
        return PASS
    return write_sockaddr(call, addr, len_ptr, sockaddr.pack(converted.local))


def getpeername(call: Call):
    fd, addr, len_ptr = call.args[:3]
    converted = identify(call, fd)
    if converted is None or converted.peer is None:
        return PASS
    if converted.role == "client":
        with call.thread.socket(fd) as sock:
            try:
                sock.getpeername()
            except OSError:
                return -errno.ENOTCONN  # not (yet) connected: as the kernel would say
    return write_sockaddr(call, addr, len_ptr, sockaddr.pack(converted.peer))
