"""Socket files with the owner, group and mode a rule asks for, and nginx
reaching a redirected Go server through them while other users cannot."""
from __future__ import annotations

import errno
import grp
import os
import socket
import shutil
import stat
import time
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import user_env, curl_unix, free_port, nginx_conf, redirect, run, tcp_listening, wait_for_socket

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to other users needs root")


@needs_root
@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_mode_owner_group_are_applied(bins, sockdir, background, unprivileged_user, kind):
    user = unprivileged_user
    port, sock = free_port(), sockdir / f"{kind}.sock"
    rule = f"in,{kind},port={port},path={sock},mode=0640,owner={user.pw_name},group={user.pw_gid}"
    program = [bins / "tcp-server-musl", "127.0.0.1", port] if kind == "tcp" else \
        [bins / "udp-server-musl", "127.0.0.1", port]
    server = background(redirect(rule) + program)
    server.wait_for_line("^listening")
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid)
    if kind == "tcp":
        assert curl_unix(sock).startswith("hello from tcp-server")
    server.stop()
    assert not sock.exists()


@needs_root
def test_group_alone_keeps_the_programs_umask(bins, sockdir, background, unprivileged_user):
    port, sock = free_port(), sockdir / "g.sock"
    server = background(redirect(f"in,port={port},path={sock},group={unprivileged_user.pw_gid}")
                        + [bins / "tcp-server-glibc", "127.0.0.1", port], preexec_fn=lambda: os.umask(0o027))
    wait_for_socket(sock, proc=server)
    st = os.stat(sock)
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_gid == unprivileged_user.pw_gid and st.st_uid == 0


def test_file_never_looser_than_asked(sockdir):
    """The file is created 0600 and only then opened up: a program whose umask
    is 0 would otherwise create it 0777 for an instant. Watch it from inside:
    the program stats its socket file right after bind returns."""
    port, sock = free_port(), sockdir / "w.sock"
    code = ("import os,socket,sys\nos.umask(0)\ns=socket.socket()\n"
            f"s.bind(('127.0.0.1',{port}))\nprint(oct(os.stat(sys.argv[1]).st_mode & 0o7777))\n")
    result = run(redirect(f"in,port={port},path={sock},mode=0620") + [sys.executable, "-c", code, sock])
    assert result.stdout.strip() == "0o620", result.stderr
    result = run(redirect(f"in,port={port},path={sock}") + [sys.executable, "-c", code, sock])
    assert result.stdout.strip() == "0o777"  # without mode=: the program's own umask decides


def test_owner_it_cannot_give_fails_closed(unprivileged_user, world_readable_install, sockdir):
    """Only root can give a file away: an unprivileged redirect refuses the bind
    (EPERM, a clear line) and leaves no file."""
    if os.geteuid() == 0:
        os.chown(sockdir, unprivileged_user.pw_uid, -1)
        prefix = ["/usr/sbin/runuser", "-u", unprivileged_user.pw_name, "--"]
    else:
        prefix = []
    port, sock = free_port(), sockdir / "o.sock"
    code = ("import socket\ns=socket.socket()\ntry:\n    s.bind(('127.0.0.1', %d))\n    print('bound')\n"
            "except OSError as e:\n    print('errno', e.errno)\n" % port)
    env = user_env(world_readable_install)
    result = subprocess.run(prefix + ["/usr/bin/python3", "-m", "redirect", "-r", f"in,port={port},path={sock},owner=root",
                                      "--", "/usr/bin/python3", "-c", code],
                            capture_output=True, text=True, timeout=30, env=env, cwd="/")
    assert result.stdout.strip() == "errno 1", result.stderr
    assert "only root can give a socket file to another owner" in result.stderr
    assert not sock.exists() and tcp_listening(port) == []


def test_missing_directory_is_named(bins, sockdir):
    port = free_port()
    result = run(redirect(f"in,port={port},path={sockdir}/no/such/dir/a.sock") + [bins / "tcp-server-glibc", "127.0.0.1", port])
    assert result.returncode == 1
    assert "(its directory does not exist)" in result.stderr
    assert tcp_listening(port) == []


