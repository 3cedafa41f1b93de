"""Pack and unpack socket addresses; invent the IP addresses a program is shown.

Pure logic: bytes in, bytes out, no OS calls.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .rules.model import SUN_PATH_MAX

AF_UNSPEC = 0
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class IPAddr:
    family: int                # AF_INET or AF_INET6: what the program asked for
    host: IPAddress
    port: int
    flowinfo: int = 0
    scope_id: int = 0

    @property
    def match_host(self) -> IPAddress:
        """The host as rules compare it: an IPv4-mapped IPv6 address is IPv4."""
        if isinstance(self.host, ipaddress.IPv6Address) and self.host.ipv4_mapped:
            return self.host.ipv4_mapped
        return self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == AF_INET6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UnixAddr:
    name: bytes                # the path, or the abstract name without its leading NUL
    abstract: bool = False

    def __str__(self) -> str:
        text = self.name.decode(errors="backslashreplace")
        return "@" + text if self.abstract else text


Address = IPAddr | UnixAddr


def unpack(data: bytes) -> Address | None:
    """Decode a sockaddr; None for anything that is not a usable IP or Unix address
    (AF_UNSPEC, an unnamed Unix socket, a short buffer, another family)."""
    if len(data) < 2:
        return None
    family = struct.unpack_from("=H", data)[0]
    if family == AF_INET and len(data) >= 16:  # the kernel refuses a shorter one (EINVAL)
        port, raw = struct.unpack_from("!H4s", data, 2)
        return IPAddr(AF_INET, ipaddress.IPv4Address(raw), port)
    if family == AF_INET6 and len(data) >= 24:
        port, flowinfo, raw = struct.unpack_from("!HI16s", data, 2)
        scope_id = struct.unpack_from("=I", data, 24)[0] if len(data) >= 28 else 0
        return IPAddr(AF_INET6, ipaddress.IPv6Address(raw), port, flowinfo, scope_id)
    if family == AF_UNIX and len(data) > 2:
        path = data[2:]
        if path[0] == 0:
            return UnixAddr(path[1:], abstract=True)
        return UnixAddr(path.split(b"\0", 1)[0])
    return None


def family_of(data: bytes) -> int:
    return struct.unpack_from("=H", data)[0] if len(data) >= 2 else AF_UNSPEC


def pack(addr: Address) -> bytes:
    """Encode as the kernel would return it (its natural length)."""
    if isinstance(addr, UnixAddr):
        if addr.abstract:
            return struct.pack("=H", AF_UNIX) + b"\0" + addr.name
        return struct.pack("=H", AF_UNIX) + addr.name + b"\0"
    if addr.family == AF_INET:
        host = addr.match_host
        return struct.pack("=H", AF_INET) + struct.pack("!H4s", addr.port, host.packed) + bytes(8)
    host = addr.host if isinstance(addr.host, ipaddress.IPv6Address) else \
        ipaddress.IPv6Address("::ffff:" + str(addr.host))
    return (struct.pack("=H", AF_INET6) + struct.pack("!HI16s", addr.port, addr.flowinfo, host.packed)
            + struct.pack("=I", addr.scope_id))


def unix_path_fits(name: bytes) -> bool:
    """Whether a path (with its NUL) or an abstract name (after its NUL) fits in sun_path."""
    return len(name) <= SUN_PATH_MAX


# ---- the addresses a program is shown -----------------------------------------------

_LOOPBACK = {AF_INET: ipaddress.IPv4Address("127.0.0.1"), AF_INET6: ipaddress.IPv6Address("::1")}
MAPPED_LOOPBACK = ipaddress.IPv6Address("::ffff:127.0.0.1")
FIRST_PEER_PORT = 1024
EPHEMERAL = (32768, 60999)  # Linux's default ip_local_port_range


def port_from_inode(inode: int) -> int:
    """A stable port for a socket: the same inode always gives the same port,
    consecutive sockets get different ones."""
    return FIRST_PEER_PORT + inode % (65536 - FIRST_PEER_PORT)


def loopback(family: int) -> IPAddress:
    return _LOOPBACK[family]


def local_of_connection(listener: IPAddr) -> IPAddr:
    """getsockname of an accepted connection: the listener's address, with a
    wildcard host replaced by 127.0.0.1 (IPv4-mapped on IPv6, like the peer)."""
    if not listener.host.is_unspecified:
        return listener  # with its IPv6 scope id, as the kernel would show it
    host = loopback(AF_INET) if listener.family == AF_INET else MAPPED_LOOPBACK
    return IPAddr(listener.family, host, listener.port)


def peer_host(listener: IPAddr, peer_uid: int | None) -> IPAddress:
    """The host a peer of a converted socket is shown as: the socket's loopback
    host for loopback sockets; otherwise 127.U.U.1 with the peer's uid in the
    middle octets (IPv4-mapped for IPv6), so logs still tell users apart."""
    if listener.host.is_loopback or peer_uid is None:
        return loopback(listener.family)
    v4 = (127 << 24) | (peer_uid & 0xFFFF) << 8 | 1
    if listener.family == AF_INET:
        return ipaddress.IPv4Address(v4)
    return ipaddress.IPv6Address(0xFFFF << 32 | v4)


def peer_of_connection(listener: IPAddr, peer_inode: int, peer_uid: int | None) -> IPAddr:
    """The IP address an accepted Unix connection pretends to come from; the
    port is derived from the socket's inode: stable across calls and processes."""
    return IPAddr(listener.family, peer_host(listener, peer_uid), port_from_inode(peer_inode))


