"""What a rule is (Rule), what it is matched against (SocketFacts), and how
it matches. Pure logic."""
from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from enum import StrEnum

from .globpath import glob_match

IPAddress = "ipaddress.IPv4Address | ipaddress.IPv6Address"  # ipaddress is imported where used: start-up


class _Record:
    """A small immutable record (what a frozen dataclass gives, without
    importing dataclasses and inspect at start-up: ~6 ms). Subclasses list
    FIELDS, and DEFAULTS for the trailing ones that have defaults."""
    FIELDS: tuple[str, ...] = ()
    DEFAULTS: dict = {}
    __slots__ = ()

    def __init__(self, *args, **kwargs) -> None:
        if len(args) > len(self.FIELDS):
            raise TypeError(f"{type(self).__name__} takes {len(self.FIELDS)} fields")
        values = dict(zip(self.FIELDS, args))
        for name, value in kwargs.items():
            if name not in self.FIELDS or name in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated field {name!r}")
            values[name] = value
        for name in self.FIELDS:
            if name not in values:
                if name not in self.DEFAULTS:
                    raise TypeError(f"{type(self).__name__}: missing field {name!r}")
                values[name] = self.DEFAULTS[name]
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._values() == self._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.FIELDS) + ")"

    def replace(self, **changes):
        """A copy with some fields changed."""
        return type(self)(**{**{n: getattr(self, n) for n in self.FIELDS}, **changes})


# sun_path is 108 bytes; a path needs its terminating NUL, an abstract name
# its leading NUL, so both get 107 bytes of their own.
SUN_PATH_MAX = 107



class Direction(StrEnum):
    """Which calls a rule is about: binds ("in") or connects and sends ("out")."""
    IN = "in"
    OUT = "out"


# (Not from socket: importing it costs 3 ms of start-up; tests/test_constants.py checks them.)
_SOCK_STREAM, _SOCK_DGRAM = 1, 2


class SocketType(StrEnum):
    """The two kinds of socket rules convert; str() is the API's name."""
    STREAM = "stream"
    DGRAM = "dgram"

    @property
    def sock_type(self) -> int:
        return _SOCK_STREAM if self is SocketType.STREAM else _SOCK_DGRAM

    @property
    def protocol(self) -> str:
        """The rule language's word for it (and %t's value)."""
        return "tcp" if self is SocketType.STREAM else "udp"

    @classmethod
    def of(cls, sock_type: int) -> "SocketType | None":
        """The kind of a socket of this SO_TYPE (flags masked), None for others."""
        return _BY_SOCK_TYPE.get(sock_type & 0xF)


_BY_SOCK_TYPE = {_SOCK_STREAM: SocketType.STREAM, _SOCK_DGRAM: SocketType.DGRAM}


class Action(StrEnum):
    """What a matching rule does."""
    PATH = "path"
    ABSTRACT = "abstract"
    SYSTEMD = "systemd"
    REJECT = "reject"
    BLACKHOLE = "blackhole"
    IGNORE = "ignore"


ACTIONS = tuple(Action)


class RuleError(Exception):
    """A rule that cannot be parsed, with the position of the culprit.

    ``str(err)`` is a two-line message with a caret under the offending
    character, ready for the terminal.
    """

    def __init__(self, rule_text: str, position: int, reason: str,
                 source: str | None = None) -> None:
        super().__init__(rule_text, position, reason, source)
        self.rule_text = rule_text
        self.position = max(0, min(position, len(rule_text)))
        self.reason = reason
        self.source = source

    def __str__(self) -> str:
        prefix = (f"{self.source}: " if self.source else "") + "bad rule: "
        shown = _printable(self.rule_text)
        column = _width(prefix) + _width(shown[: self.position])
        return f"{prefix}{shown}\n{' ' * column}^ {_printable(self.reason)}"


def _printable(text: str) -> str:
    # Control characters (a newline in an -r argument...) would break the
    # two-line layout; '?' keeps every character one column wide.
    return "".join(
        "?" if unicodedata.category(c) in ("Cc", "Cs") else c for c in text)


def _width(text: str) -> int:
    # East Asian wide characters take two terminal columns.
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
               for c in text)


def _normalise_address(addr: object) -> IPAddress | None:
    """IPv4-mapped IPv6 becomes IPv4; an IPv6 zone (%eth0) is dropped."""
    if addr is None:
        return None
    import ipaddress
    if isinstance(addr, str):
        addr = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id is not None:
            return ipaddress.IPv6Address(int(addr))
    assert isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address))
    return addr


