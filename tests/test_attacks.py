"""A program that tries: races on its own memory, its own seccomp filter, its
own tracing, the 32-bit ABI, family tricks, the supervisor itself. Each attack
is a real static program (tests/programs/attacks.c); a receiver outside
redirect counts what arrives, and must count nothing."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers import user_env, REDIRECT, compiled, free_port, redirect, run, tcp_listening

ATTEMPTS = 3000  # today's escape rates were 5-25%: hundreds of escapes at this count


@pytest.fixture(scope="session")
def attacks():
    yield from compiled("attacks", "-static", "-pthread")


class _Counter:
    """A socket outside redirect, watched by a thread that counts what
    arrives (what `_arrived` says counts) until close()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.count, self.running = sock, 0, True
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while self.running:
            try:
                self.count += self._arrived()
            except OSError:
                continue

    def close(self) -> int:
        self.running = False
        self.thread.join(5)
        self.sock.close()
        return self.count


class Receiver(_Counter):
    """A real TCP listener or UDP socket on 127.0.0.1 counting the
    connections or datagrams that reach it."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind = kind
        family = socket.AF_INET6 if kind.endswith("6") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM if kind.startswith("tcp") else socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
        if kind.startswith("tcp"):
            sock.listen(4096)
        super().__init__(sock)

    def _arrived(self) -> bool:
        if self.kind.startswith("tcp"):
            self.sock.accept()[0].close()
        else:
            self.sock.recv(65536)
        return True


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
        listening = tcp_listening(port, program_of=proc.pid)  # while the program still holds what it got
        with socket.socket() as outside:
            outside.settimeout(2)
            reached = outside.connect_ex(("127.0.0.1", port)) == 0
        assert lines == {"attempts": ATTEMPTS, "ok": lines["ok"], "escaped": 0}
        assert not reached and not [line for line in listening if " 0A " in line]
    finally:
        proc.communicate("go\n", timeout=30)


# ---- the program's own filter, its own tracing, the 32-bit ABI, family tricks --------------

def test_own_seccomp_listener_is_refused(attacks, receiver, backend):
    port = free_port()
    counter = receiver("tcp", port)
    result = run(REDIRECT + ["--sealed", "--", attacks, "notify", port])
    got = _values(result.stdout)
    assert got["seccomp"] == -16, result.stdout + result.stderr  # EBUSY, as under another notifier
    assert got["connect"] == -101  # ENETUNREACH: sealed, as without the filter
    if backend == "ptrace":  # redirect refuses it; under notify the kernel does (one listener per thread)
        assert "seccomp" in result.stderr and "refused" in result.stderr
    assert counter.close() == 0


def test_untraced_children_are_refused(attacks, receiver, backend):
    """ptrace: an untraced child is refused (the program could trace it and
    let its calls through). notify: nothing is traced; the child's calls are
    judged like any (the filter is inherited), whoever traces it."""
    port = free_port()
    counter = receiver("tcp", port)
    result = run(REDIRECT + ["--sealed", "--", attacks, "untraced", port], timeout=30)
    got = _values(result.stdout)
    if backend == "ptrace":
        assert got.get("clone") == -1, result.stdout + result.stderr  # EPERM
        assert "CLONE_UNTRACED" in result.stderr
    else:
        assert got.get("clone") == 0, result.stdout + result.stderr
        assert "ENETUNREACH" in result.stderr  # the child's connect, judged
    assert counter.close() == 0


def test_ipv6_udp_socket_cannot_send_to_ipv4_past_the_rules(attacks, receiver, sockdir):
    port = free_port()
    counter = receiver("udp", port)
    sealed = run(REDIRECT + ["--sealed", "--", attacks, "v6-to-v4", port])
    assert _values(sealed.stdout) == {"sendto": -101, "connect": -101, "send": -89}, sealed.stdout + sealed.stderr
    ruled = run(redirect(f"out,udp,port={port},path={sockdir}/nobody.sock", verbose=0)
                + [attacks, "v6-to-v4", port])
    got = _values(ruled.stdout)
    assert got["sendto"] == got["connect"] == -111, ruled.stdout + ruled.stderr  # ECONNREFUSED: nobody at the path
    assert counter.close() == 0


@pytest.fixture
def as_user(unprivileged_user, world_readable_install, attacks):
    """argv -> the same run as the unprivileged test user, with redirect and
    the attack program from a world-readable copy ("redirect" and "attacks"
    in argv stand for them)."""
    shutil.copy(attacks, world_readable_install / "attacks")
    (world_readable_install / "attacks").chmod(0o755)

    def command(argv: list) -> tuple[list[str], dict]:
        argv = [str(a) for a in argv]
        argv = [str(world_readable_install / "attacks") if a == "attacks" else a for a in argv]
        if argv[0] == "redirect":
            argv = ["/usr/bin/python3", "-m", "redirect"] + argv[1:]
        if os.geteuid() == 0:
            argv = ["/usr/sbin/runuser", "-u", unprivileged_user.pw_name, "--"] + argv
        return argv, {"cwd": "/", "env": user_env(world_readable_install)}

    return command


def test_supervisor_cannot_be_written_traced_or_robbed(as_user):
    """As the same (unprivileged) user, from inside: the supervisor's memory
    cannot be opened or written, and it cannot be traced."""
    argv, where = as_user(["redirect", "-r", "out,port=1,reject", "--", "attacks", "supervisor"])  # (a rule: any)
    result = run(argv, **where)
    assert _values(result.stdout) == {"mem": -13, "vm-write": -1, "seize": -1}, result.stdout + result.stderr


def test_sealed_program_cannot_take_sockets_from_other_processes(as_user, receiver):
    port = free_port()
    counter = receiver("tcp", port)
    # A connected TCP socket in another process of the same user, outside redirect.
    argv, where = as_user(["/usr/bin/python3", "-c", f"""