def local_of_client(target: IPAddr, inode: int) -> IPAddr:
    """getsockname of a redirected client: a loopback address of the target's family."""
    host = loopback(target.family)
    if target.family == AF_INET6 and target.host.ipv4_mapped:
        host = MAPPED_LOOPBACK
    return IPAddr(target.family, host, port_from_inode(inode))


class PortAllocator:
    """Real-looking ports for binds to port 0, never handed out twice at once."""

    def __init__(self, low: int = EPHEMERAL[0], high: int = EPHEMERAL[1], start: int | None = None) -> None:
        # `start`: where to begin (the supervisor picks it at random, so two
        # redirects do not hand out the same first port).
        self.low, self.high = low, high
        self.in_use: set[int] = set()
        self._next = low if start is None else low + (start - low) % (high - low + 1)

    def allocate(self) -> int:
        span = self.high - self.low + 1
        for _ in range(span):
            port = self._next
            self._next = self.low + (self._next - self.low + 7919) % span  # a prime stride looks less sequential
            if port not in self.in_use:
                self.in_use.add(port)
                return port
        raise OSError("no free port left to show")

    def release(self, port: int) -> None:
        self.in_use.discard(port)


# ---- what the kernel makes of an address on a given socket ---------------------------

NO_ADDRESS = UnixAddr(b"\0no address")  # AF_UNSPEC: disconnect (connect), the connected peer (send)


def kernel_reads(data: bytes, family: int, datagram: bool, call: str, v6only: bool = False) -> Address | int:
    """The address the kernel takes `data` for when a program passes it to
    `call` ("bind", "connect" or "send") on an IP socket of `family`, or the
    -errno it answers. This, not the family field alone, is what rules judge:
    an IPv6 UDP socket sends to an AF_INET address as IPv4, an IPv4 one takes
    AF_UNSPEC for AF_INET (net/ipv4/udp.c, af_inet.c, net/ipv6/datagram.c)."""
    import errno

    if len(data) < 2:
        return -errno.EINVAL
    given = family_of(data)
    if given == AF_UNSPEC and call == "connect":
        return NO_ADDRESS
    if family == AF_INET:
        if given == AF_UNSPEC and len(data) >= 16 and (
                (call == "send" and datagram) or (call == "bind" and data[4:8] == bytes(4))):
            data = struct.pack("=H", AF_INET) + data[2:]
            given = AF_INET
        if given != AF_INET:
            return -errno.EAFNOSUPPORT
        return unpack(data) if len(data) >= 16 else -errno.EINVAL
    # AF_INET6
    if given == AF_UNSPEC and call == "send":
        return NO_ADDRESS if datagram else -errno.EAFNOSUPPORT
    if given == AF_INET and datagram and call != "bind" and len(data) >= 16:
        if v6only:
            return -(errno.EAFNOSUPPORT if call == "connect" else errno.ENETUNREACH)
        v4 = unpack(data[:16])
        return IPAddr(AF_INET6, ipaddress.IPv6Address("::ffff:" + str(v4.host)), v4.port)
    if len(data) < 24:
        return -errno.EINVAL
    if given != AF_INET6:
        return -errno.EAFNOSUPPORT if call != "send" or not datagram else -errno.EINVAL
    return unpack(data)
