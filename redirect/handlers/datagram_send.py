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
import socket
import struct

from .. import socketfile
from ..decision import Decision, Refusal
from ..peers import UNNAMED
from ..registry import Client
from ..sockaddr import AF_INET, AF_INET6, NO_ADDRESS, IPAddr, UnixAddr, kernel_reads, pack, unpack
from ..rules import Direction, SocketType
from ..swap import stand_in
from . import perform
from .context import Call, install, refuse
from .identify import Converted, Role, address_of, datagram, inode_of
from .memory import MMSGHDR_SIZE, MSGHDR, cmsgs
from .perform import Message


def send_datagrams(call: Call, fd: int, sock: socket.socket, conv: Converted, dests: list, messages: list[Message],
         flags: int):
    """sendto/sendmsg/sendmmsg on a converted datagram socket: `dests`, the
    destinations as the kernel reads them for the family the program sees."""
    return _send(call, fd, sock, dests, messages, flags, conv.shown_family)


def convert_and_send(call: Call, fd: int, sock: socket.socket, dests: list, messages: list[Message], flags: int):
    """The same on an IP datagram socket: real UDP, unless a rule wants a
    destination or it is a sender we showed (answered from another socket)."""
    family = sock.family
    for visible in dests:
        if not isinstance(visible, IPAddr):
            continue
        verdict = verdict_for(call, visible)
        if verdict is not None:
            break
    else:  # nobody wants any of them: real UDP, with the addresses judged
        return _send_as_is(call, fd, sock, dests, messages, flags)
    if verdict.error:
        return refuse(call, visible, verdict)
    return _convert_then_send(call, fd, sock, verdict, dests, messages, flags, family)


def _send_as_is(call: Call, fd: int, sock: socket.socket, dests: list, messages: list[Message], flags: int):
    """Generator: the messages sent on the program's own socket, each to the
    address judged (packed anew: the kernel reads what was decided)."""
    batch = []
    for message, visible in zip(messages, dests):
        if isinstance(visible, int):  # an address the kernel refuses: the batch stops before it
            if not batch:
                return visible
            break
        message.name = pack(visible) if isinstance(visible, IPAddr) else None
        batch.append(message)
    from .bind_connect import claim_port  # bind_connect imports this module
    res = claim_port(call, fd, sock)
    if res < 0:
        return res
    return (yield from send_all(call, fd, sock, batch, flags))


def send_all(call: Call, fd: int, sock: socket.socket, messages: list[Message], flags: int,
             drop_when_full: bool = False):
    """Generator: sendto/sendmsg (one message) or sendmmsg (each, until one
    fails; msg_len written back) through perform.send."""
    if call.name != "sendmmsg":
        return (yield from perform.send(call, fd, sock, messages[0], flags, drop_when_full))
    sent = 0
    for i, message in enumerate(messages):
        res = yield from perform.send(call, fd, sock, message, flags, drop_when_full)
        if res < 0:
            return sent or res
        call.thread.write(call.args[1] + i * MMSGHDR_SIZE + MSGHDR.size, struct.pack("=I", res))
        sent += 1
    return sent


def verdict_for(call: Call, visible: IPAddr) -> Decision | None:
    """Where a datagram to `visible` goes: to the sender we showed that address
    for (never out on real UDP to whoever holds that port; looked up first, so
    no catch-all rule steals a reply), else where the out rules say."""
    real = call.ctx.registry.peers.real(visible)
    if real == UNNAMED:
        return Decision(None, visible, error=errno.ECONNREFUSED, refusal=Refusal.NO_SENDER_ADDRESS)
    if real is not None:
        return Decision(None, visible, real)
    return call.ctx.decide(Direction.OUT, SocketType.DGRAM, visible)


def _convert_then_send(call: Call, fd: int, sock: socket.socket, verdict: Decision, dests: list,
                       messages: list[Message], flags: int, family: int):
    err = yield from become_client(call, fd, sock, verdict)
    if err < 0:
        return err
    with call.thread.borrowed_socket(fd) as unix:
        if unix is None or inode_of(unix) not in call.ctx.registry.bound_clients:
            return -errno.EBADF  # another thread closed or replaced it meanwhile
        return (yield from _send(call, fd, unix, dests, messages, flags, family))


