"""Every code block of the docs is a test (issue 12, item 8).

Shell blocks run (bash; servers in the background, ended by pid) and what the
docs say happens is checked: the socket appears and serves, shown output
(`$ COMMAND` and the lines after it) matches. systemd units pass
`systemd-analyze verify`, and their ExecStart runs as the unit would have it
run (user, groups, runtime directory, passed sockets, NOTIFY_SOCKET). The
compose file is parsed and its backend's command run. Every rule of
docs/rules.md passes `redirect -c`. The Python and pytest examples run.

CHECKS maps every block (doc_blocks: file and key) to the tests that check it;
test_every_block_has_a_test fails for a block that has none. Blocks are taken
from the docs as they stand; the only changes made to them are
doc_blocks.SUBSTITUTIONS. Commands run in a working directory where `./server`
and the other programs the docs name are the fixture programs (PROGRAMS), with
`redirect` on PATH installed by README's own pipx line (conftest.readme_install).
"""
from __future__ import annotations

import fcntl
import grp
import inspect
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers import (REDIRECT, REPO, Background, unix_socket_ready, curl_unix, free_port, nginx_conf, redirect,
                      run, system_user, tcp_listening, wait_for_socket)
from doc_blocks import (PROGRAMS, Block, all_blocks, before_session, block, commands, rules_of, session, substitute,
                        unit_sections)

# ---- which test checks which block ------------------------------------------------------------

# (file, key) -> the tests that check the block: a test of this module, or
# another module's test ("tests/FILE::NAME") that runs the same commands.
CHECKS: dict[tuple[str, str], tuple[str, ...]] = {
    ("README.md", "mkdir -p /run/app"): ("test_readme_first_example",),
    ("README.md", "bash scripts/demo.sh"): ("test_readme_demo", "test_readme_test_command"),
    ("README.md", "apt install pipx libseccomp2 gcc python3-dev"): (
        "test_readme_install", "tests/test_unprivileged.py::test_pipx_install_serves_a_service_user"),
    ("README.md", "redirect [options] -r RULE [-r RULE ...] [-f FILE ...] [--] PROGRAM [ARGS...]"): (
        "test_readme_synopsis",),
    ("README.md", "# a server: TCP port 8080 becomes a socket file"): ("test_readme_examples",),
    # The full bench takes minutes and --json is a full run too: their options
    # are checked here; the quick run is test_bench's.
    ("docs/performance.md", "python3 bench/run.py"): (
        "test_bench_commands", "tests/test_bench.py::test_bench_quick_run_prints_every_measurement"),
    ("docs/recipes.md", "usermod -aG www-data app"): ("test_recipe_nginx",),
    ("docs/recipes.md", "upstream app {"): ("test_recipe_nginx", "test_docker_compose"),
    ("docs/recipes.md", "[Unit]"): ("test_units_verify", "test_unit_runs"),
    ("docs/recipes.md", "services:"): ("test_docker_compose",),
    ("docs/recipes.md", "for i in 1 2 3 4; do"): ("test_recipe_parallel_tests",),
    ("docs/rules.md", "redirect -r 'in,tcp,port=8080,path=/run/app/http.sock' -- ./server -addr :8080"): (
        "test_rules_intro",),
    ("docs/rules.md", "in,tcp,addr=127.0.0.1,port=8080,path=/run/app/http.sock"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,path=/run/web.sock"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "udp,port=53,path=/run/dns.sock"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,addr=127.0.0.1,path=/run/local.sock"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,port=8080,path=/run/app.sock"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "from-unix=/var/run/mysqld/mysqld.sock,path=/srv/db/mysqld.sock"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,tcp,port=8080,path=/run/app/http.sock"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,port=8080,abstract=myapp-%p"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,tcp,port=80,systemd=http"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,port=80,reject=EADDRINUSE"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,addr=::,port=8080,blackhole"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,addr=127.0.0.1,port=9090,ignore"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,port=8080,path=/run/app/http.sock,noremove"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,port=8080,path=/run/app/http.sock,mode=0660"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,port=8080,path=/run/app/http.sock,mode=0660,group=www-data"): ("test_rule_block_is_valid",),
    ("docs/rules.md", "in,path=/run/app/%t-%a-%p.sock"): (
        "test_rule_block_is_valid", "test_placeholders_make_the_paths_shown"),
    ("docs/rules.md", "# rules.txt: a web app behind nginx, its metrics left on TCP"): (
        "test_rule_block_is_valid", "test_rules_intro"),
    ("docs/rules.md", "$ redirect -c -r 'in,port=80x,path=/a'"): ("test_rule_error_messages",),
    ("docs/systemd.md", "[Unit] … Description=app's sockets"): ("test_units_verify", "test_unit_runs"),
    ("docs/systemd.md", "[Socket]"): ("test_units_verify", "test_unit_runs"),
    ("docs/systemd.md", "[Unit] … Description=app on passed sockets"): ("test_units_verify", "test_unit_runs"),
    ("docs/systemd.md", "mkdir -p /run/app"): ("test_systemd_try_it",),
    ("docs/systemd.md", "[Service]"): ("test_units_verify", "test_unit_runs"),
    ("docs/systemd.md", "# /etc/systemd/system/app.service"): ("test_units_verify", "test_unit_runs"),
    ("docs/testing.md", "import tempfile"): ("test_python_api",),
    ("docs/testing.md", "def test_health(redirected_server):"): ("test_pytest_examples",),
    ("docs/testing.md", '@pytest.mark.parametrize("n", range(8))'): ("test_pytest_examples",),
    ("docs/testing.md", "$ redirect --sealed -- ./go-http-client http://127.0.0.1:9/"): ("test_sealed_example",),
}

