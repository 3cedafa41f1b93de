"""What the handlers share: the call, the context, recognising converted sockets,
writing addresses back, swapping a socket for a Unix one in place, connecting it."""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from .. import sockaddr
from ..activation import Activation
from ..decision import Decision, decide, facts
from ..registry import Accepted, Client, Registry
from ..rules import Action, Direction, Rule, SocketType, closest, first_match
from ..sockaddr import Address, IPAddr, PortAllocator, UnixAddr
from ..socketfile import ReplyDirs
from ..templates import Templates
from ..program import MemoryUnavailable, Process, ProgramThread as Thread

# struct msghdr and struct mmsghdr on x86_64, and struct cmsghdr.
MSGHDR = struct.Struct("=QI4xQQQQi4x")
MSG_NAME, MSG_NAMELEN, MSG_IOV, MSG_IOVLEN, MSG_CONTROL, MSG_CONTROLLEN, MSG_FLAGS = range(7)
MMSGHDR_SIZE = 64          # a msghdr, then unsigned msg_len, padded
CMSGHDR = struct.Struct("=Qii")
MAX_BATCH = 32             # messages per recvmmsg the supervisor receives for at once
IPPROTO_MPTCP = 262


@dataclass
class Context:
    rules: list[Rule]
    registry: Registry
    ports: PortAllocator
    log: Callable[[int, str], None]   # (verbosity needed, message); 0 = always shown
    reap: Callable[[], None]          # forget/unlink listeners nobody holds any more
    held: Callable[[], set[int]]      # inodes of the sockets traced processes hold now
    activation: Activation            # sockets passed in by socket activation
    sealed: bool = False              # refuse IP sockets no rule converts
    quiet: bool = False               # no warning for listeners left on the network
    listening: Callable[[UnixAddr], None] | None = None  # told when a rule's socket is ready for clients
    verbosity: int = 0                # -v: 1, -vv: 2 (what is logged is decided by log; this saves formatting)
    binding: set = field(default_factory=set)  # socket paths a bind is making right now
    replies: ReplyDirs = field(default_factory=ReplyDirs)
    warned: set = field(default_factory=set)  # things logged once
    # Connections accepted for a call that went away before it got them (a
    # signal): listener inode -> sockets, for the next accept.
    kept: dict = field(default_factory=dict)
    templates: Templates = field(default_factory=Templates)  # real sockets that answer option reads

    def decide(self, direction: Direction, kind: SocketType, visible: Address) -> Decision | None:
        return decide(self.rules, direction, kind, visible, self.ports, self.sealed)

    def decide_chosen_port(self, kind: SocketType, bound: IPAddr) -> Decision | None:
        """Whether a rule names this port, for a port picked on the program's
        behalf (bind_any_port): the rules that name ports judge it, as if
        bound there. A rule for any port converts servers that bind; a port
        picked for a client is not a server's."""
        return decide(self.port_rules, Direction.IN, kind, bound, self.ports, False)

    def left_on_the_network(self, kind: SocketType, visible: Address) -> None:
        """A listener no rule converts (nor an ignore rule names) stays a real
        TCP/UDP socket that every local user can reach: said once per
        address, with the rule that came closest, unless quiet. (Only where
        some rule is about listeners: with out rules alone they are meant
        to stay.)"""
        if self.quiet or self.sealed or not isinstance(visible, IPAddr) or \
                not any(r.direction != Direction.OUT for r in self.rules):
            return
        sock = facts(Direction.IN, kind, visible)
        if first_match(self.rules, sock) is not None:
            return  # an ignore rule (or one that leaves it be) named it: meant
        near = closest(self.rules, sock)
        hint = f" (closest: rule #{near[0]} {near[1].text}: {'; '.join(near[2])})" if near else ""
        proto = kind.protocol
        self.warn_once(("left", kind, visible), f"warning: {visible} ({proto}) stays on the network: no rule "
                                                f"matches it{hint}; every local user can reach it (-q: no "
                                                "warning; --sealed: refuse it)")

    def program_ended(self) -> None:
        """--on-demand, between two runs: the sockets handed to the program
        are free again for its next run's binds."""
        for listener in [entry for entry in self.registry.listener_inodes.values()
                         if self.activation.hands_out(entry.inode)]:
            self.registry.drop_listener(listener)

    def why_alone(self, direction: Direction, kind: SocketType, visible: Address) -> str:
        """Why a socket is left as it is, for the -vv log."""
        rule = first_match(self.rules, facts(direction, kind, visible))
        if rule is not None:
            return f"rule #{self.rules.index(rule) + 1} {rule.text}"
        return "no rule matches"

    def warn_once(self, key, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.log(0, message)

    def __post_init__(self) -> None:
        # Most rule sets never look at Unix sockets: skip them without a lookup.
        self.unix_rules = any(r.from_unix or r.from_abstract for r in self.rules)
        self.port_rules = [r for r in self.rules if r.port is not None and r.direction != Direction.OUT]
        # Where a verdict other than "let it be" is possible. Only there must a
        # call run exactly as judged (perform.py); elsewhere no race can take
        # the program anywhere the rules keep it from.
        acting = [r for r in self.rules if r.action is not Action.IGNORE]
        self._guarded = {
            Direction.IN: self.sealed or any(r.direction is not Direction.OUT for r in acting),
            # Replies to the senders a converted datagram socket was shown are
            # sends the supervisor decides on too.
            Direction.OUT: self.sealed or any(r.direction is not Direction.IN or r.socket_type is not SocketType.STREAM
                                              for r in acting)}

    def guards(self, direction: Direction) -> bool:
        return self._guarded[direction]


@dataclass
class Call:
    ctx: Context
    thread: Thread
    name: str
    args: tuple[int, ...]

    @property
    def process(self) -> Process:
        return self.thread.process

    def describe(self) -> str:
        return f"{self.name}() in pid {self.thread.tid}"


def refuse(call: Call, visible: Address, verdict: Decision) -> int:
    """Fail the call as the verdict says, and log why (a rule's own reject
    at -v, every other refusal as a warning)."""
    call.ctx.log(verdict.refusal.level if verdict.refusal else 0,
                 f"{call.describe()}: {visible}: {verdict.reason} "
                 f"({errno.errorcode.get(verdict.error, verdict.error)}; {verdict.source})")
    return -verdict.error


def on_socket(call: Call, then):
    """Generator: then(sock) with the supervisor's duplicate of the call's fd
    (arg 0), held to the end; EBADF/ENOTSOCK as the kernel would say."""
    fd = call.args[0]
    try:
        dup = call.thread.duplicate(fd)
    except OSError as err:
        if err.errno == errno.EBADF:
            return -errno.EBADF
        raise
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return -errno.ENOTSOCK
    with sock:
        result = then(sock)
        if isinstance(result, int):
            return result
        return (yield from result)


def read_buffer(call: Call, addr: int, size: int) -> bytes | None:
    """Bytes of a buffer the program passed; None for a bad pointer (the
    kernel will say EFAULT). Memory that cannot be reached at all raises
    MemoryUnavailable: then the call cannot be judged, and must fail."""
    try:
        return call.thread.read(addr, size)
    except MemoryUnavailable:
        raise
    except OSError:
        return None


def read_sockaddr(call: Call, addr: int, length: int) -> bytes | None:
    if addr == 0 or length < 2:
        return None
    return read_buffer(call, addr, min(length, 128))


def read_room(call: Call, len_ptr: int) -> int | None:
    """The size of the program's address buffer, read before the kernel
    overwrites it; None for a bad pointer (the kernel will say EFAULT)."""
    data = read_buffer(call, len_ptr, 4)
    return struct.unpack("=i", data)[0] if data is not None else None


def read_headers(call: Call, vec: int, count: int, stride: int) -> list[bytes]:
    """The program's msghdr/mmsghdr array, in one read; if part of it is a
    bad pointer, the entries before it (where the kernel stops too)."""
    block = read_buffer(call, vec, count * stride)
    if block is not None:
        return [block[i * stride:(i + 1) * stride] for i in range(count)]
    headers = []
    for i in range(count):
        header = read_buffer(call, vec + i * stride, stride)
        if header is None:
            break
        headers.append(header)
    return headers


def read_iovecs(call: Call, iov: int, count: int) -> list[tuple[int, int]] | int:
    """A msghdr's (base, length) pairs, or -errno (EMSGSIZE past UIO_MAXIOV, EFAULT)."""
    if count > 1024:
        return -errno.EMSGSIZE
    if not count:
        return []
    vec = read_buffer(call, iov, 16 * count)
    if vec is None:
        return -errno.EFAULT
    return [struct.unpack_from("=QQ", vec, 16 * i) for i in range(count)]


def cmsgs(control: bytes):
    """(level, type, data) of each control message, as the kernel lays them
    out (CMSG_NXTHDR); stops at the first malformed header."""
    offset = 0
    while offset + CMSGHDR.size <= len(control):
        length, level, kind = CMSGHDR.unpack_from(control, offset)
        if length < CMSGHDR.size or offset + length > len(control):
            return
        yield level, kind, control[offset + CMSGHDR.size:offset + length]
        offset += (length + 7) & ~7


def cmsg(level: int, kind: int, data: bytes) -> bytes:
    """One control message, padded to the next one's place."""
    out = CMSGHDR.pack(CMSGHDR.size + len(data), level, kind) + data
    return out + bytes(-len(out) % 8)


def write_sockaddr(call: Call, addr: int, len_ptr: int, packed: bytes, room: int | None = None) -> int:
    """Store an address for the program the way the kernel does: truncate to the
    caller's buffer (`room`: its size, if read before the kernel changed it),
    report the full length. Returns 0 or -errno."""
    if addr == 0 or len_ptr == 0:
        return -errno.EFAULT
    try:
        if room is None:
            room = call.thread.read_int(len_ptr)
        if room < 0:
            return -errno.EINVAL
        call.thread.write(addr, packed[:room])
        call.thread.write(len_ptr, struct.pack("=i", len(packed)))
    except OSError:
        return -errno.EFAULT
    return 0


def unix_name(sock: socket.socket) -> UnixAddr | None:
    """The real address a Unix socket is bound to (None if unnamed)."""
    return address_of(socket.AF_UNIX, sock.getsockname())


def address_of(family: int, name) -> Address | None:
    """An address as Python's socket module returns it, as ours."""
    if family == socket.AF_UNIX:
        if isinstance(name, str):
            return UnixAddr(os.fsencode(name)) if name else None
        return UnixAddr(name[1:], abstract=True) if name else None
    if family in (socket.AF_INET, socket.AF_INET6):
        host = ipaddress.ip_address(name[0].split("%")[0])
        return IPAddr(family, host, name[1], *name[2:4])
    return None


def socket_type(sock: socket.socket) -> SocketType | None:
    """The kind of the sockets we may convert (TCP, MPTCP, UDP), else None."""
    kind = SocketType.of(sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE))
    if kind is None or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    if sock.family != socket.AF_UNIX:
        proto = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        if proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP, IPPROTO_MPTCP):
            return None  # SCTP and friends: no Unix equivalent
    return kind


