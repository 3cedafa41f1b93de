"""redirect: run a program with its IP sockets turned into Unix domain sockets, by rules.

The Python API (redirect/api.py): Rule, rule, spawn, run, Process, RuleError.
It is imported on first use, so that the command line starts fast.
"""

__version__ = "0.1.0"

# The exit status of redirect's own failures (as env, timeout and docker run):
# never mistaken for the program's; 126/127 and 128+N keep their shell meaning.
OWN_FAILURE = 125

_API = {"Rule", "RuleError", "Process", "spawn", "run", "rule"}


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'redirect' has no attribute {name!r}")


__all__ = sorted(_API)
