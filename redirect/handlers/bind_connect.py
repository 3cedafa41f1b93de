"""bind() and connect(): where a matching IP socket becomes a Unix socket
(and, in sealed mode, where IP sockets no rule converts are refused)."""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import replace

from .. import socketfile
from ..decision import SEALED, SEALED_REASON, Decision
from ..peers import UNNAMED
from ..registry import Client, Listener
from ..sockaddr import IPAddr, UnixAddr, pack, unpack
from ..tracee import PASS, Scratch, Syscall
from . import datagram, datagram_send
from .common import (Call, address_of, connect_unix, identify, make_unix, read_sockaddr, replace_socket,
                     socket_type, unix_name)

_FAMILIES = {socket.AF_INET, socket.AF_INET6, socket.AF_UNIX}


def _prepare(call: Call, direction: str):
    """Common first steps: the program's address, the socket, the verdict.
    Returns (verdict or PASS or -errno, socket type, whether the socket is already Unix)."""
    fd, addr, length = call.args[:3]
    data = read_sockaddr(call, addr, length)
    visible = unpack(data) if data else None
    if visible is None or (isinstance(visible, UnixAddr) and not call.ctx.unix_rules):
        return PASS, None, False
    with call.thread.socket(fd) as sock:
        if sock is None or sock.family not in _FAMILIES:
            return PASS, None, False
        kind = socket_type(sock)
        is_unix = sock.family == socket.AF_UNIX
        ours = _ours(call, fd, sock, direction) if is_unix and isinstance(visible, IPAddr) else None
        if isinstance(visible, UnixAddr):
            usable = is_unix
        else:
            usable = sock.family == visible.family or ours is not None
    if kind is None and call.ctx.sealed and isinstance(visible, IPAddr) and usable:
        call.ctx.log(0, f"{call.describe()}: {visible}: {SEALED_REASON} (a socket no rule can convert)")
        return -(SEALED[direction]), None, False
    if kind is None or not usable:
        return PASS, None, False
    if direction == "out" and kind == "dgram" and isinstance(visible, IPAddr):
        verdict = datagram_send.verdict_for(call, visible)  # also: a reply from a fresh socket
    else:
        verdict = call.ctx.decide(direction, kind, visible)
    if isinstance(ours, Listener):
        # bind() before connect(): an in rule made it a Unix socket, so only an
        # out rule can take it further; it is a client now, not a listener.
        call.ctx.registry.drop_listener(ours)
        socketfile.remove_if_ours(ours.real.name, ours.file_id)
        if verdict is None:
            call.ctx.log(0, f"{call.describe()}: {visible}: the socket was bound by an in rule, so it is a "
                            "Unix socket now, and no out rule matches this connect (ECONNREFUSED)")
            return -errno.ECONNREFUSED, kind, is_unix
    if verdict is None:
        if direction == "in" and kind == "dgram" and isinstance(visible, IPAddr) and visible.port:
            call.ctx.registry.pin(call.thread.fd_inode(fd))  # a UDP port of its choosing: keep it real
        return PASS, None, False
    if verdict.reason == SEALED_REASON and direction == "in" and isinstance(visible, IPAddr) \
            and visible.port == 0 and not is_unix:
        # Sealed, a bind to port 0 (a client choosing its own port, Go's start-up
        # probes): a stream socket bound so reaches nobody (its listen and
        # connect are sealed); a datagram one gets a private Unix address, so it
        # can still talk to what the rules allow.
        if kind == "stream":
            return PASS, None, False
        return Decision(None, replace(visible, port=call.ctx.ports.allocate()), real=UNNAMED), kind, is_unix
    if direction == "in" and not verdict.error and verdict.real and not verdict.real.abstract \
            and isinstance(visible, IPAddr) and visible.port == 0:
        verdict = _free_port(call, kind, visible, verdict)
    if verdict.error:
        level = 1 if verdict.reason == "rejected by rule" else 0
        call.ctx.log(level, f"{call.describe()}: {visible}: {verdict.reason} "
                            f"({errno.errorcode.get(verdict.error, verdict.error)}; {verdict.source})")
        if direction == "in":
            _release_port(call, verdict)
        return -verdict.error, kind, is_unix
    return verdict, kind, is_unix