# The unit blocks: (file, key) -> (scenario, the unit's file name). A scenario's
# units are verified together, and its service run.
UNITS = {
    ("docs/recipes.md", "[Unit]"): ("recipes", "app.service"),
    ("docs/systemd.md", "[Unit] … Description=app's sockets"): ("socket-activation", "app.socket"),
    ("docs/systemd.md", "[Socket]"): ("socket-activation", "app-metrics.socket"),
    ("docs/systemd.md", "[Unit] … Description=app on passed sockets"): ("socket-activation", "app.service"),
    ("docs/systemd.md", "[Service]"): ("path-rules", "app.service"),
    ("docs/systemd.md", "# /etc/systemd/system/app.service"): ("notify", "app.service"),
}
# scenario -> the substitutions its units need to run here
SCENARIOS = {
    "recipes": ["/run", "/usr/local/bin", "user app"],
    "socket-activation": ["/run", "/usr/local/bin", "127.0.0.1:9100"],
    "path-rules": ["/run", "/usr/local/bin", "user app"],
    "notify": ["/run", "/usr/local/bin"],
}

APP_USER = "redirect-app"   # the docs' service user `app`


def blocks_for(test: str) -> list[Block]:
    """The blocks CHECKS gives this test, in the docs' order."""
    return [b for b in all_blocks() if test in CHECKS.get((b.file, b.key), ())]


@pytest.mark.one_backend
def test_every_block_has_a_test():
    found = [(b.file, b.key) for b in all_blocks()]
    assert len(found) == len(set(found)), "two blocks with one key"
    assert len(found) > 30  # the extractor finds the docs' blocks at all
    missing = [f"{b.where}: {b.key!r}" for b in all_blocks() if (b.file, b.key) not in CHECKS]
    assert not missing, "code blocks no test covers (add them to CHECKS in tests/test_docs.py):\n" + "\n".join(missing)
    gone = sorted(set(CHECKS) - set(found))
    assert not gone, f"CHECKS names blocks the docs no longer have: {gone}"
    for key, tests in CHECKS.items():
        assert tests, key
        for name in tests:
            if "::" in name:
                path, function = name.split("::")
                assert re.search(rf"^def {function}\(", (REPO / path).read_text(), re.M), f"{key}: no {name}"
            else:
                test = globals().get(name)
                assert name.startswith("test_") and callable(test), f"{key}: no test {name} here"
                assert f'"{name}"' in inspect.getsource(test), f"{name} does not take its blocks by name"
    for test in ("test_units_verify", "test_unit_runs"):
        units = {key for key, tests in CHECKS.items() if test in tests}
        assert units == set(UNITS), f"the unit blocks of CHECKS ({test}) and UNITS differ"
    assert {scenario for scenario, _ in UNITS.values()} == set(SCENARIOS)


# ---- where the docs' commands run ----------------------------------------------------------

@pytest.fixture(scope="session")
def machine(readme_install, bins) -> Path:
    """The docs' machine under a temporary root: README's pipx install in
    usr/local/bin and opt/pipx; there too the service the docs run as
    /usr/local/bin/app (the static Go HTTP server, a copy any user can run);
    tools/ for the other commands the docs name (pytest, of this venv)."""
    for line, result in readme_install.runs.items():
        assert result.returncode == 0, f"README: {line}\n{result.stdout}{result.stderr}"
    root = readme_install.root
    app = root / "usr" / "local" / "bin" / "app"
    shutil.copy(bins / "go-http-server", app)
    app.chmod(0o755)
    (root / "tools").mkdir(mode=0o755)
    (root / "tools" / "pytest").symlink_to(Path(sys.executable).parent / "pytest")
    return root


@pytest.fixture(scope="session")
def app_user() -> pwd.struct_passwd:
    return system_user(APP_USER)


