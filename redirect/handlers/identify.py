"""Telling what a socket of the program is: an IP socket we may convert (its
type), one of ours (a converted listener or client, or a connection
accepted from one), and the addresses it must show."""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from enum import Enum

from .. import sockaddr
from ..registry import Accepted, Client
from ..rules import SocketType
from ..sockaddr import Address, IPAddr, UnixAddr
from .context import Call


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
        if proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_MPTCP):
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

    @property
    def face(self) -> IPAddr | None:
        """The IP address that stands for this socket in the program's eyes
        (its own, else its peer's); None for a socket that really is Unix."""
        face = self.local if isinstance(self.local, IPAddr) else self.peer
        return face if isinstance(face, IPAddr) else None

    @property
    def shown_family(self) -> int | None:
        """The family the program believes the socket has (None: Unix)."""
        return self.face.family if self.face is not None else None


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def identify(call: Call, fd: int, inode: int | None = None) -> Converted | None:
    """Whether fd is a socket we converted (or accepted from one), and its faces.
    Cheap for sockets we know by inode; others cost one look at the socket.
    `inode`: of the supervisor's duplicate of fd, where the handler holds one."""
    registry = call.ctx.registry
    if not registry.converted():
        return None  # nothing converted yet
    inode = call.thread.fd_inode(fd) if inode is None else inode
    if inode is None:
        return None
    converted = known(registry, inode)
    if converted is not None:
        return converted
    accepted = _accepted_from(call, fd, inode)
    return _accepted(accepted, inode) if accepted is not None else None


def known(registry, inode: int) -> Converted | None:
    """identify() of a socket the registry knows by its inode (all but a
    connection accepted with no address, which identify() finds)."""
    listener = registry.listener_inodes.get(inode)
    if listener is not None:
        return Converted(Role.LISTENER, listener.socket_type, inode, listener.visible, None)
    client = registry.client(inode)
    if client is not None:
        return Converted(Role.CLIENT, client.socket_type, inode, client_face(client, inode), client.visible)
    accepted = registry.accepted.get(inode)
    return _accepted(accepted, inode) if accepted is not None else None


def datagram(registry, inode: int) -> Converted | None:
    """known() of a converted datagram socket that shows an IP family (not a
    from-unix one), else None."""
    converted = known(registry, inode)
    if converted is None or converted.socket_type != SocketType.DGRAM or converted.shown_family is None:
        return None
    return converted


def _accepted(accepted: Accepted, inode: int) -> Converted:
    listener = accepted.listener
    if not isinstance(listener.visible, IPAddr):
        return Converted(Role.ACCEPTED, listener.socket_type, inode, listener.visible, None)
    return Converted(Role.ACCEPTED, listener.socket_type, inode,
                     sockaddr.local_of_connection(listener.visible),
                     sockaddr.peer_of_connection(listener.visible, inode, accepted.peer_uid))


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
    with call.thread.borrowed_socket(fd) as sock:
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