def _ours(call: Call, fd: int, sock: socket.socket, direction: str) -> Client | Listener | None:
    """A Unix socket we made of an IP one, that the program now connects: a
    client retrying connect(), or one it bound before connecting."""
    if direction != "out":
        return None
    inode = call.thread.fd_inode(fd)
    listener = call.ctx.registry.listener_inodes.get(inode)
    if listener is not None and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return listener
    return call.ctx.registry.client(inode)


def _free_port(call: Call, kind: str, visible: IPAddr, verdict: Decision) -> Decision:
    """A bind to port 0 must not fail because the path its port gives is taken
    (another program under another redirect): try other ports."""
    stype = socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM
    for _ in range(16):
        if verdict.error or socketfile.clear_stale(verdict.real.name, stype) != errno.EADDRINUSE:
            return verdict
        _release_port(call, verdict)
        verdict = call.ctx.decide("in", kind, visible)
    return verdict


def _release_port(call: Call, verdict: Decision) -> None:
    if isinstance(verdict.visible, IPAddr):
        call.ctx.ports.release(verdict.visible.port)


def bind(call: Call):
    verdict, kind, is_unix = _prepare(call, "in")
    if not isinstance(verdict, Decision):
        return verdict
    if verdict.real == UNNAMED:
        return datagram_send.become_client(call, call.args[0], verdict)  # sealed: a private address
    return _bind(call, call.args[0], kind, verdict, is_unix)


def _bind(call: Call, fd: int, kind: str, verdict: Decision, is_unix: bool, blackhole: bool = False):
    ctx = call.ctx
    if verdict.rule.action == "systemd" and not blackhole:
        return (yield from _hand_over(call, fd, kind, verdict, is_unix))
    real, blackhole = verdict.real, blackhole or verdict.rule.action == "blackhole"
    holder = None if blackhole else ctx.registry.listener_at(real)
    fresh = False  # a new socket even where --activate opened one
    if holder is not None and kind == "dgram" and holder.visible == verdict.visible \
            and _reuses(call, fd, socket.SO_REUSEADDR):
        # UDP with SO_REUSEADDR (socat's UDP-LISTEN,fork): the newest socket gets
        # new senders, the older one keeps the peer it is connected to.
        opened = ctx.activation.opened_at(real, kind)  # the first holder may be --activate's socket
        for ident in (holder.file_id, opened.file_id if opened else None):
            if socketfile.remove_if_ours(real.name, ident):
                break
        holder, fresh = None, True
    if holder is None and not blackhole and real in ctx.binding:
        # Another thread is binding the same path right now (the IPv4 and IPv6
        # listeners of one port, started at once): as if it were done.
        ctx.log(1, f"{call.describe()}: {verdict.visible}: {real} is being bound by another thread; blackholing")
        blackhole = True
    if holder is not None:
        if holder.visible == verdict.visible and not _reuses(call, fd, socket.SO_REUSEPORT):
            ctx.log(1, f"{call.describe()}: {verdict.visible} is already bound by this program")
            return -errno.EADDRINUSE  # as TCP would say: "is this port free?" gets a true answer
        # The IPv4 and IPv6 listeners of one port: the second gets nothing, quietly.
        ctx.log(1, f"{call.describe()}: {verdict.visible}: {real} is already bound here; blackholing")
        blackhole = True
    if blackhole:
        # Bound in a folder that goes away right after: listen and accept work,
        # nobody can ever connect, nothing is left on disk.
        with socketfile.throwaway_folder(call.thread.euid()) as folder:
            hole = UnixAddr(os.fsencode(os.path.join(folder, "blackhole")))
            return (yield from _bind_at(call, fd, kind, verdict, is_unix, hole, True))
    opened = None if fresh else ctx.activation.opened_at(real, kind)
    if opened is not None:  # --activate made it already
        return (yield from _install(call, fd, kind, verdict, opened))
    ctx.binding.add(real)
    try:
        return (yield from _bind_at(call, fd, kind, verdict, is_unix, real, False))
    finally:
        ctx.binding.discard(real)


