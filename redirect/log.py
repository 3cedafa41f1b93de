"""redirect's own log: a line per event, on standard error (or where --log-fd
says). A line's level says who sees it, and what it is: WARN and ERROR are
always shown; 1 at -v, 2 at -vv. On a socket (the journal's stream) each line
carries its syslog priority, as systemd reads it: <3> an error, <4> a
warning, <6> the rest."""
from __future__ import annotations

import os
import stat
import sys

WARN = -1   # always shown, as "warning: ..."
ERROR = 0   # always shown: a call refused or failed, redirect's own trouble


class Log:
    def __init__(self, verbosity: int = 0, out=None) -> None:
        self.verbosity = verbosity
        self.out = out or sys.stderr
        self._priorities: bool | None = None  # known at the first line

    def __call__(self, level: int, message: str) -> None:
        if level > self.verbosity:
            return
        if self._priorities is None:
            self._priorities = _is_socket(self.out)
        text = f"warning: {message}" if level == WARN else message
        prefix = "" if not self._priorities else "<4>" if level == WARN else "<3>" if level == ERROR else "<6>"
        try:
            print(f"{prefix}redirect: {text}", file=self.out, flush=True)
        except (OSError, ValueError):
            pass  # a closed log (stderr piped to `head`) must not take the program down


def _is_socket(out) -> bool:
    """Whether the log goes to a socket (the journal's stream, JOURNAL_STREAM, is one)."""
    try:
        return stat.S_ISSOCK(os.fstat(out.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False
