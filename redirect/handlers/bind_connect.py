"""bind() and connect(): where a matching IP socket becomes a Unix socket
(and, in sealed mode, where IP sockets no rule converts are refused)."""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import replace

from .. import socketfile
from ..decision import SEALED, Decision, Refusal
from ..identity import acting_as
from ..log import WARN
from ..peers import UNNAMED
from ..registry import Client, Listener
from ..rules import Action, Direction, SocketType
from ..sockaddr import NO_ADDRESS, IPAddr, UnixAddr, kernel_reads, pack, unpack
from ..program import PASS
from ..swap import stand_in
from . import datagram_send, perform, sockopt
from .context import Call, install, on_socket, refuse
from .identify import address_of, identify, inode_of, socket_type, unix_name
from .memory import read_buffer

_IP = (socket.AF_INET, socket.AF_INET6)


class Perform(bytes):
    """A verdict: run the call as it is, on the supervisor's duplicate of the
    socket, with these bytes as its address (the ones judged)."""


def read_address(call: Call) -> bytes | int:
    """The supervisor's own copy of a bind/connect address (args 1, 2), or -errno."""
    addr, length = call.args[1], call.args[2] & 0xFFFFFFFF
    if length > 128:
        return -errno.EINVAL
    if length == 0:
        return b""
    data = read_buffer(call, addr, length)
    return -errno.EFAULT if data is None else data


def _view(sock: socket.socket, data: bytes, call_kind: str, kind: SocketType | None):
    """The address as the kernel will take it on this socket (IP: kernel_reads;
    Unix: as written), and the bytes that say exactly that."""
    if sock.family not in _IP:
        visible = unpack(data) if sock.family == socket.AF_UNIX else None
        return (visible if isinstance(visible, UnixAddr) else None), data
    v6only = sock.family == socket.AF_INET6 and sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    view = kernel_reads(data, sock.family, kind == SocketType.DGRAM, call_kind, bool(v6only))
    if isinstance(view, int):
        return view, None
    if view == NO_ADDRESS:
        return view, bytes(16)  # AF_UNSPEC
    return view, pack(view)


def _prepare(call: Call, direction: Direction, sock: socket.socket, data: bytes):
    """The verdict on a bind (direction "in") or connect ("out") of `sock`, the
    program's socket (the supervisor's duplicate) with the address `data` (the
    supervisor's copy). Returns (Decision, Perform or -errno; socket type;
    whether the socket is already Unix)."""
    kind = socket_type(sock)
    is_unix = sock.family == socket.AF_UNIX
    ours = None
    if is_unix and direction == Direction.OUT:
        ours = _ours(call, sock)
    if ours is not None:  # a Unix socket of ours: the program still sees its IP family
        shown = ours.visible if isinstance(ours.visible, IPAddr) else None
        family = shown.family if shown is not None else socket.AF_UNIX
        visible = kernel_reads(data, family, kind == SocketType.DGRAM, "connect") if shown is not None else unpack(data)
        if isinstance(visible, int):
            return visible, kind, is_unix
        exact = data
        if not isinstance(visible, IPAddr):
            return Perform(exact), kind, is_unix
    else:
        visible, exact = _view(sock, data, "bind" if direction == Direction.IN else "connect", kind)
        if isinstance(visible, int):
            return visible, kind, is_unix
        if not isinstance(visible, (IPAddr, UnixAddr)) or visible == NO_ADDRESS or kind is None \
                or (isinstance(visible, UnixAddr) and (not is_unix or not call.ctx.unix_rules)):
            if kind is None and call.ctx.sealed and isinstance(visible, IPAddr):
                call.ctx.log(0, f"{call.describe()}: {visible}: {Refusal.SEALED.text} (a socket no rule can convert)")
                return -(SEALED[direction]), None, False
            return Perform(exact), kind, is_unix
    if direction == Direction.OUT and kind == SocketType.DGRAM and isinstance(visible, IPAddr):
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
        if direction == Direction.IN and kind == SocketType.DGRAM and isinstance(visible, IPAddr) and visible.port:
            call.ctx.registry.pin(inode_of(sock))  # a UDP port of its choosing: keep it real
        if call.ctx.verbosity >= 2:
            why = call.ctx.why_alone(direction, kind, visible)
            call.ctx.log(2, f"{call.describe()}: {visible}: left alone ({why})")
        return Perform(exact), kind, is_unix
    if verdict.refusal is Refusal.SEALED and direction == Direction.IN and isinstance(visible, IPAddr) \
            and visible.port == 0 and not is_unix:
        # Sealed, a bind to port 0 (a client choosing its own port, Go's start-up
        # probes): a stream socket bound so reaches nobody (its listen and
        # connect are sealed); a datagram one gets a private Unix address, so it
        # can still talk to what the rules allow.
        if kind == SocketType.STREAM:
            return Perform(exact), kind, is_unix
        port = call.ctx.ports.allocate()
        return Decision(None, replace(visible, port=port), real=UNNAMED, lease=port), kind, is_unix
    if direction == Direction.IN and not verdict.error and verdict.real and not verdict.real.abstract \
            and isinstance(visible, IPAddr) and visible.port == 0:
        verdict = _free_port(call, kind, visible, verdict)
    if verdict.error:
        if direction == Direction.IN:
            _release_port(call, verdict)
        return refuse(call, visible, verdict), kind, is_unix
    return verdict, kind, is_unix


