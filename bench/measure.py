"""Wall time and peak memory of one child process, for the benchmarks."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the tables' machine lines."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

# Runs argv[2:] and writes "<its peak RSS> <its wall seconds>" to argv[1]. A child's ru_maxrss starts from the
# RSS of the process it was forked from (Linux carries it across exec), so the benchmark, hundreds of MB
# itself, measures through this small wrapper: the floor is the wrapper's own ~10 MB, not the benchmark's size.
RSS_WRAPPER = ("import os, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               "p = subprocess.Popen(sys.argv[2:])\n"
               "_, status, usage = os.wait4(p.pid, 0)\n"
               "wall = time.perf_counter() - t\n"
               "with open(sys.argv[1], 'w') as f:\n"
               "    f.write(f'{usage.ru_maxrss} {wall}')\n"
               "code = os.waitstatus_to_exitcode(status)\n"
               "sys.exit(code if code >= 0 else 128 - code)\n")


def run_measured(cmd: list[str], tmp: Path, env: dict | None = None) -> dict:
    """Run cmd; its wall time, stdout and peak RSS (os.wait4 in a small wrapper process: this child only,
    unlike RUSAGE_CHILDREN, which keeps the maximum over every child so far)."""
    stats = tmp / "rusage"
    r = subprocess.run([sys.executable, "-S", "-c", RSS_WRAPPER, str(stats), *cmd], capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    maxrss, wall = stats.read_text().split()
    rss_mb = int(maxrss) / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux
    return {"wall_s": float(wall), "max_rss_mb": round(rss_mb, 1), "stdout": r.stdout}
