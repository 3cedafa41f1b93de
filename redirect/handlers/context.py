"""What every handler is given: the call (its thread, name and arguments)
and the context (the rules, the registry of converted sockets, the log),
and the few steps every handler takes the same way: judge, refuse, work on
the supervisor's duplicate of the call's socket, install a Unix socket in
the program's place."""
from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import swap
from ..activation import Activation
from ..decision import Decision, decide, facts
from ..log import WARN
from ..program import Process, ProgramThread as Thread
from ..reaper import Reaper
from ..registry import Registry
from ..rules import Action, Direction, Rule, SocketType, closest, first_match
from ..sockaddr import Address, IPAddr, PortAllocator, UnixAddr
from ..socketfile import ReplyDirs
from ..templates import Templates


@dataclass
class Context:
    rules: list[Rule]
    registry: Registry
    ports: PortAllocator
    log: Callable[[int, str], None]   # (verbosity needed, message); 0 = always shown
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
    reaper: Reaper = None           # the end of converted sockets (reaper.py): set by the supervisor

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
        self.warn_once(("left", kind, visible), f"{visible} ({proto}) stays on the network: no rule "
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
            self.log(WARN, message)

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
        return f"{self.name}() in thread {self.thread.tid}"


def refuse(call: Call, visible: Address, verdict: Decision) -> int:
    """Fail the call as the verdict says, and log why (a rule's own reject
    at -v, every other refusal always)."""
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


def install(call: Call, fd: int, sock: socket.socket, new: socket.socket):
    """Generator: the supervisor's Unix socket `new` in place of the
    program's `sock` at fd (swap.install), and the IP-level options the
    program had set kept for it, to be read back. 0 or -errno; on failure
    the program's fd is as it was."""
    res = yield from swap.install(call.thread, fd, sock, new, call.ctx.log)
    if isinstance(res, int):
        return res
    inode = os.fstat(new.fileno()).st_ino
    for (level, name), value in res.items():
        call.ctx.registry.set_option(inode, level, name, value)
    return 0
