"""Socket activation: listening sockets passed in (systemd's LISTEN_FDS protocol)
or opened by redirect itself before the program starts (--activate), and which
bind gets which of them.

The supervisor keeps every passed socket for its whole life and hands a
duplicate to the program when it binds a socket that a `systemd` rule matches;
the program never inherits them at their numbers, so one that closes every fd
from 3 up at start cannot lose them, and a socket it closes can be handed out
again to its next bind.
"""
from __future__ import annotations

import errno
import os
import select
import socket
from dataclasses import dataclass

from . import socketfile
from .log import WARN
from .rules import Action, Direction, Rule, SocketType, expand
from .sockaddr import UnixAddr

SD_LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def parse_listen_env(env: dict[str, str], pid: int) -> tuple[list[tuple[int, str | None]], str | None]:
    """The passed fds and their names (None: unnamed) per the environment, and a
    warning if the variables are there but not for us. Pure."""
    count = env.get("LISTEN_FDS")
    if count is None:
        return [], None
    if env.get("LISTEN_PID") != str(pid):
        return [], f"LISTEN_FDS is set but LISTEN_PID={env.get('LISTEN_PID')!r} is not this process ({pid}): ignored"
    if not (count.isascii() and count.isdigit()) or int(count) > 1024:
        return [], f"LISTEN_FDS={count!r} is not a number of sockets: ignored"
    names = env["LISTEN_FDNAMES"].split(":") if "LISTEN_FDNAMES" in env else []
    names += [""] * (int(count) - len(names))
    return [(SD_LISTEN_FDS_START + i, names[i] or None) for i in range(int(count))], None


def program_environment(env: dict[str, str]) -> dict[str, str]:
    """The program's environment: the activation variables were for us."""
    return {key: value for key, value in env.items() if key not in _VARIABLES}


@dataclass
class Passed:
    sock: socket.socket           # the supervisor's own fd of it
    name: str | None
    kind: SocketType
    inode: int
    real: UnixAddr | None = None  # opened by --activate: for the binds that rules send here
    rule: Rule | None = None
    file_id: tuple[int, int, int, int] | None = None  # of the socket file, to remove it at the end
    number: int | None = None     # the fd it was passed at (LISTEN_FDS)

    def describe(self) -> str:
        if self.real is not None:
            return f"the socket --activate opened at {self.real}"
        what = self.name or "unnamed"
        try:
            where = self.sock.getsockname()
        except OSError:
            where = "?"
        return f"passed socket {what} (fd {self.number}, {where!r})"