def _bind_at(call: Call, fd: int, kind: str, verdict: Decision, is_unix: bool, real: UnixAddr, blackhole: bool):
    """Generator: bind fd (made a Unix socket first) at real, as the verdict says."""
    ctx = call.ctx
    stype = socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM
    if not blackhole and not real.abstract:
        problem = socketfile.permission_problem(verdict.rule)
        if problem:
            ctx.log(0, f"{call.describe()}: cannot bind {verdict.visible} to {real}: {problem} (EPERM)")
            _release_port(call, verdict)
            return -errno.EPERM
        err = socketfile.clear_stale(real.name, stype)
        if err:
            ctx.log(0, f"{call.describe()}: cannot bind {verdict.visible} to {real}: {os.strerror(err)}"
                       + (" (a live socket or another file is in the way)" if err == errno.EADDRINUSE else ""))
            _release_port(call, verdict)
            return -err
    if not is_unix:
        err = yield from make_unix(call, fd, kind)
        if err < 0:
            _release_port(call, verdict)
            return err
    packed = pack(real)
    restricted = not blackhole and not real.abstract and socketfile.has_permissions(verdict.rule)
    if restricted:
        # The file is born with the socket's own mode (minus the umask): never
        # looser than the rule asks, not even for an instant; then it gets its
        # owner, group and final mode.
        with call.thread.socket(fd) as sock:
            if sock is None:
                return -errno.EBADF
            os.fchmod(sock.fileno(), socketfile.initial_mode(verdict.rule))
    res = yield Syscall("bind", fd, (yield Scratch(packed)), len(packed))
    if restricted and res >= 0:
        res = socketfile.apply_permissions(real.name, verdict.rule, call.thread.euid(), call.thread.umask())
    if res < 0:
        missing = " (its directory does not exist)" if res == -errno.ENOENT else ""
        ctx.log(0, f"{call.describe()}: binding {verdict.visible} to {real} failed: {os.strerror(-res)}{missing}")
        _release_port(call, verdict)
        return res
    ident = None if real.abstract or blackhole else socketfile.file_id(real.name)
    inode = call.thread.fd_inode(fd)
    ctx.registry.add_listener(Listener(real, verdict.visible, kind, inode, ident,
                                       remove=not (blackhole or verdict.rule.noremove)))
    ctx.log(1, f"{call.describe()}: {verdict.visible} -> {'blackhole' if blackhole else real}")
    return 0


def _hand_over(call: Call, fd: int, kind: str, verdict: Decision, is_unix: bool):
    """Generator: a bind that a systemd rule matched gets a passed listening
    socket instead (a duplicate: the supervisor keeps its own); with none left,
    a blackholed one and a warning."""
    ctx, rule = call.ctx, verdict.rule
    claimed = {r.target for r in ctx.rules if r.action == "systemd" and r.target is not None}
    passed = ctx.activation.pick(rule.target, claimed, ctx.held() | ctx.activation.reserved, kind)
    if passed is None:
        ctx.log(0, f"{call.describe()}: {verdict.visible}: no passed socket left for rule {rule.text} "
                   f"({len(ctx.activation.passed)} passed in all); bound where nobody can connect")
        return (yield from _bind(call, fd, kind, verdict, is_unix, blackhole=True))
    if passed.kind != kind:
        ctx.log(0, f"{call.describe()}: {verdict.visible}: {passed.describe()} is a {passed.kind} socket, "
                   f"the program's is a {kind} one (EPROTOTYPE)")
        return -errno.EPROTOTYPE
    if passed.kind == "stream" and not passed.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        ctx.log(0, f"{call.describe()}: {verdict.visible}: {passed.describe()} is a connection, not a listening "
                   "socket (systemd's Accept=yes / systemd-socket-activate -a): that is inetd style, which "
                   "this program does not speak (EINVAL)")
        return -errno.EINVAL
    ctx.activation.reserved.add(passed.inode)  # another thread's bind must not get it meanwhile
    try:
        return (yield from _install(call, fd, kind, verdict, passed))
    finally:
        ctx.activation.reserved.discard(passed.inode)


