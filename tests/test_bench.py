"""The benchmark stays runnable (its numbers are not judged here: no timed assertions)."""
from __future__ import annotations

import re
import sys

from helpers import REPO, curl_unix, free_port, nginx_conf, run, wait_for_socket


def test_bench_quick_run_prints_every_measurement(bins):
    result = run([sys.executable, REPO / "bench" / "run.py", "--quick"], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("(a) syscall-loop", "(b) one trapped getsockname", "(c) Go hello keep-alive",
                "(c) Go hello new conn", "(d) /bin/true", "(e) UDP round trips", "(f) nginx keep-alive, Go client",
                "(f) nginx new conn/request, wrk", "(g) caddy keep-alive, Go client", "(g) caddy new conn/request, wrk",
                "(h) floor: go new conn", "(h) floor: nginx new conn", "(h) nginx new conn/request, accept4 handled in C",
                "(h) floor: caddy new conn", "(h) go on TCP, new conn/request, its 5 calls answered CONTINUE",
                "(h) caddy on TCP, new conn/request, the sound design's steps", "(h) floor: UDP round trips",
                "trapped calls"):
        assert row in result.stdout, result.stdout
    # The trapped calls are counted for every workload under both backends.
    for kind in ("go", "nginx", "caddy", "udp"):
        for backend in ("notify", "ptrace"):
            assert re.search(rf"^  {kind} +{backend}: ", result.stdout, re.M), result.stdout
    # Under notify C makes the calls of every new connection (the compiled
    # part is built), under ptrace none.
    for kind in ("go", "nginx", "caddy"):
        for backend in ("notify", "ptrace"):
            found = re.search(rf"^  {kind} +{backend}: .*new connections ([\d.]+) per request, ([\d.]+) of them "
                              "compiled", result.stdout, re.M)
            assert found, result.stdout
            trapped, compiled = float(found[1]), float(found[2])
            assert (compiled >= 0.95 * trapped > 0) if backend == "notify" else compiled == 0, found[0]
    # (h) traps what notify traps (the bench warns when FLOOR_TRAPS is out of date).
    assert "FLOOR_TRAPS is out of date" not in result.stdout, result.stdout


def test_null_supervisor_traps_the_calls_and_does_the_accept_work(bins, sockdir, background):
    """(h)'s floor is only a floor if it traps: nginx on a Unix socket under
    null-supervisor --accept shows its clients the IPv4 peer the supervisor
    wrote (natively it says unix:), and every accept is counted as answered."""
    sock = sockdir / "n.sock"
    (sockdir / "nginx.conf").write_text(nginx_conf(sockdir, f"""
    server {{ listen unix:{sock}; location / {{ return 200 "peer=$remote_addr\\n"; }} }}""", user="root"))
    server = background([bins / "null-supervisor-glibc", "--accept", "accept4", "--",
                         "/usr/sbin/nginx", "-c", sockdir / "nginx.conf", "-p", sockdir])
    wait_for_socket(sock, proc=server)
    for _ in range(5):  # a new connection each
        assert curl_unix(sock) == "peer=127.0.0.1\n", server.output
    server.stop()
    answered = int(re.search(r"null-supervisor: (\d+) calls answered", server.output)[1])
    assert answered >= 5, server.output


def test_null_supervisor_sound_makes_go_s_five_calls_on_tcp(bins, background):
    """(h)'s floor of the sound design for Go: on TCP the Go server makes
    all five calls of a new connection (on a Unix socket it makes two), and
    under --sound its accepts are made by the supervisor, which writes the
    IPv4 peer: every request is answered and five calls are counted for
    each connection."""
    port, n = free_port(), 40
    server = background([bins / "null-supervisor-glibc", "--sound", "accept4", "getsockname", "setsockopt", "--",
                         bins / "go-http-server", "-quiet", "-addr", f"127.0.0.1:{port}"])
    server.wait_for_line(r"^listening ")
    load = run([bins / "go-http-client", "-n", n, "-c", 2, f"http://127.0.0.1:{port}/"], timeout=60)
    assert load.returncode == 0 and f"ok={n} fail=0" in load.stdout, load.stdout + load.stderr
    server.stop()
    answered = int(re.search(r"null-supervisor: (\d+) calls answered", server.output)[1])
    assert answered >= 5 * n, server.output
