"""End to end: real servers and clients (static glibc, static musl, Go, dynamic,
busybox) under the real supervisor, their TCP sockets moved onto Unix sockets."""
from __future__ import annotations

import ipaddress
import re
import sys
import shutil
import socket

import pytest

from helpers import curl_unix, free_port, redirect, run, tcp_listening, unix_request, wait_for_socket

C_VARIANTS = ["glibc", "musl", "dynamic"]


def assert_ip(text: str, family: int | None = None) -> ipaddress._BaseAddress:
    host = ipaddress.ip_address(text.strip("[]"))
    if family == socket.AF_INET:
        assert host.version == 4, text
    return host


@pytest.mark.parametrize("variant", C_VARIANTS)
def test_c_server_on_unix_socket(bins, sockdir, background, variant):
    port, sock = free_port(), sockdir / "echo.sock"
    server = background(redirect(f"in,port={port},path={sock}") + [bins / f"tcp-server-{variant}", "127.0.0.1", port])
    wait_for_socket(sock, proc=server)
    assert server.wait_for_line(r"^listening (\S+) (\d+)$").groups() == ("127.0.0.1", str(port))
    assert tcp_listening(port) == []

    assert unix_request(sock, b"ping\n") == b"ping\n"
    ip, peer_port = server.wait_for_line(r"^accepted (\S+) (\d+)$").groups()
    assert ip == "127.0.0.1" and int(peer_port) >= 1024
    assert server.wait_for_line(r"^peer (\S+) (\d+)$").groups() == (ip, peer_port)
    assert server.wait_for_line(r"^local (\S+) (\d+)$").groups() == ("127.0.0.1", str(port))

    body = curl_unix(sock)
    assert body.startswith("hello from tcp-server peer=127.0.0.1:")
    client = run(redirect(f"out,port={port},path={sock}") + [bins / f"tcp-client-{variant}", "127.0.0.1", port, "ours"])
    assert "received ours" in client.stdout, client.stderr
    assert tcp_listening(port) == []


def test_socket_path_with_spaces(bins, sockdir, background):
    """A socket file whose path holds spaces (and a comma, escaped in the rule)
    is bound, seen listening in the kernel's table and served."""
    port, sock = free_port(), sockdir / "my app, v2.sock"
    server = background(redirect(f"in,port={port},path={str(sock).replace(',', chr(92) + ',')}")
                        + [bins / "tcp-server-musl", "127.0.0.1", port])
    wait_for_socket(sock, proc=server)
    assert unix_request(sock, b"ping\n") == b"ping\n"


@pytest.mark.parametrize("variant", C_VARIANTS)
def test_c_client_reaches_unix_server(bins, sockdir, background, variant):
    port, sock = free_port(), sockdir / "echo.sock"
    server = background(["socat", f"UNIX-LISTEN:{sock},fork", "EXEC:cat"])
    wait_for_socket(sock, proc=server)
    result = run(redirect(f"out,port={port},path={sock}") + [bins / f"tcp-client-{variant}", "127.0.0.1", port, "hello there"])
    assert result.returncode == 0, result.stderr
    assert f"connected peer 127.0.0.1 {port}" in result.stdout
    local_ip, local_port = re.search(r"^local (\S+) (\d+)$", result.stdout, re.M).groups()
    assert local_ip == "127.0.0.1" and int(local_port) >= 1024
    assert "received hello there" in result.stdout


def test_c_client_and_server_both_redirected(bins, sockdir, background):
    port, sock = free_port(), sockdir / "s.sock"
    server = background(redirect(f"in,port={port},path={sock}") + [bins / "tcp-server-musl", "::1", port])
    wait_for_socket(sock, proc=server)
    result = run(redirect(f"out,addr=::1,port={port},path={sock}") + [bins / "tcp-client-glibc", "::1", port, "v6"])
    assert result.returncode == 0, result.stderr
    assert f"connected peer ::1 {port}" in result.stdout and "received v6" in result.stdout
    ip, _ = server.wait_for_line(r"^accepted (\S+) (\d+)$").groups()
    assert ip == "::1"
    assert tcp_listening(port) == []