def _ours(call: Call, sock: socket.socket) -> Client | Listener | None:
    """A Unix socket we made of an IP one, that the program now connects: a
    client connecting again, or one it bound before connecting."""
    inode = inode_of(sock)
    listener = call.ctx.registry.listener_inodes.get(inode)
    if listener is not None and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return listener
    return call.ctx.registry.client(inode)


def _free_port(call: Call, kind: SocketType, visible: IPAddr, verdict: Decision) -> Decision:
    """A bind to port 0 must not fail because the path its port gives is taken
    (another program under another redirect): try other ports."""
    stype = kind.sock_type
    for _ in range(16):
        with acting_as(call.thread):
            taken = socketfile.clear_stale(verdict.real.name, stype) == errno.EADDRINUSE
        if verdict.error or not taken:
            return verdict
        _release_port(call, verdict)
        verdict = call.ctx.decide(Direction.IN, kind, visible)
    return verdict


def _release_port(call: Call, verdict: Decision) -> None:
    """Give back the port decide() handed out for a bind no socket took."""
    if verdict.lease is not None:
        call.ctx.ports.release(verdict.lease)


def _leased(call: Call, verdict: Decision, bind):
    """Generator: the bind `bind` (a generator) for this verdict; unless it
    succeeds, the port handed out for it is given back (every failure path,
    an exception too)."""
    try:
        res = yield from bind
    except BaseException:
        _release_port(call, verdict)
        raise
    if res < 0:
        _release_port(call, verdict)
    return res


def bind(call: Call):
    if not (call.ctx.guards(Direction.IN) or call.ctx.guards(Direction.OUT)):
        return PASS  # no rule at all: nothing to judge (out rules keep UDP ports a program binds real)
    data = read_address(call)
    if isinstance(data, int):
        return data
    return on_socket(call, lambda sock: _bind_socket(call, sock, data))


def _bind_socket(call: Call, sock: socket.socket, data: bytes):
    verdict, kind, is_unix = _prepare(call, Direction.IN, sock, data)
    if isinstance(verdict, Perform):
        visible = unpack(verdict) if sock.family in _IP else None
        if isinstance(visible, IPAddr) and visible.port == 0 and call.ctx.port_rules and kind is not None:
            return bind_any_port(call, sock, visible, kind)
        if kind == SocketType.DGRAM and isinstance(visible, IPAddr) and visible.port != 0:
            call.ctx.left_on_the_network(SocketType.DGRAM, visible)  # a UDP server's port (a stream one: at listen)
        return perform.bind(call, sock, verdict)
    if not isinstance(verdict, Decision):
        return verdict
    if verdict.real == UNNAMED:  # sealed: a private address
        return _leased(call, verdict, datagram_send.become_client(call, call.args[0], sock, verdict))
    return _leased(call, verdict, _bind(call, call.args[0], sock, kind, verdict, is_unix))


