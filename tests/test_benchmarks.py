"""The benchmarks' own logic, and the GPU plan's CPU path (the command a GPU will run, here as a dry run)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from benchmarks.throughput import max_overlap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_BATCH = 16  # the plan's path, not its figures, is under test: a quarter of the default batch of 64


def test_max_overlap_counts_what_ran_side_by_side():
    assert max_overlap([(0, 10), (0, 10), (10, 20), (10, 20)]) == 2  # a trial ending as the next starts: 2 slots
    assert max_overlap([(0, 5), (1, 6), (2, 7)]) == 3
    assert max_overlap([]) == 1


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_the_gpu_plan_runs_on_the_cpu_and_ends_with_its_summary_line():
    result = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--device", "cpu", "--plan", "--quick",
                             "--teacher", "resnet8", "--student", "resnet8", "--batch", str(SMALL_BATCH)], cwd=REPO,
                            capture_output=True, text=True, timeout=560, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    for arm in ("reference, 0 workers", "reference, 2 workers", "(b) live", "(c) cached", "(d) bound"):
        assert any(arm in line for line in lines), arm
    assert any(line.strip().startswith("2 trial(s) on one GPU (0.5 GPU each)") for line in lines)
    assert any("paper-size ablation (10 arms x 3 seeds x 240 epochs)" in line for line in lines)
    assert re.fullmatch(r"gpu: cached/reference \d+\.\d\dx  packing [12]/GPU \d+\.\d\dx  paper-size ablation "
                        r"\d+\.\d GPU-hours", lines[-1]), lines[-1]
