"""Receiving on converted sockets: where datagrams come from.

A converted datagram socket receives from Unix addresses; the program must only
see IP ones. recvfrom, recvmsg and recvmmsg run on buffers of ours, then the
sender's Unix address is replaced by the IP address the peer table
(peers.py) shows for it, with the IP-level control messages the program asked
for; getpeername of a connected one likewise. Sending is in datagram_send.py.

Stream sockets pass through here too: TCP never reports a sender, but a Unix
stream socket would reveal its peer's path, so converted ones report none.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

from ..identity import acting_as
from ..peers import UNNAMED
from ..rules import SocketType
from ..sockaddr import (AF_INET, AF_INET6, MAPPED_LOOPBACK, Address, IPAddr, UnixAddr, local_of_connection,
                        loopback, pack, peer_host, unpack)
from ..program import PASS, MemoryUnavailable
from . import perform
from .context import Call, on_socket
from .identify import Converted, address_of, client_face, datagram, identify
from .memory import (CMSGHDR, MMSGHDR_SIZE, MSGHDR, MSG_CONTROL, MSG_CONTROLLEN, MSG_IOV, MSG_IOVLEN, MSG_NAME,
                     MSG_NAMELEN, cmsg, cmsgs, read_headers, read_iovecs, read_room, write_sockaddr)


# Control messages a UDP socket gives on request and a Unix socket cannot.
IP_PKTINFO, IP_RECVTTL = 8, 12  # (not in Python's socket module)
_LOOPBACK_IFINDEX = 1

MAX_BATCH = 32  # messages per recvmmsg the supervisor receives for at once


# ---- receiving -----------------------------------------------------------------------

def recvfrom(call: Call):
    """Trapped only with a source address buffer."""
    conv = identify(call, call.args[0])
    if conv is None or (conv.socket_type == SocketType.DGRAM and conv.shown_family is None):
        return PASS
    room = read_room(call, call.args[5])
    return PASS if room is None else _recvfrom(call, conv, room)


def _recvfrom(call: Call, conv: Converted, room: int):
    return on_socket(call, lambda sock: _recvfrom_on(call, sock, conv, room))


def _recvfrom_on(call: Call, sock, conv: Converted, room: int):
    fd, buf, size, flags, src, len_ptr = call.args
    got = yield from perform.receive(call, fd, sock, min(size, _MAX_RECEIVE), 0, flags,
                                     want_name=conv.socket_type == SocketType.DGRAM)
    if isinstance(got, int):
        return got
    res, data, name, _, _ = got
    try:
        call.thread.write(buf, data)
    except MemoryUnavailable:
        raise
    except OSError:
        return -errno.EFAULT  # as the kernel: the data is gone
    if conv.socket_type == SocketType.STREAM:  # TCP reports no sender: length 0
        call.thread.write(len_ptr, struct.pack("=i", 0))
        return res
    sender = show_sender(call.ctx, call.thread, conv, unpack(name) if name else None)
    err = write_sockaddr(call, src, len_ptr, pack(sender), room)
    return err or res


def recvmsg(call: Call):
    return _receive_batch(call, call.args[1], 1, MSGHDR.size)


def recvmmsg(call: Call):
    return _receive_batch(call, call.args[1], min(call.args[2], MAX_BATCH), MMSGHDR_SIZE)


def _receive_batch(call: Call, vec: int, count: int, stride: int):
    conv = identify(call, call.args[0])
    if conv is None or count <= 0 or (conv.socket_type == SocketType.DGRAM and conv.shown_family is None):
        return PASS
    if call.args[2 if call.name == "recvmsg" else 3] & socket.MSG_ERRQUEUE:
        return -errno.EAGAIN  # a Unix socket has no error queue (and would hand out data instead)
    headers = read_headers(call, vec, count, stride)
    if not headers:
        return PASS  # the kernel reports the bad pointer
    names = [MSGHDR.unpack(h[:MSGHDR.size])[MSG_NAME] for h in headers]
    if not any(names) and not _wanted_cmsgs(call, conv):
        return PASS  # nothing the kernel would get wrong
    return _receive(call, conv, vec, headers, stride)


def _receive(call: Call, conv: Converted, vec: int, headers: list[bytes], stride: int):
    return on_socket(call, lambda sock: _receive_on(call, sock, conv, vec, headers, stride))


def _receive_on(call: Call, sock, conv: Converted, vec: int, headers: list[bytes], stride: int):
    """The supervisor receives on its duplicate, then gives the program the
    data, IP addresses, lengths, flags and the control messages it asked for.
    recvmmsg: messages as they are there, after the first (which may wait)."""
    fd = call.args[0]
    flags = call.args[2] if call.name == "recvmsg" else call.args[3]
    done = 0
    for i, header in enumerate(headers):
        fields = MSGHDR.unpack(header[:MSGHDR.size])
        iovs = read_iovecs(call, fields[MSG_IOV], fields[MSG_IOVLEN])
        if isinstance(iovs, int):
            return done or iovs
        size = min(sum(length for _, length in iovs), _MAX_RECEIVE)
        got = yield from perform.receive(call, fd, sock, size, _control_room(fields[MSG_CONTROLLEN]),
                                         flags if not done else flags | socket.MSG_DONTWAIT,
                                         want_name=bool(fields[MSG_NAME]) and conv.socket_type == SocketType.DGRAM)
        if isinstance(got, int):
            return done or got
        try:
            _deliver(call, conv, vec + i * stride, fields, iovs, got, stride)
        except MemoryUnavailable:
            raise
        except OSError:  # the program's buffer is bad: as the kernel, EFAULT (the datagram is gone)
            return done or -errno.EFAULT
        done += 1
        if call.name == "recvmsg":
            return got[0]
        if flags & MSG_WAITFORONE:
            flags |= socket.MSG_DONTWAIT
    return done


_MAX_RECEIVE = 1 << 20          # a datagram is smaller; a stream read may be short
MSG_WAITFORONE = 0x10000


def _control_room(controllen: int) -> int:
    return min(controllen, 4096)


def _deliver(call: Call, conv: Converted, at: int, mine: tuple, iovs: list[tuple[int, int]], got, stride: int):
    """Fill in the program's buffers and header `at` from what the supervisor received."""
    thread = call.thread
    res, data, name, control, flags = got
    offset = 0
    for base, length in iovs:
        if offset >= len(data):
            break
        thread.write(base, data[offset:offset + length])
        offset += length
    control = _program_control(control)
    if len(control) < len(got[3]):
        flags |= socket.MSG_CTRUNC
    sender = None
    if mine[MSG_NAME]:
        if conv.socket_type == SocketType.DGRAM:
            sender = show_sender(call.ctx, call.thread, conv, unpack(name) if name else None)
            packed = pack(sender)
            thread.write(mine[MSG_NAME], packed[:mine[MSG_NAMELEN]])
            thread.write(at + 8, struct.pack("=I", len(packed)))
        else:
            thread.write(at + 8, struct.pack("=I", 0))  # TCP: no sender
    if conv.socket_type == SocketType.DGRAM:
        control += _cmsgs(call, conv, sender)
    if control:
        if not mine[MSG_CONTROL] or mine[MSG_CONTROLLEN] < len(control):
            room = mine[MSG_CONTROLLEN] if mine[MSG_CONTROL] else 0
            control = _whole_cmsgs(control, room)
            flags |= socket.MSG_CTRUNC
        if control:
            thread.write(mine[MSG_CONTROL], control)
    thread.write(at + 40, struct.pack("=Qi", len(control), flags))
    if stride == MMSGHDR_SIZE:
        thread.write(at + MSGHDR.size, struct.pack("=I", res))  # msg_len


