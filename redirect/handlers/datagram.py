"""Datagram (UDP) sockets: where datagrams come from and where they go.

A converted datagram socket talks to Unix addresses; the program must only see
IP ones. Receiving (recvfrom, recvmsg, recvmmsg), the sender's Unix address is
replaced by the IP address the peer table shows for it. Sending (sendto,
sendmsg, sendmmsg, connect), an IP destination goes to the Unix address it was
shown for, else to the socket an out rule names; any other destination fails
with ENETUNREACH: a converted socket has left the IP network.

A client's first matching send or connect converts its socket and binds it to
a private reply address (socketfile.ReplyDirs), so that answers come back.

Stream sockets pass through here too: TCP never reports a sender, but a Unix
stream socket would reveal its peer's path, so converted ones report none.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from .. import socketfile
from ..decision import Decision, decide
from ..peers import UNNAMED
from ..registry import Client
from ..sockaddr import (AF_INET, AF_INET6, MAPPED_LOOPBACK, Address, IPAddr, UnixAddr, local_of_connection,
                        loopback, pack, peer_host, unpack)
from ..tracee import PASS, MemoryUnavailable, Scratch, Syscall
from .common import (Call, Converted, address_of, client_face, identify, make_unix, read_room, read_sockaddr,
                     write_sockaddr)

_NAME_ROOM = 112                               # sizeof(struct sockaddr_un), rounded up
_MSGHDR = struct.Struct("=QI4xQQQQi4x")        # struct msghdr on x86_64 (56 bytes)
_NAME, _NAMELEN, _IOV, _IOVLEN, _CONTROL, _CONTROLLEN, _FLAGS = range(7)
_MMSGHDR_SIZE = 64                             # msghdr + unsigned msg_len, padded
_MAX_BATCH = 32                                # per recvmmsg/sendmmsg: what fits in scratch memory
MSG_CTRUNC = 0x8
MSG_ERRQUEUE = 0x2000

# Control messages a UDP socket gives on request and a Unix socket cannot.
IP_PKTINFO, IP_RECVTTL, IP_TTL = 8, 12, 2
IPV6_RECVPKTINFO, IPV6_PKTINFO, IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 49, 50, 51, 52
_CMSGHDR = struct.Struct("=Qii")
_LOOPBACK_IFINDEX = 1


def shown_family(conv: Converted) -> int | None:
    """The family the program believes the socket has (None: a Unix socket
    that a from-unix rule moved; it really is one)."""
    face = conv.local if isinstance(conv.local, IPAddr) else conv.peer
    return face.family if isinstance(face, IPAddr) else None


def _face(conv: Converted) -> IPAddr:
    return conv.local if isinstance(conv.local, IPAddr) else conv.peer


# ---- receiving -----------------------------------------------------------------------

def recvfrom(call: Call):
    """Trapped only with a source address buffer."""
    conv = identify(call, call.args[0])
    if conv is None or (conv.socket_type == "dgram" and shown_family(conv) is None):
        return PASS
    room = read_room(call, call.args[5])
    return PASS if room is None else _recvfrom(call, conv, room)


def _recvfrom(call: Call, conv: Converted, room: int):
    fd, buf, size, flags, src, len_ptr = call.args
    if conv.socket_type == "stream":  # TCP reports no sender: length 0
        res = yield Syscall("recvfrom", fd, buf, size, flags, 0, 0)
        if res >= 0:
            call.thread.write(len_ptr, struct.pack("=i", 0))
        return res
    name = yield Scratch(bytes(_NAME_ROOM))
    name_len = yield Scratch(struct.pack("=i", _NAME_ROOM))
    res = yield Syscall("recvfrom", fd, buf, size, flags, name, name_len)
    if res < 0:
        return res
    sender = show_sender(call, conv, unpack(call.thread.read(name, call.thread.read_int(name_len))))
    err = write_sockaddr(call, src, len_ptr, pack(sender), room)
    return err or res


def recvmsg(call: Call):
    return _receive_batch(call, call.args[1], 1, _MSGHDR.size)


def recvmmsg(call: Call):
    return _receive_batch(call, call.args[1], min(call.args[2], _MAX_BATCH), _MMSGHDR_SIZE)


def _receive_batch(call: Call, vec: int, count: int, stride: int):
    conv = identify(call, call.args[0])
    if conv is None or count <= 0 or (conv.socket_type == "dgram" and shown_family(conv) is None):
        return PASS
    if call.args[2 if call.name == "recvmsg" else 3] & MSG_ERRQUEUE:
        return -errno.EAGAIN  # a Unix socket has no error queue (and would hand out data instead)
    try:
        headers = [call.thread.read(vec + i * stride, stride) for i in range(count)]
    except MemoryUnavailable:
        raise
    except OSError:
        return PASS  # the kernel reports the bad pointer
    names = [_MSGHDR.unpack(h[:_MSGHDR.size])[_NAME] for h in headers]
    if not any(names) and not _wanted_cmsgs(call, conv):
        return PASS  # nothing the kernel would get wrong
    return _receive(call, conv, vec, headers, stride)


def _receive(call: Call, conv: Converted, vec: int, headers: list[bytes], stride: int):
    """Run the receive on copies of the program's headers whose address buffers
    are ours (a Unix address may not fit the program's), then give the program
    IP addresses, lengths, flags and the control messages it asked for."""
    copies, names = bytearray(), []
    for header in headers:
        fields = list(_MSGHDR.unpack(header[:_MSGHDR.size]))
        name = 0
        if fields[_NAME] and conv.socket_type == "dgram":
            name = yield Scratch(bytes(_NAME_ROOM))
        names.append(name)
        fields[_NAME], fields[_NAMELEN] = name, _NAME_ROOM if name else 0
        copies += _MSGHDR.pack(*fields) + header[_MSGHDR.size:]
    copy = yield Scratch(bytes(copies))
    if call.name == "recvmsg":
        res = yield Syscall("recvmsg", call.args[0], copy, call.args[2])
        done = 1 if res >= 0 else 0
    else:
        res = yield Syscall("recvmmsg", call.args[0], copy, len(headers), call.args[3], call.args[4])
        done = max(res, 0)
    for i in range(done):
        try:
            _deliver(call, conv, vec + i * stride, headers[i], copy + i * stride, names[i], stride)
        except MemoryUnavailable:
            raise
        except OSError:  # the program's buffer is bad: as the kernel, EFAULT (the datagram is gone)
            return i if i else -errno.EFAULT
    return res


def _deliver(call: Call, conv: Converted, at: int, header: bytes, copy: int, name: int, stride: int) -> None:
    """Fill in the program's header `at` from the kernel's answer in `copy`."""
    thread = call.thread
    mine = _MSGHDR.unpack(header[:_MSGHDR.size])
    answer = thread.read(copy, stride)
    kernel = _MSGHDR.unpack(answer[:_MSGHDR.size])
    flags, used = kernel[_FLAGS], kernel[_CONTROLLEN]
    sender = None
    if mine[_NAME]:
        if conv.socket_type == "dgram":
            sender = show_sender(call, conv, unpack(thread.read(name, kernel[_NAMELEN])))
            packed = pack(sender)
            thread.write(mine[_NAME], packed[:mine[_NAMELEN]])
            thread.write(at + 8, struct.pack("=I", len(packed)))
        else:
            thread.write(at + 8, struct.pack("=I", 0))  # TCP: no sender
    if conv.socket_type == "dgram":
        extra = _cmsgs(call, conv, sender)
        if extra:
            try:
                if not mine[_CONTROL] or mine[_CONTROLLEN] - used < len(extra):
                    raise OSError(errno.ENOBUFS, "no room")
                thread.write(mine[_CONTROL] + used, extra)
                used += len(extra)
            except MemoryUnavailable:
                raise
            except OSError:  # no room, or a bad control pointer: the kernel says MSG_CTRUNC
                flags |= MSG_CTRUNC
    thread.write(at + 40, struct.pack("=Qi", used, flags))
    if stride == _MMSGHDR_SIZE:
        thread.write(at + _MSGHDR.size, answer[_MSGHDR.size:_MSGHDR.size + 4])  # msg_len


def show_sender(call: Call, conv: Converted, real: Address | None) -> IPAddr:
    """The IP address a datagram from the Unix address `real` is shown from."""
    real = real if isinstance(real, UnixAddr) else UNNAMED
    peers, face = call.ctx.registry.peers, _face(conv)
    known = peers.known(real, face.family)
    if known is not None:
        return known  # the common case: no lookups
    uid = None
    if not face.host.is_loopback and real.name and not real.abstract:
        try:
            uid = os.stat(real.name).st_uid  # the sender's user, as 127.U.U.1
        except OSError:
            pass
    return peers.show(real, face.family, peer_host(face, uid), _own_face(call, real))


def _own_face(call: Call, real: UnixAddr) -> IPAddr | None:
    """The IP address a sender that is a socket of ours shows itself."""
    registry = call.ctx.registry
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
    (socket.IPPROTO_IP, IP_RECVTTL, IP_TTL),
    (socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, IPV6_PKTINFO),
    (socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT),
]


def _cmsgs(call: Call, conv: Converted, sender: IPAddr | None) -> bytes:
    """The IP-level control messages the program asked for, as the kernel
    would give them for a datagram on loopback."""
    family, out = shown_family(conv), b""
    local = _face(conv).host
    if local.is_unspecified:  # the datagram came over loopback
        mapped = sender is not None and sender.family == AF_INET6 and sender.host.ipv4_mapped
        local = loopback(AF_INET) if family == AF_INET else MAPPED_LOOPBACK if mapped else loopback(AF_INET6)
    for level, name, kind in _CMSG_OPTIONS:
        if (level == socket.IPPROTO_IP) != (family == AF_INET) or not _enabled(call, conv, level, name):
            continue
        if kind == IP_PKTINFO:
            host = local.packed[-4:]
            data = struct.pack("=i4s4s", _LOOPBACK_IFINDEX, host, host)
        elif kind == IPV6_PKTINFO:
            data = struct.pack("=16si", local.packed, _LOOPBACK_IFINDEX)
        else:
            data = struct.pack("=i", 64)  # the TTL / hop limit of a local datagram
        out += _CMSGHDR.pack(_CMSGHDR.size + len(data), level, kind) + data
        out += bytes(-len(out) % 8)
    return out


# ---- sending -------------------------------------------------------------------------

def send(call: Call, fd: int, conv: Converted, dests: list[Address | None]):
    """sendto/sendmsg/sendmmsg with at least one IP destination, on a converted datagram socket."""
    family = shown_family(conv)
    return PASS if family is None else _send(call, fd, dests, family)


def convert_and_send(call: Call, fd: int, family: int, dests: list[Address | None]):
    """The same on an IP datagram socket: real UDP, unless a rule wants a
    destination or it is a sender we showed (answered from another socket)."""
    for visible in dests:
        if not isinstance(visible, IPAddr):
            continue
        verdict = decide(call.ctx.rules, "out", "dgram", visible, call.ctx.ports) \
            or shown_sender_verdict(call, visible)
        if verdict is not None:
            break
    else:
        return PASS  # nobody wants any of them: real UDP
    if family == AF_INET and visible.family == AF_INET6:
        return -errno.EAFNOSUPPORT  # as an IPv4 UDP socket says
    if verdict.error:
        return _refuse(call, visible, verdict)
    return _convert_then_send(call, fd, verdict, dests, family)


def shown_sender_verdict(call: Call, visible: IPAddr) -> Decision | None:
    """Where an IP socket's datagram to an address we showed for a sender goes:
    to that sender, never out on real UDP to whoever holds that port."""
    real = call.ctx.registry.peers.real(visible)
    if real is None:
        return None
    if real == UNNAMED:
        return Decision(None, visible, error=errno.ECONNREFUSED, reason="that sender had no address to answer to")
    return Decision(None, visible, real)


def _convert_then_send(call: Call, fd: int, verdict: Decision, dests: list[Address | None], family: int):
    err = yield from become_client(call, fd, verdict)
    if err < 0:
        return err
    return (yield from _send(call, fd, dests, family))


def _refuse(call: Call, visible: IPAddr, verdict: Decision) -> int:
    call.ctx.log(0 if verdict.reason != "rejected by rule" else 1,
                 f"{call.describe()}: {visible}: {verdict.reason} "
                 f"({errno.errorcode.get(verdict.error, verdict.error)}; {verdict.source})")
    return -verdict.error


def become_client(call: Call, fd: int, verdict: Decision):
    """Generator: make the datagram socket at fd a Unix socket bound to a
    private reply address, whose datagrams go where `verdict` says.
    Returns 0 or -errno."""
    ctx, thread = call.ctx, call.thread
    with thread.socket(fd) as sock:
        if sock is None:
            return -errno.EBADF
        before = address_of(sock.family, sock.getsockname())
    if isinstance(before, IPAddr) and before.port and thread.fd_inode(fd) in ctx.registry.pinned:
        ctx.log(0, f"{call.describe()}: {verdict.visible}: fd {fd} is bound to UDP {before} by the program, "
                   "so it stays on the network and cannot reach a Unix socket (ENETUNREACH); "
                   "add an in rule for that address, or send from another socket")
        return -errno.ENETUNREACH
    err = yield from make_unix(call, fd, "dgram")
    if err < 0:
        return err
    server = None
    if not verdict.real.abstract:
        try:
            server = os.stat(verdict.real.name)
        except OSError:
            pass  # nobody there (yet): the send will say so
    try:
        path, access, mode = ctx.replies.new_path(thread.euid(), server)
    except OSError as err:
        ctx.log(0, f"{call.describe()}: cannot make a reply address: {err.strerror or err}")
        return -(err.errno or errno.EIO)
    own = UnixAddr(path)
    packed = pack(own)
    res = yield Syscall("bind", fd, (yield Scratch(packed)), len(packed))
    if res < 0:
        ctx.log(0, f"{call.describe()}: binding the reply address {own} failed: {os.strerror(-res)}")
        return res
    if mode is not None:
        os.chmod(path, mode)
    if access == "anyone":
        ctx.warn_once(("anyone", verdict.real), f"{verdict.real} belongs to another user with no group in common "
                      "with this program: its replies come to sockets that any local user may write to")
    local = before if isinstance(before, IPAddr) and before.port else None
    ctx.registry.add_bound_client(thread.fd_inode(fd), Client(
        verdict.real, verdict.visible, "dgram", local=local, own=own, file_id=socketfile.file_id(path)))
    ctx.registry.peers.remember(verdict.visible, verdict.real)
    ctx.log(1, f"{call.describe()}: datagrams to {verdict.visible} -> {verdict.real} (replies to {own})")
    return 0


def destination(call: Call, visible: IPAddr) -> UnixAddr | int:
    """Where a converted socket's datagram to `visible` goes, or -errno (logged)."""
    ctx = call.ctx
    real = ctx.registry.peers.real(visible)
    if real == UNNAMED:
        ctx.warn_once(("unnamed", visible), f"{call.describe()}: {visible} stands for a sender that had no address "
                                            "to answer to (ECONNREFUSED)")
        return -errno.ECONNREFUSED
    if real is not None:
        return real
    verdict = decide(ctx.rules, "out", "dgram", visible, ctx.ports)
    if verdict is None:
        ctx.warn_once(("unreachable", visible), f"{call.describe()}: {visible}: this socket is a Unix socket now, "
                      "and no out rule sends datagrams for that address anywhere (ENETUNREACH)")
        return -errno.ENETUNREACH
    if verdict.error:
        return _refuse(call, visible, verdict)
    ctx.registry.peers.remember(visible, verdict.real)
    return verdict.real


def _send(call: Call, fd: int, dests: list[Address | None], family: int):
    """Generator: the program's send with every IP destination replaced by its
    Unix address; a batch stops before the first destination that fails."""
    reals: list[Address | None] = []
    for visible in dests[:_MAX_BATCH]:  # a shorter batch: sendmmsg may send fewer
        real = destination(call, visible) if isinstance(visible, IPAddr) else visible
        if isinstance(real, int):
            if not reals:
                return real
            break
        reals.append(real)
    request = _Request.read(call, reals, family)
    if isinstance(request, int):
        return request
    res = yield from request.send(call, fd, reals, dests)
    if -res in (errno.ENOENT, errno.ECONNREFUSED):  # nobody bound there: UDP's "port unreachable"
        call.ctx.log(1, f"{call.describe()}: nobody receives at {reals[0]} (ECONNREFUSED)")
        return -errno.ECONNREFUSED
    if -res in (errno.EAGAIN, errno.EPERM):
        # The receiver's queue stayed full (a Unix datagram socket queues only
        # net.unix.max_dgram_qlen datagrams) or it is connected to someone
        # else: UDP would drop the datagram, not block or fail. So do we.
        call.ctx.log(2, f"{call.describe()}: {reals[0]} takes no datagram now; dropped, as UDP would")
        return request.dropped(call)
    return res


_MAX_UDP_PAYLOAD = {AF_INET: 65507, AF_INET6: 65527}
_SOL_UDP, _UDP_SEGMENT = 17, 103
_BACKOFF_NS = (200_000, 500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000, 16_000_000)  # 32 ms in all
MSG_DONTWAIT = 0x40


@dataclass
class _Request:
    """A send as the program made it: headers (none for sendto), lengths."""
    headers: list[bytes]
    lengths: list[int]

    @classmethod
    def read(cls, call: Call, reals: list, family: int) -> "_Request | int":
        """The program's headers and payload sizes, or -errno for a send UDP
        would refuse (too big; GSO, which a Unix socket would glue together)."""
        thread = call.thread
        if call.name == "sendto":
            request = cls([], [call.args[2]])
        else:
            stride = _MSGHDR.size if call.name == "sendmsg" else _MMSGHDR_SIZE
            headers = [thread.read(call.args[1] + i * stride, stride) for i in range(len(reals))]
            request = cls(headers, [])
            for header in headers:
                fields = _MSGHDR.unpack(header[:_MSGHDR.size])
                iov = thread.read(fields[_IOV], 16 * min(fields[_IOVLEN], 1024)) if fields[_IOVLEN] else b""
                request.lengths.append(sum(struct.unpack_from("=QQ", iov, i)[1] for i in range(0, len(iov), 16)))
                if fields[_CONTROLLEN] and _asks_gso(thread.read(fields[_CONTROL], min(fields[_CONTROLLEN], 4096))):
                    call.ctx.warn_once(("gso", call.thread.process.tgid), f"{call.describe()}: UDP segmentation "
                                       "offload (UDP_SEGMENT) on a Unix socket: refused with EIO, so the program "
                                       "sends datagram by datagram")
                    return -errno.EIO  # what a device without GSO answers; programs fall back
        if max(request.lengths) > _MAX_UDP_PAYLOAD[family]:
            return -errno.EMSGSIZE
        return request

    def send(self, call: Call, fd: int, reals: list, dests: list):
        """Generator: send without blocking; while the receiver's queue is full,
        wait a little (in the sending thread only) and try again."""
        args, thread = list(call.args), call.thread
        flag_index = 3 if call.name in ("sendto", "sendmmsg") else 2
        args[flag_index] |= MSG_DONTWAIT
        if call.name == "sendto":
            packed = pack(reals[0])
            args[4], args[5] = (yield Scratch(packed)), len(packed)
        else:
            stride = _MSGHDR.size if call.name == "sendmsg" else _MMSGHDR_SIZE
            copies = bytearray()
            for header, real, visible in zip(self.headers, reals, dests):
                if isinstance(visible, IPAddr):
                    fields = list(_MSGHDR.unpack(header[:_MSGHDR.size]))
                    packed = pack(real)
                    fields[_NAME], fields[_NAMELEN] = (yield Scratch(packed)), len(packed)
                    header = _MSGHDR.pack(*fields) + header[_MSGHDR.size:]
                copies += header
            args[1] = yield Scratch(bytes(copies))
            if call.name == "sendmmsg":
                args[2] = len(reals)
        if call.name != "sendmmsg":
            return (yield from self._patiently(call, args))
        # A batch goes on past a full queue, as UDP's would: message by message
        # after a wait, each one that still finds no room is dropped.
        sent, dropped, base = 0, set(), args[1]
        while sent < len(reals):
            args[1], args[2] = base + sent * stride, len(reals) - sent
            res = yield from self._patiently(call, args)
            if res > 0:
                sent += res
            elif -res in (errno.EAGAIN, errno.EPERM):
                dropped.add(sent)
                sent += 1
            else:
                if not sent:
                    return res
                break
        for i in range(sent):  # the kernel wrote each message's length into our copy
            length = struct.pack("=I", self.lengths[i]) if i in dropped else \
                thread.read(base + i * stride + _MSGHDR.size, 4)
            thread.write(call.args[1] + i * stride + _MSGHDR.size, length)
        return sent

    @staticmethod
    def _patiently(call: Call, args: list[int]):
        """Generator: the send; while the receiver's queue is full, wait a
        little (this thread only: the supervisor serves the others) and retry."""
        for pause in (0, *_BACKOFF_NS):
            if pause:
                yield Syscall("nanosleep", (yield Scratch(struct.pack("=qq", 0, pause))), 0)
            res = yield Syscall(call.name, *args)
            if res != -errno.EAGAIN:
                return res
        return res

    def dropped(self, call: Call) -> int:
        """The result of a sendto/sendmsg whose datagram was dropped."""
        return self.lengths[0]


def _asks_gso(control: bytes) -> bool:
    offset = 0
    while offset + _CMSGHDR.size <= len(control):
        length, level, kind = _CMSGHDR.unpack_from(control, offset)
        if level == _SOL_UDP and kind == _UDP_SEGMENT:
            return True
        if length < _CMSGHDR.size:
            return False
        offset += (length + 7) & ~7
    return False


def connect(call: Call, conv: Converted):
    """connect() on a converted datagram socket: to an address we showed (a
    server answering one client) or one an out rule names."""
    fd, addr, length = call.args[:3]
    data = read_sockaddr(call, addr, length)
    visible = unpack(data) if data else None
    if not isinstance(visible, IPAddr):
        return PASS  # AF_UNSPEC (disconnect) or a Unix address: the kernel's business
    real = destination(call, visible)
    if isinstance(real, int):
        return real
    return _connect(call, fd, conv, visible, real)


def _connect(call: Call, fd: int, conv: Converted, visible: IPAddr, real: UnixAddr):
    packed = pack(real)
    res = yield Syscall("connect", fd, (yield Scratch(packed)), len(packed))
    if res == 0 and conv.role == "client":
        client = call.ctx.registry.client(conv.inode)
        client.real, client.visible = real, visible
    if res < 0 and -res in (errno.ENOENT, errno.ECONNREFUSED):
        res = -errno.ECONNREFUSED
    call.ctx.log(1, f"{call.describe()}: {visible} -> {real}" + (f": {os.strerror(-res)}" if res < 0 else ""))
    return res


def connected(call: Call, fd: int) -> bool:
    with call.thread.socket(fd) as sock:
        try:
            return sock is not None and bool(sock.getpeername())
        except OSError:
            return False


def getpeername(call: Call, conv: Converted):
    """A connected datagram socket's peer, as the program knows it."""
    with call.thread.socket(call.args[0]) as sock:
        if sock is None:
            return PASS
        try:
            peer = address_of(sock.family, sock.getpeername())
        except OSError:
            return -errno.ENOTCONN
    shown = show_sender(call, conv, peer)
    return write_sockaddr(call, call.args[1], call.args[2], pack(shown))
