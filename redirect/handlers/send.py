"""sendto(), sendmsg(), sendmmsg(): where a message with an address goes.

Stream sockets: TCP ignores the address on a connected socket (a Unix socket
would refuse it, so it is dropped), and MSG_FASTOPEN connects to it (so it
goes through the out rules like connect()). Datagram sockets: see
datagram_send.py. Where a rule or sealed mode is about sends, the supervisor
makes the send itself (perform.py) with its own copies of the address and the
message: neither the bytes nor the fd can change between judging and sending.
"""
from __future__ import annotations

import errno
import socket

from ..decision import Decision, Refusal
from ..sockaddr import AF_INET, AF_INET6, AF_UNSPEC, IPAddr, family_of, kernel_reads, pack
from ..program import PASS
from ..rules import Direction, SocketType
from . import datagram_send, perform
from .bind_connect import connect_to
from .context import Call, on_socket, refuse
from .identify import identify, inode_of, socket_type
from .memory import (MMSGHDR_SIZE, MSGHDR, MSG_CONTROL, MSG_CONTROLLEN, MSG_IOV, MSG_IOVLEN, MSG_NAME, MSG_NAMELEN,
                     read_buffer, read_headers, read_sockaddr)
from .perform import Message, read_message

_MAX_VLEN = 1024                   # UIO_MAXIOV: the kernel's own limit on vlen
_MAX_COPY = 1 << 20                # what one send copies into the supervisor at most
_IP = (AF_INET, AF_INET6)


def sendto(call: Call):
    dest, dest_len = call.args[4], call.args[5] & 0xFFFFFFFF
    return _check(call, [(dest, dest_len)], [])


def sendmsg(call: Call):
    return _check(call, *_names(call, 1, MSGHDR.size))


def sendmmsg(call: Call):
    return _check(call, *_names(call, min(call.args[2], _MAX_VLEN), MMSGHDR_SIZE))


def _names(call: Call, count: int, stride: int) -> tuple[list[tuple[int, int]], list[bytes]]:
    """The destinations (pointer, length) of a sendmsg/sendmmsg, and its headers."""
    headers = read_headers(call, call.args[1], count, stride)
    fields = [MSGHDR.unpack(header[:MSGHDR.size]) for header in headers]
    return [(f[MSG_NAME], f[MSG_NAMELEN]) for f in fields], headers


def _flags(call: Call) -> int:
    return call.args[2] if call.name == "sendmsg" else call.args[3]


def _check(call: Call, names: list[tuple[int, int]], headers: list[bytes]):
    """`headers`: the program's msghdrs (none for sendto)."""
    if call.name != "sendto" and not headers:
        return PASS if not call.ctx.guards(Direction.OUT) else -errno.EFAULT
    datas = [read_sockaddr(call, p, n) if p else None for p, n in names]
    if not call.ctx.guards(Direction.OUT) \
            and not any(d is not None and family_of(d) in (*_IP, AF_UNSPEC) for d in datas):
        return PASS  # no rule is about sends, and no IP address is named: nothing to judge
    return on_socket(call, lambda sock: _send_on(call, sock, datas, headers))


def _messages(call: Call, headers: list[bytes]) -> list[Message] | int:
    """Copies of what the program sends (names are filled in by the caller)."""
    if call.name == "sendto":
        data = read_buffer(call, call.args[1], min(call.args[2], _MAX_COPY)) if call.args[2] else b""
        return -errno.EFAULT if data is None else [Message(None, data)]
    messages, total = [], 0
    for header in headers:
        fields = MSGHDR.unpack(header[:MSGHDR.size])
        message = read_message(call, None, fields[MSG_IOV], fields[MSG_IOVLEN], fields[MSG_CONTROL],
                               fields[MSG_CONTROLLEN], _MAX_COPY - total)
        if isinstance(message, int):
            return message if not messages else messages
        messages.append(message)
        total += len(message.data)
        if total >= _MAX_COPY:
            break  # a shorter batch (or a short stream send): the program sends the rest again
    return messages


