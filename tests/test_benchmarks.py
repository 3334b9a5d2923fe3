"""The benchmark scripts' own contracts (their figures are printed, not tested)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_full_scale_benchmark_stops_at_once_without_cuda():
    run = subprocess.run([sys.executable, "ppo_full_scale.py", "--steps", "1"], cwd=BENCHMARKS, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 1
    assert "no CUDA GPU here" in run.stderr and "--device cpu" in run.stderr
    assert "Traceback" not in run.stderr
