"""Sealed mode: IP sockets no rule converts are refused, so a test can prove a
program never reaches the real network; Unix sockets and the rules' own
sockets keep working."""
from __future__ import annotations

import json
import shutil
import socket
import struct
import sys
import threading
import time

from helpers import free_port, redirect, run, wait_for_socket

SEALED = ("--sealed",)


class CountingServer:
    """A real TCP server on loopback that counts the connections it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


def test_go_client_and_busybox_wget_fail_fast_without_a_rule(bins):
    server = CountingServer()
    try:
        start = time.monotonic()
        go = run(redirect(verbose=0, options=SEALED) + [bins / "go-http-client", "-timeout", "20s",
                                                         f"http://127.0.0.1:{server.port}/"])
        go_time = time.monotonic() - start
        assert go.returncode == 1 and "network is unreachable" in go.stderr, go.stderr
        assert "sealed: no rule converts this socket" in go.stderr
        busybox = shutil.which("busybox")
        assert busybox, "busybox-static is not installed (scripts/setup.sh installs it)"
        wget = run(redirect(verbose=0, options=SEALED) + [busybox, "wget", "-O", "/dev/null",
                                                          f"http://127.0.0.1:{server.port}/"])
        assert wget.returncode == 1 and "Network is unreachable" in wget.stderr, wget.stderr
        assert go_time < 10  # fails at once, not after a timeout
        assert server.accepted == 0
    finally:
        server.close()


PROBE = r"""
import errno, json, socket, sys
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as err:
        out[name] = errno.errorcode[err.errno]
a, b = socket.socketpair()
a.sendall(b"x")
out["socketpair"] = b.recv(1).decode()
attempt("unix", lambda: socket.socket(socket.AF_UNIX).connect(sys.argv[1]))
attempt("ruled", lambda: socket.create_connection(("127.0.0.1", 7777), timeout=5))
attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5))
attempt("bind", lambda: socket.socket().bind(("127.0.0.1", int(sys.argv[2]))))
attempt("bind0", lambda: socket.socket().bind(("127.0.0.1", 0)))  # reaches nobody: allowed
attempt("listen", lambda: socket.socket().listen())
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"q", ("192.0.2.1", 53)))
attempt("ignored", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=5))
out["localhost"] = socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4][0]
print(json.dumps(out))
"""


def test_what_stays_open_and_what_is_refused(sockdir, background):
    server, allowed = CountingServer(), CountingServer()
    try:
        unix = sockdir / "unix.sock"
        listener = background(["socat", f"UNIX-LISTEN:{unix},fork", "EXEC:cat"])
        wait_for_socket(unix, proc=listener)
        result = run(redirect(f"out,port=7777,path={unix}", f"out,port={allowed.port},ignore", options=SEALED)
                     + [sys.executable, "-c", PROBE, unix, server.port, allowed.port])
        found = json.loads(result.stdout)
        assert found == {"socketpair": "x", "unix": "ok", "ruled": "ok", "tcp": "ENETUNREACH", "bind": "EACCES",
                         "bind0": "ok", "listen": "EACCES", "udp": "ENETUNREACH", "ignored": "ok", "localhost": "127.0.0.1"}, \
            result.stderr
        assert server.accepted == 0 and allowed.accepted == 1
        assert result.stderr.count("sealed: no rule converts this socket") == 4
    finally:
        server.close()
        allowed.close()


def _dns_answer(query: bytes, address: bytes) -> bytes:
    """A minimal DNS reply: the question back, and one A record if it asked for A."""
    qid, = struct.unpack_from("!H", query)
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12:end + 5]
    qtype, = struct.unpack_from("!H", query, end + 1)
    answers = b""
    if qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + address
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1 if answers else 0, 0, 0) + question + answers


def test_dns_goes_only_where_a_rule_sends_it(bins, sockdir, background):
    """Decided: sealed mode refuses DNS over the network like anything else
    (names in /etc/hosts still resolve); a rule for port 53 gives the program
    a resolver of the test's own."""
    dns_sock, app_sock, port = sockdir / "dns.sock", sockdir / "app.sock", free_port()
    app = background([bins / "go-http-server", "-unix", app_sock])
    wait_for_socket(app_sock, proc=app)
    asked = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dns:
        dns.bind(str(dns_sock))
        dns.settimeout(0.2)
        stop = threading.Event()

        def resolve():
            while not stop.is_set():
                try:
                    query, source = dns.recvfrom(512)
                except socket.timeout:
                    continue
                asked.append(query)
                dns.sendto(_dns_answer(query, socket.inet_aton("127.0.0.1")), source)

        helper = threading.Thread(target=resolve, daemon=True)
        helper.start()
        try:
            url = f"http://app.test.invalid:{port}/"
            refused = run(redirect(verbose=0, options=SEALED) + [bins / "go-http-client", "-timeout", "10s", url])
            assert refused.returncode == 1 and "sealed: no rule converts" in refused.stderr
            resolved = run(redirect(f"out,udp,port=53,path={dns_sock}", f"out,port={port},path={app_sock}",
                                    verbose=0, options=SEALED) + [bins / "go-http-client", "-timeout", "10s", url])
            assert resolved.returncode == 0, resolved.stderr
            assert resolved.stdout.startswith("hello from go-server")
            assert asked and b"\x03app\x04test\x07invalid\x00" in asked[0]
        finally:
            stop.set()
            helper.join(2)