class Place:
    """One test's own machine: `root` stands for /, with run/ (0755, as /run);
    `work` is the working directory (the PROGRAMS); the environment has the
    machine's /usr/local/bin first on PATH and TMPDIR in root. Everything it
    starts is ended by pid, then root is removed."""

    def __init__(self, machine: Path, bins: Path) -> None:
        self.machine = machine
        self.root = Path(tempfile.mkdtemp(prefix="rd-doc-", dir="/tmp"))
        self.root.chmod(0o755)
        (self.root / "run").mkdir(mode=0o755)
        (self.root / "tmp").mkdir()
        self.work = self.root / "work"
        self.work.mkdir(mode=0o755)
        for name, program in PROGRAMS.items():
            (self.work / name).symlink_to(bins / program)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env["PATH"] = f"{machine}/usr/local/bin:{machine}/tools:{os.environ['PATH']}"
        env["TMPDIR"] = str(self.root / "tmp")
        self.env = env
        self.procs: list[Background] = []
        self.jobs: list[int] = []
        self.scripts: list[tuple[Background, list[int]]] = []

    def sub(self, text: str, *names: str, **values) -> str:
        return substitute(text, list(names), root=self.root, machine=self.machine, user=APP_USER, **values)

    def sh(self, command: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """A command run to its end by bash, in the working directory."""
        return run(["bash", "-c", command], timeout=timeout, cwd=kwargs.pop("cwd", self.work),
                   env=kwargs.pop("env", self.env), **kwargs)

    def start(self, argv: list, **kwargs) -> Background:
        kwargs.setdefault("cwd", self.work)
        kwargs.setdefault("env", self.env)
        proc = Background([str(a) for a in argv], **kwargs)
        self.procs.append(proc)
        return proc

    def serve(self, command: str, **kwargs) -> Background:
        """A long-running command (a server): bash execs it, so its pid is the one ended."""
        return self.start(["bash", "-c", f"exec {command}"], **kwargs)

    def script(self, text: str, **kwargs) -> Background:
        """A block that starts jobs with `&`: run whole; bash then prints their
        pids (self.jobs) and waits for them."""
        proc = self.start(["bash", "-c", text + '\necho "jobs: $(jobs -p | tr "\\n" " ")"\nwait\n'], **kwargs)
        jobs = [int(pid) for pid in proc.wait_for_line(r"^jobs: (.*)$", timeout=20).group(1).split()]
        self.scripts.append((proc, jobs))
        self.jobs += jobs
        return proc

    def stop(self) -> None:
        """SIGTERM to each script's jobs, by pid (bash's children: bash has not
        reaped them, so the pids are theirs), then bash ends with its `wait`;
        a job still there after 5 s gets SIGKILL. Then every other process."""
        for bash, jobs in self.scripts:
            for signum in (signal.SIGTERM, signal.SIGKILL):
                for pid in jobs:
                    if bash.proc.poll() is None and _parent_of(pid) == bash.pid:
                        os.kill(pid, signum)
                try:
                    bash.proc.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    pass
        for proc in reversed(self.procs):
            proc.stop()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return int(stat_file.read().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:
        return None


@pytest.fixture
def place(machine, bins):
    where = Place(machine, bins)
    try:
        yield where
    finally:
        try:
            where.stop()
        finally:
            where.remove()


def ls(path: Path) -> str:
    """`ls -l`'s mode, owner and group."""
    st = os.stat(path)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{stat.filemode(st.st_mode)} {owner} {group}"


def socket_of(command: str) -> Path:
    return Path(re.search(r"--unix-socket (\S+)", command).group(1))


def in_private_venv(command: str, scratch: Path) -> list[str]:
    """bash -c command, in a mount namespace where .venv is an overlay: a
    script that runs scripts/setup.sh (which reinstalls the package into .venv
    when redirect/ is newer than the install) leaves the suite's .venv alone."""
    venv = REPO / ".venv"
    upper, work = scratch / "venv-upper", scratch / "venv-work"
    upper.mkdir()
    work.mkdir()
    mount = f"mount -t overlay overlay -o lowerdir={venv},upperdir={upper},workdir={work} {venv}"
    return ["unshare", "--mount", "--propagation", "private", "bash", "-c", f'{mount} && exec bash -c "$0"', command]


HELLO = "hello from go-server remote=127."   # a loopback peer, as redirect shows Unix peers


# ---- README.md -----------------------------------------------------------------------------

def test_readme_first_example(place):
    (doc,) = blocks_for("test_readme_first_example")
    mkdir, server, curl = commands(place.sub(doc.text, "/run"))
    assert place.sh(mkdir).returncode == 0
    proc = place.serve(server)
    wait_for_socket(socket_of(curl), proc=proc)
    result = place.sh(curl)
    assert result.returncode == 0 and result.stdout.startswith(HELLO), result.stdout + result.stderr
    proc.wait_for_line(r"^listening \[::\]:8080$")   # it believes it listens on TCP port 8080
    assert tcp_listening(8080) == []                  # and no TCP port is opened


def test_readme_demo(place):
    (doc,) = blocks_for("test_readme_demo")
    demo = commands(doc.text)[0]
    # in the background: if it hangs, it is ended by pid (and its EXIT trap stops its server)
    proc = place.start(in_private_venv(demo, place.root), cwd=REPO)
    assert proc.wait(300) == 0, proc.output
    lines = proc.output.splitlines()
    assert any(line.startswith(HELLO) for line in lines), proc.output   # fetches a page
    assert "/proc/net/tcp:0" in lines and "/proc/net/tcp6:0" in lines   # no socket on port 8080
    listing = lines.index(next(line for line in lines if line.startswith("$ ls -l ")))
    assert any(line.startswith("srw") for line in lines[listing:]), proc.output   # through a socket file


@pytest.mark.one_backend
def test_readme_test_command(place):
    """scripts/test.sh sets up and runs pytest with its arguments; here it
    lists this module's tests instead of running the suite inside itself."""
    (doc,) = blocks_for("test_readme_test_command")
    test_sh = re.sub(r"\s+#.*$", "", commands(doc.text)[1]) + " --collect-only -q tests/test_docs.py"
    assert shlex.split(test_sh, comments=True) == ["bash", "scripts/test.sh", "--collect-only", "-q",
                                                   "tests/test_docs.py"]   # never the suite inside itself
    proc = place.start(in_private_venv(test_sh, place.root), cwd=REPO)
    assert proc.wait(120) == 0, proc.output
    assert "tests/test_docs.py::test_every_block_has_a_test[notify]" in proc.output.splitlines(), proc.output


@pytest.mark.one_backend
def test_readme_install(readme_install):
    """The block as run by conftest.readme_install: apt, and pipx for units
    and for oneself. tests/test_unprivileged.py runs the units' one as a
    service user."""
    (doc,) = blocks_for("test_readme_install")
    apt, *_ = commands(doc.text)
    for line, result in readme_install.runs.items():
        assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
    for package in shlex.split(apt, comments=True)[2:]:
        status = run(["dpkg-query", "-W", "-f=${Status}", package]).stdout
        assert status == "install ok installed", (package, status)
    for command in (readme_install.units, readme_install.own):
        result = run([command, "-c", "-r", "in,port=8080,path=/run/app/http.sock"])
        assert result.returncode == 0 and "1 rule(s) OK" in result.stderr, (command, result.stderr)
        # the manual page comes along, under the environment's share/
        assert (command.resolve().parent.parent / "share" / "man" / "man1" / "redirect.1").is_file()


@pytest.mark.one_backend
def test_readme_synopsis():
    (doc,) = blocks_for("test_readme_synopsis")
    result = run(REDIRECT + ["-h"], cwd=REPO)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == f"usage: {doc.text}"


def test_readme_examples(place, bins):
    (doc,) = blocks_for("test_readme_examples")
    server, client, per_port, udp_server, udp_client = commands(
        place.sub(doc.text, "/run", "./client URL", address="127.0.0.1:5432"))
    for folder in ("app", "postgresql", "dns"):   # the sockets' directories exist
        (place.root / "run" / folder).mkdir()
    # PostgreSQL's socket: a server listening natively on it (HTTP, for the Go client)
    database = place.root / "run" / "postgresql" / ".s.PGSQL.5432"
    place.start([bins / "go-http-server", "-unix", database])
    servers = [place.serve(server), place.serve(per_port), place.serve(udp_server)]
    for proc, path in zip(servers, ("app/http.sock", "app/8080.sock", "dns/udp.sock")):
        wait_for_socket(place.root / "run" / path, proc=proc)
    wait_for_socket(database)
    assert curl_unix(place.root / "run" / "app" / "http.sock").startswith(HELLO)
    assert curl_unix(place.root / "run" / "app" / "8080.sock").startswith(HELLO)   # %p: one socket per port
    result = place.sh(client)
    assert result.returncode == 0 and result.stdout.startswith("hello from go-server"), result.stdout + result.stderr
    result = place.sh(udp_client)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reply 127.0.0.1:5353 echo:hello" in result.stdout.splitlines(), result.stdout
    assert tcp_listening(8080) == [] and tcp_listening(5353) == []


# ---- docs/performance.md -------------------------------------------------------------------------

@pytest.mark.one_backend
def test_bench_commands():
    """Each command's options are the bench's (its --help; the bench itself is not run here)."""
    (doc,) = blocks_for("test_bench_commands")
    usage = run([sys.executable, REPO / "bench" / "run.py", "--help"], cwd=REPO)
    assert usage.returncode == 0, usage.stderr
    for command in commands(doc.text):
        argv = shlex.split(command, comments=True)
        assert argv[:2] == ["python3", "bench/run.py"] and (REPO / argv[1]).is_file()
        options = " ".join(argv[2:])
        for option in re.findall(r"--[\w-]+(?: [A-Z]+)?", options):
            assert f"[{option}]" in usage.stdout, (option, usage.stdout)


# ---- docs/recipes.md -------------------------------------------------------------------------------

def test_recipe_nginx(place, app_user, unprivileged_user):
    """The three commands as root, with a user of the tests for `app`; then
    real nginx with the recipe's configuration (its `listen 80` converted by
    redirect too: no real port), a request through it reaching the backend."""
    steps, config = blocks_for("test_recipe_nginx")
    usermod, install, backend = commands(place.sub(steps.text, "/run", "/usr/local/bin", "user app"))
    sock = place.root / "run" / "app" / "http.sock"
    # The recipe adds the user to www-data: nobody else may change that meanwhile
    # (the other backend's run of this test), and it is undone afterwards.
    with open(__file__) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["gpasswd", "-d", APP_USER, "www-data"], capture_output=True)
        try:
            assert APP_USER not in grp.getgrnam("www-data").gr_mem
            for command in (usermod, install):
                result = place.sh(command)
                assert result.returncode == 0, (command, result.stdout + result.stderr)
            assert APP_USER in grp.getgrnam("www-data").gr_mem
            assert ls(sock.parent) == f"drwxr-s--- {APP_USER} www-data"
            app = place.serve(backend)
            wait_for_socket(sock, proc=app)
        finally:
            subprocess.run(["gpasswd", "-d", APP_USER, "www-data"], capture_output=True)
    # what the recipe says the socket is: `srw-rw---- app www-data`
    shown = re.search(r"`(srw-rw---- app www-data)`", (REPO / steps.file).read_text()).group(1)
    assert ls(sock) == place.sub(shown, "user app")
    nginx_dir = place.root / "nginx"
    nginx_dir.mkdir(mode=0o755)
    (nginx_dir / "nginx.conf").write_text(nginx_conf(nginx_dir, place.sub(config.text, "/run")))
    front = nginx_dir / "http.sock"
    nginx = place.start(redirect(f"in,port=80,path={front}") + ["nginx", "-e", nginx_dir / "error.log",
                                                                  "-c", nginx_dir / "nginx.conf", "-p", nginx_dir],
                        cwd=REPO)
    wait_for_socket(front, proc=nginx)
    page = run(["curl", "-sS", "--max-time", "10", "--unix-socket", front, "http://app/"], timeout=15)
    errors = (nginx_dir / "error.log").read_text() if (nginx_dir / "error.log").exists() else ""
    assert page.returncode == 0 and page.stdout.startswith(HELLO), page.stdout + page.stderr + errors + nginx.output
    app.wait_for_line(r"^request 127\.")   # the backend saw a loopback peer
    assert "bad-remote-addr" not in app.output
    # Another user (not in www-data) cannot even reach the socket.
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print(e.strerror)\n")
    other = run(["runuser", "-u", unprivileged_user.pw_name, "--", "/usr/bin/python3", "-c", code, sock])
    assert other.stdout.strip() == "Permission denied", other.stdout + other.stderr
    assert tcp_listening(80) == [] and tcp_listening(8080) == []
    # runuser passes SIGTERM on and waits 2 s before it kills: end its child, redirect, first
    with open(f"/proc/{app.pid}/task/{app.pid}/children") as children:
        (child,) = children.read().split()
    os.kill(int(child), signal.SIGTERM)
    assert app.wait(10) == 0, app.output   # the program's graceful shutdown, its status


def test_docker_compose(place):
    """No Docker here: the compose file is parsed and checked, and the
    backend's command run as the backend container would run it (as root,
    with the volume at /run/app)."""
    config, compose = blocks_for("test_docker_compose")
    spec = yaml.safe_load(compose.text)
    backend, nginx = spec["services"]["backend"], spec["services"]["nginx"]
    (volume,) = spec["volumes"]
    assert f"{volume}:/run/app" in backend["volumes"] and f"{volume}:/run/app" in nginx["volumes"]
    assert "ports" not in backend and "expose" not in backend      # the backend publishes no port
    assert nginx["ports"] == ["80:80"] and nginx["image"] == "nginx"
    (mounted,) = [v for v in nginx["volumes"] if not v.startswith(f"{volume}:")]
    assert mounted.endswith(":/etc/nginx/conf.d/default.conf:ro")  # the recipe's nginx configuration
    rule_path = re.search(r"path=([^,\s]+)", backend["command"]).group(1)
    assert rule_path.startswith("/run/app/")                        # in the shared volume
    assert f"server unix:{rule_path};" in config.text               # where nginx connects
    (place.root / "run" / "app").mkdir()                             # the volume
    proc = place.serve(place.sub(backend["command"], "/run", "/app"))
    sock = Path(place.sub(rule_path, "/run"))
    wait_for_socket(sock, proc=proc)
    st = os.stat(sock)
    assert stat.filemode(st.st_mode) == "srw-rw----" and st.st_gid == 101   # the nginx image's group
    assert curl_unix(sock).startswith(HELLO)


def test_recipe_parallel_tests(place):
    (doc,) = blocks_for("test_recipe_parallel_tests")
    proc = place.script(doc.text)
    assert len(place.jobs) == 4
    for i in range(1, 5):
        sock = place.root / "tmp" / f"server-{i}.sock"
        wait_for_socket(sock, proc=proc)
        assert curl_unix(sock).startswith(HELLO)
    # every one of them believes it owns port 8080 (the lines may come just after the sockets)
    deadline = time.monotonic() + 10
    while proc.output.splitlines().count("listening [::]:8080") < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.output.splitlines().count("listening [::]:8080") == 4, proc.output
    assert tcp_listening(8080) == []


# ---- docs/rules.md -------------------------------------------------------------------------------

def test_rules_intro(place):
    intro, rule_file = blocks_for("test_rules_intro")
    server, check = commands(place.sub(intro.text, "/run"))
    (place.root / "run" / "app").mkdir()
    proc = place.serve(server)
    sock = place.root / "run" / "app" / "http.sock"
    wait_for_socket(sock, proc=proc)
    assert curl_unix(sock).startswith(HELLO)
    # rules.txt is the rule file shown further down (a file: no comments after a rule)
    name = re.match(r"# (\S+):", rule_file.text).group(1)
    assert name in check
    (place.work / name).write_text(rule_file.text + "\n")
    result = place.sh(check)
    count = len(rules_of(rule_file.text))
    assert result.returncode == 0 and f"{count} rule(s) OK" in result.stderr, result.stdout + result.stderr
    assert re.findall(r"^Rule #(\d+):", result.stdout, re.M) == [str(n) for n in range(1, count + 1)]


@pytest.mark.one_backend
@pytest.mark.parametrize("doc", blocks_for("test_rule_block_is_valid"), ids=str)
def test_rule_block_is_valid(doc):
    rules = rules_of(doc.text)
    assert rules, doc.text
    result = run(REDIRECT + ["-c", "-p"] + [arg for rule in rules for arg in ("-r", rule)], cwd=REPO)
    assert result.returncode == 0 and f"{len(rules)} rule(s) OK" in result.stderr, result.stdout + result.stderr
    for rule in rules:   # a relative path is made absolute when parsed
        relative = re.search(r"\bpath=([^/][^,]*)", rule)
        if relative:
            assert re.search(rf"^  socket path +{re.escape(f'{REPO}/{relative.group(1)}')}$", result.stdout, re.M), \
                result.stdout


def test_placeholders_make_the_paths_shown(place, bins):
    """Each rule's comment shows the path a bind of TCP 127.0.0.1:8080 gets."""
    (doc,) = blocks_for("test_placeholders_make_the_paths_shown")
    for line in doc.text.splitlines():
        rule, shown = (place.sub(part.strip(), "/run") for part in line.split("#", 1))
        Path(shown).parent.mkdir(parents=True, exist_ok=True)
        proc = place.start(redirect(rule) + [bins / "tcp-server-glibc", "127.0.0.1", "8080"], cwd=REPO)
        proc.wait_for_line(r"^listening 127\.0\.0\.1 8080$")
        wait_for_socket(Path(shown), proc=proc)


@pytest.mark.one_backend
def test_rule_error_messages(place):
    (doc,) = blocks_for("test_rule_error_messages")
    shown = session(doc.text)
    assert len(shown) == 2
    for command, output in shown:
        from_file = re.match(r"redirect: (\S+):(\d+): bad rule: (.*)$", output[0])
        if from_file:   # a rule file whose line LINE is the rule shown
            name, number, rule = from_file.groups()
            assert name in command
            (place.work / name).write_text("\n" * (int(number) - 1) + rule + "\n")
        result = place.sh(command)
        assert result.returncode == 125 and result.stdout == "", result.stdout + result.stderr
        assert result.stderr.splitlines() == output


# ---- docs/systemd.md (and the unit in recipes.md) --------------------------------------------------

SERVICE_KEYS = {"Type", "NotifyAccess", "User", "Group", "SupplementaryGroups", "DynamicUser", "RuntimeDirectory",
                "RuntimeDirectoryMode", "ExecStart", "Restart"}
SOCKET_KEYS = {"ListenStream", "FileDescriptorName", "SocketUser", "SocketGroup", "SocketMode", "DirectoryMode",
               "Service"}
OTHER_KEYS = {"Unit": {"Description", "After", "Before", "Requires"}, "Install": {"WantedBy"},
              "Service": SERVICE_KEYS, "Socket": SOCKET_KEYS}


def scenario_units(scenario: str, test: str) -> dict[str, Block]:
    """The scenario's units (file name -> block), which CHECKS gives the test."""
    units = {}
    for key, (name_of, name) in UNITS.items():
        if name_of == scenario:
            assert test in CHECKS[key], (key, test)
            doc = block(*key)
            # where the doc names the unit's file (a caption line or a comment), it is this one
            lines = (REPO / doc.file).read_text().split("\n")
            named = re.findall(r"/etc/systemd/system/([\w@.-]+)", "\n".join(lines[doc.line - 4:doc.line]))
            assert set(named) <= {name}, (doc.where, named, name)
            units[name] = doc
    return units


@pytest.mark.one_backend
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_units_verify(scenario, machine):
    """systemd-analyze verify: all units of a scenario together, their
    /usr/local/bin programs there (README's install, the Go server as app)."""
    units = scenario_units(scenario, "test_units_verify")
    folder = Path(tempfile.mkdtemp(prefix="rd-units-", dir="/tmp"))
    try:
        for name, doc in units.items():
            text = doc.text
            if "ExecStart=" in text:
                text = substitute(text, ["/usr/local/bin"], machine=machine)
            (folder / name).write_text(text + "\n")
        result = run(["systemd-analyze", "verify", *(folder / name for name in units)])
        assert result.returncode == 0, result.stdout + result.stderr
        about = [line for line in (result.stdout + result.stderr).splitlines()
                 if str(folder) in line or any(name in line for name in units)]
        assert about == [], "\n".join(about)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def free_dynamic_id() -> int:
    """A user and group id in systemd's DynamicUser= range that nobody has."""
    for candidate in range(61184 + os.getpid() % 1000, 65520):
        try:
            pwd.getpwuid(candidate)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(candidate)
        except KeyError:
            return candidate
    raise AssertionError("no free id for DynamicUser=")


def credentials(service: dict[str, str]) -> tuple[list[str], int, int]:
    """setpriv for the unit's User=, Group=, SupplementaryGroups= or DynamicUser=,
    as systemd sets them; and the uid and gid the service gets."""
    extra = [grp.getgrnam(g).gr_gid for g in service.get("SupplementaryGroups", "").split()]
    if service.get("DynamicUser") == "yes":
        uid = gid = free_dynamic_id()
        groups = extra
    elif "User" in service:
        user = pwd.getpwnam(service["User"])
        uid, gid = user.pw_uid, grp.getgrnam(service["Group"]).gr_gid if "Group" in service else user.pw_gid
        groups = os.getgrouplist(user.pw_name, gid) + extra
    else:
        uid, gid, groups = 0, 0, [0] + extra
    ids = ",".join(str(g) for g in dict.fromkeys(groups)) or None
    return (["setpriv", f"--reuid={uid}", f"--regid={gid}",
             f"--groups={ids}" if ids else "--clear-groups", "--"], uid, gid)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_unit_runs(scenario, place, app_user):
    """The service's ExecStart, run as the unit would run it without systemd as
    init: its user and groups (setpriv), its RuntimeDirectory=, the sockets of
    its socket units (systemd-socket-activate, with their names, owner and mode),
    NOTIFY_SOCKET for Type=notify; it serves as the doc says. (Restart= is
    not tried: the program does not fail.)"""
    docs = scenario_units(scenario, "test_unit_runs")
    port = free_port()
    units = {}
    joined = "\n\0\n".join(d.text for d in docs.values())
    texts = place.sub(joined, *SCENARIOS[scenario], port=port).split("\n\0\n")
    for name, text in zip(docs, texts):
        sections = unit_sections(text)
        for section, items in sections.items():
            keys = [k for k, _ in items]
            unknown = set(keys) - OTHER_KEYS[section]
            assert not unknown, f"{name}: [{section}] {unknown}: test_unit_runs does not run them as systemd would"
            assert len(set(keys)) == len(keys), f"{name}: a key given twice: test_unit_runs takes one of each"
        units[name] = {section: dict(items) for section, items in sections.items()}
    service = units["app.service"]["Service"]
    exec_start = service["ExecStart"]
    assert not re.search(r"[%$\"'\\]", exec_start), "specifiers, variables, quotes: systemd's own splitting"
    setpriv, uid, gid = credentials(service)
    if "RuntimeDirectory" in service:
        runtime = place.root / "run" / service["RuntimeDirectory"]
        runtime.mkdir()
        os.chown(runtime, uid, gid)
        runtime.chmod(int(service.get("RuntimeDirectoryMode", "0755"), 8))
    argv = setpriv + shlex.split(exec_start)
    env = dict(place.env)
    sockets = [units[name]["Socket"] for name in units["app.service"].get("Unit", {}).get("Requires", "").split()]
    if sockets:
        fdnames = []
        for unit_name, socket_unit in zip(units["app.service"]["Unit"]["Requires"].split(), sockets):
            assert socket_unit.get("Service", "app.service") == "app.service"
            where = socket_unit["ListenStream"]
            if where.startswith("/"):
                Path(where).parent.mkdir(mode=int(socket_unit.get("DirectoryMode", "0755"), 8), exist_ok=True)
            fdnames.append(socket_unit.get("FileDescriptorName", unit_name))
        argv = ["systemd-socket-activate", *(a for s in sockets for a in ("-l", s["ListenStream"])),
                f"--fdname={':'.join(fdnames)}", "--"] + argv
    notify = None
    if service.get("Type") == "notify":
        assert service.get("NotifyAccess") == "main"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(place.root / "notify.sock"))
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        notify.settimeout(15)
        env["NOTIFY_SOCKET"] = str(place.root / "notify.sock")
    try:
        proc = place.start(argv, env=env)
        for socket_unit in sockets:   # as systemd makes them: SocketUser=, SocketGroup=, SocketMode=
            where = socket_unit["ListenStream"]
            if where.startswith("/"):
                wait_for_socket(Path(where), proc=proc)
                os.chown(where, pwd.getpwnam(socket_unit.get("SocketUser", "root")).pw_uid,
                         grp.getgrnam(socket_unit.get("SocketGroup", "root")).gr_gid)
                os.chmod(where, int(socket_unit.get("SocketMode", "0666"), 8))
        path_rule = re.search(r"path=([^,\s]+)((?:,[^\s]*)?)", exec_start)
        if notify is not None:   # READY=1 from the main process, once the socket listens
            data, ancillary, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(12))
            assert "READY=1" in data.decode().split("\n"), data
            ready = unix_socket_ready(path_rule.group(1))
            (level, kind, creds), = ancillary
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
            assert struct.unpack("3i", creds)[0] == proc.pid     # NotifyAccess=main
            assert ready, "READY=1 before the socket listened"
        if path_rule:   # redirect makes the socket: the rule's mode and group, the service's user
            sock = Path(path_rule.group(1))
            wait_for_socket(sock, proc=proc)
            options = dict(o.split("=", 1) for o in path_rule.group(2).split(",") if "=" in o)
            st = os.stat(sock)
            assert stat.S_IMODE(st.st_mode) == int(options["mode"], 8), oct(st.st_mode)
            assert st.st_gid == grp.getgrnam(options["group"]).gr_gid and st.st_uid == uid, ls(sock)
            assert curl_unix(sock).startswith(HELLO)
        else:           # the passed sockets: the named one by `systemd=web`, the TCP one in order
            unix = next(Path(s["ListenStream"]) for s in sockets if s["ListenStream"].startswith("/"))
            assert curl_unix(unix).startswith(HELLO)
            tcp = next(s["ListenStream"] for s in sockets if not s["ListenStream"].startswith("/"))
            metrics = run(["curl", "-sS", "--max-time", "10", f"http://{tcp}/"], timeout=15)
            assert metrics.stdout.startswith("metrics from go-server remote=127.0.0.1:"), \
                metrics.stdout + metrics.stderr
            assert tcp_listening(9100) == []
        with open(f"/proc/{proc.pid}/status") as status:   # redirect runs as the unit's user
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        assert set(map(int, uids)) == {uid}
        assert tcp_listening(8080) == []
    finally:
        if notify is not None:
            notify.close()


