"""The rule language: parse, validate, print and match rules.

Pure logic.  The only OS contact is ``os.getcwd()`` (to make a relative
``path=`` absolute when no ``cwd`` is given), reading a rule file, and
``pwd``/``grp`` look-ups for ``owner=``/``group=``.

The syntax is ip2unix's ``-r`` syntax (comma separated items, ``\\,`` and
``\\\\`` escapes in values), extended with ``mode=``, ``owner=`` and
``group=``.  See docs/rules.md for the user-facing reference.
"""

from __future__ import annotations

import errno as _errno
import functools
import grp
import os
import pwd
import re
import unicodedata
from collections.abc import Sequence

__all__ = [
    "RuleError",
    "Rule",
    "SocketFacts",
    "parse_rule",
    "parse_rule_file",
    "format_rule",
    "first_match",
    "expand",
    "glob_match",
    "describe",
    "SUN_PATH_MAX",
    "ACTIONS",
]

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

ACTIONS = ("path", "abstract", "systemd", "reject", "blackhole", "ignore")

# errno names the errno module knows, including aliases such as EWOULDBLOCK
# (errno.errorcode only holds one name per number).
_ERRNO_BY_NAME: dict[str, int] = {
    name: value
    for name, value in vars(_errno).items()
    if re.fullmatch(r"E[A-Z0-9]+", name) and isinstance(value, int)
}
# The kernel reports errors as -1..-4095; anything above cannot be returned.
_ERRNO_MAX = 4095
_UID_MAX = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown, so it is not an id

_DIGITS = re.compile(r"[0-9]+", re.ASCII)  # str.isdigit() also accepts '٣'
_OCTAL = re.compile(r"[0-7]+", re.ASCII)
_PLACEHOLDERS = {"p", "a", "t", "%"}
# Shortest text each placeholder can expand to: "0", "::", "tcp", "%".
_PLACEHOLDER_MIN = {"p": 1, "a": 2, "t": 3, "%": 1}


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


def _quote(text: str) -> str:
    """Quote user text inside a reason; repr() makes control chars visible."""
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return repr(text)
    return f"'{text}'"


def _close_match(word: str, choices) -> str | None:
    import difflib  # only for error messages: keep it off the start-up path

    close = difflib.get_close_matches(word, choices, n=1)
    return close[0] if close else None


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
        # Stored normalised so that equal addresses make equal rules.
        object.__setattr__(self, "address", _normalise_address(self.address))

    @classmethod
    def parse(cls, text: str) -> "Rule":
        """A rule from its text (RuleError, with a caret, if it is wrong)."""
        return parse_rule(text)

    def __str__(self) -> str:
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
        names = {"stream": "tcp", "dgram": "udp"}
        why.append(f"{names[rule.socket_type]}, not {names[sock.socket_type]}")
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


# --------------------------------------------------------------------------
# Placeholders

def _scan_template(template: str) -> tuple[int, int | None]:
    """Return (shortest expansion in bytes, index of a bad '%' or None)."""
    size = 0
    i = 0
    n = len(template)
    while i < n:
        c = template[i]
        if c == "%":
            if i + 1 >= n or template[i + 1] not in _PLACEHOLDERS:
                return size, i
            size += _PLACEHOLDER_MIN[template[i + 1]]
            i += 2
            continue
        size += _nbytes(c)
        i += 1
    return size, None


def _placeholder_reason(template: str, index: int) -> str:
    if index + 1 >= len(template):
        return "a lone '%' at the end: write %% for a percent sign"
    return (f"unknown placeholder %{template[index + 1]}: use %p (port), "
            "%a (address), %t (tcp/udp) or %% (a percent sign)")