def _bind(call: Call, fd: int, sock: socket.socket, kind: SocketType, verdict: Decision, is_unix: bool,
          blackhole: bool = False):
    ctx = call.ctx
    if verdict.rule.action == Action.SYSTEMD and not blackhole:
        return (yield from _hand_over(call, fd, sock, kind, verdict, is_unix))
    real, blackhole = verdict.real, blackhole or verdict.rule.action == Action.BLACKHOLE
    holder = None if blackhole else ctx.registry.listener_at(real)
    if holder is not None:  # closes are not trapped: it may be closed already
        ctx.reaper.reap()
        holder = ctx.registry.listener_at(real)
    fresh = False  # a new socket even where --activate opened one
    if holder is not None and kind == SocketType.DGRAM and holder.visible == verdict.visible \
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR):
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
        if holder.visible == verdict.visible and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            ctx.log(1, f"{call.describe()}: {verdict.visible} is already bound by this program")
            return -errno.EADDRINUSE  # as TCP would say: "is this port free?" gets a true answer
        # The IPv4 and IPv6 listeners of one port: the second gets nothing, quietly.
        ctx.log(1, f"{call.describe()}: {verdict.visible}: {real} is already bound here; blackholing")
        blackhole = True
    if blackhole:
        # Bound in a folder that goes away right after: listen and accept work,
        # nobody can ever connect, nothing is left on disk.
        with socketfile.throwaway_folder() as folder:
            hole = UnixAddr(os.fsencode(os.path.join(folder, socketfile.BLACKHOLE)))
            return (yield from _bind_at(call, fd, sock, kind, verdict, is_unix, hole, True))
    opened = None if fresh else ctx.activation.opened_at(real, kind)
    if opened is not None:  # --activate made it already
        return (yield from _install(call, fd, sock, kind, verdict, opened))
    ctx.binding.add(real)
    try:
        return (yield from _bind_at(call, fd, sock, kind, verdict, is_unix, real, False))
    finally:
        ctx.binding.discard(real)


def _bind_at(call: Call, fd: int, sock: socket.socket, kind: SocketType, verdict: Decision, is_unix: bool,
             real: UnixAddr, blackhole: bool):
    """Generator: bind the socket at fd at `real`, as the verdict says. An IP
    socket's Unix stand-in is bound by the supervisor (as the program, with the
    supervisor's copy of the path) and goes to the program only once bound: a
    failed bind leaves the program's fd as it was."""
    ctx = call.ctx
    stype = kind.sock_type
    if not blackhole and not real.abstract:
        problem = socketfile.permission_problem(verdict.rule)
        if problem:
            ctx.log(0, f"{call.describe()}: cannot bind {verdict.visible} to {real}: {problem} (EPERM)")
            return -errno.EPERM
        with acting_as(call.thread):  # a path the program may have laid: looked at with its rights
            err = socketfile.clear_stale(real.name, stype)
        if err:
            ctx.log(0, f"{call.describe()}: cannot bind {verdict.visible} to {real}: {os.strerror(err)}"
                       + (" (a live socket or another file is in the way)" if err == errno.EADDRINUSE else ""))
            return -err
    new = sock if is_unix else stand_in(kind)
    try:
        restricted = not blackhole and not real.abstract and socketfile.has_permissions(verdict.rule)
        if restricted:
            # The file is born with the socket's own mode (minus the umask): never
            # looser than the rule asks, not even for an instant; then it gets its
            # owner, group and final mode.
            os.fchmod(new.fileno(), socketfile.initial_mode(verdict.rule))
        # A blackhole's folder is the supervisor's own: bound as the supervisor.
        res = perform.bind(call, new, pack(real), as_program=not blackhole)
        if restricted and res >= 0:
            them = call.thread.identity()
            res = socketfile.apply_permissions(real.name, new, verdict.rule, them.euid, them.umask)
        if res < 0:
            missing = " (its directory does not exist)" if res == -errno.ENOENT else ""
            ctx.log(0, f"{call.describe()}: binding {verdict.visible} to {real} failed: {os.strerror(-res)}{missing}")
            return res
        ident = None if real.abstract or blackhole else socketfile.file_id(real.name, new)
        if not is_unix:
            err = yield from install(call, fd, sock, new)
            if err < 0:
                ctx.log(0, f"{call.describe()}: could not put the Unix socket for {verdict.visible} at fd {fd}: "
                           f"{os.strerror(-err)}")
                if ident is not None:
                    socketfile.remove_if_ours(real.name, ident)
                return err
        inode = inode_of(new)
        ctx.registry.add_listener(Listener(real, verdict.visible, kind, inode, ident,
                                           remove=not (blackhole or verdict.rule.noremove), lease=verdict.lease))
        sockopt.bound(ctx.registry, inode, verdict.visible)
    finally:
        if new is not sock:
            new.close()
    if ctx.listening is not None and not blackhole and kind == SocketType.DGRAM:
        ctx.listening(real)  # (a stream socket: at its listen)
    ctx.log(1, f"{call.describe()}: {verdict.visible} -> {'blackhole' if blackhole else real}")
    return 0


