"""Datagram peers: which IP address each Unix sender is shown as, and back.

A converted datagram socket receives from Unix addresses (a client's private
reply socket, a rule's socket file) but the program must see IP addresses, and
must be able to answer to them. The table gives every sender one stable IP
address per family, never the same for two senders, and maps it back when the
program sends there. Pure: no OS calls.
"""
from __future__ import annotations

import ipaddress
import zlib
from collections import OrderedDict

from .sockaddr import AF_INET, AF_INET6, FIRST_PEER_PORT, IPAddr, IPAddress, UnixAddr

# A sender with no address (an unbound Unix socket): shown, but nobody to answer to.
UNNAMED = UnixAddr(b"")

_PORTS = 65536 - FIRST_PEER_PORT


def _key(addr: IPAddr) -> tuple[IPAddress, int]:
    """What makes two shown addresses the same destination: IPv4-mapped IPv6 is IPv4."""
    return addr.match_host, addr.port


def in_family(addr: IPAddr, family: int) -> IPAddr | None:
    """addr as a socket of `family` would show it (IPv4 <-> IPv4-mapped), or None."""
    if addr.family == family:
        return addr
    if family == AF_INET6:
        return IPAddr(AF_INET6, ipaddress.IPv6Address("::ffff:" + str(addr.match_host)), addr.port)
    host = addr.match_host
    return IPAddr(AF_INET, host, addr.port) if isinstance(host, ipaddress.IPv4Address) else None


class PeerTable:
    """Unix sender <-> the IP address shown for it. Bounded: the least recently
    used entries go first (a reply to a forgotten address then fails loudly)."""

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self._shown: OrderedDict[tuple[int, UnixAddr], IPAddr] = OrderedDict()
        self._real: dict[tuple[IPAddress, int], UnixAddr] = {}
        self._senders: set[UnixAddr] = set()  # received from (not only sent to by a rule)

    def __len__(self) -> int:
        return len(self._shown)

    def show(self, real: UnixAddr, family: int, host: IPAddress,
             preferred: IPAddr | None = None) -> IPAddr:
        """The address to show for a datagram from `real` on a socket of `family`:
        the one shown before, else `preferred` (the sender's own IP face, when we
        know it) if no other sender has it, else `host` with a port of its own."""
        known = self.known(real, family)
        if known is not None:
            self._senders.add(real)
            return known
        candidate = in_family(preferred, family) if preferred is not None else None
        if candidate is None or self._taken(candidate, real):
            candidate = self._free(real, family, host)
        self._add(family, real, candidate)
        self._senders.add(real)
        return candidate

    def sent_to_us(self, real: UnixAddr) -> bool:
        """Whether a datagram came from `real` (an answer to it is the
        program's to send), not only one went there by a rule."""
        return real in self._senders

    def known(self, real: UnixAddr, family: int) -> IPAddr | None:
        """The address shown for `real` so far, if any."""
        shown = self._shown.get((family, real))
        if shown is not None:
            self._shown.move_to_end((family, real))
        return shown

    def remember(self, shown: IPAddr, real: UnixAddr) -> None:
        """The program sent to `shown` and it went to `real`: answers from `real`
        come from `shown` (and later sends to `shown` go to `real`)."""
        owner = self._real.get(_key(shown))
        if owner is not None and owner != real:
            for family in (AF_INET, AF_INET6):  # that address now means `real`
                self._forget(family, owner)
        self._add(shown.family, real, shown)

    def real(self, shown: IPAddr) -> UnixAddr | None:
        """Where a datagram to an address we showed goes (UNNAMED: to nobody);
        None if we never showed it."""
        return self._real.get(_key(shown))

    # ---- inside --------------------------------------------------------------------
    def _taken(self, addr: IPAddr, real: UnixAddr) -> bool:
        owner = self._real.get(_key(addr))
        return owner is not None and owner != real

    def _free(self, real: UnixAddr, family: int, host: IPAddress) -> IPAddr:
        # Derived from the name, so a sender keeps its port across table evictions
        # and supervisor runs as long as nobody else holds it.
        start = zlib.crc32(real.name + (b"@" if real.abstract else b""))
        for step in range(_PORTS):
            candidate = IPAddr(family, host, FIRST_PEER_PORT + (start + step) % _PORTS)
            if not self._taken(candidate, real):
                return candidate
        raise OSError("no fake peer address left")  # more than 64512 live senders on one host

    def _add(self, family: int, real: UnixAddr, shown: IPAddr) -> None:
        self._forget(family, real)
        self._shown[(family, real)] = shown
        self._real[_key(shown)] = real
        while len(self._shown) > self.limit:
            self._forget(*next(iter(self._shown)))

    def _forget(self, family: int, real: UnixAddr) -> None:
        shown = self._shown.pop((family, real), None)
        if shown is None:
            return
        if (AF_INET6 if family == AF_INET else AF_INET, real) not in self._shown:
            self._senders.discard(real)
        other = self._shown.get((AF_INET6 if family == AF_INET else AF_INET, real))
        # The other family's face of the same sender may be the same address.
        if self._real.get(_key(shown)) == real and (other is None or _key(other) != _key(shown)):
            del self._real[_key(shown)]