@pytest.mark.parametrize("binary", ["go-http-server", "go-http-server-cgo"])
def test_go_server(bins, sockdir, background, binary):
    port, sock = free_port(), sockdir / "http.sock"
    server = background(redirect(f"in,port={port},path={sock}") + [bins / binary, "-addr", f":{port}"])
    wait_for_socket(sock, proc=server)
    listen_addr = server.wait_for_line(r"^listening (\S+)$").group(1)
    assert listen_addr == f"[::]:{port}"
    body = curl_unix(sock)
    remote = re.match(r"hello from go-server remote=(\S+)", body).group(1)
    host, remote_port = remote.rsplit(":", 1)
    assert_ip(host) and int(remote_port) >= 1024
    assert server.wait_for_line(r"^request (\S+) local (\S+)$").group(1) == remote
    assert "bad-remote-addr" not in server.output
    assert tcp_listening(port) == []


@pytest.mark.parametrize("binary", ["go-http-client", "go-http-client-cgo"])
def test_go_client(bins, sockdir, background, binary):
    port, sock = free_port(), sockdir / "http.sock"
    server = background(redirect(f"in,port={port},path={sock}") + [bins / "go-http-server", "-addr", f"127.0.0.1:{port}"])
    wait_for_socket(sock, proc=server)
    result = run(redirect(f"out,port={port},path={sock}") + [bins / binary, "-dial-info", f"http://127.0.0.1:{port}/"])
    assert result.returncode == 0, result.stderr
    local, remote = re.search(r"^local (\S+) remote (\S+)$", result.stdout, re.M).groups()
    assert remote == f"127.0.0.1:{port}"
    assert local.startswith("127.0.0.1:")
    assert "hello from go-server remote=127.0.0.1:" in result.stdout
    assert tcp_listening(port) == []


@pytest.fixture
def busybox():
    path = shutil.which("busybox")
    assert path, "busybox-static is not installed (scripts/setup.sh installs it)"
    return path


def test_busybox_httpd(busybox, bins, sockdir, background):
    port, sock = free_port(), sockdir / "httpd.sock"
    www = sockdir / "www"
    www.mkdir()
    (www / "index.html").write_text("busybox page\n")
    server = background(redirect(f"in,port={port},path={sock}") + [busybox, "httpd", "-f", "-vv", "-p", f"127.0.0.1:{port}", "-h", www])
    wait_for_socket(sock, proc=server)
    assert curl_unix(sock, "http://app/index.html") == "busybox page\n"
    client = run(redirect(f"out,port={port},path={sock}") + [bins / "go-http-client", f"http://127.0.0.1:{port}/index.html"])
    assert client.stdout == "busybox page\n", client.stderr
    assert tcp_listening(port) == []