def _hand_over(call: Call, fd: int, sock: socket.socket, kind: SocketType, verdict: Decision, is_unix: bool):
    """Generator: a bind that a systemd rule matched gets a passed listening
    socket instead (a duplicate: the supervisor keeps its own); with none left,
    a blackholed one and a warning."""
    ctx, rule = call.ctx, verdict.rule
    claimed = {r.target for r in ctx.rules if r.action == Action.SYSTEMD and r.target is not None}
    passed = ctx.activation.pick(rule.target, claimed, ctx.reaper.held() | ctx.activation.reserved, kind)
    if passed is None and not ctx.activation.offers(rule.target, claimed):
        # Nothing was ever passed for this rule (a misspelt name, say): the
        # bind fails, rather than leave clients to wait on a socket nobody hears.
        wanted = f"no socket named {rule.target!r}" if rule.target is not None else "no socket for it"
        ctx.log(0, f"{call.describe()}: {verdict.visible}: rule {rule.text}: {wanted} was passed "
                   f"({ctx.activation.summary()}); the bind fails (EADDRNOTAVAIL)")
        return -errno.EADDRNOTAVAIL
    if passed is None:
        ctx.log(WARN, f"{call.describe()}: {verdict.visible}: no passed socket left for rule {rule.text} "
                   f"({len(ctx.activation.passed)} passed in all); bound where nobody can connect")
        return (yield from _bind(call, fd, sock, kind, verdict, is_unix, blackhole=True))
    if passed.kind != kind:
        ctx.log(0, f"{call.describe()}: {verdict.visible}: {passed.describe()} is a {passed.kind} socket, "
                   f"the program's is a {kind} one (EPROTOTYPE)")
        return -errno.EPROTOTYPE
    if passed.kind == SocketType.STREAM and not passed.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        ctx.log(0, f"{call.describe()}: {verdict.visible}: {passed.describe()} is a connection, not a listening "
                   "socket (systemd's Accept=yes / systemd-socket-activate -a): that is inetd style, which "
                   "this program does not speak (EINVAL)")
        return -errno.EINVAL
    ctx.activation.reserved.add(passed.inode)  # another thread's bind must not get it meanwhile
    try:
        return (yield from _install(call, fd, sock, kind, verdict, passed))
    finally:
        ctx.activation.reserved.discard(passed.inode)


def _install(call: Call, fd: int, sock: socket.socket, kind: SocketType, verdict: Decision, passed):
    """Generator: put a duplicate of a supervisor's listening socket at fd."""
    ctx = call.ctx
    err = yield from install(call, fd, sock, passed.sock)
    if err < 0:
        ctx.log(0, f"{call.describe()}: could not hand {passed.describe()} over: {os.strerror(-err)}")
        return err
    if passed.sock.family == socket.AF_UNIX:  # the program must still see its IP address
        real = unix_name(passed.sock) or UnixAddr(b"")
        ctx.registry.add_listener(Listener(real, verdict.visible, kind, passed.inode, remove=False,
                                           lease=verdict.lease))
    if ctx.listening is not None and passed.real is not None:
        ctx.listening(passed.real)  # --activate's: listening already
    ctx.log(1, f"{call.describe()}: {verdict.visible} -> {passed.describe()}")
    return 0


def listen(call: Call):
    """listen() on an IP socket that was never bound binds it to a random port
    first: for the rules that is a bind to the wildcard address, port 0. Run
    on the supervisor's duplicate: the socket judged is the one that listens."""
    if not call.ctx.guards(Direction.IN):
        return PASS
    return on_socket(call, lambda sock: _listen_socket(call, sock))