_FD_CMSGS = (1, 4)  # SCM_RIGHTS, SCM_PIDFD


def _program_control(control: bytes) -> bytes:
    """The control messages the kernel gave the supervisor that the program may
    have: not fds (SCM_RIGHTS, SCM_PIDFD: a UDP socket never receives any, and
    these are the supervisor's; closed, and the program sees MSG_CTRUNC)."""
    out = bytearray()
    for level, kind, body in cmsgs(control):
        if level == socket.SOL_SOCKET and kind in _FD_CMSGS:
            for fd in struct.unpack(f"={len(body) // 4}i", body[:len(body) // 4 * 4]):
                os.close(fd)
        else:
            out += cmsg(level, kind, body)
    return bytes(out)


def _whole_cmsgs(control: bytes, room: int) -> bytes:
    """The control messages that fit whole in `room` bytes, as the kernel truncates."""
    offset = 0
    while offset + CMSGHDR.size <= len(control):
        length = CMSGHDR.unpack_from(control, offset)[0]
        step = (length + 7) & ~7
        if offset + length > room:
            break
        offset += step
    return control[:min(offset, room)]


def show_sender(ctx, thread, conv: Converted, real: Address | None) -> IPAddr:
    """The IP address a datagram from the Unix address `real` is shown from
    (to the program's `thread`)."""
    real = real if isinstance(real, UnixAddr) else UNNAMED
    peers, face = ctx.registry.peers, conv.face
    known_as = peers.known(real, face.family)
    if known_as is not None:
        return known_as  # the common case: no lookups
    uid = None
    if not face.host.is_loopback and real.name and not real.abstract:
        try:
            with acting_as(thread):  # a path the sender chose: looked up with the program's rights
                uid = os.stat(real.name).st_uid  # the sender's user, as 127.U.U.1
        except OSError:
            pass
        if not thread.alive():  # (the look may have taken its time: its tid may be another's by now)
            raise MemoryUnavailable(errno.ESRCH, f"thread {thread.tid} ended while a sender's file was looked at")
    return peers.show(real, face.family, peer_host(face, uid), _own_face(ctx, real))


def _own_face(ctx, real: UnixAddr) -> IPAddr | None:
    """The IP address a sender that is a socket of ours shows itself."""
    registry = ctx.registry
    listener = registry.listener_at(real)
    if listener is not None:
        return local_of_connection(listener.visible) if isinstance(listener.visible, IPAddr) else None
    for inode, client in registry.bound_clients.items():
        if client.own == real:
            face = client_face(client, inode)  # a wildcard it bound: its datagrams come from loopback
            return local_of_connection(face) if isinstance(face, IPAddr) else None
    return None


def _wanted_cmsgs(call: Call, conv: Converted) -> bool:
    return any(_enabled(call, conv, level, name) for level, name, _ in _CMSG_OPTIONS)


def _enabled(call: Call, conv: Converted, level: int, name: int) -> bool:
    value = call.ctx.registry.option(conv.inode, level, name)
    return bool(value) and any(value[:4])


_CMSG_OPTIONS = [  # (option level, option that asks, cmsg type given)
    (socket.IPPROTO_IP, IP_PKTINFO, IP_PKTINFO),
    (socket.IPPROTO_IP, IP_RECVTTL, socket.IP_TTL),
    (socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, socket.IPV6_PKTINFO),
    (socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, socket.IPV6_HOPLIMIT),
]


def _cmsgs(call: Call, conv: Converted, sender: IPAddr | None) -> bytes:
    """The IP-level control messages the program asked for, as the kernel
    would give them for a datagram on loopback."""
    family, out = conv.shown_family, b""
    local = conv.face.host
    if local.is_unspecified:  # the datagram came over loopback
        mapped = sender is not None and sender.family == AF_INET6 and sender.host.ipv4_mapped
        local = loopback(AF_INET) if family == AF_INET else MAPPED_LOOPBACK if mapped else loopback(AF_INET6)
    for level, name, kind in _CMSG_OPTIONS:
        if (level == socket.IPPROTO_IP) != (family == AF_INET) or not _enabled(call, conv, level, name):
            continue
        if kind == IP_PKTINFO:
            host = local.packed[-4:]
            data = struct.pack("=i4s4s", _LOOPBACK_IFINDEX, host, host)
        elif kind == socket.IPV6_PKTINFO:
            data = struct.pack("=16si", local.packed, _LOOPBACK_IFINDEX)
        else:
            data = struct.pack("=i", 64)  # the TTL / hop limit of a local datagram
        out += cmsg(level, kind, data)
    return out


def compiled_datagrams(ctx):
    """For the notify backend's compiled recvfrom and sendto (redirect/_fastpath.c,
    which receives and sends on its duplicate of the socket as the handlers
    here and in datagram_send.py do): family(inode), the family a converted
    datagram socket of this inode shows, or None (the handlers answer); and
    sender(inode, name, task), the packed address a datagram from the Unix
    address `name` (as the kernel gave it) is shown from, and whether the
    peer table still has room (None: the call fails, logged)."""
    def family(inode: int) -> int | None:
        conv = datagram(ctx.registry, inode)
        return conv.shown_family if conv is not None else None

    def sender(inode: int, name: bytes, task) -> tuple[bytes, bool] | None:
        conv = datagram(ctx.registry, inode)
        if conv is None:
            raise RuntimeError(f"socket {inode} is no longer a converted datagram socket")
        peers = ctx.registry.peers
        try:
            shown = pack(show_sender(ctx, task, conv, unpack(name) if name else None))
        except OSError as err:  # (no fake address left): this call fails with EIO, as in the handler
            ctx.log(0, f"recvfrom() in thread {task.tid}: {err.strerror or err}; the call fails with EIO")
            return None
        return shown, len(peers) < peers.limit  # (full, it forgets the least recently used: see serve)
    return family, sender


# ---- connected sockets ---------------------------------------------------------------

def connected(call: Call, fd: int) -> bool:
    with call.thread.borrowed_socket(fd) as sock:
        try:
            return sock is not None and bool(sock.getpeername())
        except OSError:
            return False


def connected_peer(call: Call, conv: Converted):
    """A connected datagram socket's peer, as the program knows it."""
    with call.thread.borrowed_socket(call.args[0]) as sock:
        if sock is None:
            return PASS
        try:
            peer = address_of(sock.family, sock.getpeername())
        except OSError:
            return -errno.ENOTCONN
    shown = show_sender(call.ctx, call.thread, conv, peer)
    return write_sockaddr(call, call.args[1], call.args[2], pack(shown))
