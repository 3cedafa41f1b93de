"""--notify-ready: tell systemd READY=1 once every `in` rule with a fixed
socket name has its socket ready for clients (a stream one listens, a
datagram one is bound), so that units ordered after this one start when the
program can be reached, not when it was started."""
from __future__ import annotations

import os
from collections.abc import Callable

from .log import WARN
from .rules import Action, Direction, Rule


class Readiness:
    def __init__(self, rules: list[Rule], env: dict[str, str], log: Callable[[int, str], None]) -> None:
        from .activation import fixed_target

        self.log = log
        # Ours to tell: the program must not say it first.
        self.socket: str | None = env.pop("NOTIFY_SOCKET", None)
        self.wanted = {target[0] for rule in rules
                       if rule.direction == Direction.IN and rule.action in (Action.PATH, Action.ABSTRACT)
                       and (target := fixed_target(rule)) is not None}
        self.ready: set = set()
        if self.socket is None:
            log(WARN, "--notify-ready: NOTIFY_SOCKET is not set (not a Type=notify unit?): nobody to tell")

    def listening(self, real) -> None:
        """The rule socket `real` is ready for clients."""
        if self.socket is None:
            return
        self.ready.add(real)
        if not self.wanted <= self.ready:
            return
        import socket

        address = "\0" + self.socket[1:] if self.socket.startswith("@") else self.socket
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
                notify.sendto(f"READY=1\nMAINPID={os.getpid()}".encode(), address)
        except OSError as err:
            self.log(0, f"--notify-ready: cannot tell systemd at {self.socket}: {err.strerror}")
        else:
            self.log(1, f"--notify-ready: every rule's socket is bound; READY=1 sent to {self.socket}")
        self.socket = None  # once
