"""sendto(), sendmsg(), sendmmsg() with a destination address.

Datagram conversion is not implemented yet; until it is, a datagram that a rule
would redirect fails loudly instead of leaving on the real network.
"""
from __future__ import annotations

import errno
import socket
import struct

from ..sockaddr import IPAddr, unpack
from ..tracee import PASS, MemoryUnavailable
from .bind_connect import decide
from .common import Call, read_sockaddr, socket_type

_MSGHDR = struct.Struct("=QI")     # msg_name, msg_namelen: the start of struct msghdr
_MMSGHDR_SIZE = 64                 # struct mmsghdr: msghdr (56) + msg_len, padded
_MAX_BATCH = 1024                  # UIO_MAXIOV: the kernel's own limit on vlen


def sendto(call: Call):
    fd, dest, dest_len = call.args[0], call.args[4], call.args[5]
    return _check(call, fd, [(dest, dest_len)])


def sendmsg(call: Call):
    return _check(call, call.args[0], _names(call, call.args[1], 1, 0))


def sendmmsg(call: Call):
    return _check(call, call.args[0], _names(call, call.args[1], min(call.args[2], _MAX_BATCH), _MMSGHDR_SIZE))


def _names(call: Call, ptr: int, count: int, stride: int) -> list[tuple[int, int]]:
    names = []
    try:
        for i in range(count):
            names.append(_MSGHDR.unpack(call.thread.read(ptr + i * stride, _MSGHDR.size)))
    except MemoryUnavailable:
        raise  # cannot judge the call: it must fail
    except OSError:
        pass  # the kernel reports the bad pointer itself
    return names


def _check(call: Call, fd: int, names: list[tuple[int, int]]):
    addresses = [unpack(data) for data in (read_sockaddr(call, p, n) for p, n in names) if data]
    addresses = [a for a in addresses if isinstance(a, IPAddr)]
    if not addresses:
        return PASS
    with call.thread.socket(fd) as sock:
        kind = socket_type(sock) if sock is not None and sock.family != socket.AF_UNIX else None
    if kind != "dgram":
        return PASS
    for visible in addresses:
        verdict = decide(call.ctx.rules, "out", kind, visible, call.ctx.ports)
        if verdict is not None:
            error = verdict.error or errno.ENOSYS
            reason = verdict.reason or "datagram (UDP) sockets are not supported yet"
            call.ctx.log(0 if error == errno.ENOSYS else 1,
                         f"{call.describe()}: {visible}: {reason} ({errno.errorcode.get(error)}; rule {verdict.rule.text})")
            return -error
    return PASS
