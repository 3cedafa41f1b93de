"""The Python API and the pytest plugin, used as a test suite would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, curl_unix, free_port, run as run_command, tcp_listening

from redirect import Rule, RuleError, rule, run, spawn


def test_rules_from_text_and_keywords():
    assert rule(direction="in", port=8080, path="/run/a,b.sock", mode=0o660) == \
        Rule.parse(r"in,port=8080,path=/run/a\,b.sock,mode=0660")
    assert str(rule(direction="out", type="udp", port=(53, 54), reject="EPERM")) == "out,udp,port=53-54,reject=EPERM"
    with pytest.raises(RuleError) as err:
        Rule.parse("in,prot=8080,path=/x")
    assert "^" in str(err.value) and "did you mean 'port'" in str(err.value)
    with pytest.raises(RuleError):
        spawn(["true"], rules=["in,path=relative/%q"])  # checked before anything starts


def test_spawn_serves_and_cleans_up(bins, sockdir):
    sock, port = sockdir / "api.sock", free_port()
    with spawn([bins / "go-http-server", "-addr", f":{port}"], rules=[rule(direction="in", port=port, path=sock)],
               stdout=subprocess.PIPE, text=True) as proc:
        proc.wait_for_socket(sock, timeout=10)
        assert curl_unix(sock).startswith("hello from go-server remote=127.0.0.1:")
        program = proc.program_pid
        assert program and program != proc.pid and tcp_listening(port) == []
    assert proc.returncode == 0                      # SIGTERM reached the program, which shut down
    assert not sock.exists()
    assert not os.path.exists(f"/proc/{program}")


def test_cleanup_when_the_test_fails_or_redirect_is_killed(bins, sockdir):
    sock, port = sockdir / "gone.sock", free_port()
    with pytest.raises(RuntimeError):
        with spawn([bins / "tcp-server-glibc", "127.0.0.1", str(port)], rules=[f"in,port={port},path={sock}"],
                   stdout=subprocess.DEVNULL) as proc:
            proc.wait_for_socket(sock)
            raise RuntimeError("the test failed")
    assert proc.returncode is not None and not sock.exists()
    # redirect itself killed: the program dies with it, the stale file is removed by stop().
    proc = spawn([bins / "tcp-server-glibc", "127.0.0.1", str(port)], rules=[f"in,port={port},path={sock}"],
                 stdout=subprocess.DEVNULL)
    proc.wait_for_socket(sock)
    program = proc.program_pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sock.exists()                              # nobody cleaned up yet
    proc.stop()
    assert not sock.exists()
    for _ in range(100):
        if not os.path.exists(f"/proc/{program}"):
            break
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{program}")


def test_run_is_like_subprocess_run(bins, sockdir):
    result = run(["sh", "-c", "echo out; echo err >&2; exit 3"], [f"in,path={sockdir}/%p.sock"],
                 capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError):
        run(["false"], ["in,path=/run/x.sock"], check=True)
    with pytest.raises(subprocess.TimeoutExpired):
        run(["sleep", "10"], ["in,path=/run/x.sock"], timeout=0.5)
    port = free_port()
    result = run([bins / "go-http-client", f"http://127.0.0.1:{port}/"], sealed=True, capture_output=True, text=True)
    assert result.returncode == 1 and "network is unreachable" in result.stderr


def test_api_is_shaped_like_subprocess(bins, sockdir, tmp_path):
    """A string is one program (or a shell command with shell=True); a
    missing or non-executable program raises as subprocess does; a program
    killed by signal N gives -N; a typo is a TypeError naming it; redirect's
    log goes to `log`, not into the program's captured stderr."""
    rules = [f"in,path={sockdir}/%p.sock"]
    assert run("true", rules).returncode == 0
    shell = run("echo $((6 * 7)) from a shell", rules, shell=True, capture_output=True, text=True)
    assert (shell.returncode, shell.stdout) == (0, "42 from a shell\n"), shell
    with pytest.raises(FileNotFoundError) as missing:
        run(["no-such-program-here"], rules)
    assert missing.value.filename == "no-such-program-here"
    with pytest.raises(FileNotFoundError):
        spawn(str(tmp_path / "absent"), rules)
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        run([script], rules)
    killed = run(["sh", "-c", "kill -TERM $$"], rules)
    assert killed.returncode == -signal.SIGTERM, killed
    with pytest.raises(TypeError, match="'sealedd'"):
        run(["true"], rules, sealedd=True)
    log = tmp_path / "redirect.log"
    with open(log, "w") as out:
        quiet = run(["sh", "-c", "echo to-stderr >&2"], rules, verbose=1, log=out, capture_output=True, text=True)
    assert quiet.stderr == "to-stderr\n", quiet.stderr
    assert "redirect: backend:" in log.read_text()