def bind_any_port(call: Call, sock: socket.socket, visible: IPAddr, kind: SocketType) -> int:
    """Bind to a port of the supervisor's choosing where the kernel would
    choose one (a bind to port 0, a listen or UDP send on an unbound socket):
    a free port of the ephemeral range that no rule names. Binding first and
    judging after cannot be undone (another process may hold the socket too),
    and the kernel's choice can be steered (IP_LOCAL_PORT_RANGE, or binding
    again and again). 0 or -errno (EADDRINUSE when no port is free)."""
    low, high = _ephemeral_range()
    reuse = [(option, sock.getsockopt(socket.SOL_SOCKET, option)) for option in (socket.SO_REUSEADDR,
                                                                                    socket.SO_REUSEPORT)]
    try:
        for option, _ in reuse:  # a chosen port must not be shared with another socket's
            sock.setsockopt(socket.SOL_SOCKET, option, 0)
        for _ in range(64):
            port = low + int.from_bytes(os.urandom(4), "little") % (high - low + 1)
            if call.ctx.decide_chosen_port(kind, replace(visible, port=port)) is not None:
                continue  # a rule's port: never on the network
            res = perform.bind(call, sock, pack(replace(visible, port=port)))
            if res != -errno.EADDRINUSE:
                return res
        return -errno.EADDRINUSE
    finally:
        for option, value in reuse:
            sock.setsockopt(socket.SOL_SOCKET, option, value)


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def claim_port(call: Call, fd: int, sock: socket.socket) -> int:
    """Before a send or connect on an unbound IP datagram socket makes the
    kernel bind it: bound here to a port no rule names (bind_any_port)."""
    if not call.ctx.port_rules or sock.family not in _IP:
        return 0
    bound = address_of(sock.family, sock.getsockname())
    return 0 if bound.port else bind_any_port(call, sock, _wildcard(sock), SocketType.DGRAM)


def _listen_socket(call: Call, sock: socket.socket):
    fd, backlog = call.args[:2]
    if sock.family not in _IP or socket_type(sock) != SocketType.STREAM:
        return _listen_ours(call, sock, backlog)
    bound = address_of(sock.family, sock.getsockname())
    unbound = None
    if bound.port == 0:
        unbound = call.ctx.decide(Direction.IN, SocketType.STREAM, _wildcard(sock))
        if unbound is None and call.ctx.port_rules:
            # The kernel would pick the port at listen: the supervisor picks
            # one first, never a rule's.
            res = bind_any_port(call, sock, _wildcard(sock), SocketType.STREAM)
            if res < 0:
                return res
            bound = address_of(sock.family, sock.getsockname())
    if bound.port != 0:
        # Bound already. Sealed: only where a rule lets it.
        if call.ctx.sealed and all(call.ctx.decide(Direction.IN, SocketType.STREAM, addr) is not None
                                   for addr in (bound, replace(bound, port=0))):
            call.ctx.log(0, f"{call.describe()}: {bound}: {Refusal.SEALED.text} (EACCES; sealed mode)")
            return -errno.EACCES
        verdict = None if _handed_over(call, sock) else call.ctx.decide(Direction.IN, SocketType.STREAM, bound)
        if verdict is not None and not verdict.error:
            # Bound where redirect did not see it (before the program started,
            # say), at an address a rule converts: it becomes that rule's
            # socket now, not a TCP listener.
            call.ctx.log(1, f"{call.describe()}: {bound} was not bound by a bind redirect judged; "
                            "converting at listen")
            return _bind_then_listen(call, fd, sock, verdict)
        if verdict is None and not _handed_over(call, sock):
            call.ctx.left_on_the_network(SocketType.STREAM, bound)
        return perform.listen(call, sock, backlog)
    wildcard, verdict = _wildcard(sock), unbound
    if verdict is None:
        call.ctx.left_on_the_network(SocketType.STREAM, wildcard)
        return perform.listen(call, sock, backlog)
    if verdict.error:
        _release_port(call, verdict)
        return refuse(call, wildcard, verdict)
    return _bind_then_listen(call, fd, sock, verdict)