def become_client(call: Call, fd: int, sock: socket.socket, verdict: Decision, connect: bool = False):
    """Generator: put at fd, in place of the IP datagram socket `sock`, a Unix
    one of the supervisor's, bound to a private reply address, whose datagrams
    go where `verdict` says (connected there if `connect`). Returns 0 (or the
    connect's result) or -errno; on failure the program's fd is as it was."""
    ctx, thread = call.ctx, call.thread
    before = address_of(sock.family, sock.getsockname())
    if isinstance(before, IPAddr) and before.port and inode_of(sock) in ctx.registry.pinned:
        ctx.log(0, f"{call.describe()}: {verdict.visible}: fd {fd} is bound to UDP {before} by the program, "
                   "so it stays on the network and cannot reach a Unix socket (ENETUNREACH); "
                   "add an in rule for that address, or send from another socket")
        return -errno.ENETUNREACH
    server = None
    if verdict.real != UNNAMED and not verdict.real.abstract:
        try:
            server = os.stat(verdict.real.name)
        except OSError:
            pass  # nobody there (yet): the send will say so
    try:
        path, access, mode = ctx.replies.new_path(thread.identity().euid, server)
    except OSError as err:
        ctx.log(0, f"{call.describe()}: cannot make a reply address: {err.strerror or err}")
        return -(err.errno or errno.EIO)
    own = UnixAddr(path)
    with stand_in(SocketType.DGRAM) as new:
        res = perform.bind(call, new, pack(own))  # as the program: the file is its own
        if res < 0:
            ctx.log(0, f"{call.describe()}: binding the reply address {own} failed: {os.strerror(-res)}")
            return res
        ident = socketfile.file_id(path, new)
        try:
            if mode is not None:
                socketfile.chmod_ours(path, ident, mode)
        except OSError as err:
            ctx.log(0, f"{call.describe()}: the reply address {own} was changed under us: {err.strerror}")
            socketfile.remove_if_ours(path, ident)
            return -errno.EPERM
        if connect:
            res = yield from perform.connect_unix(call, fd, new, verdict.visible, verdict.real, wait=False,
                                                  reply=ctx.registry.peers.sent_to_us(verdict.real))
            if res < 0:
                socketfile.remove_if_ours(path, ident)
                return res
        err = yield from install(call, fd, sock, new)
        if err < 0:
            socketfile.remove_if_ours(path, ident)
            ctx.log(0, f"{call.describe()}: could not put the Unix socket for {verdict.visible} at fd {fd}: "
                       f"{os.strerror(-err)}")
            return err
        inode = inode_of(new)
    if access == "anyone":
        ctx.warn_once(("anyone", verdict.real), f"{verdict.real} belongs to another user with no group in common "
                      "with this program: its replies come to sockets that any local user may write to")
    local = before if isinstance(before, IPAddr) and before.port else None
    if verdict.real == UNNAMED:  # sealed: a bind to port 0, no destination yet
        local = verdict.visible
    ctx.registry.add_bound_client(inode, Client(
        verdict.real, verdict.visible, SocketType.DGRAM, local=local, own=own, file_id=ident))
    if verdict.real == UNNAMED:
        ctx.log(1, f"{call.describe()}: {verdict.visible} -> {own} (sealed: a private address, not UDP)")
        return res
    ctx.registry.peers.remember(verdict.visible, verdict.real)
    ctx.log(1, f"{call.describe()}: datagrams to {verdict.visible} -> {verdict.real} (replies to {own})")
    return res


def compiled_destination(ctx):
    """For the notify backend's compiled sendto (redirect/_fastpath.c, which
    sends its copy of the datagram as _send does): where a datagram from the
    converted datagram socket `inode` to the address `dest` (as the program
    wrote it) goes, if that is to a sender we showed it for (packed, and
    whether the program was sent to from there: an answer), else None (the
    handlers judge it)."""
    def destination(inode: int, dest: bytes) -> tuple[bytes, bool] | None:
        conv = datagram(ctx.registry, inode)
        if conv is None:
            return None
        visible = kernel_reads(dest, conv.shown_family, True, "send")
        peers = ctx.registry.peers
        real = peers.real(visible) if isinstance(visible, IPAddr) else None
        if real is None or real == UNNAMED:
            return None
        return pack(real), peers.sent_to_us(real)
    return destination