def _install(call: Call, fd: int, kind: str, verdict: Decision, passed):
    """Generator: put a duplicate of a supervisor's listening socket at fd."""
    ctx = call.ctx
    with call.thread.socket(fd) as sock:
        if sock is None:
            return -errno.EBADF
        err = yield from replace_socket(call, fd, sock, kind, passed=passed.sock)
    if err < 0:
        ctx.log(0, f"{call.describe()}: could not hand {passed.describe()} over: {os.strerror(-err)}")
        return err
    if passed.sock.family == socket.AF_UNIX:  # the program must still see its IP address
        real = unix_name(passed.sock) or UnixAddr(b"")
        ctx.registry.add_listener(Listener(real, verdict.visible, kind, call.thread.fd_inode(fd), remove=False))
    ctx.log(1, f"{call.describe()}: {verdict.visible} -> {passed.describe()}")
    return 0


def listen(call: Call):
    """listen() on an IP socket that was never bound binds it to a random port
    first: for the rules that is a bind to the wildcard address, port 0."""
    fd = call.args[0]
    with call.thread.socket(fd) as sock:
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or socket_type(sock) != "stream":
            return PASS
        bound = address_of(sock.family, sock.getsockname())
        if bound.port != 0:
            # Bound already (its bind() was seen). Sealed: only where a rule lets it.
            if call.ctx.sealed and all(call.ctx.decide("in", "stream", addr) is not None
                                       for addr in (bound, replace(bound, port=0))):
                call.ctx.log(0, f"{call.describe()}: {bound}: {SEALED_REASON} (EACCES; sealed mode)")
                return -errno.EACCES
            return PASS
        wildcard = IPAddr(sock.family, ipaddress.ip_address("0.0.0.0" if sock.family == socket.AF_INET else "::"), 0)
    verdict = call.ctx.decide("in", "stream", wildcard)
    if verdict is None:
        return PASS
    if verdict.error:
        _release_port(call, verdict)
        call.ctx.log(0, f"{call.describe()}: {wildcard}: {verdict.reason} "
                        f"({errno.errorcode.get(verdict.error)}; {verdict.source})")
        return -verdict.error
    return _bind_then_listen(call, fd, verdict)


def _bind_then_listen(call: Call, fd: int, verdict: Decision):
    res = yield from _bind(call, fd, "stream", verdict, False)
    if res < 0:
        return res
    return (yield Syscall("listen", *call.args))


def _reuses(call: Call, fd: int, option: int) -> bool:
    with call.thread.socket(fd) as sock:
        return sock is not None and sock.getsockopt(socket.SOL_SOCKET, option) != 0


def connect(call: Call):
    conv = identify(call, call.args[0])
    if conv is not None and conv.socket_type == "dgram" and datagram.shown_family(conv) is not None:
        return datagram_send.connect(call, conv)
    verdict, kind, is_unix = _prepare(call, "out")
    if not isinstance(verdict, Decision):
        return verdict
    return connect_to(call, call.args[0], kind, verdict, is_unix)


def connect_to(call: Call, fd: int, kind: str, verdict: Decision, is_unix: bool):
    """Generator: make fd a Unix socket (unless it is one) and connect it where
    the verdict says. Returns the connect result."""
    ctx = call.ctx
    if kind == "dgram" and not is_unix:
        err = yield from datagram_send.become_client(call, fd, verdict)
        if err < 0:
            return err
    else:
        if not is_unix:
            err = yield from make_unix(call, fd, kind)
            if err < 0:
                return err
        ctx.registry.add_client(call.thread.fd_inode(fd), Client(verdict.real, verdict.visible, kind))
    return (yield from connect_unix(call, fd, verdict.visible, verdict.real))


def sealed_socket(call: Call) -> int:
    """Only trapped in sealed mode, for families that reach a network and that
    no rule can convert (AF_PACKET and the like): refused."""
    call.ctx.log(0, f"{call.describe()}: socket family {call.args[0]}: sealed: the program may not use "
                    "the real network, and no rule can convert such a socket (EAFNOSUPPORT)")
    return -errno.EAFNOSUPPORT
