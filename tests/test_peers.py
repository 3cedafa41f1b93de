"""redirect.peers: datagram senders and the IP addresses they are shown as (pure)."""
from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st

from redirect.peers import UNNAMED, PeerTable, in_family
from redirect.sockaddr import AF_INET, AF_INET6, IPAddr, UnixAddr


def _v4(host: str, port: int) -> IPAddr:
    return IPAddr(AF_INET, ipaddress.IPv4Address(host), port)


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
