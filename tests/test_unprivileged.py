"""redirect needs no root: run it as an unprivileged user the test creates."""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, curl_unix, free_port, tcp_listening, wait_for_socket

USER = "redirect-test"


@pytest.fixture(scope="session")
def unprivileged_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())  # already unprivileged: run as ourselves
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(USER)


@pytest.fixture
def world_readable_install(bins):
    """The package, its pure-Python dependencies and one fixture program, copied
    where any user can read them (the checkout may live under /root)."""
    root = Path(tempfile.mkdtemp(prefix="rd-user-", dir="/tmp"))
    try:
        shutil.copytree(REPO / "redirect", root / "redirect", ignore=shutil.ignore_patterns("__pycache__"))
        for module in ("ptrace", "pyseccomp"):
            origin = Path(importlib.util.find_spec(module).origin)
            if origin.name == "__init__.py":
                shutil.copytree(origin.parent, root / module, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, root / origin.name)
        shutil.copy(bins / "tcp-server-glibc", root / "tcp-server")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
        server = background(command, cwd="/", env={"PYTHONPATH": str(world_readable_install), "PATH": "/usr/bin:/bin"})
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
