"""Pure logic: sockaddr packing, fake addresses, ports, the registry, decisions."""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from hypothesis import given, strategies as st

from redirect import sockaddr
from redirect.decision import decide
from redirect.registry import Client, Listener, Registry
from redirect.rules import parse_rule
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


def test_registry_bounds_clients():
    reg = Registry(max_clients=3)
    target = IPAddr(AF_INET, ipaddress.IPv4Address("127.0.0.1"), 80)
    for inode in range(5):
        reg.add_client(inode, Client(UnixAddr(b"/x"), target, "stream"))
    assert reg.client(0) is None and reg.client(1) is None and reg.client(4) is not None


def test_registry_listeners():
    reg = Registry()
    listener = Listener(UnixAddr(b"/run/a.sock"), IPAddr(AF_INET, ipaddress.IPv4Address("0.0.0.0"), 80), "stream", 42)
    reg.add_listener(listener)
    assert reg.listener_at(UnixAddr(b"/run/a.sock")) is listener and reg.listener_inodes[42] is listener
    reg.drop_listener(listener)
    assert reg.listener_at(UnixAddr(b"/run/a.sock")) is None and 42 not in reg.listener_inodes


# ---- decisions -------------------------------------------------------------------------

def _v4(host: str, port: int) -> IPAddr:
    return IPAddr(AF_INET, ipaddress.IPv4Address(host), port)


def test_decide_first_match_and_placeholders():
    rules = [parse_rule("in,addr=127.0.0.1,port=80,ignore"), parse_rule("in,path=/run/%t-%a-%p.sock")]
    assert decide(rules, "in", "stream", _v4("127.0.0.1", 80), PortAllocator()) is None
    verdict = decide(rules, "in", "stream", _v4("127.0.0.2", 80), PortAllocator())
    assert verdict.real == UnixAddr(b"/run/tcp-127.0.0.2-80.sock") and not verdict.error


def test_decide_port_zero_fills_in_a_port():
    verdict = decide([parse_rule("in,path=/run/%p.sock")], "in", "stream", _v4("127.0.0.1", 0), PortAllocator(50000, 50000))
    assert verdict.visible.port == 50000 and verdict.real == UnixAddr(b"/run/50000.sock")


def test_decide_datagram_rules_and_udp_placeholder():
    verdict = decide([parse_rule("in,udp,path=/run/%t-%p.sock")], "in", "dgram", _v4("127.0.0.1", 53), PortAllocator())
    assert not verdict.error and verdict.real == UnixAddr(b"/run/udp-53.sock")
    assert decide([parse_rule("out,tcp,path=/x")], "out", "dgram", _v4("127.0.0.1", 53), PortAllocator()) is None
    assert decide([parse_rule("udp,reject=EPERM")], "out", "dgram", _v4("10.0.0.1", 53), PortAllocator()).error == errno.EPERM
    assert decide([parse_rule("in,udp,blackhole")], "in", "dgram", _v4("0.0.0.0", 53), PortAllocator()).real is None


def test_decide_systemd_serves_binds_only_and_permissions_pass():
    verdict = decide([parse_rule("systemd=web")], "in", "stream", _v4("127.0.0.1", 80), PortAllocator())
    assert verdict.rule.target == "web" and verdict.real is None and not verdict.error
    assert decide([parse_rule("systemd")], "out", "stream", _v4("127.0.0.1", 80), PortAllocator()) is None
    verdict = decide([parse_rule("in,path=/x,mode=0600")], "in", "stream", _v4("127.0.0.1", 80), PortAllocator())
    assert not verdict.error and verdict.rule.mode == 0o600


def test_decide_reject_and_too_long():
    assert decide([parse_rule("out,reject=EPERM")], "out", "stream", _v4("10.0.0.1", 80), PortAllocator()).error == errno.EPERM
    long_rule = parse_rule("in,path=/" + "d" * 95 + "/%a%p")
    verdict = decide([long_rule], "in", "stream", _v4("127.0.0.1", 65535), PortAllocator())
    assert verdict.error == errno.ENAMETOOLONG and "too long" in verdict.reason


def test_decide_unix_sockets_only_with_from_rules():
    catch_all = [parse_rule("path=/run/x.sock")]
    assert decide(catch_all, "out", "stream", UnixAddr(b"/var/run/other.sock"), PortAllocator()) is None
    from_unix = [parse_rule("out,from-unix=/var/run/*.sock,path=/run/new.sock")]
    verdict = decide(from_unix, "out", "stream", UnixAddr(b"/var/run/other.sock"), PortAllocator())
    assert verdict.real == UnixAddr(b"/run/new.sock")


# ---- datagram peers ------------------------------------------------------------------

from redirect.peers import UNNAMED, PeerTable, in_family  # noqa: E402

_LO4, _LO6 = ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")
senders = st.lists(st.builds(UnixAddr, st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b),
                             st.booleans()), min_size=1, max_size=60)


@given(senders, st.sampled_from([AF_INET, AF_INET6]), st.integers(3, 80))
def test_peer_table_distinct_senders_never_collide(reals, family, limit):
    table = PeerTable(limit=limit)
    host = _LO4 if family == AF_INET else _LO6
    shown = {}
    for real in reals:
        addr = table.show(real, family, host)
        assert addr.family == family and addr.port >= 1024
        assert table.show(real, family, host) == addr          # stable
        assert table.real(addr) == real                        # a reply reaches the sender shown
        shown[real] = addr
    live = {real: addr for real, addr in shown.items() if table.real(addr) == real}
    assert len(set(live.values())) == len(live)                # never two senders on one address
    assert len(table) <= limit


@given(senders, st.lists(st.integers(1024, 65535), max_size=10))
def test_peer_table_remembered_destinations_win_and_stay_consistent(reals, ports):
    table = PeerTable()
    for real in reals:
        table.show(real, AF_INET, _LO4)
    for i, port in enumerate(ports):
        target = UnixAddr(b"/run/target-%d" % i)
        visible = _v4("127.0.0.1", port)
        table.remember(visible, target)
        assert table.real(visible) == target
        assert table.show(target, AF_INET, _LO4) == visible   # answers come from where we sent
    for real in reals:  # every address still maps back to whoever it is shown for
        addr = table.show(real, AF_INET, _LO4)
        assert table.real(addr) == real


def test_peer_table_prefers_the_senders_own_face_and_maps_families():
    table = PeerTable()
    mine = _v4("127.0.0.1", 5353)
    assert table.show(UnixAddr(b"/run/a"), AF_INET, _LO4, preferred=mine) == mine
    # Taken by /run/a: another sender that would prefer it gets a port of its own.
    other = table.show(UnixAddr(b"/run/b"), AF_INET, _LO4, preferred=mine)
    assert other != mine and table.real(other) == UnixAddr(b"/run/b")
    # The same sender on an IPv6 socket: its IPv4-mapped face, which maps back too.
    mapped = table.show(UnixAddr(b"/run/a"), AF_INET6, _LO6, preferred=mine)
    assert mapped.host == ipaddress.IPv6Address("::ffff:127.0.0.1") and mapped.port == 5353
    assert table.real(mapped) == table.real(mine) == UnixAddr(b"/run/a")
    assert in_family(IPAddr(AF_INET6, _LO6, 1), AF_INET) is None


def test_peer_table_unnamed_senders_are_shown_but_unreachable():
    table = PeerTable()
    addr = table.show(UNNAMED, AF_INET, _LO4)
    assert addr.port >= 1024 and table.real(addr) == UNNAMED
    assert table.real(_v4("127.0.0.1", 9)) is None
