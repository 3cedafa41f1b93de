"""What the rules say about one bind, connect or send: pure, no OS calls, so
any backend (ptrace now, seccomp user notification later) takes the same
decisions, and the tests can check them on their own."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, replace
from enum import Enum

from .rules import SUN_PATH_MAX, Action, Direction, Rule, SocketFacts, SocketType, expand, first_match
from .sockaddr import Address, IPAddr, PortAllocator, UnixAddr, unix_path_fits


class Refusal(Enum):
    """Why a decision fails the call, and the level of its log line: a
    rule's own reject is what the user asked for (shown at -v); the others
    are errors, always shown."""
    REJECTED = ("rejected by rule", 1)
    SEALED = ("sealed: no rule converts this socket, and the program may not use the real network", 0)
    TOO_LONG = ("the socket path is too long for a Unix socket", 0)
    NO_SENDER_ADDRESS = ("that sender had no address to answer to", 0)
    UNSUPPORTED = ("not supported on a converted socket", 0)

    def __init__(self, text: str, level: int) -> None:
        self.text, self.level = text, level


@dataclass(frozen=True)
class Decision:
    """What to do with one bind/connect/send, decided from rules alone (or, for
    a datagram to an address shown for a sender, from the peer table: no rule)."""
    rule: Rule | None
    visible: Address                 # the address the program asked for (port 0 filled in)
    real: UnixAddr | None = None     # where it goes instead
    error: int = 0                   # fail the call with this errno
    refusal: Refusal | None = None   # why (with error)
    detail: str = ""                 # said instead of the refusal's own text
    lease: int | None = None         # the port decide() handed out for a bind to port 0: the
                                     # socket that takes it keeps it, else it is given back

    @property
    def reason(self) -> str:
        return self.detail or (self.refusal.text if self.refusal else "")

    @property
    def source(self) -> str:
        if self.rule is not None:
            return f"rule {self.rule.text}"
        return "sealed mode" if self.refusal is Refusal.SEALED else "an address shown for a datagram sender"


def facts(direction: Direction, kind: SocketType, visible: Address) -> SocketFacts:
    if isinstance(visible, IPAddr):
        return SocketFacts(direction, kind, address=visible.match_host, port=visible.port)
    name = os.fsdecode(visible.name)
    return SocketFacts(direction, kind, abstract=name) if visible.abstract else \
        SocketFacts(direction, kind, unix_path=name)


# Sealed mode: an IP socket no rule mentions must not reach the network.
SEALED = {Direction.IN: errno.EACCES, Direction.OUT: errno.ENETUNREACH}


def decide(rules: list[Rule], direction: Direction, kind: SocketType, visible: Address,
           ports: PortAllocator, sealed: bool = False) -> Decision | None:
    """The rule's verdict on a socket, or None to leave it alone. Pure but for
    handing out a port for binds to port 0. Sealed: IP sockets no rule matches
    are refused (an explicit `ignore` rule is the one way through)."""
    rule = first_match(rules, facts(direction, kind, visible))
    if rule is None and sealed and isinstance(visible, IPAddr):
        return Decision(None, visible, error=SEALED[direction], refusal=Refusal.SEALED)
    if rule is None or rule.action == Action.IGNORE:
        return None
    if rule.action == Action.REJECT:
        return Decision(rule, visible, error=rule.errno or errno.EACCES, refusal=Refusal.REJECTED)
    if rule.action == Action.SYSTEMD:
        # A passed listening socket serves binds; a connect is left alone.
        return Decision(rule, visible) if direction == Direction.IN else None
    lease = None
    if direction == Direction.IN and isinstance(visible, IPAddr) and visible.port == 0:
        lease = ports.allocate()
        visible = replace(visible, port=lease)
    if rule.action == Action.BLACKHOLE:
        return Decision(rule, visible, lease=lease)
    if isinstance(visible, IPAddr):
        port, address = visible.port, str(visible.match_host)
    else:
        port, address = 0, ""
    name = os.fsencode(expand(rule.target or "", port=port, address=address,
                              socket_type=kind))
    real = UnixAddr(name, abstract=rule.action == Action.ABSTRACT)
    if not name or not unix_path_fits(name):
        return Decision(rule, visible, real, error=errno.ENAMETOOLONG, lease=lease,
                        refusal=Refusal.TOO_LONG,
                        detail=f"socket path {real} is too long for a Unix socket (max {SUN_PATH_MAX} bytes)")
    return Decision(rule, visible, real, lease=lease)