class Role(Enum):
    """What a converted socket is to the program."""
    LISTENER = "listener"      # bound by a rule (listening or not)
    CLIENT = "client"          # connected (or sending) by a rule
    ACCEPTED = "accepted"      # a connection accepted on a listener


@dataclass
class Converted:
    """A socket of ours as the program must see it."""
    role: Role
    socket_type: SocketType
    inode: int
    local: Address | None      # None: let the kernel answer
    peer: Address | None
    listener: int | None = None  # an accepted connection's listener (inode): what it inherits


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def identify(call: Call, fd: int, inode: int | None = None) -> Converted | None:
    """Whether fd is a socket we converted (or accepted from one), and its faces.
    Cheap for sockets we know by inode; others cost one look at the socket.
    `inode`: of the supervisor's duplicate of fd, where the handler holds one."""
    registry = call.ctx.registry
    if not registry.listeners and not registry.clients:
        return None  # nothing converted yet
    inode = call.thread.fd_inode(fd) if inode is None else inode
    if inode is None:
        return None
    listener = registry.listener_inodes.get(inode)
    if listener is not None:
        return Converted(Role.LISTENER, listener.socket_type, inode, listener.visible, None)
    client = registry.client(inode)
    if client is not None:
        return Converted(Role.CLIENT, client.socket_type, inode, client_face(client, inode), client.visible)
    accepted = registry.accepted.get(inode) or _accepted_from(call, fd, inode)
    if accepted is None:
        return None
    listener = accepted.listener
    if not isinstance(listener.visible, IPAddr):
        return Converted(Role.ACCEPTED, listener.socket_type, inode, listener.visible, None, listener.inode)
    return Converted(Role.ACCEPTED, listener.socket_type, inode,
                     sockaddr.local_of_connection(listener.visible),
                     sockaddr.peer_of_connection(listener.visible, inode, accepted.peer_uid), listener.inode)


