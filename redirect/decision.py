"""What the rules say about one bind, connect or send: pure, no OS calls, so
any backend (ptrace now, seccomp user notification later) takes the same
decisions, and the tests can check them on their own."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, replace

from .rules import Rule, SocketFacts, expand, first_match
from .sockaddr import Address, IPAddr, PortAllocator, UnixAddr, unix_path_fits


@dataclass(frozen=True)
class Decision:
    """What to do with one bind/connect/send, decided from rules alone (or, for
    a datagram to an address shown for a sender, from the peer table: no rule)."""
    rule: Rule | None
    visible: Address                 # the address the program asked for (port 0 filled in)
    real: UnixAddr | None = None     # where it goes instead
    error: int = 0                   # fail the call with this errno
    reason: str = ""                 # why, for the log

    @property
    def source(self) -> str:
        if self.rule is not None:
            return f"rule {self.rule.text}"
        return "sealed mode" if self.reason == SEALED_REASON else "an address shown for a datagram sender"


def facts(direction: str, kind: str, visible: Address) -> SocketFacts:
    if isinstance(visible, IPAddr):
        return SocketFacts(direction, kind, address=visible.match_host, port=visible.port)
    name = os.fsdecode(visible.name)
    return SocketFacts(direction, kind, abstract=name) if visible.abstract else \
        SocketFacts(direction, kind, unix_path=name)


# Sealed mode: an IP socket no rule mentions must not reach the network.
SEALED = {"in": errno.EACCES, "out": errno.ENETUNREACH}
SEALED_REASON = "sealed: no rule converts this socket, and the program may not use the real network"


def decide(rules: list[Rule], direction: str, kind: str, visible: Address,
           ports: PortAllocator, sealed: bool = False) -> Decision | None:
    """The rule's verdict on a socket, or None to leave it alone. Pure but for
    handing out a port for binds to port 0. Sealed: IP sockets no rule matches
    are refused (an explicit `ignore` rule is the one way through)."""
    rule = first_match(rules, facts(direction, kind, visible))
    if rule is None and sealed and isinstance(visible, IPAddr):
        return Decision(None, visible, error=SEALED[direction], reason=SEALED_REASON)
    if rule is None or rule.action == "ignore":
        return None
    if rule.action == "reject":
        return Decision(rule, visible, error=rule.errno or errno.EACCES, reason="rejected by rule")
    if rule.action == "systemd":
        # A passed listening socket serves binds; a connect is left alone.
        return Decision(rule, visible) if direction == "in" else None
    if direction == "in" and isinstance(visible, IPAddr) and visible.port == 0:
        visible = replace(visible, port=ports.allocate())
    if rule.action == "blackhole":
        return Decision(rule, visible)
    if isinstance(visible, IPAddr):
        port, address = visible.port, str(visible.match_host)
    else:
        port, address = 0, ""
    name = os.fsencode(expand(rule.target or "", port=port, address=address,
                              socket_type=kind))
    real = UnixAddr(name, abstract=rule.action == "abstract")
    if not name or not unix_path_fits(name, real.abstract):
        return Decision(rule, visible, real, error=errno.ENAMETOOLONG,
                        reason=f"socket path {real} is too long for a Unix socket (max 107 bytes)")
    return Decision(rule, visible, real)
