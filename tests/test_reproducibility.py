"""Figures that reproduce: the same seed gives the same numbers whatever the machine's thread
count, and every way of running the course pins the CPU kernels (rlhf_utils.reproducibility)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from rlhf_utils import reproducibility
from rlhf_utils.course import kernel_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The core of notebooks 01, 05 and 06, made small: pre-train a tiny GPT, train a reward model
# on simulated labels, take PPO steps against it. Prints the figures that depend on every
# float sum along the way.
CORE = r"""
import json, dataclasses, torch
from rlhf_utils import lm
from rlhf_utils.annotators import SimulatedAnnotator
from rlhf_utils.config import LMConfig, PPOConfig, RewardConfig, seed_everything
from rlhf_utils.ppo import PPOTrainer
from rlhf_utils.preferences import pairs_from_judgements, sample_pairs
from rlhf_utils.reward import RewardModel, evaluate_pairs, train_reward_model
from rlhf_utils.world import World

seed_everything(0)
world = World(0)
tok = lm.train_tokenizer(world.corpus(500, seed=0))
model = lm.build_model(LMConfig(n_layer=2, n_head=4, n_embd=64, n_positions=64), tok)
losses = lm.train_lm(model, tok, [("", t) for t in world.corpus(2000, seed=1)], steps=60, batch_size=64,
                     learning_rate=5e-3, warmup_steps=10, progress=False)
pairs = sample_pairs(model, tok, world.prompts(120, seed=2), 96, 24, seed=3, progress=False)
records = SimulatedAnnotator.from_world(world).records(pairs, rng=4)
judged = pairs_from_judgements(records)
rm = RewardModel.from_policy(model, tok)
train_reward_model(rm, judged[:76], judged[76:], RewardConfig(epochs=2, min_steps=10, batch_size=16), progress=False)
trainer = PPOTrainer(model, tok, rm, world.prompts(200, seed=5),
                     PPOConfig(steps=3, batch_size=32, num_minibatches=2, max_new_tokens=24), device="cpu")
history = trainer.train(progress=False)
print(json.dumps({"torch_threads": torch.get_num_threads(), "lm_loss": losses[-1],
                  "rm_accuracy": evaluate_pairs(rm, judged[76:]).accuracy,
                  "ppo_scores": [h["objective/scores"] for h in history],
                  "ppo_kl": history[-1]["objective/kl"],
                  "params": sum(float(p.double().sum()) for p in trainer.policy.parameters())}))
"""


def run_core(threads: int, extra_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **(extra_env or {})}
    env.pop("RLHF_THREADS", None)
    out = subprocess.run([sys.executable, "-c", CORE], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_core_gives_the_same_figures_at_1_and_2_threads():
    one, two = run_core(1), run_core(2)
    assert one["torch_threads"] == two["torch_threads"] == 1  # seed_everything fixed the count
    assert one == two


def test_seed_everything_fixes_the_thread_count(monkeypatch):
    import torch

    from rlhf_utils.config import default_threads, seed_everything

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("RLHF_THREADS", raising=False)
        torch.set_num_threads(2)
        seed_everything(0)
        assert torch.get_num_threads() == default_threads() == 1
        monkeypatch.setenv("RLHF_THREADS", "2")
        seed_everything(0)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("RLHF_THREADS", "two")
        with pytest.raises(ValueError, match="RLHF_THREADS='two'"):
            seed_everything(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the pins are x86 ones")
def test_cpu_kernels_are_pinned_everywhere_the_course_runs(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert reproducibility.cpu_env() == reproducibility.CPU_ENV
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # a user's own choice is kept
    assert reproducibility.cpu_env()["MKL_CBWR"] == "COMPATIBLE"
    monkeypatch.delenv("MKL_CBWR")
    env = kernel_env("quick")  # the course runner's kernels
    assert all(env[k] == v for k, v in reproducibility.CPU_ENV.items())
    # the Makefile exports the same list (make course / test / lab), printed by the module as a script
    printed = subprocess.run([sys.executable, os.path.join(REPO, "rlhf_utils", "reproducibility.py")],
                             capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    assert printed.split() == [f"{k}={v}" for k, v in reproducibility.CPU_ENV.items()]
    make = subprocess.run(["make", "-pn", "help"], capture_output=True, text=True, cwd=REPO).stdout
    for k, v in reproducibility.CPU_ENV.items():
        assert f"{k} = {v}" in make


def test_machine_info_names_what_a_result_was_measured_on():
    info = reproducibility.machine_info()
    assert {"cpu", "cores", "load_1_5_15", "torch", "transformers", "date", "threads", "pinned"} <= set(info)
    assert len(info["load_1_5_15"]) == 3