def client_face(client: Client, inode: int) -> Address | None:
    """getsockname of a redirected client: the UDP address it had before the
    conversion, else a loopback address of the target's family."""
    if client.local is not None:
        return client.local
    return sockaddr.local_of_client(client.visible, inode) if isinstance(client.visible, IPAddr) else None


def _accepted_from(call: Call, fd: int, inode: int) -> Accepted | None:
    """A connection we did not see accepted (accept with no address): a Unix
    socket whose own address is a converted listener's."""
    registry = call.ctx.registry
    if not registry.listeners:
        return None
    with call.thread.socket(fd) as sock:
        if sock is None or sock.family != socket.AF_UNIX:
            return None
        listener = registry.listener_at(unix_name(sock))
        if listener is None:
            return None
        accepted = Accepted(listener, peer_uid(sock))
    registry.add_accepted(inode, accepted)
    return accepted


def peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return None
    return struct.unpack("=iII", creds)[1]


# ---- swapping a socket for a Unix one at the same fd ---------------------------------

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
F_GETOWN_EX, F_SETOWN_EX, F_GETSIG, F_SETSIG = 16, 15, 11, 10


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


def _capture(call: Call, fd: int, sock: socket.socket) -> _SocketState:
    watches, siblings = _scan_fds(call.thread, fd, os.fstat(sock.fileno()).st_ino)
    return _SocketState(
        status_flags=fcntl.fcntl(sock.fileno(), fcntl.F_GETFL),
        cloexec=call.thread.fd_cloexec(fd),
        options=_set_by_program(sock),
        ip_options=_ip_options(sock),
        owner=fcntl.fcntl(sock.fileno(), F_GETOWN_EX, bytes(8)),
        signal=fcntl.fcntl(sock.fileno(), F_GETSIG),
        epoll=watches,
        siblings=siblings,
    )