class Activation:
    """The sockets passed to this supervisor, and which of them are handed out."""

    def __init__(self, passed: list[Passed]) -> None:
        self.passed = passed      # from systemd, for `systemd` rules
        self.opened: list[Passed] = []  # by --activate, for path=/abstract= rules
        self.reserved: set[int] = set()  # being handed over right now

    @classmethod
    def from_environment(cls, env: dict[str, str], log) -> "Activation":
        fds, warning = parse_listen_env(env, os.getpid())
        if warning:
            log(WARN, warning)
        passed = []
        for fd, name in fds:
            try:
                dup = os.dup(fd)
            except OSError as err:
                log(WARN, f"passed fd {fd} cannot be used ({err.strerror}): ignored")
                continue
            _close_quietly(fd)  # keep only our close-on-exec duplicate: the program must not inherit it
            try:
                sock = socket.socket(fileno=dup)
                kind = SocketType.of(sock.type)
            except OSError as err:
                log(WARN, f"passed fd {fd} is not a usable socket ({err.strerror}): ignored")
                _close_quietly(dup)
                continue
            if kind is None:
                log(WARN, f"passed fd {fd} is neither a stream nor a datagram socket: ignored")
                sock.close()
                continue
            passed.append(Passed(sock, name, kind, os.fstat(sock.fileno()).st_ino, number=fd))
        for name in sorted({p.name for p in passed if p.name is not None}):
            same = [p.number for p in passed if p.name == name]
            if len(same) > 1:
                log(WARN, f"{len(same)} passed sockets are named {name!r} (fds {', '.join(map(str, same))}): each bind "
                       f"a systemd={name} rule matches gets the next of them the program does not hold, in the "
                       "order passed (ip2unix gives every such bind the last one)")
        return cls(passed)

    def summary(self) -> str:
        """What was passed, for a log line."""
        if not self.passed:
            return "no sockets were passed (LISTEN_FDS)"
        return "passed: " + ", ".join(f"{p.name or 'unnamed'} (fd {p.number}, {p.kind})" for p in self.passed)

    def offers(self, name: str | None, claimed: set[str]) -> bool:
        """Whether any passed socket is for a `systemd` (None) or
        `systemd=NAME` rule at all, held by the program or not."""
        return any(p.name == name if name is not None else p.name not in claimed for p in self.passed)

    def pick(self, name: str | None, claimed: set[str], in_use: set[int],
             kind: SocketType | None = None) -> Passed | None:
        """The socket for a bind that a `systemd` (name None) or `systemd=NAME`
        rule matched: the first passed one of that name, or for plain `systemd`
        the first one no `systemd=NAME` rule claims, in the order they were
        passed; of the bind's type if there is one; never one the program
        holds now."""
        candidates = [p for p in self.passed if p.inode not in in_use]
        if kind is not None and any(p.kind == kind for p in candidates):
            candidates = [p for p in candidates if p.kind == kind]
        for passed in candidates:
            if name is not None and passed.name == name:
                return passed
            if name is None and passed.name not in claimed:
                return passed
        return None

    def hands_out(self, inode: int) -> bool:
        """Whether this socket is one of those passed in or opened here."""
        return any(p.inode == inode for p in (*self.passed, *self.opened))

    def opened_at(self, real: UnixAddr, kind: SocketType) -> Passed | None:
        return next((p for p in self.opened if p.real == real and p.kind == kind), None)

    def open_rule_sockets(self, rules: list[Rule]) -> list[str]:
        """--activate: create, bind and listen on the socket of every `in` rule
        whose name is fixed (a single port for %p, addr= for %a), as systemd
        would, before the program runs. Returns the rules skipped, and why.
        Raises OSError (with the path) if a socket cannot be made."""
        skipped = []
        for rule in rules:
            if rule.direction == Direction.OUT or rule.action not in (Action.PATH, Action.ABSTRACT) or rule.is_unix:
                continue
            target = fixed_target(rule)
            if target is None:
                skipped.append(f"{rule.text}: its socket name depends on the program's bind "
                               "(a port range, or %a without addr=); it is made at the bind")
                continue
            real, kind = target
            if self.opened_at(real, kind) is not None:
                continue
            self.opened.append(_open(rule, real, kind))
        return skipped

    def wait_for_traffic(self, signals) -> None:
        """--on-demand: block until a connection or datagram arrives on any of
        the opened sockets (it stays queued for the program). A signal wakes
        the wait (its handler runs as select returns: a stop ends it)."""
        while True:
            ready, _, _ = select.select([p.sock for p in self.opened] + [signals.wakeup], [], [])
            if signals.wakeup in ready:
                signals.drain()
            if any(r is not signals.wakeup for r in ready):
                return

    def close(self) -> None:
        for passed in self.passed:
            passed.sock.close()
        for opened in self.opened:
            opened.sock.close()
            if not opened.real.abstract and not opened.rule.noremove:
                socketfile.remove_if_ours(opened.real.name, opened.file_id)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def fixed_target(rule: Rule) -> tuple[UnixAddr, SocketType] | None:
    """The Unix address and socket type an `in` rule always resolves to, if it
    does not depend on the program's bind."""
    template = rule.target or ""
    if "%p" in template and (rule.port is None or rule.port[0] != rule.port[1]):
        return None
    if "%a" in template and rule.address is None:
        return None
    kind = rule.socket_type or SocketType.STREAM
    name = expand(template, port=rule.port[0] if rule.port else 0, address=str(rule.address), socket_type=kind)
    return UnixAddr(os.fsencode(name), abstract=rule.action == Action.ABSTRACT), kind


def _open(rule: Rule, real: UnixAddr, kind: SocketType) -> Passed:
    stype = kind.sock_type
    if not real.abstract:
        err = socketfile.clear_stale(real.name, stype)
        if err:
            raise OSError(err, os.strerror(err), os.fsdecode(real.name))
    restricted = not real.abstract and socketfile.has_permissions(rule)
    problem = socketfile.permission_problem(rule) if restricted else None
    if problem:
        raise OSError(errno.EPERM, problem, os.fsdecode(real.name))
    sock = socket.socket(socket.AF_UNIX, stype | socket.SOCK_CLOEXEC)
    try:
        if restricted:
            os.fchmod(sock.fileno(), socketfile.initial_mode(rule))  # born no looser than asked
        sock.bind(b"\0" + real.name if real.abstract else real.name)
        if restricted:
            umask = os.umask(0)
            os.umask(umask)
            err = socketfile.apply_permissions(real.name, sock, rule, os.geteuid(), umask)
            if err:
                raise OSError(-err, os.strerror(-err), os.fsdecode(real.name))
        if kind == SocketType.STREAM:
            sock.listen(socket.SOMAXCONN)
    except OSError as err:
        sock.close()
        raise OSError(err.errno, err.strerror, os.fsdecode(real.name)) from None
    ident = None if real.abstract else socketfile.file_id(real.name, sock)
    return Passed(sock, None, kind, os.fstat(sock.fileno()).st_ino, real, rule, ident)