def _send_on(call: Call, sock: socket.socket, datas: list[bytes | None], headers: list[bytes]):
    fd, flags = call.args[0], _flags(call)
    conv = identify(call, fd, inode_of(sock))
    if sock.type == socket.SOCK_STREAM:
        return _stream(call, fd, sock, conv, datas, headers, flags)
    messages = _messages(call, headers)
    if isinstance(messages, int):
        return messages
    datas = datas[:len(messages)]
    kind = socket_type(sock)
    if kind == SocketType.DGRAM and conv is not None:
        family = conv.shown_family
        dests = [_read(d, family) for d in datas]
        return datagram_send.send_datagrams(call, fd, sock, conv, dests, messages, flags)
    if kind == SocketType.DGRAM and sock.family in _IP:
        dests = [_read(d, sock.family, sock) for d in datas]
        first = next((d for d in dests if isinstance(d, int)), None)
        if first is not None and not any(isinstance(d, IPAddr) for d in dests):
            return first
        return datagram_send.convert_and_send(call, fd, sock, dests, messages, flags)
    if sock.family in _IP and call.ctx.sealed and any(d is not None for d in datas):
        # Raw, ICMP, SCTP, UDP-Lite...: no rule converts them, and whatever the
        # family field says (a raw IPv6 socket takes AF_UNSPEC for AF_INET6),
        # an address is somewhere to send to.
        return sealed_off(call, sock.family)
    for message, data in zip(messages, datas):  # Unix, netlink...: as the program wrote it
        message.name = data
    return datagram_send.send_all(call, fd, sock, messages, flags)


def _read(data: bytes | None, family: int | None, sock: socket.socket | None = None):
    """A datagram destination as the kernel reads it for `family` (None: no address)."""
    if data is None or family is None:
        return None
    v6only = sock is not None and family == AF_INET6 and sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    view = kernel_reads(data, family, True, "send", bool(v6only))
    return view if isinstance(view, (IPAddr, int)) else None


def sealed_off(call: Call, family: int) -> int:
    call.ctx.log(0, f"{call.describe()}: a send to an address on an {socket.AddressFamily(family).name} socket no "
                    f"rule can convert: {Refusal.SEALED.text} (ENETUNREACH)")
    return -errno.ENETUNREACH


def _stream(call: Call, fd: int, sock: socket.socket, conv, datas: list[bytes | None], headers: list[bytes],
            flags: int):
    """A send on a stream socket: MSG_FASTOPEN on an IP one connects first;
    otherwise the address is dropped, as TCP ignores it."""
    if flags & socket.MSG_FASTOPEN and conv is None and sock.family in _IP and datas and datas[0] is not None:
        view = kernel_reads(datas[0], sock.family, False, "connect")
        if isinstance(view, int):
            return view
        if isinstance(view, IPAddr):
            return _fast_open(call, fd, sock, view, datas[0], flags)
    return _without_address(call, fd, sock, headers, flags & ~socket.MSG_FASTOPEN)


def _fast_open(call: Call, fd: int, sock: socket.socket, visible: IPAddr, data: bytes, flags: int):
    """sendto(MSG_FASTOPEN) = connect, then send: both as the rules say."""
    verdict = call.ctx.decide(Direction.OUT, SocketType.STREAM, visible)
    if verdict is not None and verdict.error:
        return refuse(call, visible, verdict)
    if verdict is not None and call.name != "sendto":
        unsupported = Decision(verdict.rule, visible, error=errno.EOPNOTSUPP, refusal=Refusal.UNSUPPORTED,
                               detail=f"TCP Fast Open through {call.name}() is not supported")
        return refuse(call, visible, unsupported)
    if verdict is None:
        res = yield from perform.connect(call, fd, sock, pack(visible))
        if res < 0:
            return res  # EINPROGRESS (non-blocking): as Fast Open without a cookie, the data waits
        return (yield from _without_address(call, fd, sock, [], flags & ~socket.MSG_FASTOPEN))
    res = yield from connect_to(call, fd, sock, SocketType.STREAM, verdict, is_unix=False)
    if res < 0:
        return res
    with call.thread.borrowed_socket(fd) as unix:  # the Unix socket connect_to put there
        if unix is None or call.ctx.registry.client(inode_of(unix)) is None:
            return -errno.EBADF  # another thread closed or replaced it meanwhile
        return (yield from _without_address(call, fd, unix, [], flags & ~socket.MSG_FASTOPEN))


def _without_address(call: Call, fd: int, sock: socket.socket, headers: list[bytes], flags: int):
    """The same send with the destination left out, made by the supervisor on
    its duplicate of the socket."""
    messages = _messages(call, headers)
    if isinstance(messages, int):
        return messages
    return (yield from datagram_send.send_all(call, fd, sock, messages, flags))