# ---- nginx ----------------------------------------------------------------------------

@needs_root
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx-light is installed by scripts/setup.sh")
def test_nginx_reaches_go_server_through_group_socket(bins, background, unprivileged_user):
    """nginx's workers (www-data) reach a Go server on a 0660 socket of group
    www-data; another unprivileged user gets EACCES; the server has no TCP port."""
    group = grp.getgrnam("www-data")
    tmp = Path(tempfile.mkdtemp(prefix="rd-nginx-", dir="/tmp"))
    try:
        tmp.chmod(0o755)  # nginx's workers must reach the socket inside
        sock, app_port, web_port = tmp / "app.sock", free_port(), free_port()
        app = background(redirect(f"in,port={app_port},path={sock},mode=0660,group=www-data")
                         + [bins / "go-http-server", "-addr", f"127.0.0.1:{app_port}"])
        wait_for_socket(sock, proc=app)
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid
        (tmp / "nginx.conf").write_text(nginx_conf(
            tmp, f"server {{ listen 127.0.0.1:{web_port}; location / {{ proxy_pass http://unix:{sock}:; }} }}"))
        nginx = background(["nginx", "-c", tmp / "nginx.conf", "-p", tmp])
        page = None
        for _ in range(100):
            result = run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{web_port}/"], timeout=10)
            if result.returncode == 0:
                page = result.stdout
                break
            if nginx.proc.poll() is not None:
                break
            time.sleep(0.05)
        assert page is not None and page.startswith("hello from go-server remote=127."), \
            f"{page!r}\n{nginx.output}\n{(tmp / 'error.log').read_text() if (tmp / 'error.log').exists() else ''}"
        assert "bad-remote-addr" not in app.output
        # Somebody else (not in www-data) cannot even connect.
        code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print(e.errno)\n")
        other = run(["/usr/sbin/runuser", "-u", unprivileged_user.pw_name, "--", "/usr/bin/python3", "-c", code, sock])
        assert other.stdout.strip() == str(errno.EACCES), other.stdout + other.stderr
        assert tcp_listening(app_port) == []
        nginx.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_permissions_never_follow_a_swapped_in_symlink(tmp_path):
    """Whoever can write the socket's directory may swap a symlink in between
    the bind and the chmod: the target must never be touched."""
    from redirect.rules import parse_rule
    from redirect.socketfile import apply_permissions

    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    link = tmp_path / "s.sock"
    link.symlink_to(secret)
    rule = parse_rule(f"in,port=1,path={link},mode=0666")
    with socket.socket(socket.AF_UNIX) as sock:  # the socket whose bind "made" the file
        assert apply_permissions(os.fsencode(link), sock, rule, os.geteuid(), 0o022) == -errno.EPERM
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and link.is_symlink()


def test_threads_racing_umask_and_binds_never_loosen_the_file(sockdir):
    """One thread sets umask 0 in a loop while two others bind under mode=0600:
    the files are 0600 from the start (fchmod before bind, no umask games) and
    the program's umask is left alone."""
    code = r"""
import os, socket, sys, threading, stat
stop = threading.Event()
def churn():
    while not stop.is_set():
        os.umask(0)
t = threading.Thread(target=churn); t.start()
barrier = threading.Barrier(2)
modes = {}
def bind(port):
    s = socket.socket(); barrier.wait(); s.bind(("127.0.0.1", port)); s.listen()
    modes[port] = oct(stat.S_IMODE(os.stat(f"{sys.argv[1]}/{port}.sock").st_mode))
threads = [threading.Thread(target=bind, args=(p,)) for p in (18080, 18081)]
[x.start() for x in threads]; [x.join() for x in threads]
stop.set(); t.join()
os.umask(0o027)
print(modes[18080], modes[18081], oct(os.umask(0o027)))
"""
    for _ in range(3):
        result = run(redirect(f"in,port=18080-18081,path={sockdir}/%p.sock,mode=0600") + [sys.executable, "-c", code,
                                                                                          sockdir])
        assert result.stdout.split() == ["0o600", "0o600", "0o27"], result.stdout + result.stderr