def test_busybox_wget_client(busybox, bins, sockdir, background):
    port, sock = free_port(), sockdir / "http.sock"
    server = background(redirect(f"in,port={port},path={sock}") + [bins / "go-http-server", "-addr", f"127.0.0.1:{port}"])
    wait_for_socket(sock, proc=server)
    result = run(redirect(f"out,addr=127.0.0.1,port={port},path={sock}") + [busybox, "wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hello from go-server remote=127.0.0.1:")


def test_forking_server(bins, sockdir, background):
    port, sock = free_port(), sockdir / "fork.sock"
    server = background(redirect(f"in,port={port},path={sock}") + [bins / "tcp-server-glibc", "--fork", "3", "127.0.0.1", port])
    wait_for_socket(sock, proc=server)
    for i in range(12):
        assert unix_request(sock, f"msg {i}".encode()) == f"msg {i}".encode()
    server.wait_for_line(r"^accepted 127\.0\.0\.1 \d+$")  # (the output is read as it comes)
    assert tcp_listening(port) == []


def test_go_server_parallel_load(bins, sockdir, background):
    """8 concurrent clients, 2,000 new connections, all redirected, zero failures."""
    port, sock = free_port(), sockdir / "load.sock"
    server = background(redirect(f"in,port={port},path={sock}", verbose=0) + [bins / "go-http-server", "-quiet", "-addr", f":{port}"])
    wait_for_socket(sock, proc=server)
    result = run(redirect(f"out,port={port},path={sock}", verbose=0)
                 + [bins / "go-http-client", "-n", "2000", "-c", "8", f"http://127.0.0.1:{port}/"], timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok=2000 fail=0" in result.stdout
    assert tcp_listening(port) == []


def test_shell_script_execs_server(bins, sockdir, background):
    port, sock = free_port(), sockdir / "sh.sock"
    script = sockdir / "start.sh"
    script.write_text(f"#!/bin/sh\necho starting\nexec {bins / 'tcp-server-musl'} 127.0.0.1 {port}\n")
    script.chmod(0o755)
    server = background(redirect(f"in,port={port},path={sock}") + [script])
    wait_for_socket(sock, proc=server)
    assert unix_request(sock, b"via sh") == b"via sh"
    assert tcp_listening(port) == []


def test_socket_inherited_across_exec(bins, sockdir, background):
    port, sock = free_port(), sockdir / "reexec.sock"
    server = background(redirect(f"in,port={port},path={sock}") + [bins / "tcp-server-glibc", "--reexec", "127.0.0.1", port])
    assert server.wait_for_line(r"^inherited (\S+) (\d+)$").groups() == ("127.0.0.1", str(port))
    wait_for_socket(sock, proc=server)
    assert unix_request(sock, b"after exec") == b"after exec"
    assert server.wait_for_line(r"^accepted (\S+) (\d+)$").group(1) == "127.0.0.1"


@pytest.mark.parametrize("flag, kept", [("", False), (",noremove", True)])
def test_socket_file_removed_when_program_exits_unless_noremove(bins, sockdir, background, flag, kept):
    port, sock = free_port(), sockdir / "gone.sock"
    server = background(redirect(f"in,port={port},path={sock}{flag}") + [bins / "tcp-server-glibc", "--count", "1", "127.0.0.1", port])
    wait_for_socket(sock, proc=server)
    assert unix_request(sock, b"x") == b"x"
    assert server.wait() == 0
    assert sock.is_socket() == kept


def test_connect_target_never_removed(bins, sockdir, background):
    port, sock = free_port(), sockdir / "target.sock"
    server = background(["socat", f"UNIX-LISTEN:{sock},fork", "EXEC:cat"])
    wait_for_socket(sock, proc=server)
    result = run(redirect(f"out,port={port},path={sock}") + [bins / "tcp-client-glibc", "127.0.0.1", port, "keep"])
    assert result.returncode == 0, result.stderr
    assert sock.is_socket()


def test_placeholders_in_path(bins, sockdir, background):
    port = free_port()
    server = background(redirect(f"in,path={sockdir}/%t-%a-%p.sock") + [bins / "tcp-server-glibc", "127.0.0.1", port])
    sock = sockdir / f"tcp-127.0.0.1-{port}.sock"
    wait_for_socket(sock, proc=server)
    assert unix_request(sock, b"placeholders") == b"placeholders"


def test_port_zero_gets_a_real_looking_port(bins, sockdir, background):
    server = background(redirect(f"in,addr=127.0.0.1,path={sockdir}/p%p.sock") + [bins / "tcp-server-glibc", "127.0.0.1", "0"])
    ip, port = server.wait_for_line(r"^listening (\S+) (\d+)$").groups()
    assert ip == "127.0.0.1" and 1024 <= int(port) <= 65535
    sock = sockdir / f"p{port}.sock"
    wait_for_socket(sock, proc=server)
    assert unix_request(sock, b"zero") == b"zero"


def test_abstract_socket(bins, background):
    port = free_port()
    name = f"redirect-test-{port}"
    server = background(redirect(f"in,port={port},abstract={name}") + [bins / "tcp-server-glibc", "127.0.0.1", port])
    server.wait_for_line(r"^listening")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect("\0" + name)
        s.sendall(b"abstract")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b"abstract"
    result = run(redirect(f"out,port={port},abstract={name}") + [bins / "tcp-client-glibc", "127.0.0.1", port, "both"])
    assert "received both" in result.stdout, result.stderr


def test_unmatched_sockets_untouched(bins, sockdir, background):
    """A rule for another port leaves this server on real TCP."""
    port = free_port()
    server = background(redirect(f"in,port={port + 1},path={sockdir}/other.sock") + [bins / "tcp-server-glibc", "127.0.0.1", port])
    server.wait_for_line(r"^listening 127\.0\.0\.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"tcp")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b"tcp"
    assert not (sockdir / "other.sock").exists()


def test_from_unix_moves_a_hard_coded_socket_path(sockdir, background):
    real, hard = sockdir / "real.sock", sockdir / "hard-coded.sock"
    server = background(redirect(f"in,from-unix={sockdir}/hard-*.sock,path={real}")
                        + ["socat", f"UNIX-LISTEN:{hard},fork", "EXEC:cat"])
    wait_for_socket(real, proc=server)
    assert not hard.exists()
    result = run(redirect(f"out,from-unix=**/hard-coded.sock,path={real}") + ["socat", "-", f"UNIX-CONNECT:{hard}"], input="moved\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "moved\n"


def test_from_abstract_to_path(sockdir, background):
    real = sockdir / "from-abstract.sock"
    server = background(["socat", f"UNIX-LISTEN:{real},fork", "EXEC:cat"])
    wait_for_socket(real, proc=server)
    result = run(redirect(f"out,from-abstract=legacy-*,path={real}") + ["socat", "-", "ABSTRACT-CONNECT:legacy-name"], input="abstract\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "abstract\n"


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_a_listener_no_rule_matches_is_said_out_loud(bins, sockdir, background, kind):
    """A typo in a rule leaves the server on the network: redirect says so at
    the default verbosity, once, with the rule that came closest; an ignore
    rule naming it, or -q, keeps it quiet (and it really is on the network)."""
    port, wrong = free_port(), free_port()
    server_bin = bins / ("tcp-server-glibc" if kind == "tcp" else "udp-server-glibc")
    rule = f"in,{kind},port={wrong},path={sockdir}/typo.sock"
    loud = background(redirect(rule, verbose=0) + [server_bin, "127.0.0.1", port])
    loud.wait_for_line(rf"warning: 127\.0\.0\.1:{port} \({kind}\) stays on the network: no rule matches it "
                       rf"\(closest: rule #1 {re.escape(rule)}: port {wrong}, not {port}\); every local user can "
                       r"reach it")
    loud.wait_for_line(r"^listening ")
    if kind == "tcp":
        assert tcp_listening(port), "the server should really be on TCP"
    loud.stop()
    assert loud.output.count("stays on the network") == 1, loud.output
    for options, rules in ((("-q",), (rule,)), ((), (rule, f"in,port={port},ignore"))):
        quiet = background(redirect(*rules, verbose=0, options=options) + [server_bin, "127.0.0.1", port])
        quiet.wait_for_line(r"^listening ")
        quiet.stop()
        assert "stays on the network" not in quiet.output, quiet.output


def test_very_verbose_says_every_accept_and_every_socket_left_alone(sockdir, background):
    """-vv: each accept on a converted listener, and each socket redirect
    leaves alone with the reason (no rule, or the rule that said ignore)."""
    port, ignored, other = free_port(), free_port(), free_port()
    sock = sockdir / "vv.sock"
    code = ("import socket\n"
            f"u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', {ignored}))\n"
            f"w=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); w.bind(('127.0.0.1', {other}))\n"
            f"s=socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
            "print('listening', flush=True)\n"
            "c, _ = s.accept(); c.sendall(b'hi'); c.close()\n")
    server = background(redirect(f"in,tcp,port={port},path={sock}", f"in,udp,port={ignored},ignore", verbose=2)
                        + [sys.executable, "-c", code])
    server.wait_for_line("^listening$")
    assert unix_request(sock, b"") == b"hi"
    server.wait_for_line(rf"127\.0\.0\.1:{port}: accepted a connection from 127\.0\.0\.1:\d+ \(uid \d+\) on {sock}")
    assert re.search(rf"127\.0\.0\.1:{ignored}: left alone \(rule #2 in,udp,port={ignored},ignore\)", server.output)
    assert re.search(rf"127\.0\.0\.1:{other}: left alone \(no rule matches\)", server.output), server.output
