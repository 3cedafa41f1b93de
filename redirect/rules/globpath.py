"""The globs of from-unix= and from-abstract= (ip2unix's globpath):
'?', '*' and classes never cross '/', '**' spans components. Pure logic."""
from __future__ import annotations

import functools
import re


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
