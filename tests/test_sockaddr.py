"""redirect.sockaddr: sockaddr packing, the fake addresses and ports (pure)."""
from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given, strategies as st

from redirect import sockaddr
from redirect.sockaddr import AF_INET, AF_INET6, IPAddr, PortAllocator, UnixAddr, pack, unpack

ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
ports = st.integers(0, 65535)


@given(ipv4, ports)
def test_ipv4_round_trip(host, port):
    addr = IPAddr(AF_INET, host, port)
    data = pack(addr)
    assert len(data) == 16
    assert unpack(data) == addr
    assert socket.inet_ntoa(data[4:8]) == str(host) and struct.unpack("!H", data[2:4])[0] == port


@given(ipv6, ports, st.integers(0, 2**32 - 1))
def test_ipv6_round_trip(host, port, scope):
    addr = IPAddr(AF_INET6, host, port, scope_id=scope)
    data = pack(addr)
    assert len(data) == 28
    assert unpack(data) == addr


@given(st.binary(min_size=1, max_size=107).filter(lambda b: b"\0" not in b))
def test_unix_round_trip(name):
    assert unpack(pack(UnixAddr(name))) == UnixAddr(name)
    assert unpack(pack(UnixAddr(name, abstract=True))) == UnixAddr(name, abstract=True)


@given(st.binary(max_size=200))
def test_unpack_never_raises(data):
    result = unpack(data)
    assert result is None or isinstance(result, (IPAddr, UnixAddr))


def test_unpack_edge_cases():
    assert unpack(b"") is None
    assert unpack(struct.pack("=H", socket.AF_UNIX)) is None  # unnamed
    assert unpack(struct.pack("=H", AF_INET) + b"\0\x50") is None  # too short
    assert unpack(struct.pack("=H", socket.AF_UNIX) + b"/run/x\0garbage") == UnixAddr(b"/run/x")


def test_mapped_ipv4_matches_as_ipv4():
    addr = IPAddr(AF_INET6, ipaddress.IPv6Address("::ffff:127.0.0.1"), 80)
    assert addr.match_host == ipaddress.IPv4Address("127.0.0.1")


@given(st.integers(0, 2**63))
def test_peer_port_is_stable_and_unprivileged(inode):
    port = sockaddr.port_from_inode(inode)
    assert 1024 <= port <= 65535
    assert sockaddr.port_from_inode(inode) == port


def test_consecutive_inodes_get_distinct_ports():
    assert len({sockaddr.port_from_inode(i) for i in range(10_000, 70_000)}) == 60_000


def test_peer_of_loopback_and_wildcard_listeners():
    lo = IPAddr(AF_INET, ipaddress.IPv4Address("127.0.0.1"), 80)
    assert sockaddr.peer_of_connection(lo, 5, 1000).host == ipaddress.IPv4Address("127.0.0.1")
    any4 = IPAddr(AF_INET, ipaddress.IPv4Address("0.0.0.0"), 80)
    assert sockaddr.peer_of_connection(any4, 5, 1000).host == ipaddress.IPv4Address("127.3.232.1")
    any6 = IPAddr(AF_INET6, ipaddress.IPv6Address("::"), 80)
    peer = sockaddr.peer_of_connection(any6, 5, 0)
    assert peer.family == AF_INET6 and peer.host == ipaddress.IPv6Address("::ffff:127.0.0.1")
    lo6 = IPAddr(AF_INET6, ipaddress.IPv6Address("::1"), 80)
    assert sockaddr.peer_of_connection(lo6, 5, 0).host == ipaddress.IPv6Address("::1")
    assert sockaddr.local_of_connection(any4).host == ipaddress.IPv4Address("127.0.0.1")
    assert sockaddr.local_of_connection(lo6) == lo6


def test_port_allocator_never_hands_out_twice():
    ports = PortAllocator(40000, 40009)
    got = [ports.allocate() for _ in range(10)]
    assert sorted(got) == list(range(40000, 40010))
    try:
        ports.allocate()
        raise AssertionError("allocated from an exhausted range")
    except OSError:
        pass
    ports.release(40003)
    assert ports.allocate() == 40003