def test_systemd_try_it(place):
    (doc,) = blocks_for("test_systemd_try_it")
    proc = place.script(place.sub(doc.text, "/run"))
    sock = place.root / "run" / "app" / "http.sock"
    assert ls(sock) == "srw-rw---- root www-data", proc.output   # what SocketGroup=/SocketMode= give
    assert curl_unix(sock).startswith(HELLO)
    proc.wait_for_line(r"^listening \[::\]:8080$")   # the program's bind of :8080 got the passed socket
    assert tcp_listening(8080) == []


# ---- docs/testing.md -------------------------------------------------------------------------------

API_CHECKS = """

# (test_docs) what the example promises
import os
assert result.returncode == 0, result.stderr
assert result.stdout.startswith("hello from go-server remote=127."), result.stdout
assert not os.path.exists(sock)
print("example: ok")
"""


def test_python_api(place):
    (doc,) = blocks_for("test_python_api")
    (place.work / "example.py").write_text(doc.text + API_CHECKS)
    result = run([sys.executable, "example.py"], cwd=place.work, env=place.env, timeout=60)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "example: ok", result.stdout + result.stderr


def test_pytest_examples(place):
    health, xdist = blocks_for("test_pytest_examples")
    test_file = before_session(xdist.text)
    ((command, output),) = session(xdist.text[len(test_file):])
    assert output == []
    (place.work / "test_example.py").write_text(f"import pytest\n\n\n{health.text}\n\n\n{test_file}\n")
    result = place.sh(command, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b9 passed\b", result.stdout), result.stdout


def test_sealed_example(place):
    (doc,) = blocks_for("test_sealed_example")
    ((command, output),) = session(doc.text)
    assert command.endswith("# fails at once")
    started = time.monotonic()
    result = place.sh(command)
    assert result.returncode == 1 and time.monotonic() - started < 5, result.stdout + result.stderr
    lines = iter(result.stderr.splitlines())
    assert all(line in lines for line in output), (output, result.stderr)   # the shown lines, in order
