"""The benchmark stays runnable (its numbers are not judged here: no timed assertions)."""
from __future__ import annotations

import re
import sys

from helpers import REPO, run


def test_bench_quick_run_prints_every_measurement(bins):
    result = run([sys.executable, REPO / "bench" / "run.py", "--quick"], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("(a) syscall-loop", "(b) one trapped getsockname", "(c) Go hello keep-alive",
                "(c) Go hello new conn", "(d) /bin/true", "(e) UDP round trips", "(f) nginx keep-alive, Go client",
                "(f) nginx new conn/request, wrk", "(g) caddy keep-alive, Go client", "(g) caddy new conn/request, wrk",
                "trapped calls"):
        assert row in result.stdout, result.stdout
    # The trapped calls are counted for every workload under both backends.
    for kind in ("go", "nginx", "caddy", "udp"):
        for backend in ("notify", "ptrace"):
            assert re.search(rf"^  {kind} +{backend}: ", result.stdout, re.M), result.stdout