def _handed_over(call: Call, sock: socket.socket) -> bool:
    """A listening socket redirect handed over (socket activation): the
    rules judged it at its bind already."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0 or \
        call.ctx.activation.hands_out(inode_of(sock))


def _wildcard(sock: socket.socket) -> IPAddr:
    return IPAddr(sock.family, ipaddress.ip_address("0.0.0.0" if sock.family == socket.AF_INET else "::"), 0)


def _bind_then_listen(call: Call, fd: int, sock: socket.socket, verdict: Decision):
    res = yield from _leased(call, verdict, _bind(call, fd, sock, SocketType.STREAM, verdict, False))
    if res < 0:
        return res
    with call.thread.borrowed_socket(fd) as unix:
        if unix is None or inode_of(unix) not in call.ctx.registry.listener_inodes:
            return -errno.EBADF  # another thread closed or replaced it meanwhile
        return _listen_ours(call, unix, call.args[1])


def _listen_ours(call: Call, sock: socket.socket, backlog: int) -> int:
    """listen on a socket that is no IP stream one (a converted socket, say):
    a rule's socket that listens now is ready for clients (--notify-ready)."""
    res = perform.listen(call, sock, backlog)
    if res == 0 and call.ctx.listening is not None:
        ours = call.ctx.registry.listener_inodes.get(inode_of(sock))
        if ours is not None:
            call.ctx.listening(ours.real)
    return res


def connect(call: Call):
    registry = call.ctx.registry
    if not call.ctx.guards(Direction.OUT) and not registry.converted():
        return PASS  # no rule is about connects, and nothing is converted yet
    data = read_address(call)
    if isinstance(data, int):
        return data
    return on_socket(call, lambda sock: _connect_socket(call, sock, data))


def _connect_socket(call: Call, sock: socket.socket, data: bytes):
    fd = call.args[0]
    conv = identify(call, fd, inode_of(sock))
    if conv is not None and conv.socket_type == SocketType.DGRAM and conv.shown_family is not None:
        return datagram_send.connect_datagram(call, conv, sock, data)
    verdict, kind, is_unix = _prepare(call, Direction.OUT, sock, data)
    if isinstance(verdict, Perform):
        if kind == SocketType.DGRAM and not is_unix:
            return _claim_then_connect(call, fd, sock, verdict)
        return perform.connect(call, fd, sock, verdict)
    if not isinstance(verdict, Decision):
        return verdict
    return connect_to(call, fd, sock, kind, verdict, is_unix)


def _claim_then_connect(call: Call, fd: int, sock: socket.socket, address: bytes):
    res = claim_port(call, fd, sock)
    if res < 0:
        return res
    return (yield from perform.connect(call, fd, sock, address))


def connect_to(call: Call, fd: int, sock: socket.socket, kind: SocketType, verdict: Decision, is_unix: bool):
    """Generator: connect the socket at fd (a Unix stand-in for an IP one) where
    the verdict says. Returns the connect result; unless it connected (or is
    connecting), the program's fd is as it was."""
    ctx = call.ctx
    if is_unix:  # ours already: connecting again, or bound by an in rule first
        if kind == SocketType.STREAM:
            ctx.registry.add_client(inode_of(sock), Client(verdict.real, verdict.visible, kind))
        reply = kind == SocketType.DGRAM and ctx.registry.peers.sent_to_us(verdict.real)
        return (yield from perform.connect_unix(call, fd, sock, verdict.visible, verdict.real, reply=reply))
    if kind == SocketType.DGRAM:
        return (yield from datagram_send.become_client(call, fd, sock, verdict, connect=True))
    with stand_in(kind) as new:
        res = yield from perform.connect_unix(call, fd, new, verdict.visible, verdict.real,
                                              wait=perform.blocking(sock))
        if res < 0:
            return res
        err = yield from install(call, fd, sock, new)
        if err < 0:
            ctx.log(0, f"{call.describe()}: could not put the Unix socket for {verdict.visible} at fd {fd}: "
                       f"{os.strerror(-err)}")
            return err
        ctx.registry.add_client(inode_of(new), Client(verdict.real, verdict.visible, kind))
    return res


_SEALED_OPEN = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK)
_SOCK_PACKET = 10


def sealed_socket(call: Call):
    """Only trapped in sealed mode, for families that reach a network and that
    no rule can convert (AF_PACKET and the like): refused. (Also trapped for
    anything in the upper halves of family and type, which the kernel does
    not read: then judged on what it does read.)"""
    family, kind = call.args[:2]
    if family in _SEALED_OPEN and not (family in _IP and kind & 0xF == _SOCK_PACKET):
        return PASS
    call.ctx.log(0, f"{call.describe()}: socket family {call.args[0]}: sealed: the program may not use "
                    "the real network, and no rule can convert such a socket (EAFNOSUPPORT)")
    return -errno.EAFNOSUPPORT
