"""The fixtures: the backend each test runs under, the fixture programs
(built from source), short temporary directories and background processes
that are always removed and ended (by pid), test users, redirect installed
as a user would. What the tests share that is no fixture is in helpers.py."""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import BINS, FIXTURES, REPO, USER, Background, run, system_user

# Every test that runs redirect runs once per backend: REDIRECT_BACKEND (the
# CLI's default) picks it for each redirect the test starts.
BACKENDS = ("notify", "ptrace")
ONE_BACKEND = {  # pure code, or measures both itself
    "test_arch",
    "test_bench",
    "test_constants",
    "test_decision",
    "test_globpath",
    "test_handlers_accept",
    "test_handlers_bind_connect",
    "test_handlers_datagrams",
    "test_handlers_identify",
    "test_handlers_memory",
    "test_handlers_socknames",
    "test_handlers_sockopt",
    "test_notify",
    "test_peers",
    "test_registry",
    "test_rules",
    "test_sockaddr",
    "test_tracee",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "one_backend: a test that runs no program under redirect "
                                       "(a pure check) runs once, not once per backend")
    if not hasattr(config, "workerinput"):  # (once, before any test: not in each xdist worker)
        _refresh_install()


def _refresh_install() -> None:
    """The .venv install (which the bench and the docs' commands run) of the
    code in the tree: reinstalled here, before the tests, when redirect/ is
    newer than it. Else the bench test reinstalls it while other tests read
    it (tests/test_docs.py's overlays): a tree edited since the last
    scripts/setup.sh, never a fresh clone."""
    marker = REPO / ".venv" / ".installed"
    if not marker.exists():
        return  # (scripts/test.sh and .ci/run set up first)
    made = marker.stat().st_mtime
    sources = [REPO / "pyproject.toml", REPO / "setup.py", *(REPO / "redirect").rglob("*.py"),
               *(REPO / "redirect").rglob("*.[ch]")]  # (not __pycache__: importing writes it)
    newer = [f for f in sources if f.is_file() and f.stat().st_mtime > made]
    if newer:
        result = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], cwd=REPO, capture_output=True,
                                text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise pytest.UsageError(f"scripts/setup.sh failed:\n{result.stdout}\n{result.stderr}")


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


@pytest.fixture(scope="session")
def unprivileged_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())  # already unprivileged: run as ourselves
    return system_user(USER)


@pytest.fixture
def world_readable_install(bins):
    """The package, its pure-Python dependencies and fixture programs, copied
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
        shutil.copy(bins / "udp-server-glibc", root / "udp-server")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- nginx ----------------------------------------------------------------------------


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
        lines = commands(substitute(block("README.md", "apt install pipx libseccomp2 gcc python3-dev").text,
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
