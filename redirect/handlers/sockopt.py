"""getsockopt() and setsockopt(): a converted socket still looks like TCP or UDP.

The filter only traps SOL_SOCKET for SO_DOMAIN/SO_PROTOCOL (which would say
AF_UNIX) and the IP/TCP/UDP levels, which a Unix socket refuses. Those are
answered by the kernel itself, on real sockets of the visible family and type
(templates.py): an option the program never set reads what a fresh or
connected one reads, errors included; one it set is tried there first (a
value the kernel refuses is refused) and reads back as the kernel stores it.
"""
from __future__ import annotations

import errno
import socket
import struct

from ..identity import acting_as
from ..sockaddr import IPAddr
from ..program import PASS
from ..rules import SocketType
from ..templates import State
from .context import Call
from .memory import read_buffer
from .identify import Role, identify, known

IP_LEVELS = (socket.IPPROTO_IP, socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_IPV6)
_MAX_VALUE = 256
# UDP segmentation offload: a Unix socket would deliver one big datagram, so
# say the kernel lacks it and programs send datagram by datagram.
_NO_OFFLOAD = {(socket.IPPROTO_UDP, 103), (socket.IPPROTO_UDP, 104)}  # UDP_SEGMENT, UDP_GRO
_TCP_LISTEN = 10  # TCP_LISTEN of the kernel's enum of TCP states


def _visible_family(call: Call, fd: int):
    converted = identify(call, fd)
    if converted is None or converted.shown_family is None:
        return None, None  # not ours, or a from-unix socket: it really is a Unix socket
    return converted, converted.shown_family


def bound(registry, inode: int, visible) -> None:
    """What a bind does to a socket's options, for its converted stand-in: an
    IPv6 socket bound to one address (not :: nor a mapped IPv4 one) becomes
    IPv6-only."""
    if isinstance(visible, IPAddr) and visible.family == socket.AF_INET6 and not visible.host.is_unspecified \
            and visible.host.ipv4_mapped is None:
        registry.set_option(inode, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, struct.pack("=i", 1))


def getsockopt(call: Call):
    # Every level but SOL_SOCKET is the visible family's: one TCP and UDP
    # do not know says what it says there, not what a Unix socket says.
    fd, level, name, value_ptr, len_ptr = call.args[:5]
    converted, family = _visible_family(call, fd)
    if converted is None:
        return PASS
    if (level, name) in _NO_OFFLOAD:
        return -errno.ENOPROTOOPT
    try:
        room = call.thread.read_int(len_ptr)
    except OSError:
        return -errno.EFAULT
    if room < 0:
        return -errno.EINVAL
    if level == socket.SOL_SOCKET:
        if name == socket.SO_DOMAIN:
            value = struct.pack("=i", family)
        elif name == socket.SO_PROTOCOL:
            value = struct.pack("=i", socket.IPPROTO_TCP if converted.socket_type == SocketType.STREAM
                                else socket.IPPROTO_UDP)
        else:
            return PASS
        value = value[:room]
    else:
        value = _read(call, converted, family, level, name, room)
        if isinstance(value, int):
            return value
    try:
        call.thread.write(value_ptr, value, (len_ptr, struct.pack("=i", len(value))))
    except OSError:
        return -errno.EFAULT
    return 0


# Bound or listening, a socket reads what a fresh one reads; a client
# what a connected one reads; an accepted connection what an accepted one
# reads (its multicast TTL is the SYN's TTL, say).
_TEMPLATE_OF = {Role.LISTENER: State.FRESH, Role.CLIENT: State.CONNECTED, Role.ACCEPTED: State.ACCEPTED}


def _read(call: Call, converted, family: int, level: int, name: int, room: int) -> bytes | int:
    templates, kind, registry = call.ctx.templates, converted.socket_type, call.ctx.registry
    mine = registry.option(converted.inode, level, name)  # (an accepted one's own, inherited: add_accepted)
    if mine is not None:
        return templates.read_back(family, kind, level, name, mine, room)
    state = _TEMPLATE_OF[converted.role]
    value = templates.get(family, kind, state, level, name, room)
    if isinstance(value, bytes) and (level, name) == (socket.IPPROTO_TCP, socket.TCP_INFO) and value \
            and converted.role is Role.LISTENER and kind == SocketType.STREAM:
        value = bytes([_TCP_LISTEN]) + value[1:]  # the one thing a fresh socket cannot show: the listening state
    return value


