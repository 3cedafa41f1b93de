"""redirect needs no root: run it as an unprivileged user the test creates."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import tempfile
from pathlib import Path

import pytest

from helpers import user_env, curl_unix, free_port, tcp_listening, wait_for_socket

def test_runs_as_unprivileged_user(unprivileged_user, world_readable_install, background):
    user = unprivileged_user
    sockdir = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    try:
        os.chown(sockdir, user.pw_uid, user.pw_gid)
        port, sock = free_port(), sockdir / "user.sock"
        command = ["/usr/bin/python3", "-m", "redirect", "-v", "-r", f"in,port={port},path={sock}", "--",
                   world_readable_install / "tcp-server", "127.0.0.1", port]
        if os.geteuid() == 0:
            command = ["/usr/sbin/runuser", "-u", user.pw_name, "--"] + command
        server = background(command, cwd="/", env=user_env(world_readable_install))
        wait_for_socket(sock, proc=server)
        assert os.stat(sock).st_uid == user.pw_uid
        assert curl_unix(sock).startswith("hello from tcp-server peer=127.0.0.1:")
        assert tcp_listening(port) == []
        supervisor_pid = int(subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()[0]) \
            if os.geteuid() == 0 else server.pid
        with open(f"/proc/{supervisor_pid}/status") as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        assert set(map(int, uids)) == {user.pw_uid}
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a server of another user: run as root")
def test_udp_reply_sockets_follow_the_servers_owner(unprivileged_user, world_readable_install):
    """A redirected UDP client of an unprivileged user talks to a server of
    another user (root): its private reply socket is reachable through the
    server socket's group when they share one, by anyone (logged) otherwise."""
    user = unprivileged_user
    sockdir = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    sockdir.chmod(0o755)
    try:
        for group, expected in ((user.pw_gid, "group"), (0, "anyone")):
            sock = sockdir / f"{expected}.sock"
            seen = []
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
                server.bind(str(sock))
                os.chown(sock, 0, group)
                sock.chmod(0o660 if expected == "group" else 0o666)
                server.settimeout(20)

                def answer():
                    data, source = server.recvfrom(100)
                    seen.append((os.stat(source), os.stat(os.path.dirname(source))))
                    server.sendto(b"echo:" + data, source)

                helper = threading.Thread(target=answer, daemon=True)
                helper.start()
                port = free_port()
                command = ["/usr/sbin/runuser", "-u", user.pw_name, "--", "/usr/bin/python3", "-m", "redirect",
                           "-r", f"out,udp,port={port},path={sock}", "--",
                           world_readable_install / "udp-client", "127.0.0.1", port, "hi"]
                result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=30,
                                        cwd="/", env=user_env(world_readable_install))
                helper.join(20)
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"reply 127.0.0.1 {port} echo:hi" in result.stdout
            (reply, folder), = seen
            assert reply.st_uid == user.pw_uid and folder.st_uid == user.pw_uid
            if expected == "group":
                assert (stat.S_IMODE(folder.st_mode), folder.st_gid) == (0o2710, user.pw_gid)
                assert (stat.S_IMODE(reply.st_mode), reply.st_gid) == (0o660, user.pw_gid)
                assert "any local user" not in result.stderr
            else:
                assert stat.S_IMODE(folder.st_mode) == 0o711 and stat.S_IMODE(reply.st_mode) == 0o666
                assert "replies come to sockets that any local user may write to" in result.stderr
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_pipx_install_serves_a_service_user(pipx_install, unprivileged_user, world_readable_install, background):
    """The command pipx installed runs for an unprivileged service user who
    cannot read the installer's home (the checkout under /root): it converts
    the user's server, the man page is there, and so is the compiled accept
    (README's apt line has what builds it)."""
    user = unprivileged_user
    sockdir = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    try:
        os.chown(sockdir, user.pw_uid, user.pw_gid)
        port, sock = free_port(), sockdir / "svc.sock"
        command = ["/usr/sbin/runuser", "-u", user.pw_name, "--", pipx_install, "-v",
                   "-r", f"in,port={port},path={sock}", "--", world_readable_install / "tcp-server", "127.0.0.1", port]
        server = background(command, cwd="/", env={"PATH": "/usr/bin:/bin",
                                                    "REDIRECT_BACKEND": os.environ["REDIRECT_BACKEND"]})
        wait_for_socket(sock, proc=server)
        assert os.stat(sock).st_uid == user.pw_uid
        assert curl_unix(sock).startswith("hello from tcp-server peer=127.0.0.1:")
        assert tcp_listening(port) == []
        venv = pipx_install.resolve().parent.parent
        assert (venv / "share" / "man" / "man1" / "redirect.1").exists()
        assert list(venv.glob("lib/python3*/site-packages/redirect/_fastpath.*.so")), "no compiled accept built"
        if os.environ["REDIRECT_BACKEND"] == "notify":
            assert "connection and datagram calls compiled" in server.output, server.output
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_a_service_users_udp_server_answers_its_clients(pipx_install, unprivileged_user, world_readable_install,
                                                        background):
    """A supervisor that is not root answers a datagram sender by its name:
    the program has no rights it did not start with. The notify backend
    makes those answers in C (the pipx install built it): an unprivileged
    user's UDP server answers each redirected client."""
    user = unprivileged_user
    sockdir = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    try:
        os.chown(sockdir, user.pw_uid, user.pw_gid)
        port, sock, count = free_port(), sockdir / "udp.sock", sockdir / "count.json"
        as_user = ["/usr/sbin/runuser", "-u", user.pw_name, "--"] if os.geteuid() == 0 else []
        env = {"PATH": "/usr/bin:/bin", "REDIRECT_BACKEND": os.environ["REDIRECT_BACKEND"]}
        n = 3
        server = background(as_user + [pipx_install, "--count-calls", count, "-r", f"in,udp,port={port},path={sock}",
                                       "--", world_readable_install / "udp-server", "--count", n, "127.0.0.1", port],
                            cwd="/", env=env)
        server.wait_for_line(r"^listening ")
        for i in range(n):
            result = subprocess.run([str(c) for c in as_user + [pipx_install, "-r", f"out,udp,port={port},path={sock}",
                                                                "--", world_readable_install / "udp-client",
                                                                "127.0.0.1", port, f"hi{i}"]],
                                    capture_output=True, text=True, timeout=30, cwd="/", env=env)
            assert f"reply 127.0.0.1 {port} echo:hi{i}" in result.stdout, result.stdout + result.stderr + server.output
        assert server.wait(20) == 0, server.output
        counts = json.loads(count.read_text())
        assert counts["trapped"]["sendto"] == n, counts
        if os.environ["REDIRECT_BACKEND"] == "notify":
            assert counts["compiled"].get("sendto") == n, counts
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
