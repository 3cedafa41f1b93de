"""Swapping a program's socket for a Unix one at the same fd: what must
survive the swap (flags, close-on-exec, SOL_SOCKET options the program set,
the F_SETOWN owner and signal, other fds of the same socket, epoll
registrations) is read before and redone after. Kernel mechanics, over the
backend's thread interface (put_socket, epoll_add, fds); what a handler
decides to swap is in handlers/."""
from __future__ import annotations

import fcntl
import os
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .rules import SocketType

# SOL_SOCKET options that mean the same on a Unix socket: (name, size of value).
_COPIED_OPTIONS = [
    (socket.SO_REUSEADDR, 4), (socket.SO_KEEPALIVE, 4), (socket.SO_BROADCAST, 4),
    (socket.SO_OOBINLINE, 4), (socket.SO_SNDBUF, 4), (socket.SO_RCVBUF, 4),
    (socket.SO_RCVLOWAT, 4), (socket.SO_PRIORITY, 4), (socket.SO_PASSCRED, 4),
    (socket.SO_REUSEPORT, 4), (socket.SO_LINGER, 8), (20, 16), (21, 16),  # SO_RCVTIMEO, SO_SNDTIMEO
    (36, 4),  # SO_MARK
    (29, 4), (35, 4),  # SO_TIMESTAMP, SO_TIMESTAMPNS: control messages the program asked for
]
# IP-level options a program may set before bind and read back (or rely on, as
# IP_PKTINFO): the Unix socket has no such level, so their values are kept for it.
_IP_OPTIONS = [
    (socket.IPPROTO_IP, 1), (socket.IPPROTO_IP, 2), (socket.IPPROTO_IP, 8),         # IP_TOS, IP_TTL, IP_PKTINFO
    (socket.IPPROTO_IP, 12), (socket.IPPROTO_IP, 13),                                 # IP_RECVTTL, IP_RECVTOS
    (socket.IPPROTO_IPV6, 26), (socket.IPPROTO_IPV6, 49), (socket.IPPROTO_IPV6, 51),  # V6ONLY, RECVPKTINFO, RECVHOPLIMIT
    (socket.IPPROTO_TCP, 1),                                                          # TCP_NODELAY
]
_DOUBLED = {socket.SO_SNDBUF, socket.SO_RCVBUF}  # the kernel reports twice what was set
# A line of an epoll fd's fdinfo: "tfd: 5 events: 19 data: 5  pos:0 ino:1c0b sdev:8"
_EPOLL_LINE = re.compile(r"tfd:\s*(?P<tfd>\d+)\s+events:\s*(?P<events>[0-9a-f]+)\s+"
                         r"data:\s*(?P<data>[0-9a-f]+).*\bino:(?P<ino>[0-9a-f]+)")
F_GETOWN_EX, F_SETOWN_EX = 16, 15  # (not in Python's fcntl module)


@dataclass
class _SocketState:
    status_flags: int
    cloexec: bool
    options: dict[int, bytes]
    ip_options: dict[tuple[int, int], bytes]
    owner: bytes
    signal: int
    epoll: list[tuple[int, int, int, int]]  # (epoll fd, watched fd, events, data) on this socket
    siblings: list[int]                 # other fds of the same socket in this fd table


def _options(sock: socket.socket) -> dict[int, bytes]:
    options = {}
    for name, size in _COPIED_OPTIONS:
        try:
            options[name] = sock.getsockopt(socket.SOL_SOCKET, name, size)
        except OSError:
            pass
    return options


def _ip_options(sock: socket.socket) -> dict[tuple[int, int], bytes]:
    found = {}
    for level, name in _IP_OPTIONS:
        try:
            value = sock.getsockopt(level, name, 4)
        except OSError:
            continue  # not for this family or protocol
        if any(value):
            found[(level, name)] = value
    return found


_DEFAULTS: dict[tuple[int, int], dict[int, bytes]] = {}


def _set_by_program(sock: socket.socket) -> dict[int, bytes]:
    """The SOL_SOCKET options whose values differ from a fresh socket of the
    same family and type: what the program set. (TCP's default buffer sizes
    are where it starts to grow them; copied onto a Unix socket, which never
    grows them, they made bulk transfers several times slower.)"""
    key = (sock.family, sock.type)
    if key not in _DEFAULTS:
        with socket.socket(sock.family, sock.type) as fresh:
            _DEFAULTS[key] = _options(fresh)
    defaults = _DEFAULTS[key]
    return {name: value for name, value in _options(sock).items() if defaults.get(name) != value}


