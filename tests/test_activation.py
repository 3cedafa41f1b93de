"""Socket activation: `systemd` rules hand the program listening sockets that
systemd-socket-activate (Debian's systemd package) passed in."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import curl_unix, free_port, redirect, run, tcp_listening, unix_request, wait_for_socket

from redirect.activation import Activation, Passed, parse_listen_env

ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate comes with Debian's systemd")
ACTIVATE_ENV = ["-E", "REDIRECT_BACKEND"]  # it passes the backend under test to redirect (its children get no other)


def activated(sockets: list[str], names: str | None, rules: list[str], program: list, datagram: bool = False) -> list:
    """systemd-socket-activate listening on `sockets`, running redirect with
    `rules` around `program`. It execs on the first connection."""
    argv = [ACTIVATE, *ACTIVATE_ENV, *(["-d"] if datagram else [])]
    for where in sockets:
        argv += ["-l", where]
    if names is not None:
        argv.append(f"--fdname={names}")
    return argv + redirect(*rules) + [str(a) for a in program]


def http_get(port: int, timeout: float = 10) -> str:
    result = run(["curl", "-sS", "--max-time", str(timeout), f"http://127.0.0.1:{port}/"], timeout=timeout + 5)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for_path(path: Path, timeout: float = 10) -> None:
    """Until systemd-socket-activate's socket is there and ready (bound, and
    listening for a stream one: its bind and listen are two steps)."""
    wait_for_socket(path, timeout)


# ---- pure parts ---------------------------------------------------------------------------

def test_listen_environment_is_parsed_and_checked():
    env = {"LISTEN_FDS": "3", "LISTEN_PID": "42", "LISTEN_FDNAMES": "web:unknown:"}
    assert parse_listen_env(env, 42) == ([(3, "web"), (4, "unknown"), (5, None)], None)
    assert parse_listen_env({"LISTEN_FDS": "2", "LISTEN_PID": "42"}, 42) == ([(3, None), (4, None)], None)
    fds, warning = parse_listen_env(env, 43)
    assert fds == [] and "not this process" in warning
    assert parse_listen_env({}, 42) == ([], None)
    assert "not a number" in parse_listen_env({"LISTEN_FDS": "x", "LISTEN_PID": "42"}, 42)[1]
    assert "not a number" in parse_listen_env({"LISTEN_FDS": "\u00b2", "LISTEN_PID": "42"}, 42)[1]


def test_passed_sockets_are_picked_by_name_then_in_order():
    socks = [socket.socket() for _ in range(3)]
    try:
        passed = [Passed(s, name, "stream", i) for i, (s, name) in enumerate(zip(socks, ["web", None, "admin"]))]
        activation = Activation(passed)
        claimed = {"web"}
        assert activation.pick("web", claimed, set()) is passed[0]
        assert activation.pick(None, claimed, set()) is passed[1]          # skips the claimed one
        assert activation.pick(None, claimed, {1}) is passed[2]            # "admin" is claimed by no rule
        assert activation.pick(None, claimed | {"admin"}, {1}) is None     # none left
        assert activation.pick("web", claimed, {0}) is None                # in use
        assert activation.pick("nope", claimed, set()) is None
        # One name for a stream and a datagram socket (ListenStream= and
        # ListenDatagram= in one unit): each bind gets the one of its type.
        both = Activation([Passed(socks[0], "dns", "dgram", 10), Passed(socks[1], "dns", "stream", 11)])
        assert both.pick("dns", {"dns"}, set(), "stream").inode == 11
        assert both.pick("dns", {"dns"}, set(), "dgram").inode == 10
    finally:
        for s in socks:
            s.close()


# ---- end to end -----------------------------------------------------------------------------

@needs_activate
def test_named_unix_and_unnamed_tcp_socket_to_c_and_go_servers(bins, sockdir, background):
    """One named (Unix) and one unnamed (TCP) socket from systemd-socket-activate:
    a static C server gets the named one, a static Go server the other."""
    sock, port = sockdir / "web.sock", free_port()
    program = ["sh", "-c", f"{bins}/tcp-server-glibc --count 1 127.0.0.1 8080 & exec {bins}/go-http-server -addr 127.0.0.1:9090"]
    proc = background(activated([str(sock), f"127.0.0.1:{port}"], "web:unknown",
                                ["in,port=8080,systemd=web", "in,port=9090,systemd"], program))
    wait_for_path(sock)
    # The first connection starts everything; it waits in the passed socket's backlog.
    assert curl_unix(sock).startswith("hello from tcp-server peer=127.0.0.1:")
    assert http_get(port).startswith("hello from go-server remote=127.0.0.1:")
    proc.wait_for_line(r"^listening 127.0.0.1 8080$")                    # the C server sees its IP address
    proc.wait_for_line(r"127.0.0.1:9090 -> passed socket unknown")  # systemd's name for an unnamed one
    assert tcp_listening(8080) == [] and tcp_listening(9090) == []       # nothing of the program's own
    assert "bad-remote-addr" not in proc.output


@needs_activate
def test_busybox_httpd_behind_a_passed_unix_socket(sockdir, background):
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is not installed (scripts/setup.sh installs it)"
    www = sockdir / "www"
    www.mkdir()
    (www / "index.html").write_text("activated\n")
    sock = sockdir / "httpd.sock"
    proc = background(activated([str(sock)], None, ["in,systemd"],
                                [busybox, "httpd", "-f", "-p", "127.0.0.1:8081", "-h", www]))
    wait_for_path(sock)
    assert curl_unix(sock, "http://x/index.html") == "activated\n"
    assert curl_unix(sock, "http://x/index.html") == "activated\n"
    assert "passed socket unnamed" in proc.output and tcp_listening(8081) == []


@needs_activate
def test_program_that_closes_every_fd_keeps_its_sockets(bins, sockdir, background):
    sock = sockdir / "c.sock"
    closer = ("import os,sys\nos.closerange(3, 65536)\n"
              "print('env', os.environ.get('LISTEN_FDS'), os.environ.get('LISTEN_PID'), flush=True)\n"
              "os.execv(sys.argv[1], sys.argv[1:])\n")
    proc = background(activated([str(sock)], "main", ["in,systemd=main"],
                                [sys.executable, "-c", closer, bins / "tcp-server-musl", "127.0.0.1", "7000"]))
    wait_for_path(sock)
    assert unix_request(sock, b"still here\n") == b"still here\n"
    assert proc.wait_for_line(r"^env .*$").group(0) == "env None None"  # the variables were for redirect
    assert unix_request(sock, b"again\n") == b"again\n"


@needs_activate
def test_more_binds_than_sockets_and_rebinding(sockdir, background):
    """The second bind finds no passed socket left: blackholed, with a warning.
    A socket the program closed is handed out again to its next bind."""
    sock = sockdir / "one.sock"
    code = ("import json,socket\n"
            "a=socket.socket(); a.bind(('127.0.0.1',7001)); a.listen()\n"
            "b=socket.socket(); b.bind(('127.0.0.1',7002)); b.listen()\n"
            "print(json.dumps({'a': a.getsockname(), 'b': b.getsockname()}), flush=True)\n"
            "c,_=a.accept(); c.sendall(b'first\\n'); c.close(); a.close()\n"
            "d=socket.socket(); d.bind(('127.0.0.1',7003)); d.listen()\n"
            "print('rebound', flush=True)\n"
            "c,_=d.accept(); c.sendall(b'second\\n'); c.close()\n")
    proc = background(activated([str(sock)], None, ["in,systemd"], [sys.executable, "-c", code]))
    wait_for_path(sock)
    assert unix_request(sock, b"") == b"first\n"
    names = json.loads(proc.wait_for_line(r"^\{.*\}$").group(0))
    assert names == {"a": ["127.0.0.1", 7001], "b": ["127.0.0.1", 7002]}
    assert re.search(r"127.0.0.1:7002: no passed socket left for rule in,systemd", proc.output)
    proc.wait_for_line("^rebound$")
    assert unix_request(sock, b"") == b"second\n"
    assert tcp_listening(7001) == tcp_listening(7002) == tcp_listening(7003) == []


@needs_activate
def test_passed_datagram_socket(bins, sockdir, background):
    """A Unix datagram socket passed in (systemd-socket-activate -d) serves a
    UDP server; senders are shown as IP addresses it can answer."""
    sock = sockdir / "dns.sock"
    proc = background(activated([str(sock)], None, ["in,udp,systemd"],
                                [bins / "udp-server-glibc", "127.0.0.1", "5353"], datagram=True))
    wait_for_path(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(str(sockdir / "client.sock"))
        client.settimeout(10)
        client.sendto(b"q", str(sock))  # starts the server; waits in the queue
        assert client.recvfrom(100) == (b"echo:q", str(sock))
    host, port = proc.wait_for_line(r"^received (\S+) (\d+) len=1 q$").groups()
    assert host == "127.0.0.1" and int(port) >= 1024


_BIND_REPORT = ("import socket\ns=socket.socket()\n"
                "try:\n    s.bind(('127.0.0.1', %d)); s.listen(); print('bound')\n"
                "except OSError as e:\n    print('bind failed', e.errno)\n")


def test_passed_sockets_for_someone_else_are_ignored(sockdir):
    """LISTEN_PID names another process: nothing is taken, a warning says why,
    and the bind fails (EADDRNOTAVAIL) rather than get a real port or a
    socket nobody can reach."""
    port = free_port()
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID="1")
    result = run(redirect("in,systemd") + [sys.executable, "-c", _BIND_REPORT % port], env=env)
    assert result.stdout.strip() == f"bind failed {errno.EADDRNOTAVAIL}", result.stdout + result.stderr
    assert "LISTEN_PID='1' is not this process" in result.stderr
    assert "no sockets were passed" in result.stderr
    assert tcp_listening(port) == []


@needs_activate
def test_a_name_nobody_passed_fails_the_bind(sockdir):
    """systemd=wbe where the socket was passed as web: the log names what was
    passed, and the program's bind fails (clients do not wait on a blackhole)."""
    sock, port = sockdir / "web.sock", free_port()
    proc = subprocess.Popen(activated([str(sock)], "web", ["in,systemd=wbe"], [sys.executable, "-c", _BIND_REPORT % port]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_path(sock)
        with socket.socket(socket.AF_UNIX) as client:  # systemd-socket-activate starts redirect now
            client.connect(str(sock))
            out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"bind failed {errno.EADDRNOTAVAIL}" in out, out
    assert re.search(r"rule in,systemd=wbe: no socket named 'wbe' was passed \(passed: web \(fd 3, stream\)\)", out), out
    assert tcp_listening(port) == []


@needs_activate
def test_two_sockets_of_one_name_go_to_two_binds(sockdir, background):
    """Two passed sockets named web: the log says how they are given out, and
    each of two binds a systemd=web rule matches gets its own."""
    one, two = sockdir / "one.sock", sockdir / "two.sock"
    code = ("import socket\n"
            "a=socket.socket(); a.bind(('127.0.0.1',7101)); a.listen()\n"
            "b=socket.socket(); b.bind(('127.0.0.1',7102)); b.listen()\n"
            "for s, text in ((a, b'a\\n'), (b, b'b\\n')):\n"
            "    c,_=s.accept(); c.sendall(text); c.close()\n")
    proc = background(activated([str(one), str(two)], "web:web", ["in,systemd=web"], [sys.executable, "-c", code]))
    wait_for_path(one)
    wait_for_path(two)
    assert unix_request(one, b"") == b"a\n"
    assert unix_request(two, b"") == b"b\n"
    assert "2 passed sockets are named 'web' (fds 3, 4)" in proc.output, proc.output
    assert tcp_listening(7101) == tcp_listening(7102) == []


# ---- redirect as its own activator ------------------------------------------------------------

def test_activate_on_demand_starts_at_first_connection(bins, sockdir, background):
    sock, port = sockdir / "od.sock", free_port()
    proc = background(redirect(f"in,port={port},path={sock},mode=0600", options=("--activate", "--on-demand")) + [bins / "go-http-server", "-addr", f"127.0.0.1:{port}"])
    wait_for_path(sock)
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    time.sleep(0.3)
    assert "listening" not in proc.output.replace("--activate: listening", "")  # not started yet
    assert curl_unix(sock).startswith("hello from go-server remote=127.0.0.1:")  # this connection starts it
    proc.wait_for_line(r"^listening 127.0.0.1:\d+$")
    assert tcp_listening(port) == []
    assert proc.stop() == 0 and not sock.exists()


def test_on_demand_starts_the_program_again_after_it_ends(sockdir, background):
    """As systemd: a program that serves one connection and exits is started
    again by the next one (the restart is logged at -v); stopped while idle,
    redirect ends with 0 and removes its socket. --once keeps the old way."""
    sock, port = sockdir / "again.sock", free_port()
    code = ("import os,socket\ns=socket.socket()\ns.bind(('127.0.0.1',%d))\ns.listen()\n"
            "c,_=s.accept()\nc.sendall(b'served by %%d\\n' %% os.getpid())\n" % port)
    proc = background(redirect(f"in,port={port},path={sock}", options=("--on-demand",))
                      + [sys.executable, "-c", code])
    wait_for_path(sock)
    first = unix_request(sock, b"")
    proc.wait_for_line("it starts again at the next connection")
    second = unix_request(sock, b"")
    assert first.startswith(b"served by ") and second.startswith(b"served by ") and first != second
    proc.wait_for_line("starting the program again")
    deadline = time.monotonic() + 10
    while proc.output.count("it starts again at the next connection") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the second run has ended too: redirect is idle
    assert proc.stop() == 0 and not sock.exists(), proc.output
    assert tcp_listening(port) == []
    once = background(redirect(f"in,port={port},path={sock}", options=("--on-demand", "--once"))
                      + [sys.executable, "-c", code])
    wait_for_path(sock)
    assert unix_request(sock, b"").startswith(b"served by ")
    assert once.wait(10) == 0 and not sock.exists()


def test_after_a_restart_signals_go_to_the_program_not_its_whole_tree(sockdir, background):
    """--on-demand's second run is the program again: a SIGHUP to redirect
    reaches its main process only (as in the first run), not the worker it
    started; only what a program leaves behind when it exits gets them all."""
    sock, port, marker = sockdir / "tree.sock", free_port(), sockdir / "second-run"
    code = ("import os,signal,socket,subprocess,sys,time\n"
            "signal.signal(signal.SIGHUP, lambda *a: print('main got HUP', flush=True))\n"
            f"second = os.path.exists({str(marker)!r})\n"
            f"open({str(marker)!r}, 'w').close()\n"
            "if second: subprocess.Popen(['sh', '-c', 'trap \"echo worker got HUP\" HUP; "
            "while :; do sleep 0.05; done'])\n"
            f"s=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\n"
            "c,_=s.accept()\nc.sendall(b'served\\n')\nc.close()\n"
            "print('serving', flush=True)\n"
            "while second: time.sleep(0.05)\n")
    proc = background(redirect(f"in,port={port},path={sock}", options=("--on-demand",)) + [sys.executable, "-c", code])
    wait_for_path(sock)
    assert unix_request(sock, b"") == b"served\n"
    proc.wait_for_line("it starts again at the next connection")
    assert unix_request(sock, b"") == b"served\n"
    deadline = time.monotonic() + 10
    while proc.output.count("serving") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the worker's trap is set
    os.kill(proc.pid, signal.SIGHUP)
    proc.wait_for_line("^main got HUP$")
    time.sleep(0.5)
    assert "worker got HUP" not in proc.output


def test_activate_queues_connections_made_before_the_program_binds(sockdir, background):
    sock, port = sockdir / "early.sock", free_port()
    code = ("import socket,time\ntime.sleep(1)\ns=socket.socket()\ns.bind(('127.0.0.1',%d))\ns.listen()\n"
            "print('bound', flush=True)\nc,_=s.accept()\nc.sendall(b'served\\n')\n" % port)
    proc = background(redirect(f"in,port={port},path={sock}", options=("--activate",)) + [sys.executable, "-c", code])
    wait_for_path(sock)
    assert "bound" not in proc.output
    assert unix_request(sock, b"") == b"served\n"     # connected before the bind, answered after it
    assert proc.wait() == 0 and not sock.exists()


def test_activate_datagram_and_stop_before_first_datagram(bins, sockdir, background):
    sock = sockdir / "udp.sock"
    proc = background(redirect(f"in,udp,port=5353,path={sock}", options=("--activate", "--on-demand")) + [bins / "udp-server-musl", "127.0.0.1", "5353"])
    wait_for_path(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(str(sockdir / "c.sock"))
        client.settimeout(10)
        client.sendto(b"wake", str(sock))
        assert client.recv(100) == b"echo:wake"
    assert proc.stop() == 0 and not sock.exists()
    # Stopped while still waiting: the socket file goes too.
    proc = background(redirect(f"in,udp,port=5353,path={sock}", options=("--activate", "--on-demand")) + [bins / "udp-server-musl", "127.0.0.1", "5353"])
    wait_for_path(sock)
    assert proc.stop() == 128 + 15 and not sock.exists()
    assert "before the program started" in proc.output


def test_activate_needs_a_fixed_socket_name(sockdir):
    result = run(redirect(f"in,port=1-100,path={sockdir}/%p.sock", options=("--activate",)) + ["true"])
    assert result.returncode == 125
    assert "depends on the program's bind" in result.stderr and "no in rule" in result.stderr


@needs_activate
def test_passed_udp_socket_shows_real_addresses(bins, background):
    """A passed IP socket is a real one: the program sees its real address and
    real senders; nothing of its own is bound."""
    port = free_port()
    proc = background(activated([f"127.0.0.1:{port}"], None, ["in,udp,systemd"],
                                [bins / "udp-server-glibc", "127.0.0.1", "5353"], datagram=True))
    time.sleep(0.3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"hi", ("127.0.0.1", port))  # starts the server; waits in the queue
        data, source = client.recvfrom(100)
        assert data == b"echo:hi" and source == ("127.0.0.1", port)
        mine = client.getsockname()
    proc.wait_for_line(rf"^listening 127.0.0.1 {port}$")
    proc.wait_for_line(rf"^received 127.0.0.1 {mine[1]} len=2 hi$")
    assert tcp_listening(5353) == []


@needs_activate
def test_threads_binding_at_once_get_different_sockets(sockdir, background, backend):
    """A Go-style program starting two listeners in two threads at once: each
    bind gets its own passed socket, never the same one twice."""
    one, two = sockdir / "one.sock", sockdir / "two.sock"
    code = r"""
import os, socket, threading
barrier = threading.Barrier(2)
def serve(port):
    s = socket.socket(); barrier.wait(); s.bind(("127.0.0.1", port)); s.listen()
    print("inode", port, os.fstat(s.fileno()).st_ino, flush=True)
    while True:  # (a thread that ended would close its socket: the next bind could get it again)
        c, _ = s.accept(); c.sendall(b"port %d\n" % port); c.close()
threads = [threading.Thread(target=serve, args=(p,)) for p in (7101, 7102)]
[t.start() for t in threads]; [t.join() for t in threads]
"""
    proc = background(activated([str(one), str(two)], None, ["in,systemd"], [sys.executable, "-c", code]))
    wait_for_path(two)
    try:
        first = unix_request(one, b"")
        second = unix_request(two, b"")
    except TimeoutError:
        pytest.fail("a passed socket was not served:\n" + proc.output)
    assert {first, second} == {b"port 7101\n", b"port 7102\n"}, proc.output
    for port in (7101, 7102):
        proc.wait_for_line(rf"^inode {port} ")
    assert f"backend: {backend}" in proc.output
    inodes = {line.split()[2] for line in proc.output.splitlines() if line.startswith("inode ")}
    assert len(inodes) == 2


@needs_activate
def test_accept_mode_connection_is_refused_clearly(bins, sockdir, background):
    """systemd-socket-activate -a passes a connection (inetd style), not a
    listener: the bind fails with a line saying what happened."""
    sock = sockdir / "a.sock"
    proc = background([ACTIVATE, *ACTIVATE_ENV, "-a", "-l", str(sock)] + redirect("in,systemd")
                      + [bins / "tcp-server-glibc", "127.0.0.1", "7200"])
    wait_for_path(sock)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(sock))
        proc.wait_for_line("is a connection, not a listening socket")
    assert "Traceback" not in proc.output


def test_socat_udp_listen_fork_with_activate(sockdir, background):
    port, sock = free_port(), sockdir / "socat.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}", options=("--activate",))
                        + ["socat", f"UDP4-LISTEN:{port},fork,reuseaddr", "EXEC:cat"])
    wait_for_path(sock)
    for i in range(3):
        result = run(redirect(f"out,udp,port={port},path={sock}") + ["socat", "-T1", "-", f"UDP4:127.0.0.1:{port}"],
                     input=f"hello {i}\n")
        assert result.stdout == f"hello {i}\n", result.stderr + server.output
    server.stop()
    assert not sock.exists()



