"""redirect.decision: what the rules say about one bind, connect or send (pure)."""
from __future__ import annotations

import errno
import ipaddress

from redirect.decision import Refusal, decide
from redirect.rules import Direction, SocketType, parse_rule
from redirect.sockaddr import AF_INET, IPAddr, PortAllocator, UnixAddr

IN, OUT, STREAM, DGRAM = Direction.IN, Direction.OUT, SocketType.STREAM, SocketType.DGRAM


def _v4(host: str, port: int) -> IPAddr:
    return IPAddr(AF_INET, ipaddress.IPv4Address(host), port)


def test_decide_first_match_and_placeholders():
    rules = [parse_rule("in,addr=127.0.0.1,port=80,ignore"), parse_rule("in,path=/run/%t-%a-%p.sock")]
    assert decide(rules, IN, STREAM, _v4("127.0.0.1", 80), PortAllocator()) is None
    verdict = decide(rules, IN, STREAM, _v4("127.0.0.2", 80), PortAllocator())
    assert verdict.real == UnixAddr(b"/run/tcp-127.0.0.2-80.sock") and not verdict.error


def test_decide_port_zero_fills_in_a_port():
    verdict = decide([parse_rule("in,path=/run/%p.sock")], IN, STREAM, _v4("127.0.0.1", 0), PortAllocator(50000, 50000))
    assert verdict.visible.port == 50000 and verdict.real == UnixAddr(b"/run/50000.sock")


def test_decide_datagram_rules_and_udp_placeholder():
    verdict = decide([parse_rule("in,udp,path=/run/%t-%p.sock")], IN, DGRAM, _v4("127.0.0.1", 53), PortAllocator())
    assert not verdict.error and verdict.real == UnixAddr(b"/run/udp-53.sock")
    assert decide([parse_rule("out,tcp,path=/x")], OUT, DGRAM, _v4("127.0.0.1", 53), PortAllocator()) is None
    assert decide([parse_rule("udp,reject=EPERM")], OUT, DGRAM, _v4("10.0.0.1", 53), PortAllocator()).error == errno.EPERM
    assert decide([parse_rule("in,udp,blackhole")], IN, DGRAM, _v4("0.0.0.0", 53), PortAllocator()).real is None


def test_decide_systemd_serves_binds_only_and_permissions_pass():
    verdict = decide([parse_rule("systemd=web")], IN, STREAM, _v4("127.0.0.1", 80), PortAllocator())
    assert verdict.rule.target == "web" and verdict.real is None and not verdict.error
    assert decide([parse_rule("systemd")], OUT, STREAM, _v4("127.0.0.1", 80), PortAllocator()) is None
    verdict = decide([parse_rule("in,path=/x,mode=0600")], IN, STREAM, _v4("127.0.0.1", 80), PortAllocator())
    assert not verdict.error and verdict.rule.mode == 0o600


def test_decide_reject_and_too_long():
    assert decide([parse_rule("out,reject=EPERM")], OUT, STREAM, _v4("10.0.0.1", 80), PortAllocator()).error == errno.EPERM
    long_rule = parse_rule("in,path=/" + "d" * 95 + "/%a%p")
    verdict = decide([long_rule], IN, STREAM, _v4("127.0.0.1", 65535), PortAllocator())
    assert verdict.error == errno.ENAMETOOLONG and "too long" in verdict.reason


def test_decide_unix_sockets_only_with_from_rules():
    catch_all = [parse_rule("path=/run/x.sock")]
    assert decide(catch_all, OUT, STREAM, UnixAddr(b"/var/run/other.sock"), PortAllocator()) is None
    from_unix = [parse_rule("out,from-unix=/var/run/*.sock,path=/run/new.sock")]
    verdict = decide(from_unix, OUT, STREAM, UnixAddr(b"/var/run/other.sock"), PortAllocator())
    assert verdict.real == UnixAddr(b"/run/new.sock")


def test_a_port_handed_out_is_a_lease_and_only_that_one():
    ports = PortAllocator(50000, 50001)
    rules = [parse_rule("in,path=/run/%p.sock")]
    chosen = decide(rules, IN, STREAM, _v4("127.0.0.1", 0), ports)
    assert chosen.lease == chosen.visible.port == 50000 and ports.in_use == {50000}
    fixed = decide(rules, IN, STREAM, _v4("127.0.0.1", 50000), ports)
    assert fixed.lease is None  # a port the program named is nobody's to give back
    refused = decide([parse_rule("in,reject")], IN, STREAM, _v4("127.0.0.1", 0), ports)
    assert refused.refusal is Refusal.REJECTED and refused.lease is None and ports.in_use == {50000}


def test_refusals_say_why_and_how_loudly():
    sealed = decide([], OUT, STREAM, _v4("10.0.0.1", 80), PortAllocator(), sealed=True)
    assert sealed.refusal is Refusal.SEALED and sealed.error == errno.ENETUNREACH and sealed.source == "sealed mode"
    assert decide([], IN, STREAM, _v4("0.0.0.0", 80), PortAllocator(), sealed=True).error == errno.EACCES
    rejected = decide([parse_rule("out,reject=EPERM")], OUT, STREAM, _v4("10.0.0.1", 80), PortAllocator())
    assert rejected.refusal.level == 1 and sealed.refusal.level == 0  # a rule's own reject is no warning
