"""Rules as text again: the canonical form (format_rule, which parse_rule
reads back as an equal rule) and the table of `redirect -p`."""
from __future__ import annotations

import errno as _errno
import grp
import pwd

from .model import Rule


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
        items.append(rule.socket_type.protocol)
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