class SocketFacts(_Record):
    """What the supervisor knows about one socket call; no OS objects:
    direction ("in": bind, "out": connect/send), socket_type ("stream",
    "dgram"), and address and port, or the Unix path as the program gave
    it, or the abstract name without its leading NUL."""
    FIELDS = ("direction", "socket_type", "address", "port", "unix_path", "abstract")
    DEFAULTS = dict(address=None, port=None, unix_path=None, abstract=None)
    __slots__ = FIELDS


class Rule(_Record):
    """One parsed rule. direction: "in", "out", None (both); socket_type:
    "stream", "dgram", None (both); address; port: inclusive (lo, hi);
    from_unix, from_abstract: globs; action: one of ACTIONS; target: the path
    or abstract template, or fd name; errno (reject); noremove, mode, owner,
    group; text: the original text, for messages."""
    FIELDS = ("direction", "socket_type", "address", "port", "from_unix", "from_abstract", "action", "target",
              "errno", "noremove", "mode", "owner", "group", "text")
    DEFAULTS = dict(noremove=False, mode=None, owner=None, group=None, text="")
    __slots__ = FIELDS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Stored normalised so that equal addresses make equal rules; a
        # misspelt direction, type or action is a ValueError here.
        object.__setattr__(self, "address", _normalise_address(self.address))
        for name, kind in (("direction", Direction), ("socket_type", SocketType), ("action", Action)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, kind(value))

    @classmethod
    def parse(cls, text: str) -> "Rule":
        """A rule from its text (RuleError, with a caret, if it is wrong)."""
        from .parse import parse_rule

        return parse_rule(text)

    def __str__(self) -> str:
        from .printing import format_rule

        return format_rule(self)

    @property
    def is_unix(self) -> bool:
        """True for from-unix/from-abstract rules (they never match IP)."""
        return self.from_unix is not None or self.from_abstract is not None

    def matches(self, sock: SocketFacts) -> bool:
        if self.direction is not None and sock.direction != self.direction:
            return False
        if self.socket_type is not None and sock.socket_type != self.socket_type:
            return False
        if self.from_unix is not None:
            return sock.unix_path is not None and glob_match(
                self.from_unix, sock.unix_path)
        if self.from_abstract is not None:
            return sock.abstract is not None and glob_match(
                self.from_abstract, sock.abstract)
        # An IP rule: a catch-all must never catch an unrelated Unix socket.
        if sock.unix_path is not None or sock.abstract is not None:
            return False
        if self.address is not None:
            try:
                if _normalise_address(sock.address) != self.address:
                    return False
            except ValueError:
                return False
        if self.port is not None:
            if sock.port is None or not self.port[0] <= sock.port <= self.port[1]:
                return False
        return True


def first_match(rules: Sequence[Rule], sock: SocketFacts) -> Rule | None:
    """Rules are tried in order; the first match decides."""
    for rule in rules:
        if rule.matches(sock):
            return rule
    return None


def mismatches(rule: Rule, sock: SocketFacts) -> list[str]:
    """Why an IP rule does not match this IP socket, item by item ("port
    8080, not 9090"); empty if it matches. Unix-socket rules never match IP
    sockets: one item says so."""
    if rule.from_unix is not None or rule.from_abstract is not None:
        return ["it is about Unix sockets"]
    why = []
    if rule.direction is not None and sock.direction != rule.direction:
        why.append(f"{rule.direction}, not {sock.direction}")
    if rule.socket_type is not None and sock.socket_type != rule.socket_type:
        why.append(f"{rule.socket_type.protocol}, not {SocketType(sock.socket_type).protocol}")
    if rule.address is not None:
        try:
            same = _normalise_address(sock.address) == rule.address
        except ValueError:
            same = False
        if not same:
            why.append(f"addr {rule.address}, not {sock.address}")
    if rule.port is not None and (sock.port is None or not rule.port[0] <= sock.port <= rule.port[1]):
        wanted = str(rule.port[0]) if rule.port[0] == rule.port[1] else f"{rule.port[0]}-{rule.port[1]}"
        why.append(f"port {wanted}, not {sock.port}")
    return why


def closest(rules: Sequence[Rule], sock: SocketFacts) -> tuple[int, Rule, list[str]] | None:
    """The rule that came closest to matching a socket none matches: (its
    number from 1, it, why not), fewest differences first, then the
    earliest; None without rules for IP sockets."""
    scored = [(len(why) + (rule.direction not in (None, sock.direction)), number, rule, why)  # same direction first
              for number, rule in enumerate(rules, 1)
              if (why := mismatches(rule, sock)) and rule.from_unix is None and rule.from_abstract is None]
    if not scored:
        return None
    _, number, rule, why = min(scored, key=lambda item: item[:2])
    return number, rule, why
