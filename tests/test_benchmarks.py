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


def test_update_variants_compute_what_the_trainer_computes():
    """benchmarks/update_variants.py times other ways of the update's forward; each must give the
    trainer's log-probabilities and values (left and right padding, prompts of several lengths)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import update_variants
    finally:
        sys.path.remove(str(BENCHMARKS))
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
