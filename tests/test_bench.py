"""The benchmark stays runnable (its numbers are not judged here: no timed assertions)."""
from __future__ import annotations

import sys

from conftest import REPO, run


def test_bench_quick_run_prints_every_measurement(bins):
    result = run([sys.executable, REPO / "bench" / "run.py", "--quick"], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("(a) syscall-loop", "(b) trapped getsockname", "(c) keep-alive", "(c) new conn", "(d) /bin/true",
                "(e) UDP round trips"):
        assert row in result.stdout