def expand(template: str, *, port: int, address: str, socket_type: str) -> str:
    """Fill in %p, %a, %t and %% (templates are validated by parse_rule)."""
    values = {
        "p": str(port),
        "a": str(address),
        # "stream"/"dgram" per the API; "tcp"/"udp" tolerated from callers.
        "t": "udp" if socket_type in ("dgram", "datagram", "udp") else "tcp",
        "%": "%",
    }
    out: list[str] = []
    i = 0
    n = len(template)
    while i < n:
        c = template[i]
        if c == "%":
            if i + 1 >= n or template[i + 1] not in values:
                raise RuleError(template, i, _placeholder_reason(template, i))
            out.append(values[template[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _nbytes(text: str) -> int:
    """Length as the kernel will see it (file names are bytes)."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        # A surrogate no decoder could have produced; count it anyway.
        return len(text.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------
# Globs

def glob_match(pattern: str, name: str) -> bool:
    """Match a from-unix/from-abstract glob against a path or name.

    '?', '*' and classes never match '/'; a '**' component spans any
    number of components; '\\X' is a literal X.  As in ip2unix, a pattern
    without any '/' is matched against the last component of the name only.
    """
    if "/" not in pattern:
        name = name.rsplit("/", 1)[-1]
    return _compile_glob(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=256)
def _compile_glob(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            # '**' alone as a whole component spans components.
            whole = (j - i == 2 and (i == 0 or pattern[i - 1] == "/")
                     and (j == n or pattern[j] == "/"))
            if whole and j == n:
                out.append(".*")
                i = j
            elif whole:
                out.append("(?:[^/]*/)*")
                i = j + 1  # the '/' is part of the spanned components
            else:
                out.append("[^/]*")
                i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            parsed = _glob_class(pattern, i)
            if parsed is None:
                out.append(re.escape("["))  # no valid class: a literal '['
                i += 1
            else:
                regex, i = parsed
                out.append(regex)
        elif c == "\\":
            if i + 1 < n:
                out.append(re.escape(pattern[i + 1]))
                i += 2
            else:
                out.append(re.escape("\\"))  # trailing backslash is literal
                i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _glob_class(pattern: str, start: int) -> tuple[str, int] | None:
    """Parse a [...] class at start; None if it is not a valid class."""
    i = start + 1
    n = len(pattern)
    negate = False
    if i < n and pattern[i] == "!":
        negate = True
        i += 1
    members: list[tuple[str, str]] = []
    first = True
    while True:
        if i >= n or pattern[i] == "/":
            return None  # unterminated, or crossing a component
        c = pattern[i]
        if c == "]" and not first:
            i += 1
            break
        first = False
        if c == "\\" and i + 1 < n:
            i += 1
            c = pattern[i]
        i += 1
        # A range needs a '-' followed by something other than the closing ']'.
        if i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
            i += 1
            end = pattern[i]
            if end == "/":
                return None
            if end == "\\" and i + 1 < n:
                i += 1
                end = pattern[i]
            i += 1
            members.append((c, end))
        else:
            members.append((c, c))
    parts = "".join(
        re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
        for lo, hi in members if lo <= hi)  # a reversed range matches nothing
    if negate:
        return (f"[^/{parts}]", i)
    if not parts:
        return ("(?!)", i)
    return (f"(?!/)[{parts}]", i)


# --------------------------------------------------------------------------
# Parsing

class _Item:
    __slots__ = ("key", "start", "value", "value_start", "offsets", "end")

    def __init__(self, key: str, start: int, value: str | None, value_start: int, offsets: list[int],
                 end: int) -> None:
        self.key = key
        self.start = start              # index of the item's first character
        self.value = value              # unescaped value, None for a bare word
        self.value_start = value_start  # index of the value's first character
        self.offsets = offsets          # text index of each value character
        self.end = end                  # index of the ',' after the item, or len(text)

    def at(self, k: int) -> int:
        """Text position of value character k (the item's end past it)."""
        return self.offsets[k] if k < len(self.offsets) else self.end


def _split(text: str) -> list[_Item]:
    """Split into items; '\\,' and '\\\\' are escapes inside values only."""
    items: list[_Item] = []
    n = len(text)
    i = 0
    while True:
        start = i
        while i < n and text[i] not in ",=":
            i += 1
        key = text[start:i]
        if i < n and text[i] == "=":
            i += 1
            value_start = i
            chars: list[str] = []
            offsets: list[int] = []
            while i < n and text[i] != ",":
                if text[i] == "\\" and i + 1 < n and text[i + 1] in ",\\":
                    chars.append(text[i + 1])
                    offsets.append(i)
                    i += 2
                else:
                    chars.append(text[i])
                    offsets.append(i)
                    i += 1
            items.append(_Item(key, start, "".join(chars), value_start,
                               offsets, i))
        else:
            items.append(_Item(key, start, None, i, [], i))
        if i >= n:
            return items
        i += 1  # the comma


_DIRECTIONS = {"in": "in", "out": "out"}
_TYPES = {"tcp": "stream", "stream": "stream",
          "udp": "dgram", "dgram": "dgram", "datagram": "dgram"}
_BARE_ONLY = set(_DIRECTIONS) | set(_TYPES) | {"blackhole", "ignore", "noremove"}
_VALUE_ONLY = {"path", "abstract", "addr", "address", "port", "from-unix",
               "from-abstract", "mode", "owner", "group"}
_EITHER = {"systemd", "reject"}
_KNOWN = sorted(_BARE_ONLY | _VALUE_ONLY | _EITHER)

_VALUE_HINT = {
    "path": "path=PATH",
    "abstract": "abstract=NAME",
    "addr": "addr=ADDRESS",
    "address": "address=ADDRESS",
    "port": "port=N or port=A-B",
    "from-unix": "from-unix=GLOB",
    "from-abstract": "from-abstract=GLOB",
    "mode": "mode=0660",
    "owner": "owner=USER",
    "group": "group=GROUP",
}


class _Parser:
    def __init__(self, text: str, cwd: str | None, source: str | None):
        self.text = text
        self.cwd = cwd
        self.source = source
        self.direction: str | None = None
        self.socket_type: str | None = None
        self.address: IPAddress | None = None
        self.port: tuple[int, int] | None = None
        self.from_unix: str | None = None
        self.from_abstract: str | None = None
        self.action: str | None = None
        self.target: str | None = None
        self.errno: int | None = None
        self.noremove = False
        self.mode: int | None = None
        self.owner: int | None = None
        self.group: int | None = None
        # Where the item that set each thing stands (last one wins).
        self.pos: dict[str, int] = {}
        self.action_text = ""

    def error(self, position: int, reason: str) -> RuleError:
        return RuleError(self.text, position, reason, self.source)

    def parse(self) -> Rule:
        if not self.text.strip():
            raise self.error(0, "empty rule: a rule needs at least an action, "
                                "such as path=PATH")
        for item in _split(self.text):
            self.item(item)
        self.check()
        assert self.action is not None
        return Rule(
            direction=self.direction, socket_type=self.socket_type,
            address=self.address, port=self.port,
            from_unix=self.from_unix, from_abstract=self.from_abstract,
            action=self.action, target=self.target, errno=self.errno,
            noremove=self.noremove, mode=self.mode, owner=self.owner,
            group=self.group, text=self.text)

    # ---- one item ----------------------------------------------------------

    def item(self, item: _Item) -> None:
        key = item.key
        if key == "" and item.value is None:
            raise self.error(item.start, "empty item: two commas in a row, or "
                                         "a comma at the start or the end")
        if key == "":
            raise self.error(item.start, "missing item name before '='")
        if key not in _BARE_ONLY and key not in _VALUE_ONLY and key not in _EITHER:
            raise self.error(item.start, self.unknown(key))
        if item.value is not None and key in _BARE_ONLY:
            raise self.error(item.value_start - 1, f"'{key}' takes no value")
        if item.value is None and key in _VALUE_ONLY:
            raise self.error(item.start,
                             f"'{key}' needs a value: {_VALUE_HINT[key]}")

        if key in _DIRECTIONS:
            self.direction = _DIRECTIONS[key]
            self.pos["direction"] = item.start
        elif key in _TYPES:
            self.socket_type = _TYPES[key]
        elif key in ("addr", "address"):
            self.address = self.parse_address(item)
            self.pos["address"] = item.start
        elif key == "port":
            self.port = self.parse_port(item)
            self.pos["port"] = item.start
        elif key in ("from-unix", "from-abstract"):
            assert item.value is not None
            if item.value == "":
                raise self.error(item.value_start,
                                 f"'{key}' needs a glob pattern: {key}=GLOB")
            if key == "from-unix":
                self.from_unix = item.value
            else:
                self.from_abstract = item.value
            self.pos[key] = item.start
        elif key == "noremove":
            self.noremove = True
            self.pos["noremove"] = item.start
        elif key == "mode":
            self.mode = self.parse_mode(item)
            self.pos["mode"] = item.start
        elif key in ("owner", "group"):
            ident = self.parse_ident(item)
            if key == "owner":
                self.owner = ident
            else:
                self.group = ident
            self.pos[key] = item.start
        else:
            self.parse_action(item)

    def unknown(self, key: str) -> str:
        reason = f"unknown item {_quote(key)}"
        if key != key.strip():
            return reason + " (no spaces around ',' and '=')"
        if key.lower() in _KNOWN:
            return reason + f" (items are lower case: '{key.lower()}')"
        close = _close_match(key, _KNOWN)
        if close:
            return reason + f" (did you mean '{close}'?)"
        return reason

    def parse_action(self, item: _Item) -> None:
        key = item.key
        if self.action is not None:
            raise self.error(
                item.start,
                f"a rule takes one action, and this one already has "
                f"'{self.action_text}'")
        self.action = key
        self.action_text = key + ("=" if item.value is not None else "")
        self.pos["action"] = item.start
        value = item.value
        if key in ("path", "abstract"):
            assert value is not None
            self.target = self.parse_target(item, key)
        elif key == "systemd":
            if value is not None:
                self.target = self.parse_fdname(item)
        elif key == "reject":
            self.errno = (_errno.EACCES if value is None
                          else self.parse_errno(item))

    def parse_target(self, item: _Item, key: str) -> str:
        value = item.value
        assert value is not None
        if value == "":
            what = "a socket path" if key == "path" else "a name"
            raise self.error(item.value_start,
                             f"'{key}=' needs {what}: {_VALUE_HINT[key]}")
        size, bad = _scan_template(value)
        if bad is not None:
            raise self.error(item.at(bad), _placeholder_reason(value, bad))
        if key == "abstract":
            if size > SUN_PATH_MAX:
                raise self.error(item.value_start, self.too_long(
                    "abstract name", size, value, relative=False))
            return value
        if "\0" in value:
            raise self.error(item.at(value.index("\0")),
                             "a socket path cannot contain a NUL character")
        if value.endswith("/"):
            raise self.error(item.at(len(value) - 1),
                             "a socket path names a file: it cannot end in '/'")
        relative = not value.startswith("/")
        if relative:
            value = self.absolute(item, value)
            size, _ = _scan_template(value)
        if size > SUN_PATH_MAX:
            raise self.error(item.value_start,
                             self.too_long("socket path", size, value, relative))
        return value

    def too_long(self, what: str, size: int, value: str, relative: bool) -> str:
        at_least = "at least " if "%" in value else ""
        made = " once made absolute" if relative else ""
        return (f"{what} too long: {at_least}{size} bytes{made}, "
                f"the limit is {SUN_PATH_MAX}")

    def absolute(self, item: _Item, value: str) -> str:
        cwd = self.cwd
        if cwd is None:
            try:
                cwd = os.getcwd()
            except OSError as exc:
                raise self.error(item.value_start,
                                 "cannot make this relative path absolute: "
                                 f"no current directory ({exc.strerror})")
        if not cwd.startswith("/"):
            raise self.error(item.value_start,
                             "cannot make this relative path absolute: "
                             f"the working directory {cwd!r} is not absolute")
        # A '%' in the directory name is not a placeholder.
        return os.path.join(cwd.replace("%", "%%"), value)

    def parse_fdname(self, item: _Item) -> str:
        value = item.value
        assert value is not None
        # systemd's own rules for FileDescriptorName= (fdname_is_valid).
        if value == "":
            raise self.error(item.value_start,
                             "'systemd=' needs a name; write plain 'systemd' "
                             "to take the passed sockets in order")
        if len(value) > 255:
            raise self.error(item.value_start,
                             "a systemd socket name has at most 255 characters")
        for k, c in enumerate(value):
            if c == ":" or not " " <= c <= "~":
                raise self.error(item.at(k),
                                 "a systemd socket name is printable ASCII "
                                 "without ':'")
        return value

    def parse_errno(self, item: _Item) -> int:
        value = item.value
        assert value is not None
        if value == "":
            raise self.error(item.value_start,
                             "'reject=' needs an error: a name like EPERM or a "
                             "number")
        if _DIGITS.fullmatch(value):
            digits = value.lstrip("0")
            if digits and len(digits) <= 4 and int(digits) <= _ERRNO_MAX:
                return int(digits)
            raise self.error(item.value_start,
                             f"error number must be from 1 to {_ERRNO_MAX}")
        code = _ERRNO_BY_NAME.get(value.upper())
        if code is None:
            close = _close_match(value.upper(), _ERRNO_BY_NAME)
            hint = f" (did you mean {close}?)" if close else ""
            raise self.error(item.value_start,
                             f"unknown error name {_quote(value)}{hint}")
        return code

    def parse_address(self, item: _Item) -> IPAddress:
        value = item.value
        assert value is not None
        if value == "":
            raise self.error(item.value_start,
                             "'addr=' needs an IPv4 or IPv6 address")
        if value.startswith("[") and value.endswith("]"):
            raise self.error(item.value_start,
                             "write an IPv6 address without brackets")
        if "%" in value:
            raise self.error(item.at(value.index("%")),
                             "an address zone (%...) is not supported; "
                             "give the address without it")
        if "/" in value:
            raise self.error(item.at(value.index("/")),
                             "a network (/prefix) is not supported; "
                             "give one address")
        import ipaddress

        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise self.error(item.value_start,
                             f"{_quote(value)} is not an IPv4 or IPv6 address") from None
        return _normalise_address(address)  # type: ignore[return-value]

    def parse_port(self, item: _Item) -> tuple[int, int]:
        value = item.value
        assert value is not None
        if value == "":
            raise self.error(item.value_start,
                             "'port=' needs a port: port=N or port=A-B")
        dash = value.find("-")
        if dash <= 0:  # no range (a leading '-' is a bad number, not a range)
            port = _port_number(value)
            if port is None:
                raise self.error(item.value_start,
                                 "port must be a number from 0 to 65535")
            return (port, port)
        lo = _port_number(value[:dash])
        if lo is None:
            raise self.error(item.value_start,
                             "start port must be a number from 0 to 65535")
        if dash + 1 >= len(value):
            raise self.error(item.at(dash + 1),
                             "port range needs an end port: port=A-B")
        hi = _port_number(value[dash + 1:])
        if hi is None:
            raise self.error(item.at(dash + 1),
                             "end port must be a number from 0 to 65535")
        if lo == hi:
            raise self.error(item.value_start,
                             f"port range start and end are equal: "
                             f"write port={lo}")
        if lo > hi:
            raise self.error(item.value_start,
                             "port range start must be lower than its end")
        return (lo, hi)

    def parse_mode(self, item: _Item) -> int:
        value = item.value
        assert value is not None
        if _OCTAL.fullmatch(value):
            digits = value.lstrip("0")
            if len(digits) <= 4:
                return int(digits or "0", 8)
        raise self.error(item.value_start,
                         "mode must be octal digits up to 7777, like 0660")

    def parse_ident(self, item: _Item) -> int:
        key, value = item.key, item.value
        assert value is not None
        what = "user" if key == "owner" else "group"
        if value == "":
            raise self.error(item.value_start,
                             f"'{key}=' needs a {what} name or number")
        if _DIGITS.fullmatch(value):
            digits = value.lstrip("0") or "0"
            if len(digits) <= 10 and int(digits) <= _UID_MAX:
                return int(digits)
            raise self.error(item.value_start,
                             f"{what} id must be from 0 to {_UID_MAX}")
        try:
            if key == "owner":
                return pwd.getpwnam(value).pw_uid
            return grp.getgrnam(value).gr_gid
        except (KeyError, ValueError, OSError):
            raise self.error(item.value_start,
                             f"unknown {what} {_quote(value)}") from None

    # ---- the rule as a whole ---------------------------------------------

    def check(self) -> None:
        pos = self.pos
        if self.action is None:
            raise self.error(len(self.text),
                             "no action: add one of path=, abstract=, "
                             "systemd, reject, blackhole or ignore")
        if self.from_unix is not None and self.from_abstract is not None:
            raise self.error(max(pos["from-unix"], pos["from-abstract"]),
                             "from-unix= and from-abstract= exclude each other: "
                             "a socket has a path or an abstract name")
        unix_key = ("from-unix" if self.from_unix is not None
                    else "from-abstract" if self.from_abstract is not None
                    else None)
        if unix_key is not None:
            for ip_key, shown in (("address", "addr="), ("port", "port=")):
                if ip_key in pos:
                    if pos[ip_key] > pos[unix_key]:
                        at, reason = pos[ip_key], (
                            f"{shown} cannot be combined with {unix_key}=: "
                            "a Unix socket has no address or port")
                    else:
                        at, reason = pos[unix_key], (
                            f"{unix_key}= cannot be combined with {shown}: "
                            "a Unix socket has no address or port")
                    raise self.error(at, reason)
        if self.action == "blackhole" and self.direction != "in":
            raise self.error(pos["action"],
                             "blackhole only works for incoming sockets: "
                             "add 'in' to the rule")
        if self.action == "systemd" and self.direction == "out":
            raise self.error(pos["action"],
                             "systemd passes listening sockets, so it only "
                             "works for incoming sockets, not 'out'")
        for flag in ("noremove", "mode", "owner", "group"):
            if flag in pos and self.action != "path":
                raise self.error(pos[flag],
                                 f"'{flag}' only works with path=")


def _port_number(text: str) -> int | None:
    if not _DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"  # leading zeros are fine, as in ip2unix
    if len(digits) > 5:
        return None
    value = int(digits)
    return value if value <= 65535 else None


def parse_rule(text: str, *, cwd: str | None = None,
               source: str | None = None) -> Rule:
    """Parse one rule; raises RuleError (and nothing else) when it is bad."""
    try:
        return _Parser(text, cwd, source).parse()
    except RuleError:
        raise
    except Exception as exc:  # a bug here must still reach the user as a rule error
        raise RuleError(text, 0, f"cannot parse this rule ({exc!r})",
                        source) from exc


def parse_rule_file(path: str, *, cwd: str | None = None) -> list[Rule]:
    """One rule per line; blank lines and '#' comment lines are skipped.

    An unreadable file raises OSError for the caller to report.
    """
    # surrogateescape: socket paths need not be UTF-8. Lines end at \n (or
    # \r\n) only: \v, \f, \x1c-\x1e, U+0085 or U+2028 inside a value stay in it.
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        lines = handle.read().split("\n")
    rules = []
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r").strip(" \t")
        if not line or line.startswith("#"):
            continue
        rules.append(parse_rule(line, cwd=cwd, source=f"{path}:{number}"))
    return rules


# --------------------------------------------------------------------------
# Printing

def escape_value(value: str) -> str:
    """A value as rule text writes it: backslashes and commas escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _errno_name(code: int) -> str | None:
    return _errno.errorcode.get(code)


def format_rule(rule: Rule) -> str:
    """Canonical text that parse_rule turns back into an equal Rule."""
    items: list[str] = []
    if rule.direction is not None:
        items.append(rule.direction)
    if rule.socket_type is not None:
        items.append("tcp" if rule.socket_type == "stream" else "udp")
    if rule.address is not None:
        items.append(f"addr={rule.address}")
    if rule.port is not None:
        lo, hi = rule.port
        items.append(f"port={lo}" if lo == hi else f"port={lo}-{hi}")
    if rule.from_unix is not None:
        items.append(f"from-unix={escape_value(rule.from_unix)}")
    if rule.from_abstract is not None:
        items.append(f"from-abstract={escape_value(rule.from_abstract)}")
    if rule.action in ("path", "abstract"):
        items.append(f"{rule.action}={escape_value(rule.target or '')}")
    elif rule.action == "systemd":
        items.append("systemd" if rule.target is None
                     else f"systemd={escape_value(rule.target)}")
    elif rule.action == "reject":
        code = _errno.EACCES if rule.errno is None else rule.errno
        if code == _errno.EACCES:
            items.append("reject")
        else:
            items.append(f"reject={_errno_name(code) or code}")
    else:
        items.append(rule.action)
    if rule.noremove:
        items.append("noremove")
    if rule.mode is not None:
        items.append(f"mode={rule.mode:04o}")
    if rule.owner is not None:
        items.append(f"owner={rule.owner}")
    if rule.group is not None:
        items.append(f"group={rule.group}")
    return ",".join(items)


def _id_name(ident: int, kind: str) -> str:
    try:
        name = (pwd.getpwuid(ident).pw_name if kind == "owner"
                else grp.getgrgid(ident).gr_name)
    except (KeyError, OverflowError, ValueError):
        return str(ident)
    return f"{ident} ({name})"


def describe(rule: Rule) -> list[tuple[str, str]]:
    """Rows (label, value) of a human-readable table for `redirect -p`."""
    rows = [
        ("direction", {"in": "incoming", "out": "outgoing"}.get(
            rule.direction or "", "both")),
        ("type", rule.socket_type or "both"),
    ]
    if rule.from_unix is not None:
        rows.append(("from unix path", rule.from_unix))
    elif rule.from_abstract is not None:
        rows.append(("from abstract name", rule.from_abstract))
    else:
        rows.append(("address", "any" if rule.address is None
                     else str(rule.address)))
        if rule.port is None:
            rows.append(("port", "any"))
        else:
            lo, hi = rule.port
            rows.append(("port", str(lo) if lo == hi else f"{lo}-{hi}"))
    rows.append(("action", rule.action))
    if rule.action == "path":
        rows.append(("socket path", rule.target or ""))
        rows.append(("remove on close", "no" if rule.noremove else "yes"))
        if rule.mode is not None:
            rows.append(("mode", f"{rule.mode:04o}"))
        if rule.owner is not None:
            rows.append(("owner", _id_name(rule.owner, "owner")))
        if rule.group is not None:
            rows.append(("group", _id_name(rule.group, "group")))
    elif rule.action == "abstract":
        rows.append(("abstract name", rule.target or ""))
    elif rule.action == "systemd":
        rows.append(("systemd socket", rule.target if rule.target is not None
                     else "next one, in order"))
    elif rule.action == "reject":
        code = _errno.EACCES if rule.errno is None else rule.errno
        name = _errno_name(code)
        rows.append(("error", f"{name} ({code})" if name else str(code)))
    return rows
