"""The PPO update in two processes (torch.distributed, gloo, CPU) equals the single-process
update on the same global batch.

The parent test writes a tiny policy and one fixed global rollout to a temporary folder,
runs the update itself on the whole batch (one process, two gradient-accumulation steps),
then launches this file under ``torch.distributed.run`` with two processes; each takes its
half of the batch (one micro-batch each), DDP averages the gradients, and rank 0 writes the
updated parameters. Advantage whitening, the token-count normaliser and the statistics are
global, so the two updates agree to float precision.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf_utils import checkpoints, lm
from rlhf_utils.config import LMConfig, PPOConfig
from rlhf_utils.ppo import PPOTrainer, Rollout
from rlhf_utils.world import World

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parent.parent
CONFIG = PPOConfig(steps=4, batch_size=8, num_minibatches=1, gradient_accumulation_steps=2, update_epochs=2,
                   max_new_tokens=10, learning_rate=1e-3, whiten_rewards=True)


def gold_fn(prompts, completions):
    return torch.tensor(World(0).gold_rewards(completions, prompts), dtype=torch.float32)


def save_rollout(ro: Rollout, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {f.name: getattr(ro, f.name).contiguous() for f in dataclasses.fields(ro)
               if isinstance(getattr(ro, f.name), torch.Tensor)}
    save_file(tensors, str(path / "rollout.safetensors"))
    (path / "rollout.json").write_text(json.dumps({"prompts": ro.prompts, "texts": ro.texts}))


def load_rollout(path: Path) -> Rollout:
    from safetensors.torch import load_file

    return Rollout(**json.loads((path / "rollout.json").read_text()), **load_file(str(path / "rollout.safetensors")))


def trainer(path: Path, config: PPOConfig) -> PPOTrainer:
    model, tok = checkpoints.load_checkpoint(path / "policy", device="cpu")
    return PPOTrainer(model, tok, gold_fn, World(0).prompts(20, seed=1), config)


def trained_params(t: PPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in t.accelerator.unwrap_model(t.model).named_parameters()}


def worker(path: Path, torch_compile: bool) -> None:
    """Run by each of the two processes."""
    torch.set_num_threads(1)
    t = trainer(path, dataclasses.replace(CONFIG, gradient_accumulation_steps=1, torch_compile=torch_compile))
    assert t.world_size == 2, "expected two processes"
    assert t.compiled == torch_compile, "torch_compile did not take under DDP"
    ro = load_rollout(path)
    half = len(ro) // 2
    stats = t.update(ro.select(range(t.rank * half, (t.rank + 1) * half)))
    if t.rank == 0:
        from safetensors.torch import save_file

        save_file(trained_params(t), str(path / "distributed.safetensors"))
        (path / "distributed_stats.json").write_text(json.dumps(stats))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("torch_compile", [False, pytest.param(True, marks=pytest.mark.needs_cxx)],
                         ids=["eager", "compiled"])
def test_two_process_update_equals_single_process_update(tmp_path, torch_compile):
    """Two processes, each with half the batch, reach the single-process parameters; compiled
    (torch_compile under DDP, the start-up check included), still the uncompiled single process's."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    world = World(0)
    tok = lm.train_tokenizer(world.corpus(300, seed=3))
    checkpoints.save_checkpoint(lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32), tok), tok,
                       tmp_path / "policy")
    single = trainer(tmp_path, CONFIG)
    ro = single.rollout(world.prompts(CONFIG.batch_size, seed=2))
    save_rollout(ro, tmp_path)
    stats = single.update(load_rollout(tmp_path))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           __file__, str(tmp_path), str(int(torch_compile))]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    dist = load_file(str(tmp_path / "distributed.safetensors"))
    ours = trained_params(single)
    moved = [n for n in ours if not torch.equal(ours[n], trained_params(trainer(tmp_path, CONFIG))[n])]
    assert moved, "the update moved nothing: the comparison would be empty"
    for n, p in ours.items():
        assert torch.allclose(p, dist[n], atol=1e-6, rtol=1e-5), n
    dstats = json.loads((tmp_path / "distributed_stats.json").read_text())
    for key in ("objective/kl", "objective/scores", "loss/value", "loss/policy", "policy/clipfrac"):
        assert abs(stats[key] - dstats[key]) < 1e-5, (key, stats[key], dstats[key])


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2] == "1")
