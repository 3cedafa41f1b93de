"""Socket options on converted sockets read as on real ones: the same
program run on real TCP/UDP sockets and under redirect prints the same
values and errors, option by option; OpenSSH, which drops connections that
carry IP options, serves a redirected ssh."""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import compiled, free_port, redirect, run, wait_for_socket


@pytest.fixture(scope="session")
def sockopts():
    yield from compiled("sockopts", "-static")


@pytest.mark.parametrize("kind", ["tcp", "udp"])
@pytest.mark.parametrize("family", ["4", "6"])
def test_options_read_as_on_a_real_socket(sockopts, sockdir, background, family, kind):
    """Bound/listening, accepted and connected sockets, and a program's own
    settings (refused ones included): line for line what real sockets say."""
    outputs = {}
    for how in ("real", "redirected"):
        port, path = free_port(), sockdir / f"{how}.sock"
        server_argv = [sockopts, "server", family, kind, port]
        client_argv = [sockopts, "client", family, kind, port]
        if how == "redirected":
            server_argv = redirect(f"in,{kind},port={port},path={path}", verbose=0) + server_argv
            client_argv = redirect(f"out,{kind},port={port},path={path}", verbose=0) + client_argv
        server = background(server_argv)
        server.wait_for_line("^ready$")
        client = run(client_argv)
        assert client.returncode == 0, client.stdout + client.stderr
        assert server.wait(10) == 0, server.output
        outputs[how] = (server.output.replace("ready\n", ""), client.stdout)
    real, redirected = outputs["real"], outputs["redirected"]
    assert "IP_OPTIONS =  (0)" in real[0] + real[1] or family == "6", real  # (the fixture reads what it should)
    for side in (0, 1):
        real_lines, our_lines = real[side].splitlines(), redirected[side].splitlines()
        assert len(real_lines) == len(our_lines) > 10, (real_lines, our_lines)
        differ = [(r, o) for r, o in zip(real_lines, our_lines) if r != o]
        assert not differ, differ


_SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="sshd's privilege separation needs root: run as root")
def test_sshd_serves_a_redirected_ssh_client(sockdir, background):
    """Debian's sshd under an `in` rule, ssh under an `out` rule running a
    command (sshd checks each connection for IP options and drops it when
    any read back: it did, for every client)."""
    sshd = shutil.which("sshd", path="/usr/sbin:/usr/bin")
    assert sshd, "sshd is not installed (scripts/setup.sh installs openssh-server)"
    keys = Path(tempfile.mkdtemp(prefix="rd-ssh-"))
    made_run_dir = not os.path.isdir("/run/sshd")
    try:
        if made_run_dir:
            os.makedirs("/run/sshd", mode=0o755)  # sshd's privilege separation directory
        for name in ("host_key", "client_key"):
            result = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / name])
            assert result.returncode == 0, result.stderr
        shutil.copy(keys / "client_key.pub", keys / "authorized_keys")
        port, path = free_port(), sockdir / "ssh.sock"
        (keys / "sshd_config").write_text(_SSHD_CONFIG.format(port=port, dir=keys))
        server = background(redirect(f"in,port={port},path={path}", verbose=0)
                            + [sshd, "-D", "-e", "-f", keys / "sshd_config"])
        wait_for_socket(path, proc=server)
        client = run(redirect(f"out,port={port},path={path}", verbose=0)
                     + ["ssh", "-F", "/dev/null", "-i", keys / "client_key", "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-p", str(port), "root@127.0.0.1", "echo", "served", "by", "sshd"], timeout=60)
        assert client.stdout == "served by sshd\n", client.stdout + client.stderr + server.output
        assert "IP opts" not in server.output, server.output
        assert "Connection from 127.0.0.1 port" in server.output, server.output
    finally:
        shutil.rmtree(keys, ignore_errors=True)
        if made_run_dir:
            shutil.rmtree("/run/sshd", ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="a root supervisor and a program that drops its rights: run as root")
def test_settings_are_tried_with_the_programs_rights(sockdir):
    """A program that became nobody may not set IP_TRANSPARENT (it needs
    CAP_NET_ADMIN): under a root supervisor the setting is refused with
    EPERM all the same, as on a real socket."""
    port = free_port()
    code = ("import os,socket\n"
            f"s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen()\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n    s.setsockopt(socket.IPPROTO_IP, 19, 1); print('set')\n"
            "except OSError as e:\n    print('refused', e.errno)\n")
    real = run([sys.executable, "-c", code])
    redirected = run(redirect(f"in,port={port},path={sockdir}/t.sock", verbose=0) + [sys.executable, "-c", code])
    assert real.stdout == f"refused {errno.EPERM}\n", real.stdout + real.stderr
    assert redirected.stdout == real.stdout, redirected.stdout + redirected.stderr