# Joining a multicast group makes the kernel itself send IGMP/MLD reports.
_JOINS = {(socket.IPPROTO_IP, n) for n in (35, 39, 41, 42, 46, 48)} | \
    {(socket.IPPROTO_IPV6, n) for n in (20, 27, 42, 46, 48)}  # *_ADD_*MEMBERSHIP, JOIN_ANYCAST, MCAST_JOIN_*, *MSFILTER


# Options whose setting the kernel checks against no privilege (range and
# type checks only, in net/ipv4/tcp.c): tried as the supervisor, without
# reading the program's credentials first. Anything else a root supervisor
# tries with the program's (IP_TRANSPARENT, TCP_REPAIR, a TCP_CONGESTION not
# allowed to users need CAP_NET_ADMIN).
_UNPRIVILEGED = {(socket.IPPROTO_TCP, n) for n in (
    socket.TCP_NODELAY, socket.TCP_CORK, socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT,
    socket.TCP_USER_TIMEOUT, socket.TCP_QUICKACK, socket.TCP_DEFER_ACCEPT, socket.TCP_NOTSENT_LOWAT)}


def setsockopt(call: Call):
    fd, level, name, value_ptr, length = call.args[:5]
    converted, family = _visible_family(call, fd)  # (every level is the visible family's, as getsockopt)
    if converted is None:
        if call.ctx.sealed and (level, name) in _JOINS:
            call.ctx.log(0, f"{call.describe()}: sealed: joining a multicast group is refused (EACCES): the "
                            "kernel would announce it on the network")
            return -errno.EACCES
        return PASS
    if (level, name) in _NO_OFFLOAD:
        return -errno.ENOPROTOOPT
    value = read_buffer(call, value_ptr, min(length, _MAX_VALUE)) if length > 0 else b""
    if value is None:
        return -errno.EFAULT
    if (level, name) in _UNPRIVILEGED:
        res = call.ctx.templates.try_set(family, converted.socket_type, level, name, value)
    elif (level, name) not in _JOINS:  # (a join on a real socket would announce it on the network)
        with acting_as(call.thread):  # with the program's rights: IP_TRANSPARENT needs CAP_NET_ADMIN
            res = call.ctx.templates.try_set(family, converted.socket_type, level, name, value)
    else:
        res = 0
    return _kept(call.ctx, converted, level, name, value, res)


def _kept(ctx, converted, level: int, name: int, value: bytes, res: int) -> int:
    """The option as set, to be read back, unless the kernel refused it on a
    real socket (then as it refused it)."""
    if res < 0:
        return res
    ctx.registry.set_option(converted.inode, level, name, value)
    return 0


def compiled_setsockopt(ctx):
    """For the notify backend's compiled setsockopt (redirect/_fastpath.c,
    which reads the value, at most _MAX_VALUE bytes, None where unmapped):
    the call's result for a converted socket and an option that needs no
    privilege, or None (setsockopt above answers). Connections it accepted
    itself it answers alone, from COMPILED_OPTIONS: tried on the scratch
    socket there, kept with ctx.registry.set_options (in batches)."""
    def set_option(inode: int, level: int, name: int, value: bytes | None) -> int | None:
        if level not in IP_LEVELS:
            return None
        converted = known(ctx.registry, inode)
        if converted is None or converted.shown_family is None:
            return None
        if (level, name) in _NO_OFFLOAD:
            return -errno.ENOPROTOOPT
        if (level, name) not in _UNPRIVILEGED:
            return None
        if value is None:
            return -errno.EFAULT
        res = ctx.templates.try_set(converted.shown_family, converted.socket_type, level, name, value)
        return _kept(ctx, converted, level, name, value, res)
    return set_option


# set_option's verdicts, for C: (level, name, errno), 0 for "tried on the scratch socket"
COMPILED_OPTIONS = tuple((level, name, errno.ENOPROTOOPT) for level, name in sorted(_NO_OFFLOAD)) + \
    tuple((level, name, 0) for level, name in sorted(_UNPRIVILEGED))
