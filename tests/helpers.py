"""What the tests share that is not a fixture: the fixture programs' place,
the redirect command line, background processes that are always ended by
pid, waiting for sockets (in the kernel's table), small clients, test users,
programs compiled for one test, nginx's configuration."""
from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

from redirect import socketfile
from redirect.program import Process, ProgramThread, descendants, socket_inode


REPO = Path(__file__).resolve().parent.parent


FIXTURES = REPO / "fixtures" / "static-bins"


BINS = FIXTURES / "out"


REDIRECT = [sys.executable, "-m", "redirect"]


def user_env(install: Path) -> dict[str, str]:
    """The environment of a run as the unprivileged user, from a world-readable copy."""
    return {"PYTHONPATH": str(install), "PATH": "/usr/bin:/bin", "REDIRECT_BACKEND": os.environ["REDIRECT_BACKEND"]}


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
        """End it by its pid: SIGTERM (redirect forwards it to the program),
        again (it reaches what the program left running: socat's forks),
        SIGKILL if needed; then whatever is left in its process group (the
        program's children, should redirect have been killed)."""
        for sig, patience in ((signal.SIGTERM, 3), (signal.SIGTERM, 2), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.kill(self.proc.pid, sig)
                self.proc.wait(patience)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # (its own session and group: start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        self._reader.join(5)
        return self.proc.returncode


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
        if unix_socket_ready(str(path)):
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


def unix_socket_ready(path: str) -> bool:
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


def tcp_listening(port: int, program_of: int | None = None) -> list[str]:
    """Lines of /proc/net/{tcp,udp}{,6} that show a socket some process holds
    on port (a listener, a connection, a bound UDP socket). Sockets in
    TIME_WAIT belong to nobody (inode 0): another test's closed connection
    whose ephemeral port happens to be this one. `program_of`: only sockets
    the program under the redirect of that pid holds (its descendants: a port
    the kernel hands out may be another test's client's at the same moment,
    or a template socket of the supervisor's)."""
    mine = None if program_of is None else _tree_socket_inodes(program_of)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] != "0" \
                        and (mine is None or fields[9] in mine):
                    found.append(f"{table}: {line.strip()}")
    return found


def _tree_socket_inodes(pid: int) -> set[str]:
    """The socket inodes (as /proc/net shows them) that the descendants of pid hold."""
    inodes = set()
    for below in descendants(pid):
        for _, link in ProgramThread(below, Process(below)).fds():  # (nothing if it ended meanwhile)
            if socket_inode(link) is not None:
                inodes.add(str(socket_inode(link)))
    return inodes


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


class OwnThread(ProgramThread):
    """This test process as the program: the handlers read and write its
    memory and look at its fds through the same kernel calls (process_vm_readv,
    pidfd_getfd, /proc/PID/fd) as at a program's, and their acts (a socket put
    at an fd, a new fd given as the result, a wait) are done on this process's
    own fd table, at once. Handlers tested on it run on real memory and real
    sockets, without a backend."""

    def __init__(self) -> None:
        super().__init__(os.getpid(), Process(os.getpid()))

    def wait(self, sock, fd, events, timeout_ms):
        if not events:
            time.sleep(timeout_ms / 1000)
            return 0
        poller = select.poll()
        poller.register(sock.fileno(), events)
        return len(poller.poll(timeout_ms))
        yield  # an act is a generator, as the backends' are

    def put_socket(self, new, places):
        for fd, cloexec in places:
            os.dup2(new.fileno(), fd, inheritable=not cloexec)
        return 0
        yield

    def give(self, sock, cloexec, lost=None):
        fd = os.dup(sock.fileno())
        os.set_inheritable(fd, not cloexec)
        sock.close()
        return fd
        yield

    def epoll_add(self, epfd, fd, events, data):
        from redirect import kernel

        kernel.epoll_ctl_add(epfd, fd, events, data)
        return 0
        yield


def answer(outcome):
    """A handler's answer (a result, PASS), driving a generator handler to its
    end: on OwnThread no act waits, so one step finishes it."""
    if not isinstance(outcome, types.GeneratorType):
        return outcome
    try:
        outcome.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the handler asked the backend for something OwnThread does not do")


def handler_context(rules: list[str] = ()):
    """The handlers' context for these rule texts, with a reaper that looks
    at this process's fds (OwnThread); what it logs is in its `logged`."""
    from redirect.activation import Activation
    from redirect.handlers.context import Context
    from redirect.reaper import Reaper
    from redirect.registry import Registry
    from redirect.rules import parse_rule
    from redirect.sockaddr import PortAllocator

    logged: list[str] = []
    ctx = Context(rules=[parse_rule(text) for text in rules], registry=Registry(), ports=PortAllocator(),
                  log=lambda level, line: logged.append(line), activation=Activation([]))
    ctx.logged = logged
    ctx.reaper = Reaper(ctx, lambda: [OwnThread()])
    return ctx


def converted_listener(path: Path, visible):
    """(handlers' context, a listening Unix socket at path that its registry
    knows as the converted listener of `visible`): for handler tests on OwnThread."""
    from redirect.registry import Listener
    from redirect.rules import SocketType
    from redirect.sockaddr import UnixAddr

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    ctx = handler_context()
    ctx.registry.add_listener(Listener(UnixAddr(os.fsencode(path)), visible, SocketType.STREAM,
                                       os.fstat(sock.fileno()).st_ino))
    return ctx, sock
