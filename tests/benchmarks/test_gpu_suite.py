"""``benchmarks/gpu_suite.sh --smoke``: every row of the GPU suite runs at tiny sizes on the CPU and lands in
its one table (the numbers are not checked: timing lives in the benchmarks)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = ("mlps", "plimseg", "semi", "overhead", "slide", "ddp")


@pytest.mark.timeout(170)
def test_smoke_prints_one_table_with_every_row(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "SUITE_WORKDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=160)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("## GPU suite results", 1)[1].splitlines()
    rows = [line.split("|")[1].strip() for line in table if line.startswith("| ") and not line.startswith("| row")]
    assert set(rows) == set(ROWS), proc.stdout[-3000:]
    status = {line.split("|")[1].strip(): line.rstrip(" |").rsplit("|", 1)[1].strip()
              for line in table if line.startswith("| ") and not line.startswith("| row")}
    assert status == {**{r: "ok" for r in ROWS}, "ddp": "skipped"}, "\n".join(table)
    # the planned budget per row is printed first, and each row's own table is shown in full
    assert "planned budget per row" in proc.stdout and "engine / bare (wall)" in proc.stdout
