"""Socket activation: listening sockets passed in (systemd's LISTEN_FDS protocol)
and which bind gets which of them.

The supervisor keeps every passed socket for its whole life and hands a
duplicate to the program when it binds a socket that a `systemd` rule matches;
the program never inherits them at their numbers, so one that closes every fd
from 3 up at start cannot lose them, and a socket it closes can be handed out
again to its next bind.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

SD_LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
_UNNAMED = {"", "unknown"}  # what systemd calls a socket with no FileDescriptorName=


def parse_listen_env(env: dict[str, str], pid: int) -> tuple[list[tuple[int, str | None]], str | None]:
    """The passed fds and their names (None: unnamed) per the environment, and a
    warning if the variables are there but not for us. Pure."""
    count = env.get("LISTEN_FDS")
    if count is None:
        return [], None
    if env.get("LISTEN_PID") != str(pid):
        return [], f"LISTEN_FDS is set but LISTEN_PID={env.get('LISTEN_PID')!r} is not this process ({pid}): ignored"
    if not count.isdigit() or int(count) > 1024:
        return [], f"LISTEN_FDS={count!r} is not a number of sockets: ignored"
    names = env["LISTEN_FDNAMES"].split(":") if "LISTEN_FDNAMES" in env else []
    fds = []
    for i in range(int(count)):
        name = names[i] if i < len(names) else ""
        fds.append((SD_LISTEN_FDS_START + i, None if name in _UNNAMED else name))
    return fds, None


def program_environment(env: dict[str, str]) -> dict[str, str]:
    """The program's environment: the activation variables were for us."""
    return {key: value for key, value in env.items() if key not in _VARIABLES}


@dataclass
class Passed:
    sock: socket.socket           # the supervisor's own fd of it
    name: str | None
    kind: str                     # "stream" or "dgram"
    inode: int

    def describe(self) -> str:
        what = self.name or "unnamed"
        try:
            where = self.sock.getsockname()
        except OSError:
            where = "?"
        return f"passed socket {what} (fd {self.sock.fileno()}, {where!r})"


class Activation:
    """The sockets passed to this supervisor, and which of them are handed out."""

    def __init__(self, passed: list[Passed]) -> None:
        self.passed = passed

    @classmethod
    def from_environment(cls, env: dict[str, str], log) -> "Activation":
        fds, warning = parse_listen_env(env, os.getpid())
        if warning:
            log(0, warning)
        passed = []
        for fd, name in fds:
            try:
                sock = socket.socket(fileno=os.dup(fd))
                os.close(fd)  # keep only our close-on-exec duplicate: the program must not inherit it
                kind = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram"}.get(sock.type)
            except OSError as err:
                log(0, f"passed fd {fd} is not a usable socket ({err.strerror}): ignored")
                continue
            if kind is None:
                log(0, f"passed fd {fd} is neither a stream nor a datagram socket: ignored")
                sock.close()
                continue
            passed.append(Passed(sock, name, kind, os.fstat(sock.fileno()).st_ino))
        return cls(passed)

    def pick(self, name: str | None, claimed: set[str], in_use: set[int]) -> Passed | None:
        """The socket for a bind that a `systemd` (name None) or `systemd=NAME`
        rule matched: the first passed one of that name, or for plain `systemd`
        the first one no `systemd=NAME` rule claims, in the order they were
        passed; never one the program holds now."""
        for passed in self.passed:
            if passed.inode in in_use:
                continue
            if name is not None and passed.name == name:
                return passed
            if name is None and passed.name not in claimed:
                return passed
        return None

    def close(self) -> None:
        for passed in self.passed:
            passed.sock.close()
