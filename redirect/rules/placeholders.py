"""The placeholders of path= and abstract= (%p, %a, %t, %%): checking a
template and filling it in. Pure logic."""
from __future__ import annotations

from .model import RuleError

_PLACEHOLDERS = {"p", "a", "t", "%"}
# Shortest text each placeholder can expand to: "0", "::", "tcp", "%".
_PLACEHOLDER_MIN = {"p": 1, "a": 2, "t": 3, "%": 1}


def scan_template(template: str) -> tuple[int, int | None]:
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
        size += nbytes(c)
        i += 1
    return size, None


def placeholder_reason(template: str, index: int) -> str:
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
                raise RuleError(template, i, placeholder_reason(template, i))
            out.append(values[template[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def nbytes(text: str) -> int:
    """Length as the kernel will see it (file names are bytes)."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        # A surrogate no decoder could have produced; count it anyway.
        return len(text.encode("utf-8", "surrogatepass"))
