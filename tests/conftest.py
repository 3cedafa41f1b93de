"""Shared test machinery: the fixture programs, background processes that are
always ended by pid, short temporary directories that are always removed."""
from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from redirect import socketfile

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures" / "static-bins"
BINS = FIXTURES / "out"
REDIRECT = [sys.executable, "-m", "redirect"]
# Every test that runs redirect runs once per backend: REDIRECT_BACKEND (the
# CLI's default) picks it for each redirect the test starts.
BACKENDS = ("notify", "ptrace")
ONE_BACKEND = {"test_arch", "test_bench", "test_constants", "test_decision", "test_globpath", "test_peers", "test_registry",
               "test_rules", "test_sockaddr"}  # pure code, or measures both itself


def pytest_configure(config):
    config.addinivalue_line("markers", "one_backend: a test that runs no program under redirect "
                                       "(a pure check) runs once, not once per backend")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        one = metafunc.module.__name__ in ONE_BACKEND or metafunc.definition.get_closest_marker("one_backend")
        names = ("notify",) if one else BACKENDS
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _backend_for_redirect(backend, monkeypatch) -> None:
    monkeypatch.setenv("REDIRECT_BACKEND", backend)


def user_env(install: Path) -> dict[str, str]:
    """The environment of a run as the unprivileged user, from a world-readable copy."""
    return {"PYTHONPATH": str(install), "PATH": "/usr/bin:/bin", "REDIRECT_BACKEND": os.environ["REDIRECT_BACKEND"]}


