"""getsockopt() and setsockopt(): a converted socket still looks like TCP.

The filter only traps SOL_SOCKET for SO_DOMAIN/SO_PROTOCOL (which would say
AF_UNIX) and the IP/TCP/UDP levels, which a Unix socket refuses: those succeed
quietly and read back what the program set.
"""
from __future__ import annotations

import errno
import socket
import struct

from ..sockaddr import IPAddr
from ..program import PASS
from .common import Call, identify

SO_PROTOCOL, SO_DOMAIN = 38, 39
IP_LEVELS = (socket.IPPROTO_IP, socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_IPV6)
_MAX_VALUE = 256
# UDP segmentation offload: a Unix socket would deliver one big datagram, so
# say the kernel lacks it and programs send datagram by datagram.
_REFUSED = {(socket.IPPROTO_UDP, 103), (socket.IPPROTO_UDP, 104)}  # UDP_SEGMENT, UDP_GRO


def _visible_family(call: Call, fd: int):
    converted = identify(call, fd)
    if converted is None:
        return None, None
    shown = converted.local if isinstance(converted.local, IPAddr) else converted.peer
    if not isinstance(shown, IPAddr):
        return None, None  # a from-unix socket: it really is a Unix socket
    return converted, shown.family


def getsockopt(call: Call):
    fd, level, name, value_ptr, len_ptr = call.args[:5]
    if level != socket.SOL_SOCKET and level not in IP_LEVELS:
        return PASS
    converted, family = _visible_family(call, fd)
    if converted is None:
        return PASS
    if (level, name) in _REFUSED:
        return -errno.ENOPROTOOPT
    if level == socket.SOL_SOCKET:
        if name == SO_DOMAIN:
            value = struct.pack("=i", family)
        elif name == SO_PROTOCOL:
            value = struct.pack("=i", socket.IPPROTO_TCP if converted.socket_type == "stream" else socket.IPPROTO_UDP)
        else:
            return PASS
    else:
        value = call.ctx.registry.option(converted.inode, level, name) or _default(converted, level, name)
    try:
        room = call.thread.read_int(len_ptr)
        if room < 0:
            return -errno.EINVAL
        value = value[:room]
        call.thread.write(value_ptr, value)
        call.thread.write(len_ptr, struct.pack("=i", len(value)))
    except OSError:
        return -errno.EFAULT
    return 0


TCP_INFO, TCP_CONGESTION = 11, 13
_TCP_INFO_SIZE = 232          # sizeof(struct tcp_info) on Linux 6.x
_TCP_ESTABLISHED, _TCP_LISTEN = 1, 10
# Linux's defaults for the int options programs read back, where 0 would be a
# lie a program can trip over (dividing by the MSS, say).
_INT_DEFAULTS = {
    (socket.IPPROTO_TCP, socket.TCP_MAXSEG): 65483,      # loopback MTU 65536 - headers
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): 7200,
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): 75,
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): 9,
    (socket.IPPROTO_TCP, socket.TCP_SYNCNT): 6,
    (socket.IPPROTO_IP, socket.IP_TTL): 64,
    (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS): 64,
}


def _default(converted, level: int, name: int) -> bytes:
    """What a TCP socket would say for an option the program never set."""
    if level == socket.IPPROTO_TCP and name == TCP_INFO:
        state = _TCP_LISTEN if converted.role == "listener" else _TCP_ESTABLISHED
        return bytes([state]) + bytes(_TCP_INFO_SIZE - 1)
    if level == socket.IPPROTO_TCP and name == TCP_CONGESTION:
        return b"cubic".ljust(16, b"\0")
    return struct.pack("=i", _INT_DEFAULTS.get((level, name), 0))


# Joining a multicast group makes the kernel itself send IGMP/MLD reports.
_JOINS = {(socket.IPPROTO_IP, n) for n in (35, 39, 41, 42, 46, 48)} | \
    {(socket.IPPROTO_IPV6, n) for n in (20, 27, 42, 46, 48)}  # *_ADD_*MEMBERSHIP, JOIN_ANYCAST, MCAST_JOIN_*, *MSFILTER


def setsockopt(call: Call):
    fd, level, name, value_ptr, length = call.args[:5]
    if level not in IP_LEVELS:
        return PASS
    converted, _ = _visible_family(call, fd)
    if converted is None:
        if call.ctx.sealed and (level, name) in _JOINS:
            call.ctx.log(0, f"{call.describe()}: sealed: joining a multicast group is refused (EACCES): the "
                            "kernel would announce it on the network")
            return -errno.EACCES
        return PASS
    if (level, name) in _REFUSED:
        return -errno.ENOPROTOOPT
    try:
        value = call.thread.read(value_ptr, min(length, _MAX_VALUE)) if length > 0 else b""
    except OSError:
        return -errno.EFAULT
    call.ctx.registry.set_option(converted.inode, level, name, value)
    return 0