import socket, sys
s = socket.create_connection(("127.0.0.1", {port}))
print(s.fileno(), flush=True)
sys.stdin.read()
"""])
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **where)
    try:
        fd = int(holder.stdout.readline())
        pid = int(subprocess.run(["pgrep", "-f", "-n", "-P", str(holder.pid), "python3"], capture_output=True,
                                 text=True).stdout.split()[0]) if os.geteuid() == 0 else holder.pid
        argv, where = as_user(["redirect", "--sealed", "--", "attacks", "steal", pid, fd])
        result = run(argv, **where)
        assert _values(result.stdout) == {"getfd": -1}, result.stdout + result.stderr  # EPERM
        assert "pidfd_getfd" in result.stderr
        argv, where = as_user(["attacks", "steal", pid, fd])  # outside redirect the attack itself works
        assert _values(run(argv, **where).stdout) == {"getfd": 0, "send": 7}
    finally:
        holder.communicate("", timeout=10)
    counter.close()


def test_sealed_family_flip_as_unprivileged_user(as_user, receiver):
    port = free_port()
    counter = receiver("tcp", port)
    argv, where = as_user(["redirect", "--sealed", "--", "attacks", "flip", "connect", "tcp", "unix",
                           f"inet:{port}", ATTEMPTS])
    result = run(argv, timeout=120, **where)
    assert _values(result.stdout).get("attempts") == ATTEMPTS, result.stdout + result.stderr[-2000:]
    assert counter.close() == 0


def test_inherited_listener_is_closed_in_sealed_mode(attacks):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.set_inheritable(True)
        port = listener.getsockname()[1]
        result = run(REDIRECT + ["--sealed", "--", attacks, "accept", listener.fileno()],
                     pass_fds=[listener.fileno()], timeout=30)
        assert _values(result.stdout) == {"accept": -9}, result.stdout + result.stderr  # EBADF
        assert f"fd {listener.fileno()}" in result.stderr and "sealed" in result.stderr
        assert port  # the test's own listener is untouched


@pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root supervisor: run as root")
def test_blackhole_folder_swap_deletes_nothing(attacks, sockdir):
    """A program that dropped privileges swaps every redirect-* folder it can
    for a symlink to a directory of root's while its binds are blackholed:
    the supervisor's clean-up must not empty that directory."""
    victim = Path(tempfile.mkdtemp(prefix="rd-victim-"))
    sockdir.chmod(0o1777)  # the program, as nobody, binds there
    try:
        (victim / "precious").write_text("keep me")
        for _ in range(3):
            port = free_port()
            result = run(redirect(f"in,port={port},path={sockdir}/bh.sock", verbose=0)
                         + [attacks, "blackhole-symlink", port, victim], timeout=60)
            got = _values(result.stdout)
            assert got.get("first") == 0 and got.get("failed") == 0, result.stdout + result.stderr
            assert (victim / "precious").read_text() == "keep me"
    finally:
        shutil.rmtree(victim, ignore_errors=True)
        for moved in Path("/tmp").glob("moved-redirect-*"):
            shutil.rmtree(moved, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root supervisor and another user: run as root")
def test_peer_credentials_name_the_program_user(unprivileged_user, sockdir):
    """The supervisor connects for the program, but a server reading
    SO_PEERCRED (PostgreSQL's peer authentication) still sees the program's
    user, here one the program became after it started."""
    user = unprivileged_user
    sockdir.chmod(0o755)
    sock = sockdir / "peer.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(sock))
        sock.chmod(0o666)
        server.listen()
        server.settimeout(20)
        port = free_port()
        code = (f"import os, socket; os.setgroups([]); os.setgid({user.pw_gid}); os.setuid({user.pw_uid}); "
                f"socket.create_connection(('127.0.0.1', {port})).sendall(b'hi')")
        client = subprocess.Popen(redirect(f"out,port={port},path={sock}", verbose=0)
                                  + [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = server.accept()
            with conn:
                pid, uid, gid = struct.unpack("=iII", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                assert conn.recv(10) == b"hi"
        finally:
            client.communicate(timeout=20)
    assert (uid, gid) == (user.pw_uid, user.pw_gid)


def _rewind_outcome(result, backend: str) -> None:
    if backend == "ptrace":  # the injected call was not the one run: the process is killed
        assert result.returncode == 128 + 9, result.stdout + result.stderr
        assert "rewrote the code redirect runs its calls through" in result.stderr
    else:  # nothing is injected into the program: its jump runs a connect that is judged like any
        assert "sent -1" in result.stdout and result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("sealed", [True, False])
def test_rewritten_syscall_instruction_gets_the_program_killed(attacks, receiver, sockdir, sealed, backend):
    """The ptrace backend's second and later injected calls re-run the
    program's own `syscall` instruction; a thread rewrites it into a jump to
    a native connect while another waits in such a call. The old code let
    that connect through unjudged; now the process is killed."""
    port = free_port()
    counter = receiver("tcp", port)
    options = ["--sealed"] if sealed else ["-r", f"out,port={port},path={sockdir}/never.sock",
                                           "-r", f"out,path={sockdir}/any.sock"]
    result = run(REDIRECT + options + ["--", attacks, "rewind", port], timeout=60)
    _rewind_outcome(result, backend)
    assert counter.close() == 0


def test_rewritten_syscall_instruction_as_unprivileged_user(as_user, receiver, backend):
    port = free_port()
    counter = receiver("tcp", port)
    argv, where = as_user(["redirect", "--sealed", "--", "attacks", "rewind", port])
    result = run(argv, timeout=60, **where)
    _rewind_outcome(result, backend)
    assert counter.close() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a packet socket needs CAP_NET_RAW: run as root")
@pytest.mark.parametrize("mode", ["packet", "packet-high"])
def test_sealed_refuses_packet_sockets_in_ip_clothes(attacks, mode):
    """AF_INET with SOCK_PACKET; AF_PACKET with junk in the upper half of the
    family (the kernel reads 32 bits, a filter comparing 64 would not match)."""
    assert _values(run([attacks, mode]).stdout) == {"socket": 0}  # the attack works outside
    result = run(REDIRECT + ["--sealed", "--", attacks, mode])
    assert _values(result.stdout) == {"socket": -97}, result.stdout + result.stderr  # EAFNOSUPPORT


class _Sniffer(_Counter):
    """IGMP reports (IPv4 protocol 2) about one group seen on lo (root: AF_PACKET)."""

    def __init__(self, group: str) -> None:
        self.group = socket.inet_aton(group)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        sock.bind(("lo", 0))
        super().__init__(sock)

    def _arrived(self) -> bool:
        frame = self.sock.recv(2048)
        return len(frame) > 23 and frame[14 + 9] == 2 and self.group in frame[14:]


@pytest.mark.skipif(os.geteuid() != 0, reason="watching lo for IGMP needs CAP_NET_RAW: run as root")
@pytest.mark.parametrize("high", [[], ["high"]], ids=["plain", "upper-halves"])
def test_sealed_refuses_multicast_joins(attacks, high):
    """Also with junk in the upper halves of level and name: the kernel reads
    32 bits of each, and so must the handler (found by an adversarial pass:
    the join went through, unprivileged, with IGMP reports on eth0)."""
    sniffer = _Sniffer("239.1.2.3")
    try:
        outside = _values(run([attacks, "igmp", "239.1.2.3", *high]).stdout)
        time.sleep(0.5)
        assert outside == {"join": 0} and sniffer.count > 0  # the attack works outside: reports on lo
    finally:
        sniffer.close()
    sniffer = _Sniffer("239.1.2.4")
    try:
        result = run(REDIRECT + ["--sealed", "--", attacks, "igmp", "239.1.2.4", *high])
        time.sleep(0.5)
    finally:
        reports = sniffer.close()
    assert _values(result.stdout) == {"join": -13}, result.stdout + result.stderr  # EACCES
    assert "multicast" in result.stderr and reports == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root supervisor: run as root")
def test_reply_socket_mode_never_follows_a_symlink(attacks, sockdir):
    """A root supervisor gives a datagram client's reply socket its mode; the
    program (now nobody) swaps each new one for a symlink to a file of root's."""
    sockdir.chmod(0o755)
    victim = sockdir / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    before = set(Path("/tmp").glob("redirect-*"))
    swapped = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(str(sockdir / "srv.sock"))
            (sockdir / "srv.sock").chmod(0o666)
            for _ in range(5):  # until the attack won its race at least once (a busy machine loses it more)
                port = free_port()
                result = run(redirect(f"out,udp,port={port},path={sockdir}/srv.sock", verbose=0)
                             + [attacks, "reply-chmod", port, victim, 200], timeout=60)
                got = _values(result.stdout)
                assert got.get("folder") == 0, result.stdout + result.stderr
                assert victim.stat().st_mode & 0o777 == 0o600
                swapped += got.get("swapped", 0)
                if swapped:
                    break
    finally:
        # The program's symlinks stay in its reply folder (redirect removes only
        # what it made), so the folder stays too: the test removes it.
        for left in set(Path("/tmp").glob("redirect-*")) - before:
            shutil.rmtree(left, ignore_errors=True)
    assert swapped > 0, "the attack never got to swap a reply socket: it tested nothing"


@pytest.mark.parametrize("unprivileged", [False, True])
def test_sealed_program_cannot_write_other_processes_memory(attacks, as_user, unprivileged):
    """A process of the same user outside redirect (which would make any
    connection its memory told it to): sealed, its /proc/PID/mem does not open."""
    if unprivileged:
        victim_argv, where = as_user(["/bin/sleep", "30"])
    else:
        victim_argv, where = ["/bin/sleep", "30"], {}
    victim = subprocess.Popen(victim_argv, **where)
    pid = victim.pid
    try:
        if unprivileged and os.geteuid() == 0:  # runuser's child is the sleep
            for _ in range(100):
                found = subprocess.run(["pgrep", "-P", str(victim.pid)], capture_output=True, text=True).stdout.split()
                if found:
                    pid = int(found[0])
                    break
                time.sleep(0.02)
        if unprivileged:
            argv, where = as_user(["attacks", "procmem", pid])
            outside = run(argv, **where)
            argv, where = as_user(["redirect", "--sealed", "--", "attacks", "procmem", pid])
            inside = run(argv, **where)
        else:
            outside = run([attacks, "procmem", pid])
            inside = run(REDIRECT + ["--sealed", "--", attacks, "procmem", pid])
        assert _values(outside.stdout) == {"open": 0}, outside.stdout + outside.stderr  # the attack works outside
        assert _values(inside.stdout) == {"open": -13}, inside.stdout + inside.stderr  # EACCES
    finally:
        if pid != victim.pid:
            try:
                os.kill(pid, signal.SIGKILL)  # runuser's child
            except ProcessLookupError:
                pass
        victim.kill()
        victim.wait(10)


def test_socket_bound_before_redirect_listens_where_the_rule_says(sockdir, background):
    """A TCP socket bound by the caller, inherited, and put to listen by the
    program at an address an in rule matches: the rule's socket, not TCP."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        bound.set_inheritable(True)
        code = (f"import socket, sys; s = socket.socket(fileno={bound.fileno()}); s.listen(); "
                "print('listening', flush=True); sys.stdin.readline()")
        sock = sockdir / "inherited.sock"
        server = background(redirect(f"in,port={port},path={sock}") + [sys.executable, "-c", code],
                            interactive=True, pass_fds=[bound.fileno()])
        server.wait_for_line("listening")
    assert not [line for line in tcp_listening(port) if " 0A " in line]
    assert sock.is_socket()
    server.send_line()
    assert server.wait() == 0



# ---- from the second adversarial pass -------------------------------------------------------

def _ephemeral_port() -> int:
    """A free port inside ip_local_port_range: the ports the kernel itself hands out."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = map(int, f.read().split())
    for _ in range(100):
        port = free_port()
        if low <= port <= high:
            return port
    raise AssertionError("no free port in ip_local_port_range")


def _steered_port_stays_off_the_network(attacks, port: int, kind: str, options: list[str]) -> None:
    """The portrange attack under these redirect options: nothing may sit on `port`."""
    argv = REDIRECT + options + ["--", str(attacks), "portrange", kind, str(port)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["range", "0"]
        assert proc.stdout.readline().split() == ["ready", "0"]
        listening = tcp_listening(port, program_of=proc.pid)
    finally:
        out, err = proc.communicate("\n", timeout=30)
    assert not listening, err


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_port_the_kernel_would_choose_is_never_a_rules(attacks, sockdir, kind):
    """IP_LOCAL_PORT_RANGE would make the kernel pick a port an in rule names,
    for a listen without bind or a UDP bind to port 0: the supervisor picks
    the port instead, never a rule's."""
    port = _ephemeral_port()
    _steered_port_stays_off_the_network(attacks, port, kind, ["-v", "-r", f"in,{kind},port={port},path={sockdir}/%p.sock"])


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw socket needs CAP_NET_RAW: run as root")
def test_sealed_raw_ipv6_with_unspec_family_sends_nothing(attacks, receiver):
    port = free_port()
    counter = receiver("udp6", port)
    outside = _values(run([attacks, "raw6", port, 5]).stdout)
    assert outside == {"socket": 0, "sent": 5}  # the attack works outside
    time.sleep(0.3)
    reached_outside = counter.count
    result = run(REDIRECT + ["--sealed", "--", attacks, "raw6", port, 20])
    assert _values(result.stdout) == {"socket": 0, "sent": 0}, result.stdout + result.stderr
    time.sleep(0.3)
    assert reached_outside == 5 and counter.close() == 5


def test_one_send_copies_little_into_the_supervisor(attacks, sockdir):
    port = free_port()
    result = run(redirect(f"out,udp,port={port},path={sockdir}/nobody.sock", verbose=0)
                 + [attacks, "bigmmsg", port], timeout=60)
    got = _values(result.stdout)
    assert got["sendmmsg"] == -90, result.stdout + result.stderr  # EMSGSIZE: too big for UDP, as the kernel says
    assert 0 < got["supervisor-peak-kb"] < 200 * 1024  # 1024 x 4 MiB asked: 4 GiB were copied before


@pytest.mark.skipif(os.geteuid() != 0, reason="counting the supervisor's fds needs root (it is not dumpable)")
def test_received_pidfds_do_not_pile_up_in_the_supervisor(attacks, sockdir):
    port, path = free_port(), sockdir / "p.sock"
    result = run(redirect(f"in,udp,port={port},path={path}", verbose=0) + [attacks, "pidfds", port, path, 300],
                 timeout=60)
    got = _values(result.stdout)
    assert got["received"] == 300, result.stdout + result.stderr
    assert got["fds-after"] - got["fds-before"] < 10


def test_reply_to_a_shown_sender_never_leaves_on_udp(attacks, sockdir):
    """With only an in rule, a server answers the sender it was shown from
    fresh sockets while a thread flips the family: nothing reaches whoever
    holds that UDP port."""
    port, path = free_port(), sockdir / "srv.sock"
    proc = subprocess.Popen(redirect(f"in,udp,port={port},path={path}", verbose=0)
                            + [str(attacks), "replyflip", str(port), "1000"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counter = None
    try:
        assert proc.stdout.readline().split() == ["ready", "0"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.bind(str(sockdir / "client.sock"))
            for _ in range(100):
                if path.is_socket():
                    break
                time.sleep(0.02)
            client.sendto(b"hi", str(path))
            shown = int(proc.stdout.readline().split()[1])
            counter = Receiver("udp", shown)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "ok" in out, out + err
    time.sleep(0.3)
    assert counter.close() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root supervisor and a program that drops privileges")
def test_root_supervisor_sends_with_the_programs_credentials(attacks, sockdir):
    sockdir.chmod(0o755)
    path = sockdir / "creds.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        path.chmod(0o666)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        server.settimeout(10)
        result = run(REDIRECT + ["--sealed", "--", attacks, "creds", path], timeout=30)
        data, ancillary, _, _ = server.recvmsg(64, 64)
        server.setblocking(False)
        try:
            server.recv(64)
            second = True
        except BlockingIOError:
            second = False
    assert _values(result.stdout) == {"plain": 5, "forged": -1}, result.stdout + result.stderr  # EPERM
    assert data == b"plain" and not second
    (_, _, creds), = ancillary
    _, uid, gid = struct.unpack("=iII", creds)
    assert (uid, gid) == (65534, 65534)



# ---- from the third adversarial pass --------------------------------------------------------

def test_port_the_kernel_would_choose_at_a_send_is_never_a_rules(attacks, receiver, sockdir):
    port, sink = _ephemeral_port(), free_port()
    counter = receiver("udp", sink)
    rule = f"in,udp,port={port},path={sockdir}/%p.sock"
    proc = subprocess.Popen(redirect(rule) + [str(attacks), "portrange", "udp-send", str(port), str(sink)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["range", "0"]
        assert proc.stdout.readline().split() == ["ready", "0"]  # sent, from another port
        listening = tcp_listening(port, program_of=proc.pid)
    finally:
        out, err = proc.communicate("\n", timeout=30)
    assert not listening, err
    time.sleep(0.2)
    assert counter.close() == 1


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_port_the_kernel_would_choose_sealed_with_an_ignore_rule(attacks, sockdir, kind):
    """Sealed, with a rule naming the port and a catch-all ignore rule after it."""
    port = _ephemeral_port()
    _steered_port_stays_off_the_network(attacks, port, kind, [
        "--sealed", "-r", f"in,{kind},port={port},path={sockdir}/%p.sock", "-r", f"in,{kind},ignore"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root supervisor: run as root")
def test_stale_file_check_never_follows_the_programs_symlinks(sockdir):
    """A program (dropped to nobody) points a rule's directory at a folder of
    root's holding a dead socket: the supervisor must not remove it."""
    sockdir.chmod(0o755)
    public, vault = sockdir / "pub", sockdir / "vault"
    public.mkdir(mode=0o777)
    public.chmod(0o777)
    vault.mkdir(mode=0o700)
    port = free_port()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(vault / f"{port}.sock"))  # closed at once: a stale socket file
    code = (f"import os, socket; os.setgroups([]); os.setgid(65534); os.setuid(65534); "
            f"os.symlink('{vault}', '{public}/d'); s = socket.socket()\n"
            f"try: s.bind(('127.0.0.1', {port})); print('bound')\nexcept OSError as e: print(e.errno)")
    result = run(redirect(f"in,port={port},path={public}/d/%p.sock", verbose=0) + [sys.executable, "-c", code])
    assert result.stdout.split() == ["13"], result.stdout + result.stderr  # EACCES, as for the program itself
    assert (vault / f"{port}.sock").is_socket()


class _UnixSink(_Counter):
    """A root-only Unix datagram socket (0600 in a 0700 folder) counting what
    arrives: nobody may send to it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        path.chmod(0o600)
        super().__init__(sock)

    def _arrived(self) -> bool:
        return bool(self.sock.recv(64))


@pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root supervisor and a program that drops to nobody")
def test_answers_never_follow_a_sender_name_the_program_re_pointed(attacks, sockdir):
    """Answers to a shown sender go with the supervisor's rights (a server may
    answer whoever sent to it, after dropping privileges too); the program
    (now nobody) swaps its own sender socket's name for a symlink to a
    root-only socket and answers: nothing may arrive there (found by an
    adversarial pass: 200 of 200 arrived)."""
    sockdir.chmod(0o755)
    mine = sockdir / "nobody"
    mine.mkdir()
    os.chown(mine, 65534, 65534)
    sink = _UnixSink(sockdir / "secret" / "root.sock")
    port, server = free_port(), sockdir / "server.sock"
    try:
        result = run(redirect(f"in,udp,port={port},path={server},mode=0666", verbose=0)
                     + [attacks, "reply-symlink", port, server, mine, sink_path(sockdir), 50])
    finally:
        arrived = sink.close()
    assert "sent" in _values(result.stdout), result.stdout + result.stderr
    assert arrived == 0, result.stdout + result.stderr


def sink_path(sockdir: Path) -> str:
    return str(sockdir / "secret" / "root.sock")


@pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root supervisor and a program that drops to nobody")
def test_an_out_rule_is_followed_with_the_programs_rights(attacks, sockdir):
    """An out rule's socket is reached as the program: one that dropped to
    nobody cannot send to a root-only socket through a rule (found by the same
    pass: the rule's destination was taken for an answer, sent as root)."""
    sockdir.chmod(0o755)
    sink = _UnixSink(sockdir / "secret" / "root.sock")
    port = free_port()
    try:
        result = run(redirect(f"out,udp,port={port},path={sink_path(sockdir)}", verbose=0)
                     + [attacks, "drop-send", port, 20])
    finally:
        arrived = sink.close()
    assert arrived == 0, result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root supervisor and a program that drops to nobody")
def test_a_swapped_directory_never_gets_another_file_removed(attacks, sockdir):
    """The program (nobody) may rename the directory its socket file is in:
    it swaps it with a symlink to a root folder while it binds and closes
    again and again. The supervisor must never record, and later remove, the
    file of the same name there (found by the same pass: 6 of 6 runs removed it)."""
    sockdir.chmod(0o755)
    mine, victims = sockdir / "nobody", sockdir / "root"
    mine.mkdir()
    os.chown(mine, 65534, 65534)
    victims.mkdir()
    victim = victims / "app.sock"
    victim.write_text("root's\n")
    port = free_port()
    result = run(redirect(f"in,port={port},path={mine}/d/app.sock", verbose=0)
                 + [attacks, "dirswap", port, mine, victims, 1500], timeout=120)
    assert int(_values(result.stdout).get("bound", 0)) > 0, result.stdout + result.stderr
    assert victim.read_text() == "root's\n"


@pytest.fixture(scope="module")
def edge():
    yield from compiled("edge", "-static")


def test_buffers_cut_by_an_unmapped_page_fault_as_on_a_real_socket(edge, sockdir):
    """bind, connect, setsockopt and sendmsg with a buffer that runs into an
    unmapped (PROT_NONE) page: the kernel's copy faults, EFAULT. The
    supervisor must read the same way, never judge the mapped part as the
    whole (a cut address read as EINVAL, an iovec array as an internal
    error), nor read through the protection (/proc/PID/mem does: the cut
    bind was converted)."""
    port = free_port()
    rules = redirect(f"in,port={port},path={sockdir}/in.sock", f"out,udp,port={port},path={sockdir}/out.sock",
                     f"out,port={port},path={sockdir}/out2.sock")
    native = run([edge, port])
    assert native.returncode == 0, native.stderr
    assert native.stdout.splitlines()[:4] == ["bind-cut EFAULT", "connect-cut EFAULT", "setsockopt-cut EFAULT",
                                              "sendmsg-iov-cut EFAULT"], native.stdout
    redirected = run(rules + [edge, port])
    assert redirected.stdout == native.stdout, redirected.stdout + redirected.stderr
    assert "internal error" not in redirected.stderr, redirected.stderr


ACCEPT_PROBE = [sys.executable, str(Path(__file__).parent / "programs" / "acceptprobe.py")]


def test_flipping_o_nonblock_never_blocks_the_supervisor_in_an_accept(sockdir):
    """O_NONBLOCK is the program's to flip at any moment (fcntl is not
    trapped): an accept the supervisor makes while the flag reads clear,
    with nothing waiting, would block it, and with it every trapped call of
    the program until a client came. The main thread's calls go on."""
    port, sock = free_port(), sockdir / "t.sock"
    result = run(redirect(f"in,port={port},path={sock}", verbose=0) + ACCEPT_PROBE + ["toggle", port], timeout=30)
    assert result.returncode == 0 and "alive" in result.stdout, result.stdout + result.stderr


def test_an_accept_on_a_listener_shut_down_ends(sockdir):
    """shutdown() wakes a thread blocked in accept (servers stop that way):
    EINVAL, as on a TCP listener. A Unix listener shut down polls readable
    but its accept says EAGAIN: the supervisor spun, the accept never ended."""
    port, sock = free_port(), sockdir / "s.sock"
    result = run(redirect(f"in,port={port},path={sock}", verbose=0) + ACCEPT_PROBE + ["shutdown", port], timeout=20)
    assert result.stdout.split() == ["listening", "einval", "einval"], result.stdout + result.stderr


@pytest.mark.parametrize("mode, said", [("emfile", "emfile"), ("badflags", "einval")])
def test_an_accept_that_fails_takes_no_connection(sockdir, background, mode, said):
    """A full fd table (EMFILE) and a flag accept4 does not know (EINVAL)
    fail the call as the kernel does, and the connection is still there for
    the next accept: the client gets its answer."""
    port, sock = free_port(), sockdir / "a.sock"
    server = background(redirect(f"in,port={port},path={sock}", verbose=0) + ACCEPT_PROBE + [mode, port])
    server.wait_for_line("^listening$")
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(sock))
        client.sendall(b"hello")
        assert server.wait_for_line(r"^(emfile|einval|accepted.*)$")[0] == said, server.output
        assert server.wait_for_line(r"^got (.*)$")[1] == "hello", server.output


def test_an_accepted_connection_gets_the_lowest_free_fd(sockdir, background):
    """accept's fd is the lowest free number, as the kernel gives it (the
    ptrace backend passes the connection in through a socket pair the
    thread makes for the moment, whose fds were lower)."""
    port, sock = free_port(), sockdir / "l.sock"
    server = background(redirect(f"in,port={port},path={sock}", verbose=0) + ACCEPT_PROBE + ["lowest", port])
    server.wait_for_line("^listening$")
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(sock))
        free, accepted = server.wait_for_line(r"^lowest (\d+) (\d+)$").groups()
    assert accepted == free, server.output


@pytest.fixture(scope="module")
def lingerprobe():
    yield from compiled("lingerprobe", "-static", "-pthread")


LINGER_ATTEMPTS = 2000  # a supervisor that duplicated the fd stalled within 4-410 attempts


def test_a_lingering_socket_closed_during_its_accept_never_stalls_the_supervisor(lingerprobe, sockdir):
    """accept() of a socket that is no listener while another thread closes
    it: a supervisor that holds the file at that moment (a duplicate taken to
    see what it is) makes the last close itself, and for a TCP socket with
    SO_LINGER and unsent data its peer never reads, that close waits an hour,
    and every trapped call of the program with it. A converted listener makes
    the supervisor look at every accept; after each race the program's next
    trapped call is answered (tests/programs/lingerprobe.c)."""
    port, sock = free_port(), sockdir / "l.sock"
    result = run(redirect(f"in,port={port},path={sock}", verbose=0) + [lingerprobe, port, LINGER_ATTEMPTS],
                 timeout=60)
    tail = "\n".join(result.stdout.splitlines()[-3:])
    assert result.returncode == 0 and f"alive {LINGER_ATTEMPTS}" in result.stdout, tail + "\n" + result.stderr
