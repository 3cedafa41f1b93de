"""Sending on datagram sockets: where datagrams go.

An IP destination of a converted socket goes to the Unix address it was shown
for (a sender, peers.py), else to the socket an out rule names; any other
fails with ENETUNREACH: a converted socket has left the IP network. An IP
socket's first send (or connect) to such a destination converts it and binds
it to a private reply address (socketfile.ReplyDirs), so that answers come
back. Sends never block on a full receiver: UDP would drop, and so do we.
"""
from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from .. import socketfile
from ..decision import Decision
from ..peers import UNNAMED
from ..registry import Client
from ..sockaddr import AF_INET, AF_INET6, Address, IPAddr, UnixAddr, pack, unpack
from ..tracee import PASS, Scratch, Syscall
from .common import (CMSGHDR, MAX_BATCH, MMSGHDR_SIZE, MSG_CONTROL, MSG_CONTROLLEN, MSG_IOV, MSG_IOVLEN, MSG_NAME,
                     MSG_NAMELEN, MSGHDR, Call, Converted, address_of, connect_unix, make_unix, read_sockaddr)
from .datagram import shown_family


def send(call: Call, fd: int, conv: Converted, dests: list[Address | None], headers: list[bytes]):
    """sendto/sendmsg/sendmmsg with at least one IP destination, on a converted
    datagram socket; `headers`: the program's msghdrs (none for sendto)."""
    family = shown_family(conv)
    return PASS if family is None else _send(call, fd, dests, headers, family)


def convert_and_send(call: Call, fd: int, family: int, dests: list[Address | None], headers: list[bytes]):
    """The same on an IP datagram socket: real UDP, unless a rule wants a
    destination or it is a sender we showed (answered from another socket)."""
    for visible in dests:
        if not isinstance(visible, IPAddr):
            continue
        verdict = verdict_for(call, visible)
        if verdict is not None:
            break
    else:
        return PASS  # nobody wants any of them: real UDP
    if family == AF_INET and visible.family == AF_INET6:
        return -errno.EAFNOSUPPORT  # as an IPv4 UDP socket says
    if verdict.error:
        return _refuse(call, visible, verdict)
    return _convert_then_send(call, fd, verdict, dests, headers, family)


def verdict_for(call: Call, visible: IPAddr) -> Decision | None:
    """Where a datagram to `visible` goes: to the sender we showed that address
    for (never out on real UDP to whoever holds that port; looked up first, so
    no catch-all rule steals a reply), else where the out rules say."""
    real = call.ctx.registry.peers.real(visible)
    if real == UNNAMED:
        return Decision(None, visible, error=errno.ECONNREFUSED, reason="that sender had no address to answer to")
    if real is not None:
        return Decision(None, visible, real)
    return call.ctx.decide("out", "dgram", visible)


def _convert_then_send(call: Call, fd: int, verdict: Decision, dests: list[Address | None],
                       headers: list[bytes], family: int):
    err = yield from become_client(call, fd, verdict)
    if err < 0:
        return err
    return (yield from _send(call, fd, dests, headers, family))


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
    if verdict.real != UNNAMED and not verdict.real.abstract:
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
    if verdict.real == UNNAMED:  # sealed: a bind to port 0, no destination yet
        local = verdict.visible
    ctx.registry.add_bound_client(thread.fd_inode(fd), Client(
        verdict.real, verdict.visible, "dgram", local=local, own=own, file_id=socketfile.file_id(path)))
    if verdict.real == UNNAMED:
        ctx.log(1, f"{call.describe()}: {verdict.visible} -> {own} (sealed: a private address, not UDP)")
        return 0
    ctx.registry.peers.remember(verdict.visible, verdict.real)
    ctx.log(1, f"{call.describe()}: datagrams to {verdict.visible} -> {verdict.real} (replies to {own})")
    return 0


def destination(call: Call, visible: IPAddr) -> UnixAddr | int:
    """Where a converted socket's datagram to `visible` goes, or -errno (logged)."""
    ctx = call.ctx
    verdict = verdict_for(call, visible)
    if verdict is None:
        ctx.warn_once(("unreachable", visible), f"{call.describe()}: {visible}: this socket is a Unix socket now, "
                      "and no out rule sends datagrams for that address anywhere (ENETUNREACH)")
        return -errno.ENETUNREACH
    if verdict.error:
        return _refuse(call, visible, verdict)
    if verdict.rule is not None:
        ctx.registry.peers.remember(visible, verdict.real)
    return verdict.real


def _send(call: Call, fd: int, dests: list[Address | None], headers: list[bytes], family: int):
    """Generator: the program's send with every IP destination replaced by its
    Unix address; a batch stops before the first destination that fails."""
    reals: list[Address | None] = []
    for visible in dests[:MAX_BATCH]:  # a shorter batch: sendmmsg may send fewer
        real = destination(call, visible) if isinstance(visible, IPAddr) else visible
        if isinstance(real, int):
            if not reals:
                return real
            break
        reals.append(real)
    request = _Request.read(call, headers[:len(reals)], family)
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
    def read(cls, call: Call, headers: list[bytes], family: int) -> "_Request | int":
        """The payload sizes of the program's send (headers: none for sendto),
        or -errno for one UDP would refuse (too big; GSO, which a Unix socket
        would glue together)."""
        thread = call.thread
        if call.name == "sendto":
            request = cls([], [call.args[2]])
        else:
            request = cls(headers, [])
            for header in headers:
                fields = MSGHDR.unpack(header[:MSGHDR.size])
                iov = thread.read(fields[MSG_IOV], 16 * min(fields[MSG_IOVLEN], 1024)) if fields[MSG_IOVLEN] else b""
                request.lengths.append(sum(struct.unpack_from("=QQ", iov, i)[1] for i in range(0, len(iov), 16)))
                if fields[MSG_CONTROLLEN] and _asks_gso(thread.read(fields[MSG_CONTROL], min(fields[MSG_CONTROLLEN], 4096))):
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
        stride = MSGHDR.size if call.name == "sendmsg" else MMSGHDR_SIZE
        flag_index = 3 if call.name in ("sendto", "sendmmsg") else 2
        args[flag_index] |= MSG_DONTWAIT
        if call.name == "sendto":
            packed = pack(reals[0])
            args[4], args[5] = (yield Scratch(packed)), len(packed)
        else:
            copies = bytearray()
            for header, real, visible in zip(self.headers, reals, dests):
                if isinstance(visible, IPAddr):
                    fields = list(MSGHDR.unpack(header[:MSGHDR.size]))
                    packed = pack(real)
                    fields[MSG_NAME], fields[MSG_NAMELEN] = (yield Scratch(packed)), len(packed)
                    header = MSGHDR.pack(*fields) + header[MSGHDR.size:]
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
                thread.read(base + i * stride + MSGHDR.size, 4)
            thread.write(call.args[1] + i * stride + MSGHDR.size, length)
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
    while offset + CMSGHDR.size <= len(control):
        length, level, kind = CMSGHDR.unpack_from(control, offset)
        if level == _SOL_UDP and kind == _UDP_SEGMENT:
            return True
        if length < CMSGHDR.size:
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
    res = yield from connect_unix(call, fd, visible, real)
    if res == 0 and conv.role == "client":
        client = call.ctx.registry.client(conv.inode)
        client.real, client.visible = real, visible
    return res