@needs_activate
def test_passed_tcp_socket_at_the_programs_own_port(bins, background):
    """systemd passes 127.0.0.1:PORT and the program binds that very address:
    its listen finds the passed socket listening (not a blackhole)."""
    port = free_port()
    proc = background(activated([f"127.0.0.1:{port}"], None, [f"in,port={port},systemd"],
                                [bins / "go-http-server", "-addr", f"127.0.0.1:{port}"]))
    proc.wait_for_line(rf"Listening on 127\.0\.0\.1:{port}")  # systemd-socket-activate's socket, before we connect
    assert http_get(port).startswith("hello from go-server remote=127.0.0.1:")
    assert http_get(port).startswith("hello from go-server remote=127.0.0.1:")
    assert "blackhole" not in proc.output


def test_notify_ready_once_every_rule_socket_listens(sockdir, background):
    """--notify-ready: READY=1 reaches NOTIFY_SOCKET only once both rules'
    sockets are there (the stream one listening), not at start; the program
    does not see NOTIFY_SOCKET (it must not say READY first)."""
    notify_path, web, dns = sockdir / "notify.sock", sockdir / "web.sock", sockdir / "dns.sock"
    tcp_port, udp_port = free_port(), free_port()
    code = ("import os,socket,time\n"
            "print('notify', os.environ.get('NOTIFY_SOCKET'), flush=True)\n"
            f"u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1',{udp_port}))\n"
            "time.sleep(0.5)\n"
            f"s=socket.socket(); s.bind(('127.0.0.1',{tcp_port})); time.sleep(0.5); s.listen()\n"
            "print('listening', flush=True); time.sleep(30)\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        proc = background(redirect(f"in,tcp,port={tcp_port},path={web}", f"in,udp,port={udp_port},path={dns}",
                                   options=("--notify-ready",)) + [sys.executable, "-c", code], env=env)
        message = notify.recv(200).decode()
        assert "READY=1" in message.split("\n"), message
        assert wait_for_socket_now(web) and dns.exists(), proc.output  # both there when systemd hears it
        proc.wait_for_line("^notify None$")
    proc.stop()


def wait_for_socket_now(path: Path) -> bool:
    """A stream socket listening at path at this moment (/proc/net/unix)."""
    try:
        wait_for_socket(path, timeout=0.01)
    except AssertionError:
        return False
    return True