def destination(call: Call, visible: IPAddr) -> UnixAddr | int:
    """Where a converted socket's datagram to `visible` goes, or -errno (logged)."""
    ctx = call.ctx
    verdict = verdict_for(call, visible)
    if verdict is None:
        ctx.warn_once(("unreachable", visible), f"{call.describe()}: {visible}: this socket is a Unix socket now, "
                      "and no out rule sends datagrams for that address anywhere (ENETUNREACH)")
        return -errno.ENETUNREACH
    if verdict.error:
        return refuse(call, visible, verdict)
    if verdict.rule is not None:
        ctx.registry.peers.remember(visible, verdict.real)
    return verdict.real


def _send(call: Call, fd: int, sock: socket.socket, dests: list, messages: list[Message], flags: int,
          family: int | None):
    """Generator: the program's send on a converted socket, every IP
    destination replaced by its Unix address; a batch stops before the first
    destination that fails. The supervisor sends (perform.send), so what goes
    out is what was judged, and a full receiver drops the datagram as UDP would."""
    if family is None:  # a from-unix socket: it is a Unix socket, and so are its destinations
        return (yield from send_all(call, fd, sock, messages, flags))
    batch = []
    for visible, message in zip(dests, messages):
        if isinstance(visible, int):  # the kernel would refuse this address
            if not batch:
                return visible
            break
        real = destination(call, visible) if isinstance(visible, IPAddr) else None
        if isinstance(real, int):
            if not batch:
                return real
            break
        message.name = pack(real) if real is not None else None
        # An answer to a sender the program was shown: it sent to the program,
        # so the program may answer, whatever ids it has since taken (a server
        # that drops privileges or chroots after its bind).
        message.reply = real is not None and call.ctx.registry.peers.sent_to_us(real)
        batch.append(message)
    for message in batch:
        if len(message.data) > _MAX_UDP_PAYLOAD[family]:
            return -errno.EMSGSIZE
        if message.control and _asks_gso(message.control):
            call.ctx.warn_once(("gso", call.thread.process.tgid), f"{call.describe()}: UDP segmentation "
                               "offload (UDP_SEGMENT) on a Unix socket: refused with EIO, so the program "
                               "sends datagram by datagram")
            return -errno.EIO  # what a device without GSO answers; programs fall back
    res = yield from send_all(call, fd, sock, batch, flags, drop_when_full=True)
    if -res in (errno.ENOENT, errno.ECONNREFUSED):  # nobody bound there: UDP's "port unreachable"
        call.ctx.log(1, f"{call.describe()}: nobody receives at {unpack(batch[0].name or b'')} (ECONNREFUSED)")
        return -errno.ECONNREFUSED
    if res == -errno.EPERM:
        # The receiver is connected to someone else: UDP would drop the datagram.
        call.ctx.log(2, f"{call.describe()}: {unpack(batch[0].name or b'')} takes no datagram from us; dropped")
        return len(batch[0].data) if call.name != "sendmmsg" else 1
    return res


_MAX_UDP_PAYLOAD = {AF_INET: 65507, AF_INET6: 65527}
_UDP_SEGMENT = 103  # (not in Python's socket module)


def _asks_gso(control: bytes) -> bool:
    return any(level == socket.SOL_UDP and kind == _UDP_SEGMENT for level, kind, _ in cmsgs(control))


def connect_datagram(call: Call, conv: Converted, sock: socket.socket, data: bytes):
    """connect() on a converted datagram socket: to an address we showed (a
    server answering one client) or one an out rule names."""
    fd = call.args[0]
    visible = kernel_reads(data, conv.shown_family, True, "connect")
    if isinstance(visible, int):
        return visible
    if visible == NO_ADDRESS:
        return perform.connect(call, fd, sock, bytes(2))  # AF_UNSPEC: disconnect
    real = destination(call, visible)
    if isinstance(real, int):
        return real
    return _connect(call, fd, sock, conv, visible, real)


def _connect(call: Call, fd: int, sock: socket.socket, conv: Converted, visible: IPAddr, real: UnixAddr):
    reply = call.ctx.registry.peers.sent_to_us(real)  # a server connecting to one of its clients
    res = yield from perform.connect_unix(call, fd, sock, visible, real, reply=reply)
    if res == 0 and conv.role is Role.CLIENT:
        client = call.ctx.registry.client(conv.inode)
        client.real, client.visible = real, visible
    return res
