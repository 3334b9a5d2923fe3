"""Figures that reproduce: what a CPU run must pin so that the same seed gives the same numbers.

A seed fixes the random draws, but not the arithmetic. Two more things change float results
on a CPU, and with them every figure of a training run (RL is chaotic: a last-bit
difference in one step grows into a different policy):

1. **the number of threads** -- a sum split over 2 threads is added in another order than
   on 1. :func:`rlhf_utils.config.seed_everything` therefore also fixes torch's thread count
   (``$RLHF_THREADS``, default 1: the course's small models run as fast on one);
2. **the instruction set** -- torch picks its kernels by the CPU (AVX2, AVX-512 ...), and MKL
   and oneDNN pick theirs: the same matrix product on an AVX-512 machine rounds differently
   from an AVX2 one. :data:`CPU_ENV` pins all three to AVX2, which every x86-64 CPU of the
   last ten years has. These variables are read when torch starts, so they must be in the
   environment *before* ``import torch``: the Makefile exports them (``make course``,
   ``make test``, ``make lab``) and the course runner passes them to every kernel.

What is left -- another torch, MKL or transformers release, an ARM CPU, a GPU -- can still
change the figures; that is why each notebook's "you should see about" figure gives the
spread over seeds, and its check tests that range rather than one value.

Run as a script (no dependencies, no torch import), it prints the pinned variables as
``NAME=value`` lines, for the Makefile: ``python3 rlhf_utils/reproducibility.py``.
"""

from __future__ import annotations

import os
import platform
import time

CPU_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
"""torch's, MKL's and oneDNN's kernel choice, pinned to AVX2 (x86-64 only)"""


def cpu_env() -> dict[str, str]:
    """The variables to pin on this machine: :data:`CPU_ENV` on x86-64, nothing elsewhere.
    A variable the user has already set is left as they set it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    return {k: os.environ.get(k, v) for k, v in CPU_ENV.items()}


def machine_info() -> dict[str, object]:
    """What a result was measured on: CPU, cores, load, the pinned variables, library
    versions, date (for ``summary.json`` and the README's results table)."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for name in ("torch", "transformers", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(),
            "load_1_5_15": [round(x, 2) for x in load], "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "threads": os.environ.get("RLHF_THREADS", "1"),
            "pinned": {k: os.environ.get(k) for k in CPU_ENV}, **versions}


if __name__ == "__main__":
    for name, value in cpu_env().items():
        print(f"{name}={value}")