def test_spawn_knows_the_program_and_why_redirect_stopped(bins, sockdir):
    """program_pid is set when spawn() returns; when redirect stops before
    the socket appears, the exception carries its last log lines."""
    sock, port = sockdir / "s.sock", free_port()
    with spawn([bins / "tcp-server-glibc", "127.0.0.1", str(port)], [f"in,port={port},path={sock}"],
               stdout=subprocess.DEVNULL) as proc:
        assert proc.program_pid and os.path.exists(f"/proc/{proc.program_pid}")
        proc.wait_for_socket(sock)
    bad = sockdir / "no" / "such" / "dir" / "x.sock"
    with spawn([bins / "tcp-server-glibc", "127.0.0.1", str(port)], [f"in,port={port},path={bad}"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, log=open(os.devnull, "w")) as proc:
        with pytest.raises(ChildProcessError, match="its directory does not exist"):
            proc.wait_for_socket(bad, timeout=10)


XDIST_TESTS = '''
import os, pytest

@pytest.mark.parametrize("worker_test", range(8))
def test_same_port_everywhere(redirected_server, worker_test):
    server = redirected_server([os.environ["GO_SERVER"], "-addr", ":8080"], ports=[8080])
    for _ in range(3):
        reply = server.http().get("/")
        assert reply.status_code == 200 and reply.text.startswith("hello from go-server remote=127.0.0.1:")
'''


def test_pytest_plugin_under_xdist(bins, tmp_path):
    """8 tests in 8 xdist workers, each with the static Go server on "port
    8080" at once: no clash, no TCP port, nothing left behind."""
    (tmp_path / "test_parallel.py").write_text(XDIST_TESTS)
    before = {name for name in os.listdir("/tmp") if name.startswith("rd-pytest-")}  # the plugin's folders
    env = dict(os.environ, GO_SERVER=str(bins / "go-http-server"), PYTHONPATH=str(REPO))
    # The plugin comes in through the package's pytest11 entry point alone.
    result = run_command([sys.executable, "-m", "pytest", "-q", "-n", "8", "-p", "no:cacheprovider",
                          tmp_path / "test_parallel.py"],
                         timeout=180, cwd=tmp_path, env=env)
    assert "8 passed" in result.stdout, result.stdout + result.stderr
    assert tcp_listening(8080) == []
    assert {name for name in os.listdir("/tmp") if name.startswith("rd-pytest-")} <= before


def test_stop_is_quick_for_a_shell_wrapper_and_parent_death_stops_everything(bins, sockdir):
    port, sock = free_port(), sockdir / "sh.sock"
    proc = spawn(["sh", "-c", f"{bins}/tcp-server-glibc 127.0.0.1 {port}; echo done"],
                 rules=[f"in,port={port},path={sock}"], stdout=subprocess.DEVNULL)
    proc.wait_for_socket(sock)
    start = time.monotonic()
    proc.stop()
    assert time.monotonic() - start < 3 and proc.returncode != -signal.SIGKILL
    assert not sock.exists()
    # The test process killed outright: the supervisor and its program go too.
    code = ("import sys, time\nsys.path.insert(0, sys.argv[1])\nfrom redirect import spawn\n"
            "p = spawn([sys.argv[2], '127.0.0.1', sys.argv[3]], rules=['in,port=' + sys.argv[3] + ',path=' + sys.argv[4]], stdout=-3)\n"
            "p.wait_for_socket(sys.argv[4]); print(p.pid, p.program_pid, flush=True); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, REPO, bins / "tcp-server-glibc", str(port), sock],
                              stdout=subprocess.PIPE, text=True)
    supervisor, program = map(int, parent.stdout.readline().split())
    parent.kill()
    parent.wait()
    for _ in range(250):
        if not os.path.exists(f"/proc/{supervisor}") and not os.path.exists(f"/proc/{program}") and not sock.exists():
            break
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{program}") and not sock.exists()
