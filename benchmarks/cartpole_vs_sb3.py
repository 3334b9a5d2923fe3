"""Our PPO (rlhf_utils.rl.PPOAgent) against Stable-Baselines3's PPO on CartPole-v1.

Both get rl-zoo's tuned CartPole hyperparameters (rl-baselines3-zoo hyperparams/ppo.yml:
n_envs 8, n_steps 32, batch_size 256, gae_lambda 0.8, gamma 0.98, n_epochs 20,
ent_coef 0, learning_rate lin_1e-3, clip_range lin_0.2; SB3's defaults for the rest:
64x64 tanh actor and critic, vf_coef 0.5, max_grad_norm 0.5, no value clipping), the
same budget of environment steps, and the same torch thread count. Seeds 0..n-1 run in
one process, one after the other, alternating ours / SB3 per seed so that a change in
machine load hits both alike. Reported per run: the training wall time (model built and
trained; evaluation excluded) and the final evaluation return (mean over 10 episodes of
the deterministic policy, on the same evaluation seeds for both); then medians and the
ratio ours / SB3.

Differences that remain: SB3 steps 8 gymnasium CartPole-v1 copies through its
DummyVecEnv (one Python call per copy per step); ours steps gymnasium's natively
vectorised CartPole (CartPoleVectorEnv, numpy over all copies). That is part of "avoid
per-step Python overhead" and is counted in our time.

    python benchmarks/cartpole_vs_sb3.py [--steps 50000] [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium  # noqa: F401  (imported before any timing, for both)
import numpy as np
import stable_baselines3  # noqa: F401
import torch

from rlhf_utils.config import CartPoleConfig
from rlhf_utils.cartpole import PPOAgent, episode_returns


def run_ours(steps: int, seed: int, threads: int) -> tuple[float, float, float]:
    cfg = CartPoleConfig(total_timesteps=steps, seed=seed, torch_threads=threads)
    start = time.perf_counter()
    agent = PPOAgent(cfg)
    history = agent.learn()
    wall = time.perf_counter() - start
    return wall, float(np.mean(agent.evaluate(10))), history.rollout_s


def run_sb3(steps: int, seed: int, threads: int) -> tuple[float, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(threads)
    start = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
        ent_coef=0.0, learning_rate=lambda progress: 1e-3 * progress,  # lin_1e-3
        clip_range=lambda progress: 0.2 * progress,  # lin_0.2
        seed=seed, device="cpu", verbose=0,
    )
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start

    def act(obs):
        return int(model.predict(obs, deterministic=True)[0])

    return wall, float(np.mean(episode_returns(act, "CartPole-v1", 10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is fastest here)")
    args = parser.parse_args()

    rows = []
    for seed in range(args.seeds):
        ours = run_ours(args.steps, seed, args.threads)
        sb3 = run_sb3(args.steps, seed, args.threads)
        rows.append((seed, ours[0], ours[1], *sb3))
        print(f"seed {seed}: ours {ours[0]:.1f}s (rollouts {ours[2]:.1f}s) return {ours[1]:.0f} | "
              f"SB3 {sb3[0]:.1f}s return {sb3[1]:.0f}", flush=True)

    print(f"\nCartPole-v1, {args.steps:,} steps, rl-zoo hyperparameters for both, torch threads {args.threads}")
    print(f"{'seed':>4} | {'ours wall s':>11} | {'ours return':>11} | {'SB3 wall s':>10} | {'SB3 return':>10} | {'ours/SB3 time':>13}")
    print("-" * 76)
    for seed, ow, oret, sw, sret in rows:
        print(f"{seed:>4} | {ow:>11.2f} | {oret:>11.1f} | {sw:>10.2f} | {sret:>10.1f} | {ow / sw:>13.2f}")
    med = [statistics.median(col) for col in zip(*rows)]
    print("-" * 76)
    ratio = statistics.median(r[1] / r[3] for r in rows)  # paired: each seed's runs ran back to back
    print(f"{'med':>4} | {med[1]:>11.2f} | {med[2]:>11.1f} | {med[3]:>10.2f} | {med[4]:>10.1f} | {ratio:>13.2f}")
    print(f"(last column: median of the per-seed ratios; ratio of the median times: {med[1] / med[3]:.2f})")
    print(f"\nreturn 500 reached: ours {sum(r[2] >= 500 for r in rows)}/{len(rows)}, "
          f"SB3 {sum(r[4] >= 500 for r in rows)}/{len(rows)} seeds")


if __name__ == "__main__":
    main()