@pytest.fixture(scope="session")
def bins() -> Path:
    """The fixture programs, built from source (incremental: quick when built)."""
    result = subprocess.run(["make", "-s", "-C", str(FIXTURES), f"OUT={BINS}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the fixture programs failed:\n{result.stdout}\n{result.stderr}")
    return BINS


@pytest.fixture
def sockdir():
    """A short private directory for socket files (sun_path is 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Background:
    """A command running in the background with its output collected line by line."""

    def __init__(self, argv: list[str], interactive: bool = False, **kwargs) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                                     text=True, start_new_session=True, **kwargs)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def send_line(self, text: str = "") -> None:
        """A line on the program's stdin (interactive=True): tells a probe to go on."""
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 10) -> re.Match:
        """The first output line matching pattern (a regex), waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    found = regex.search(line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} from {self.argv}; "
                                         f"exit={self.proc.poll()}; output:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.2))

    def wait(self, timeout: float = 20) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> int | None:
        """End it by its pid: SIGTERM first (redirect forwards it), SIGKILL if needed."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def background():
    """Start commands in the background; all of them are ended by pid afterwards."""
    started: list[Background] = []

    def start(argv: list, **kwargs) -> Background:
        proc = Background([str(a) for a in argv], **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


def redirect(*rules: str, verbose: int = 1, options: tuple[str, ...] = ()) -> list[str]:
    """The redirect command line for these rules, ready for a program to be appended."""
    argv = list(REDIRECT) + ["-v"] * verbose + list(options)
    for rule in rules:
        argv += ["-r", rule]
    return argv + ["--"]


def run(argv: list, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_for_socket(path: Path, timeout: float = 10, proc: Background | None = None) -> None:
    """Wait until a socket file exists and, for a stream socket, is listening
    (read from /proc/net/unix: probing with a connection would disturb servers
    that count them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _unix_socket_ready(str(path)):
            return
        if proc is not None and proc.proc.poll() is not None:
            break
        time.sleep(0.02)
    detail = f"; output:\n{proc.output}" if proc is not None else ""
    raise AssertionError(f"socket {path} did not appear{detail}")


def gone_soon(path: Path, within: float = 3) -> bool:
    """Whether path is gone within a few seconds: closes are not trapped, so
    the supervisor finds a closed listener on its reap timer (about 1 s)."""
    deadline = time.monotonic() + within
    while os.path.lexists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _unix_socket_ready(path: str) -> bool:
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    # The kernel's table (socketfile.bound_at reads /proc/net/unix, paths with spaces too).
    return any(kind != socket.SOCK_STREAM or flags & socketfile.SO_ACCEPTCON
               for kind, flags in socketfile.bound_at(os.fsencode(path)))


def free_port() -> int:
    """A port nothing listens on now (the tests check that it stays closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_listening(port: int) -> list[str]:
    """Lines of /proc/net/{tcp,udp}{,6} that show a socket some process holds
    on port (a listener, a connection, a bound UDP socket). Sockets in
    TIME_WAIT belong to nobody (inode 0): another test's closed connection
    whose ephemeral port happens to be this one."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] != "0":
                    found.append(f"{table}: {line.strip()}")
    return found


def unix_request(path: Path, data: bytes, timeout: float = 10) -> bytes:
    """Send data to a Unix stream socket, half-close, read the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        if data:  # sendall(b"") still sends: EPIPE if the server already answered and closed
            s.sendall(data)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may have closed first; its answer is still there to read
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def curl_unix(path: Path, url: str = "http://app/", timeout: float = 10) -> str:
    result = run(["curl", "-sS", "--max-time", str(timeout), "--unix-socket", path, url], timeout=timeout + 5)
    assert result.returncode == 0, f"curl failed: {result.stderr}"
    return result.stdout


USER = "redirect-test"


def system_user(name: str) -> pwd.struct_passwd:
    """A system user of the tests (with a group of its name), made if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def unprivileged_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())  # already unprivileged: run as ourselves
    return system_user(USER)


@pytest.fixture
def world_readable_install(bins):
    """The package, its pure-Python dependencies and one fixture program, copied
    where any user can read them (the checkout may live under /root)."""
    root = Path(tempfile.mkdtemp(prefix="rd-user-", dir="/tmp"))
    try:
        shutil.copytree(REPO / "redirect", root / "redirect", ignore=shutil.ignore_patterns("__pycache__"))
        for module in ("ptrace",):
            origin = Path(importlib.util.find_spec(module).origin)
            if origin.name == "__init__.py":
                shutil.copytree(origin.parent, root / module, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, root / origin.name)
        shutil.copy(bins / "tcp-server-glibc", root / "tcp-server")
        shutil.copy(bins / "udp-client-glibc", root / "udp-client")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def compiled(name: str, *flags: str):
    """A test program from tests/programs, compiled into a directory of its own."""
    where = Path(tempfile.mkdtemp(prefix="rd-prog-"))
    try:
        out = where / name
        result = run(["gcc", "-O2", *flags, "-o", out, Path(__file__).parent / "programs" / f"{name}.c"])
        assert result.returncode == 0, result.stderr
        yield out
    finally:
        shutil.rmtree(where, ignore_errors=True)


# ---- nginx ----------------------------------------------------------------------------

NGINX_MAIN = """
worker_processes 1;
user {user};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http}
}}
"""


def nginx_conf(tmp: Path, http: str, user: str = "www-data") -> str:
    """A whole nginx.conf around what goes in its http block, with every file
    nginx writes in tmp (run it as `nginx -c CONF -p TMP`)."""
    return NGINX_MAIN.format(user=user, tmp=tmp, http=http)


# ---- redirect installed as README says ------------------------------------------------

@dataclass
class ReadmeInstall:
    root: Path                  # stands for the machine's /: opt/pipx, usr/local/bin, root (a HOME)
    units: Path                 # /usr/local/bin/redirect: for systemd units and every user
    own: Path                   # ~/.local/bin/redirect: "just for you"
    runs: dict[str, subprocess.CompletedProcess]   # each command of the block, as run


@pytest.fixture(scope="session")
def readme_install() -> ReadmeInstall:
    """README's install block run as it stands (as root): its apt line, then its
    two pipx lines at once, with /opt/pipx and /usr/local/bin of a temporary
    root (doc_blocks.SUBSTITUTIONS), HOME in it for "just for you", each in a
    copy of the checkout."""
    from doc_blocks import block, commands, substitute

    if os.geteuid() != 0:
        pytest.skip("installs for a service user as root: run as root")
    root = Path(tempfile.mkdtemp(prefix="rd-pipx-", dir="/tmp"))
    root.chmod(0o755)   # every service user reads the install
    try:
        (root / "root").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPX_")}
        env["HOME"] = str(root / "root")
        lines = commands(substitute(block("README.md", "apt install pipx libseccomp2").text,
                                    ["/opt/pipx", "/usr/local/bin"], machine=root))
        runs = {lines[0]: run(["bash", "-c", lines[0]], timeout=600, env=env)}
        started = {}
        try:
            for number, line in enumerate(lines[1:]):
                # `.` is the checkout: a copy of its own for each build (a build
                # writes build/ and *.egg-info into the tree: builds at once collide)
                checkout = root / "src" / str(number)
                shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(
                    ".*", "build", "*.egg-info", "__pycache__", "fixtures", "tests", "bench"))
                started[line] = subprocess.Popen(["bash", "-c", line], stdin=subprocess.DEVNULL, text=True,
                                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=checkout,
                                                 env=env)
            for line, proc in started.items():
                output, _ = proc.communicate(timeout=600)
                runs[line] = subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
        finally:
            for proc in started.values():
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        yield ReadmeInstall(root, root / "usr" / "local" / "bin" / "redirect",
                            root / "root" / ".local" / "bin" / "redirect", runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pipx_install(readme_install) -> Path:
    """The redirect that README's pipx line installs for systemd units (into a
    prefix any user can read; here a temporary one)."""
    for line, result in readme_install.runs.items():
        assert result.returncode == 0, f"{line}:\n{result.stdout}{result.stderr}"
    return readme_install.units
