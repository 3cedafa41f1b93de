"""A program that tries: races on its own memory, its own seccomp filter, its
own tracing, the 32-bit ABI, family tricks, the supervisor itself. Each attack
is a real static program (tests/programs/attacks.c); a receiver outside
redirect counts what arrives, and must count nothing."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import REDIRECT, free_port, redirect, run, tcp_listening
from test_behaviour import _compiled

ATTEMPTS = 3000  # today's escape rates were 5-25%: hundreds of escapes at this count


@pytest.fixture(scope="session")
def attacks():
    yield from _compiled("attacks", "-static", "-pthread")


class Receiver:
    """A real TCP listener or UDP socket on 127.0.0.1, outside redirect,
    counting the connections or datagrams that reach it."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind, self.count = kind, 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        if kind == "tcp":
            self.sock.listen(4096)
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._count, daemon=True)
        self.thread.start()

    def _count(self) -> None:
        while self.running:
            try:
                if self.kind == "tcp":
                    conn, _ = self.sock.accept()
                    conn.close()
                else:
                    self.sock.recv(65536)
            except OSError:
                continue
            self.count += 1

    def close(self) -> int:
        self.running = False
        self.thread.join(5)
        self.sock.close()
        return self.count


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(kind: str, port: int) -> Receiver:
        made.append(Receiver(kind, port))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _values(stdout: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in stdout.splitlines() if len(line.split()) == 2)}


# ---- races on the address ----------------------------------------------------------------

SEALED_FLIPS = [  # (call, socket type): the family flips between AF_UNIX and AF_INET
    ("connect", "tcp"), ("fastopen", "tcp"), ("fastopen-msg", "tcp"),
    ("sendto", "udp"), ("sendmsg", "udp"), ("connect-send", "udp"),
]


@pytest.mark.parametrize("call,kind", SEALED_FLIPS)
def test_sealed_family_flip_reaches_nothing(attacks, receiver, call, kind):
    port = free_port()
    counter = receiver(kind, port)
    result = run(REDIRECT + ["--sealed", "--", attacks, "flip", call, kind, "unix", f"inet:{port}", ATTEMPTS],
                 timeout=120)
    assert _values(result.stdout).get("attempts") == ATTEMPTS, result.stdout + result.stderr[-2000:]
    assert counter.close() == 0, f"{call}: real {kind} traffic left a sealed program"


def test_out_rule_port_flip_never_reaches_the_real_port(attacks, receiver, sockdir):
    port = free_port()
    counter = receiver("tcp", port)
    rule = f"out,port={port},path={sockdir}/out.sock"
    result = run(redirect(rule, verbose=0) + [attacks, "flip", "connect", "tcp", f"inet:{port + 1}",
                                              f"inet:{port}", ATTEMPTS], timeout=120)
    assert _values(result.stdout).get("attempts") == ATTEMPTS, result.stdout + result.stderr[-2000:]
    assert counter.close() == 0, "a connect matched by the out rule reached the real TCP port"


def test_in_rule_port_flip_never_listens_on_the_real_port(attacks, sockdir):
    port = free_port()
    rule = f"in,port={port},path={sockdir}/in-%p.sock"
    proc = subprocess.Popen(redirect(rule, verbose=0) + [str(attacks), "flip", "bind", "tcp", f"inet:{port + 1}",
                                                          f"inet:{port}", str(ATTEMPTS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = {}
        while "escaped" not in lines:
            line = proc.stdout.readline()
            assert line, "the attack ended early: " + proc.stderr.read()[-2000:]
            key, _, value = line.partition(" ")
            lines[key] = int(value)
        listening = tcp_listening(port)  # while the program still holds what it got
        with socket.socket() as outside:
            outside.settimeout(2)
            reached = outside.connect_ex(("127.0.0.1", port)) == 0
        assert lines == {"attempts": ATTEMPTS, "ok": lines["ok"], "escaped": 0}
        assert not reached and not [line for line in listening if " 0A " in line]
    finally:
        proc.communicate("go\n", timeout=30)
