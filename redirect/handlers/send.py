"""sendto(), sendmsg(), sendmmsg() with a destination address.

Stream sockets: TCP ignores the address on a connected socket (a Unix socket
would refuse it, so it is dropped for converted ones), and MSG_FASTOPEN
connects to it (so it goes through the out rules like connect()).
Datagram sockets: see datagram_send.py.
"""
from __future__ import annotations

import errno
import socket

from ..decision import SEALED_REASON
from ..sockaddr import IPAddr, unpack
from ..tracee import PASS, Scratch, Syscall
from . import datagram_send
from .bind_connect import connect_to
from .common import (MMSGHDR_SIZE, MSG_NAME, MSG_NAMELEN, MSGHDR, Call, identify, read_headers, read_sockaddr,
                     socket_type)

MSG_FASTOPEN = 0x20000000
_MAX_VLEN = 1024                   # UIO_MAXIOV: the kernel's own limit on vlen


def sendto(call: Call):
    fd, flags, dest, dest_len = call.args[0], call.args[3], call.args[4], call.args[5]
    return _check(call, fd, [(dest, dest_len)], [], flags)


def sendmsg(call: Call):
    return _check(call, call.args[0], *_names(call, 1, MSGHDR.size), call.args[2])


def sendmmsg(call: Call):
    return _check(call, call.args[0], *_names(call, min(call.args[2], _MAX_VLEN), MMSGHDR_SIZE), call.args[3])


def _names(call: Call, count: int, stride: int) -> tuple[list[tuple[int, int]], list[bytes]]:
    """The destinations (pointer, length) of a sendmsg/sendmmsg, and its headers."""
    headers = read_headers(call, call.args[1], count, stride)
    fields = [MSGHDR.unpack(header[:MSGHDR.size]) for header in headers]
    return [(f[MSG_NAME], f[MSG_NAMELEN]) for f in fields], headers


def _check(call: Call, fd: int, names: list[tuple[int, int]], headers: list[bytes], flags: int):
    """`headers`: the program's msghdrs (none for sendto)."""
    dests = [unpack(data) if data else None for data in (read_sockaddr(call, p, n) for p, n in names)]
    addresses = [a for a in dests if isinstance(a, IPAddr)]
    if not addresses:
        return PASS
    conv = identify(call, fd)  # ours: known by inode, no need to look at the socket
    if conv is not None and conv.socket_type == "stream":
        return _without_address(call)  # as TCP: the address of a connected socket is ignored
    if conv is not None:
        return datagram_send.send(call, fd, conv, dests, headers)
    with call.thread.socket(fd) as sock:
        if sock is None:
            return PASS
        kind, family = socket_type(sock), sock.family
    if kind == "stream":
        return _stream(call, fd, addresses[0], flags)
    if kind == "dgram" and family != socket.AF_UNIX:
        return datagram_send.convert_and_send(call, fd, family, dests, headers)
    if kind is None and family != socket.AF_UNIX and call.ctx.sealed:
        return sealed_off(call, addresses[0])  # raw, ICMP, SCTP...: no rule can convert them
    return PASS


def sealed_off(call: Call, visible: IPAddr) -> int:
    call.ctx.log(0, f"{call.describe()}: {visible}: {SEALED_REASON} (a socket no rule can convert; ENETUNREACH)")
    return -errno.ENETUNREACH


def _refuse(call: Call, visible: IPAddr, error: int, reason: str, source: str) -> int:
    call.ctx.log(1 if reason == "rejected by rule" else 0,
                 f"{call.describe()}: {visible}: {reason} ({errno.errorcode.get(error)}; {source})")
    return -error


def _stream(call: Call, fd: int, visible: IPAddr, flags: int):
    if not flags & MSG_FASTOPEN:
        return PASS  # TCP ignores the address (or says ENOTCONN): no connection is made
    verdict = call.ctx.decide("out", "stream", visible)
    if verdict is None:
        return PASS
    if verdict.error:
        return _refuse(call, visible, verdict.error, verdict.reason, verdict.source)
    if call.name != "sendto":
        return _refuse(call, visible, errno.EOPNOTSUPP, f"TCP Fast Open through {call.name}() is not supported",
                       verdict.source)
    return _fast_open(call, fd, verdict, flags)


def _fast_open(call: Call, fd: int, verdict, flags: int):
    """sendto(MSG_FASTOPEN) = connect, then send: both to the rule's socket."""
    res = yield from connect_to(call, fd, "stream", verdict, is_unix=False)
    if res < 0:
        return res
    fd, buf, length = call.args[:3]
    return (yield Syscall("sendto", fd, buf, length, flags & ~MSG_FASTOPEN, 0, 0))


def _without_address(call: Call):
    """The same send with the destination left out."""
    args = list(call.args)
    if call.name == "sendto":
        args[3] &= ~MSG_FASTOPEN
        args[4] = args[5] = 0
        return (yield Syscall("sendto", *args))
    if call.name == "sendmsg":
        fields = list(MSGHDR.unpack(call.thread.read(args[1], MSGHDR.size)))
        fields[MSG_NAME] = fields[MSG_NAMELEN] = 0
        args[1] = yield Scratch(MSGHDR.pack(*fields))
        args[2] &= ~MSG_FASTOPEN
        return (yield Syscall("sendmsg", *args))
    return (yield Syscall(call.name, *args))  # sendmmsg: rare on stream sockets; the kernel decides
