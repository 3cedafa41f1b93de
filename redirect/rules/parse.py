"""Rules from text: one rule (ip2unix's -r syntax, extended with mode=,
owner=, group=), or a rule file. Every mistake is a RuleError pointing at
the offending character."""
from __future__ import annotations

import errno as _errno
import grp
import os
import pwd
import re
import unicodedata

from .model import SUN_PATH_MAX, Action, Direction, IPAddress, Rule, RuleError, SocketType, _normalise_address
from .placeholders import placeholder_reason, scan_template

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


def _quote(text: str) -> str:
    """Quote user text inside a reason; repr() makes control chars visible."""
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return repr(text)
    return f"'{text}'"


def _close_match(word: str, choices) -> str | None:
    import difflib  # only for error messages: keep it off the start-up path

    close = difflib.get_close_matches(word, choices, n=1)
    return close[0] if close else None


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


_DIRECTIONS = {"in": Direction.IN, "out": Direction.OUT}
_TYPES = {"tcp": SocketType.STREAM, "stream": SocketType.STREAM,
          "udp": SocketType.DGRAM, "dgram": SocketType.DGRAM, "datagram": SocketType.DGRAM}
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
    """Reads a rule item by item into `fields`, the Rule's own field names
    (later items override earlier ones), then checks it as a whole."""

    def __init__(self, text: str, cwd: str | None, source: str | None):
        self.text = text
        self.cwd = cwd
        self.source = source
        self.fields: dict[str, object] = {}
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
        defaults = dict.fromkeys(("direction", "socket_type", "address", "port", "from_unix",
                                  "from_abstract", "target", "errno"))
        return Rule(**{**defaults, **self.fields, "text": self.text})

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
            self.fields["direction"] = _DIRECTIONS[key]
            self.pos["direction"] = item.start
        elif key in _TYPES:
            self.fields["socket_type"] = _TYPES[key]
        elif key in ("addr", "address"):
            self.fields["address"] = self.parse_address(item)
            self.pos["address"] = item.start
        elif key == "port":
            self.fields["port"] = self.parse_port(item)
            self.pos["port"] = item.start
        elif key in ("from-unix", "from-abstract"):
            assert item.value is not None
            if item.value == "":
                raise self.error(item.value_start,
                                 f"'{key}' needs a glob pattern: {key}=GLOB")
            self.fields[key.replace("-", "_")] = item.value
            self.pos[key] = item.start
        elif key == "noremove":
            self.fields["noremove"] = True
            self.pos["noremove"] = item.start
        elif key == "mode":
            self.fields["mode"] = self.parse_mode(item)
            self.pos["mode"] = item.start
        elif key in ("owner", "group"):
            self.fields[key] = self.parse_ident(item)
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
        if "action" in self.fields:
            raise self.error(
                item.start,
                f"a rule takes one action, and this one already has "
                f"'{self.action_text}'")
        self.fields["action"] = Action(key)
        self.action_text = key + ("=" if item.value is not None else "")
        self.pos["action"] = item.start
        value = item.value
        if key in ("path", "abstract"):
            assert value is not None
            self.fields["target"] = self.parse_target(item, key)
        elif key == "systemd":
            if value is not None:
                self.fields["target"] = self.parse_fdname(item)
        elif key == "reject":
            self.fields["errno"] = _errno.EACCES if value is None else self.parse_errno(item)

    def parse_target(self, item: _Item, key: str) -> str:
        value = item.value
        assert value is not None
        if value == "":
            what = "a socket path" if key == "path" else "a name"
            raise self.error(item.value_start,
                             f"'{key}=' needs {what}: {_VALUE_HINT[key]}")
        size, bad = scan_template(value)
        if bad is not None:
            raise self.error(item.at(bad), placeholder_reason(value, bad))
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
            size, _ = scan_template(value)
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
        pos, fields = self.pos, self.fields
        action = fields.get("action")
        if action is None:
            raise self.error(len(self.text),
                             "no action: add one of path=, abstract=, "
                             "systemd, reject, blackhole or ignore")
        if "from-unix" in pos and "from-abstract" in pos:
            raise self.error(max(pos["from-unix"], pos["from-abstract"]),
                             "from-unix= and from-abstract= exclude each other: "
                             "a socket has a path or an abstract name")
        unix_key = next((key for key in ("from-unix", "from-abstract") if key in pos), None)
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
        direction = fields.get("direction")
        if action is Action.BLACKHOLE and direction is not Direction.IN:
            raise self.error(pos["action"],
                             "blackhole only works for incoming sockets: "
                             "add 'in' to the rule")
        if action is Action.SYSTEMD and direction is Direction.OUT:
            raise self.error(pos["action"],
                             "systemd passes listening sockets, so it only "
                             "works for incoming sockets, not 'out'")
        for flag in ("noremove", "mode", "owner", "group"):
            if flag in pos and action is not Action.PATH:
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