def _scan_fds(thread: Thread, fd: int, inode: int) -> tuple[list[tuple[int, int, int, int]], list[int]]:
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
        fcntl.fcntl(sock.fileno(), F_SETSIG, state.signal)


def stand_in(kind: SocketType) -> socket.socket:
    """A Unix socket of the supervisor's to take an IP socket's place: it is
    bound or connected here, with the supervisor's own copy of the address,
    and goes to the program only once that worked (install). Non-blocking: the
    supervisor never waits; install gives it the program's flags."""
    stype = kind.sock_type
    return socket.socket(socket.AF_UNIX, stype | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)


def install(call: Call, fd: int, sock: socket.socket, new: socket.socket):
    """Generator: put a duplicate of the supervisor's socket `new` at fd in
    place of `sock` (the program's socket there), keeping flags, close-on-exec,
    options, owner and epoll registrations, and at other fds of the same socket.
    Returns 0 or -errno; on failure the program's fd is as it was."""
    state = _capture(call, fd, sock)
    places = [(fd, state.cloexec)] + [(other, call.thread.fd_cloexec(other)) for other in state.siblings]
    res = yield from call.thread.put_socket(new, places)
    if res < 0:
        return res
    inode = os.fstat(new.fileno()).st_ino
    _restore(new, state, call.ctx.log)  # the same open file as the program's now
    for (level, name), value in state.ip_options.items():
        call.ctx.registry.set_option(inode, level, name, value)
    for epfd, watched, events, data in state.epoll:
        res = yield from call.thread.epoll_add(epfd, watched, events, data)
        if res < 0:
            call.ctx.log(0, f"could not re-register fd {watched} in epoll fd {epfd}: {os.strerror(-res)}")
    return 0