def test_udp_clients_that_bind_port_zero_still_reach_rule_sockets(bins, sockdir, background):
    """Sealed: a UDP client's bind to port 0 (Go's ListenUDP(nil), C's bind
    before sendto) gets a private Unix address instead of a refusal, so the
    datagrams a rule allows still flow."""
    sock = sockdir / "u.sock"
    server = background(redirect("in,udp,port=5353,path=" + str(sock)) + [bins / "udp-server-glibc", "0.0.0.0", "5353"])
    while not sock.exists():
        time.sleep(0.02)
    rule = f"out,udp,port=5353,path={sock}"
    go = run(redirect(rule, options=SEALED) + [bins / "go-udp-client", "127.0.0.1:5353", "go"])
    assert "reply 127.0.0.1:5353 echo:go" in go.stdout, go.stdout + go.stderr
    c = run(redirect(rule, options=SEALED) + [bins / "udp-client-glibc", "--bind", "0.0.0.0", "0", "127.0.0.1", "5353", "c"])
    assert "reply 127.0.0.1 5353 echo:c" in c.stdout, c.stdout + c.stderr
    assert "no rule converts" not in go.stderr + c.stderr
    server.stop()


def test_sealed_go_server_and_packet_sockets(bins, sockdir, background):
    """Go's start-up probes (binds to port 0) pass quietly; listen() on an
    IP socket no rule converts and AF_PACKET sockets (root) are refused."""
    port, sock = free_port(), sockdir / "g.sock"
    app = background(redirect(f"in,port={port},path={sock}", verbose=0, options=SEALED)
                     + [bins / "go-http-server", "-addr", f":{port}"])
    wait_for_socket(sock, proc=app)
    app.wait_for_line(r"^listening \[::\]:\d+$")  # it found IPv6 usable, as without redirect
    assert "sealed" not in app.output
    code = ("import errno, socket\nout = []\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0))\n"
            "try:\n    s.listen(); out.append('listening')\nexcept OSError as e: out.append(errno.errorcode[e.errno])\n"
            "try:\n    socket.socket(socket.AF_PACKET, socket.SOCK_RAW); out.append('packet')\n"
            "except OSError as e: out.append(errno.errorcode[e.errno])\n"
            "print(*out)\n")
    result = run(redirect(verbose=0, options=SEALED) + [sys.executable, "-c", code])
    expected_packet = "EAFNOSUPPORT"
    assert result.stdout.split() == ["EACCES", expected_packet], result.stdout + result.stderr
    assert "socket family 17" in result.stderr