def _capture(thread, fd: int, sock: socket.socket) -> _SocketState:
    watches, siblings = _scan_fds(thread, fd, os.fstat(sock.fileno()).st_ino)
    return _SocketState(
        status_flags=fcntl.fcntl(sock.fileno(), fcntl.F_GETFL),
        cloexec=thread.fd_cloexec(fd),
        options=_set_by_program(sock),
        ip_options=_ip_options(sock),
        owner=fcntl.fcntl(sock.fileno(), F_GETOWN_EX, bytes(8)),
        signal=fcntl.fcntl(sock.fileno(), fcntl.F_GETSIG),
        epoll=watches,
        siblings=siblings,
    )


def _scan_fds(thread, fd: int, inode: int) -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """What else refers to the socket being swapped: other fds of it (dup'ed
    before bind) and epoll registrations of any of those fds. The swap would
    leave the first on TCP and drops the second, so both are redone."""
    target = f"socket:[{inode}]"
    siblings, epolls = [], []
    for other, link in thread.fds():
        if link == target and other != fd:
            siblings.append(other)
        elif link == "anon_inode:[eventpoll]":
            epolls.append(other)
    ours = {fd, *siblings}
    watches = []  # (epoll fd, watched fd, events, data)
    for epfd in epolls:
        try:
            with open(f"/proc/{thread.tid}/fdinfo/{epfd}") as info:
                for line in info:
                    found = _EPOLL_LINE.match(line)
                    if found and int(found["tfd"]) in ours and int(found["ino"], 16) == inode:
                        watches.append((epfd, int(found["tfd"]), int(found["events"], 16), int(found["data"], 16)))
        except OSError:
            continue
    return watches, siblings


def _restore(sock: socket.socket, state: _SocketState, log: Callable[[int, str], None]) -> None:
    fresh = _options(sock)
    for name, value in state.options.items():
        if fresh.get(name) == value:
            continue
        if name in _DOUBLED:
            value = struct.pack("=i", struct.unpack("=i", value)[0] // 2)
        try:
            sock.setsockopt(socket.SOL_SOCKET, name, value)
        except OSError as err:
            log(2, f"could not carry socket option {name} over: {err.strerror}")
    # O_NONBLOCK came with the new socket; O_ASYNC and the owner need setting.
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, state.status_flags)
    if state.owner != bytes(8):
        fcntl.fcntl(sock.fileno(), F_SETOWN_EX, state.owner)
    if state.signal:
        fcntl.fcntl(sock.fileno(), fcntl.F_SETSIG, state.signal)


def stand_in(kind: SocketType) -> socket.socket:
    """A Unix socket of the supervisor's to take an IP socket's place: it is
    bound or connected here, with the supervisor's own copy of the address,
    and goes to the program only once that worked (install). Non-blocking: the
    supervisor never waits; install gives it the program's flags."""
    stype = kind.sock_type
    return socket.socket(socket.AF_UNIX, stype | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)


def install(thread, fd: int, sock: socket.socket, new: socket.socket, log: Callable[[int, str], None]):
    """Generator: put a duplicate of the supervisor's socket `new` at fd in
    place of `sock` (the program's socket there), keeping flags, close-on-exec,
    options, owner and epoll registrations, and at other fds of the same socket.
    Returns -errno (the program's fd is as it was), or the IP-level options the
    program had set, which the Unix socket has no place for."""
    state = _capture(thread, fd, sock)
    places = [(fd, state.cloexec)] + [(other, thread.fd_cloexec(other)) for other in state.siblings]
    res = yield from thread.put_socket(new, places)
    if res < 0:
        return res
    _restore(new, state, log)  # the same open file as the program's now
    for epfd, watched, events, data in state.epoll:
        res = yield from thread.epoll_add(epfd, watched, events, data)
        if res < 0:
            log(0, f"could not re-register fd {watched} in epoll fd {epfd}: {os.strerror(-res)}")
    return state.ip_options
