"""The benchmark scripts' own contracts (their figures are printed, not tested)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(name: str):
    """The benchmark script ``benchmarks/<name>.py`` imported as a module."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_full_scale_benchmark_stops_at_once_without_cuda():
    run = subprocess.run([sys.executable, "ppo_full_scale.py", "--steps", "1"], cwd=BENCHMARKS, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 1
    assert "no CUDA GPU here" in run.stderr and "--device cpu" in run.stderr
    assert "Traceback" not in run.stderr


def test_full_scale_benchmark_runs_through_on_the_cpu():
    """ppo_full_scale.py is the GPU check, run once when a GPU is lent: every part of it (timed
    steps, FLOPs, the generate comparison, the profiled step) must run through, here at the quick
    scale on the CPU."""
    run = subprocess.run([sys.executable, "ppo_full_scale.py", "--scale", "quick", "--device", "cpu", "--steps", "1",
                          "--batch", "8", "--repeats", "1"], cwd=BENCHMARKS, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for printed in ("samples/s", "generated tokens/s", "model FLOPs", "whole rollout", "| ppo/update/optimizer |",
                    "| operator (self CPU time) |"):
        assert printed in run.stdout, printed


def test_update_variants_compute_what_the_trainer_computes():
    """benchmarks/update_variants.py times other ways of the update's forward; each must give the
    trainer's log-probabilities and values (left and right padding, prompts of several lengths)."""
    update_variants = benchmark_module("update_variants")
    from rlhf_utils import lm
    from rlhf_utils.config import LMConfig
    from rlhf_utils.value_head import PolicyWithValueHead
    from rlhf_utils.world import World

    tokenizer = lm.train_tokenizer(World(0).corpus(300, seed=1))
    model = PolicyWithValueHead(lm.build_model(LMConfig(n_layer=2, n_head=2, n_embd=16, n_positions=32), tokenizer))
    torch.nn.init.normal_(model.v_head.weight)
    torch.manual_seed(0)
    prompt_lengths, response_lengths, P, R = [3, 5, 4, 5], [6, 2, 7, 4], 5, 7
    ids = torch.randint(4, len(tokenizer), (4, P + R))
    mask = torch.zeros_like(ids)
    for b, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        mask[b, P - p:P + r] = 1
    ways = update_variants.ways(model.eval(), ids, mask, P - 1)
    logits, values = ways.pop("trainer")()
    real = mask[:, P:].bool()
    ways.pop("torch.compile")  # compiling is the trainer's own test (tests/test_ppo.py)
    for name, way in ways.items():
        theirs_logits, theirs_values = way()
        assert torch.allclose(theirs_logits[real], logits[real], atol=1e-5), name
        assert torch.allclose(theirs_values[real], values[real], atol=1e-5), name


@pytest.mark.skipif(not (BENCHMARKS.parent / ".git").exists(), reason="not a git checkout")
def test_baseline_revision_runs_its_own_code(tmp_path):
    """ppo_vs_trl.py --baseline REV runs REV's committed code: the exported tree is REV's, and a
    Python started on it imports that tree's rlhf_utils, not the installed one; an unknown
    revision stops with a message that says what to give."""
    ppo_vs_trl = benchmark_module("ppo_vs_trl")
    root = ppo_vs_trl.export_revision("HEAD", tmp_path)
    committed = subprocess.run(["git", "-C", str(BENCHMARKS.parent), "show", "HEAD:rlhf_utils/ppo.py"],
                               capture_output=True, text=True, check=True).stdout
    assert (root / "rlhf_utils" / "ppo.py").read_text() == committed
    with pytest.raises(SystemExit, match="git cannot export it.*give a commit of this repository"):
        ppo_vs_trl.export_revision("no-such-revision", tmp_path)


def test_reference_logprobs_benchmark_runs_and_both_ways_agree():
    run = subprocess.run([sys.executable, "reference_logprobs.py", "--layers", "1", "--vocab", "300", "--batch", "2",
                          "--prompt", "8", "--response", "4", "--repeats", "1"], cwd=BENCHMARKS, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "| LM head on the response positions |" in run.stdout and "| LM head on every position |" in run.stdout
    difference = float(run.stdout.rsplit("largest log-prob difference", 1)[1])
    assert difference < 1e-5


def test_model_passes_ceiling_counts_only_the_model_passes():
    """ppo_vs_trl.py's ceiling: the step with its reward, advantages and Python at no cost, and
    the non-generation share of what is left."""
    ppo_vs_trl = benchmark_module("ppo_vs_trl")
    phases = {"ppo/rollout/sample": 0.2, "ppo/rollout/values": 0.05, "ppo/rollout/reference": 0.1,
              "ppo/rollout/reward": 0.1, "ppo/advantages": 0.05, "ppo/update/epoch0": 0.2,
              "ppo/update/epoch1": 0.2, "ppo/update/optimizer": 0.05}
    samples_per_s, share = ppo_vs_trl.model_passes_ceiling(phases, wall=1.0, samples_per_s=100.0,
                                                           non_generation_share=0.7)
    assert samples_per_s == pytest.approx(100.0 / 0.8)  # 0.8 s of the 1 s step is model passes
    assert share == pytest.approx(1 - 0.3 / 0.8)  # sampling, 30% of the step, is 37.5% of the passes
