"""``--jobs`` workers: results in order, and no orphan left running when the study's process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grace_bench.study.parallel import run_jobs


def _square(x: int) -> int:
    return x * x


def test_jobs_return_results_in_submission_order():
    assert list(run_jobs(_square, [3, 1, 2], jobs=2)) == [9, 1, 4]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is dead


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_the_parent_kills_its_workers(tmp_path):
    """SIGKILL of the process running ``run_jobs`` takes its workers with it (they would go on writing)."""
    pids = tmp_path / "pids"
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        from grace_bench.study.parallel import run_jobs

        def work(i):
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(120)
            return i

        if __name__ == "__main__":
            list(run_jobs(work, [0, 1], jobs=2))
    """))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not pids.is_file() or len(pids.read_text().split()) < 2):
            time.sleep(0.2)
        workers = [int(p) for p in pids.read_text().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), "a worker outlived the killed study"
    finally:
        parent.kill()
        for p in pids.read_text().split() if pids.is_file() else []:
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass
