"""Reinforcement learning from bandits to PPO: small pure functions and one agent.

What is here, and where it comes from:

* discounted returns and REINFORCE, with and without a baseline -- Williams (1992),
  "Simple statistical gradient-following algorithms for connectionist reinforcement
  learning"; Sutton & Barto (2018), ch. 13;
* a multi-armed bandit to try REINFORCE on, with its exact (analytic) policy gradient;
* generalised advantage estimation, GAE(gamma, lambda) -- Schulman et al. (2016),
  "High-dimensional continuous control using generalized advantage estimation",
  arXiv:1506.02438, eq. 16;
* PPO's clipped surrogate objective, clipped value loss, entropy bonus and the
  diagnostics approx_kl / clipfrac / explained_variance -- Schulman et al. (2017),
  "Proximal policy optimization algorithms", arXiv:1707.06347, eqs. 7 and 9;
* :class:`PPOAgent`, a PPO agent for gymnasium vector environments with discrete actions,
  written after CleanRL's ``ppo.py`` (Huang et al. 2022, JMLR 23(274)) and the checklist
  of Huang et al. (2022), "The 37 implementation details of proximal policy optimization"
  (ICLR blog track). A2C (Mnih et al. 2016, the synchronous form of A3C) is the same agent
  with one epoch, one minibatch and no clipping: :func:`a2c_config`.

Shapes: ``[T, N]`` is (time steps, parallel environments); ``[B]`` a flat batch.
No function mutates its inputs, except ``clip_grad_norm_`` (in place, like torch's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rlhf_utils.config import CartPoleConfig

# --------------------------------------------------------------------------------------
# Checks shared by the functions below
# --------------------------------------------------------------------------------------


def _check_unit_interval(name: str, value: float) -> None:
    if not (0.0 <= float(value) <= 1.0) or math.isnan(float(value)):
        raise ValueError(
            f"{name}={value!r} is outside [0, 1]: a discount/trace factor must lie in [0, 1] "
            f"(typical: gamma=0.99 or 0.98, gae_lambda=0.95 or 0.8)."
        )


# --------------------------------------------------------------------------------------
# Returns and advantages
# --------------------------------------------------------------------------------------


def discounted_returns(
    rewards: torch.Tensor,
    gamma: float,
    dones: torch.Tensor | None = None,
    bootstrap: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} * (1 - done_t), computed backwards (Sutton & Barto eq. 3.9).

    rewards: [T] or [T, N]; dones (same shape, optional): the episode ended at step t, so
    nothing after t is added; bootstrap: value added after the last step (0 for a finished
    episode). Naive equivalent for one episode: ``G_t = sum_k gamma**k * r_{t+k}``.
    """
    _check_unit_interval("gamma", gamma)
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    not_done = torch.ones_like(rewards) if dones is None else 1.0 - torch.as_tensor(dones).to(rewards.dtype)
    returns = torch.empty_like(rewards)
    running = torch.as_tensor(bootstrap, dtype=rewards.dtype) * torch.ones_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * not_done[t] * running
        returns[t] = running
    return returns


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) advantages and the value targets (Schulman et al. 2016, eq. 16).

    All inputs [T, N] (or [T]). ``values[t] = V(s_t)``; ``next_values[t] = V(s_{t+1})``, the
    value of the state reached after step t -- for an episode that ended at t, the value
    of its *final* observation, not of the next episode's first one.

        delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
        A_t     = delta_t + gamma * lambda * (1 - terminated_t) * (1 - truncated_t) * A_{t+1}

    Termination (the pole fell) means the future is worth 0: no bootstrap. Truncation (a
    time limit) means the future was cut off, not worthless: bootstrap from V(s_{t+1}),
    but do not chain into the next episode's advantages (Pardo et al. 2018, "Time limits
    in reinforcement learning"; detail 9 of Huang et al. 2022 notes many implementations
    get this wrong). Returns (advantages, returns = advantages + values), both [T, N].
    """
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("gae_lambda", gae_lambda)
    shapes = {t.shape for t in (rewards, values, next_values, terminated, truncated)}
    if len(shapes) != 1:
        raise ValueError(f"gae_advantages: all inputs must have one shape [T, N], got {sorted(map(tuple, shapes))}")
    rewards, values, next_values = (torch.as_tensor(x, dtype=torch.float32) for x in (rewards, values, next_values))
    not_term = 1.0 - terminated.to(rewards.dtype)
    not_end = not_term * (1.0 - truncated.to(rewards.dtype))
    deltas = rewards + gamma * next_values * not_term - values  # [T, N]
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * gae_lambda * not_end[t] * running
        advantages[t] = running
    return advantages, advantages + values


# --------------------------------------------------------------------------------------
# Losses and diagnostics
# --------------------------------------------------------------------------------------


def _mean(x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return x.mean()
    return (x * weights).sum() / weights.sum().clamp_min(1e-8)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_coef: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """PPO's clipped surrogate, as a loss to minimise (Schulman et al. 2017, eq. 7).

        r_t = pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t) = exp(logprobs - old_logprobs)
        L   = -E[ min(r_t * A_t, clip(r_t, 1 - eps, 1 + eps) * A_t) ]

    All inputs [B]; ``weights`` (optional, [B]) masks samples out of the mean. Note the
    objective multiplies the *ratio* by the advantage; there is no log-probability in it.
    ``clip_coef=inf`` gives the unclipped surrogate E[r_t * A_t].
    """
    ratio = torch.exp(logprobs - old_logprobs)  # [B]
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef) * advantages
    return -_mean(torch.minimum(unclipped, clipped), weights)


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_coef: float | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """E[(V - R)^2] (Schulman et al. 2017, eq. 9: L^VF; SB3 computes the same), or, when
    ``clip_coef`` is given, its clipped form E[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)]
    (CleanRL ppo.py; detail 9 of Huang et al. 2022). CleanRL puts a factor 1/2 in front of
    both; we do not, so that ``vf_coef`` means what it means in the paper and in SB3.
    All inputs [B]."""
    loss = (values - returns) ** 2
    if clip_coef is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
        loss = torch.maximum(loss, (v_clipped - returns) ** 2)
    return _mean(loss, weights)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution of each row: -sum_a p_a log p_a.  [..., A] -> [...]"""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def approx_kl(log_ratio: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(pi_old || pi_new) estimated from samples of pi_old with Schulman's k3 estimator
    (http://joschu.net/blog/kl-approx.html, as in CleanRL's ``approx_kl``):

        k3 = (r - 1) - log r = expm1(x) - x,   x = log r = logp_new - logp_old.

    Unbiased and >= 0 for every sample. For |x| < 1e-2 the difference expm1(x) - x would
    cancel catastrophically in float32 (it is ~x^2/2 while each term is ~x), so there we
    use its Taylor series x^2 (1/2 + x/6 + x^2/24 + x^3/120), exact to float precision.
    """
    x = log_ratio
    series = x * x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x / 120.0)))
    k3 = torch.where(x.abs() < 1e-2, series, torch.expm1(x) - x).clamp_min(0.0)
    return _mean(k3, weights)


def clip_fraction(log_ratio: torch.Tensor, clip_coef: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """clipfrac: share of samples whose ratio left [1 - eps, 1 + eps] (CleanRL's ``clipfracs``)."""
    return _mean(((log_ratio.exp() - 1.0).abs() > clip_coef).float(), weights)


@torch.no_grad()
def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``;
    returns the norm before clipping. The same as ``torch.nn.utils.clip_grad_norm_``
    (tested), without its dispatch overhead, which dominated for a 64x64 MLP."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


class Adam:
    """Adam (Kingma & Ba 2015, "Adam: a method for stochastic optimization", Algorithm 1)
    for one fixed list of parameters, each updated in place from its ``.grad``:

        m <- beta1 m + (1 - beta1) g,    v <- beta2 v + (1 - beta2) g^2     (t <- t + 1)
        p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    The same update as ``torch.optim.Adam(params, fused=True)``, through the same fused
    kernel (tested bit for bit), without torch.optim's bookkeeping on every step (hooks,
    profiler records, grouping tensors by device): that bookkeeping took ~0.15 ms, a tenth
    of a whole minibatch step of the 64x64 actor-critic. Set ``lr`` between steps to anneal it.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]  # m, first moment
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]  # v, second moment
        self.t = torch.zeros(())  # step count, a float32 scalar tensor: the fused kernel's format

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        grads = [p.grad for p in self.params]
        steps = [self.t] * len(self.params)  # the kernel wants one step count per tensor: all share this one
        torch._fused_adam_(
            self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], steps, lr=self.lr,
            beta1=self.betas[0], beta2=self.betas[1], eps=self.eps, weight_decay=0.0, amsgrad=False, maximize=False,
        )


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - predicted] / Var[target]: 1 = perfect value function, 0 = no better
    than predicting the mean, < 0 = worse. NaN when the targets do not vary."""
    var_y = torch.var(target.float(), unbiased=False)
    if var_y == 0:
        return float("nan")
    return float(1.0 - torch.var((target - predicted).float(), unbiased=False) / var_y)


# --------------------------------------------------------------------------------------
# Bandit and REINFORCE
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bandit:
    """A K-armed bandit: pulling arm a pays a Gaussian reward with mean ``means[a]``."""

    means: tuple[float, ...]
    std: float = 1.0

    def pull(self, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rewards for a batch of arm indices [B] -> [B]."""
        means = torch.tensor(self.means, dtype=torch.float32)[actions]
        return means + self.std * torch.randn(means.shape, generator=generator)

    def expected_reward(self, logits: torch.Tensor) -> torch.Tensor:
        """J(theta) = sum_a softmax(theta)_a * mu_a."""
        return (torch.softmax(logits, -1) * torch.tensor(self.means)).sum()

    def policy_gradient(self, logits: torch.Tensor) -> torch.Tensor:
        """The exact gradient of J for a softmax policy: dJ/dtheta_k = pi_k (mu_k - J)."""
        probs = torch.softmax(logits, -1)
        mu = torch.tensor(self.means, dtype=probs.dtype)
        return probs * (mu - (probs * mu).sum())


def reinforce_loss(
    logprobs: torch.Tensor, returns: torch.Tensor, baseline: torch.Tensor | float | None = None
) -> torch.Tensor:
    """REINFORCE as a loss (Williams 1992): -E[log pi(a|s) * (G - b)].

    Its gradient is the score-function estimate of -grad J. Any baseline b that does not
    depend on the sampled action leaves the gradient unbiased (E[grad log pi] = 0) and,
    chosen near E[G], lowers its variance. ``returns`` and ``baseline`` are treated as
    constants (detached)."""
    scale = returns.detach() if baseline is None else returns.detach() - torch.as_tensor(baseline).detach()
    return -(logprobs * scale).mean()


def reinforce_gradient_samples(
    logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, baseline: float = 0.0
) -> torch.Tensor:
    """Per-sample REINFORCE gradient estimates of J for a softmax bandit policy, [B, K]:
    (r - b) * grad_theta log pi(a) = (r - b) * (onehot(a) - pi). Their mean estimates
    :meth:`Bandit.policy_gradient`; their spread is the estimator's variance."""
    probs = torch.softmax(logits.detach(), -1)  # [K]
    score = F.one_hot(actions, probs.shape[-1]).float() - probs  # [B, K]
    return (rewards - baseline)[:, None] * score


def train_bandit(
    bandit: Bandit, steps: int, batch_size: int, lr: float, baseline: bool, seed: int = 0
) -> dict[str, list[float]]:
    """Softmax policy on a bandit trained with REINFORCE (SGD on the logits).

    With ``baseline=True`` the baseline is the mean reward of the previous batches (an
    exponential moving average: it does not depend on the current actions, so the
    gradient stays unbiased). Returns the history of the expected reward J and of p(best arm)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.zeros(len(bandit.means), requires_grad=True)
    opt = torch.optim.SGD([logits], lr=lr)
    best = int(np.argmax(bandit.means))
    b = 0.0
    history: dict[str, list[float]] = {"expected_reward": [], "p_best": []}
    for step in range(steps):
        probs = torch.softmax(logits, -1)
        actions = torch.multinomial(probs.detach(), batch_size, replacement=True, generator=gen)  # [B]
        rewards = bandit.pull(actions, gen)  # [B]
        loss = reinforce_loss(torch.log(probs[actions]), rewards, b if baseline else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if baseline:
            b = float(rewards.mean()) if step == 0 else 0.9 * b + 0.1 * float(rewards.mean())
        with torch.no_grad():
            history["expected_reward"].append(float(bandit.expected_reward(logits)))
            history["p_best"].append(float(torch.softmax(logits, -1)[best]))
    return history


# --------------------------------------------------------------------------------------
# The actor-critic network
# --------------------------------------------------------------------------------------


def _mlp(sizes: list[int], out_std: float, generator: torch.Generator) -> nn.ModuleList:
    """The linear layers of a tanh MLP (applied by :func:`_mlp_forward`), with orthogonal
    init: gain sqrt(2) on hidden layers, ``out_std`` on the last, biases 0 (Huang et al.
    2022, detail 2; SB3 and CleanRL do the same)."""
    layers = nn.ModuleList()
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_std if last else math.sqrt(2), generator=generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
    return layers


def _mlp_forward(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """tanh(W_1 x + b_1) -> ... -> W_L h + b_L (no activation after the last layer). Written
    with F.linear rather than nn.Sequential: the same maths, a third less Python overhead.
    (``*hidden, last = layers`` rather than ``layers[:-1]``: slicing a ModuleList builds a
    new ModuleList on every call, which cost as much as the two 64x64 matmuls.)"""
    *hidden, last = layers
    for linear in hidden:
        x = torch.tanh(F.linear(x, linear.weight, linear.bias))
    return F.linear(x, last.weight, last.bias)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (64x64 tanh by default, no shared weights), as in
    SB3's and CleanRL's defaults for CartPole. Actor head init std 0.01 (a near-uniform
    first policy), critic head std 1."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: tuple[int, ...] = (64, 64), seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.actor = _mlp([obs_dim, *hidden_sizes, n_actions], 0.01, gen)
        self.critic = _mlp([obs_dim, *hidden_sizes, 1], 1.0, gen)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [B, obs_dim] -> (logits [B, A], values [B])."""
        return _mlp_forward(self.actor, obs), _mlp_forward(self.critic, obs).squeeze(-1)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor alone: obs [B, obs_dim] -> logits [B, A]."""
        return _mlp_forward(self.actor, obs)


# --------------------------------------------------------------------------------------
# Environments and evaluation
# --------------------------------------------------------------------------------------


def make_envs(env_id: str, num_envs: int):
    """A gymnasium vector environment: the natively vectorised one when the environment has
    it (CartPole-v1 does: numpy over all copies, no per-copy Python loop), else SyncVectorEnv."""
    import gymnasium as gym

    try:
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    except Exception:  # no vector entry point registered for this environment
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")


def check_discrete_env(envs) -> tuple[int, int]:
    """(observation size, number of actions) of a vector env, or a clear error."""
    import gymnasium as gym

    act_space = getattr(envs, "single_action_space", None)
    obs_space = getattr(envs, "single_observation_space", None)
    if act_space is None or obs_space is None:
        raise TypeError(
            "PPOAgent needs a gymnasium *vector* environment (with single_action_space): wrap a "
            "single env with gymnasium.vector.SyncVectorEnv([lambda: env]) or pass an env_id."
        )
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(
            f"PPOAgent's policy is categorical and needs a Discrete action space, but this environment "
            f"has {act_space}. For continuous actions use a Gaussian policy: Stable-Baselines3's "
            f"PPO('MlpPolicy', env) handles Box actions, as does CleanRL's ppo_continuous_action.py."
        )
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(
            f"PPOAgent's MLP needs a flat Box observation space, got {obs_space}: flatten it "
            f"first (gymnasium.wrappers.FlattenObservation)."
        )
    return int(obs_space.shape[0]), int(act_space.n)


def evaluate_policy(
    act: Callable[[np.ndarray], int], env_id: str = "CartPole-v1", n_episodes: int = 10, seed: int = 10_000
) -> list[float]:
    """Returns of ``n_episodes`` episodes of ``act`` (observation -> action) on fresh
    single environments, seeds seed, seed+1, ... Used for our agent and SB3's alike."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


# --------------------------------------------------------------------------------------
# PPO (and A2C) agent
# --------------------------------------------------------------------------------------


def a2c_config(config: CartPoleConfig) -> CartPoleConfig:
    """A2C as a special case of our PPO agent: each rollout is used for exactly one gradient
    step (one epoch, one minibatch). Then the ratio is exactly 1 when the gradient is taken,
    the clipped surrogate's gradient is the plain policy gradient E[grad log pi * A], and
    clipping never acts -- we switch it off explicitly. Everything else is kept equal so
    that the curves differ only by data reuse (SB3's A2C also uses RMSprop, n_steps=5 and
    no advantage normalisation; we do not copy those)."""
    return dataclasses.replace(
        config, update_epochs=1, num_minibatches=1, clip_coef=math.inf, anneal_clip=False, clip_vloss=False
    )


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainHistory:
    """What one training run logged. ``episode_steps[i]`` is the global step at which the
    episode with return ``episode_returns[i]`` ended; ``updates`` holds one dict of
    diagnostics per update (the metric names of the field: policy/approx_kl, ...)."""

    episode_steps: list[int] = field(default_factory=list)
    episode_returns: list[float] = field(default_factory=list)
    updates: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    """seconds of training in all; rollout_s of them collecting data, the rest updating"""
    rollout_s: float = 0.0

    def curve(self, window: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """(global steps, moving average of the last ``window`` episode returns)."""
        r = np.asarray(self.episode_returns, dtype=float)
        if len(r) == 0:
            return np.zeros(0), np.zeros(0)
        c = np.cumsum(np.insert(r, 0, 0.0))
        idx = np.arange(1, len(r) + 1)
        lo = np.maximum(idx - window, 0)
        return np.asarray(self.episode_steps), (c[idx] - c[lo]) / (idx - lo)


class PPOAgent:
    """PPO for a gymnasium vector environment with discrete actions (CartPole-v1 by default).

    Follows CleanRL's ppo.py; the implementation details of Huang et al. (2022) it keeps:
    1. vectorised environments; 2. orthogonal init; 3. Adam with eps=1e-5; 4. linear LR
    (and clip) annealing; 5. GAE; 6. shuffled minibatches over several epochs;
    7. per-minibatch advantage normalisation; 8. clipped surrogate; 9. optional value
    clipping; 10. value + entropy terms in one loss; 11. global gradient clipping;
    12. separate actor and critic networks; plus correct time-limit bootstrapping.

    Works with both gymnasium autoreset modes: NEXT_STEP (gymnasium's default; the step
    after an episode end only resets, and is masked out of the loss) and SAME_STEP (the
    final observation comes in ``info["final_obs"]``).
    """

    def __init__(self, config: CartPoleConfig = CartPoleConfig(), envs=None):
        _check_unit_interval("gamma", config.gamma)
        _check_unit_interval("gae_lambda", config.gae_lambda)
        batch = config.num_envs * config.num_steps
        if config.num_minibatches < 1 or batch % config.num_minibatches:
            divisors = [d for d in range(1, min(batch, 64) + 1) if batch % d == 0]
            raise ValueError(
                f"num_minibatches={config.num_minibatches} does not divide the batch of "
                f"num_envs * num_steps = {config.num_envs} * {config.num_steps} = {batch} transitions: "
                f"pick one of {divisors} (or change num_steps)."
            )
        if config.update_epochs < 1:
            raise ValueError(f"update_epochs={config.update_epochs}: need at least 1 (A2C uses 1, PPO ~4-20).")
        self.config = config
        self.envs = envs if envs is not None else make_envs(config.env_id, config.num_envs)
        if getattr(self.envs, "num_envs", config.num_envs) != config.num_envs:
            raise ValueError(
                f"the environment has num_envs={self.envs.num_envs} but config.num_envs={config.num_envs}: "
                "make them equal (dataclasses.replace(config, num_envs=envs.num_envs))."
            )
        self.obs_dim, self.n_actions = check_discrete_env(self.envs)
        import gymnasium as gym

        mode = self.envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode not in (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode={mode} is not supported: use NEXT_STEP (the default) or SAME_STEP.")
        self.same_step = mode == gym.vector.AutoresetMode.SAME_STEP
        with _torch_threads(config.torch_threads):  # bit-for-bit the same init whatever the global setting
            self.net = ActorCritic(self.obs_dim, self.n_actions, config.hidden_sizes, seed=config.seed)
        self.params = list(self.net.parameters())
        self.optimizer = Adam(self.params, lr=config.learning_rate, eps=1e-5)  # detail 3
        self.generator = torch.Generator().manual_seed(config.seed)

    # ---- acting ------------------------------------------------------------------------

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray | int:
        """Action(s) for one observation [obs_dim] or a batch [B, obs_dim]."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        logits = self.net.logits(x)
        if deterministic:
            a = logits.argmax(-1)
        else:
            a = torch.multinomial(torch.softmax(logits.reshape(-1, self.n_actions), -1), 1, generator=self.generator)
            a = a.reshape(logits.shape[:-1])
        return int(a) if a.ndim == 0 else a.numpy()

    def evaluate(self, n_episodes: int | None = None, seed: int = 10_000) -> list[float]:
        """Returns of the greedy policy over ``n_episodes`` (config.eval_episodes) episodes."""
        with _torch_threads(self.config.torch_threads):
            return evaluate_policy(self.act, self.config.env_id, n_episodes or self.config.eval_episodes, seed)

    # ---- training ----------------------------------------------------------------------

    def learn(self, total_timesteps: int | None = None, progress: bool = False) -> TrainHistory:
        """Train for ``total_timesteps`` environment steps (config.total_timesteps)."""
        cfg = self.config
        with _torch_threads(cfg.torch_threads):
            return self._learn(total_timesteps or cfg.total_timesteps, progress)

    def _learn(self, total_timesteps: int, progress: bool) -> TrainHistory:
        cfg, net, envs = self.config, self.net, self.envs
        T, N = cfg.num_steps, cfg.num_envs
        num_updates = max(1, total_timesteps // (T * N))
        history = TrainHistory()
        start = time.perf_counter()

        # rollout buffers, [T, N, ...]: what the network saw and did (torch) ...
        obs_buf = torch.zeros(T, N, self.obs_dim)
        act_buf = torch.zeros(T, N, dtype=torch.long)
        logits_buf = torch.zeros(T, N, self.n_actions)
        val_buf, final_val_buf = torch.zeros(T, N), torch.zeros(T, N)
        # ... and what the environment answered (numpy, written once per step, no torch overhead)
        rew_np = np.zeros((T, N), dtype=np.float32)
        term_np, trunc_np, reset_np = (np.zeros((T, N), dtype=bool) for _ in range(3))

        obs_np, _ = envs.reset(seed=cfg.seed)
        obs = torch.from_numpy(np.asarray(obs_np, dtype=np.float32))
        resetting = np.zeros(N, dtype=bool)  # NEXT_STEP: this step only resets the env
        ep_return = np.zeros(N)
        global_step = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_updates * T * N, desc="PPO" if cfg.update_epochs > 1 else "A2C", unit="step")

        for update in range(num_updates):
            frac = 1.0 - update / num_updates  # linear annealing (detail 4)
            lr = cfg.learning_rate * (frac if cfg.anneal_lr else 1.0)
            self.optimizer.lr = lr
            clip = cfg.clip_coef * (frac if cfg.anneal_clip else 1.0)

            # ---- rollout: T steps of N environments, no gradients
            t_rollout = time.perf_counter()
            with torch.inference_mode():
                for t in range(T):
                    logits, value = net(obs)  # [N, A], [N]
                    action = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator).squeeze(-1)
                    obs_buf[t], act_buf[t], logits_buf[t], val_buf[t] = obs, action, logits, value
                    obs_np, reward, term, trunc, info = envs.step(action.numpy())
                    rew_np[t], term_np[t], trunc_np[t], reset_np[t] = reward, term, trunc, resetting
                    obs = torch.from_numpy(np.asarray(obs_np, dtype=np.float32))
                    global_step += N
                    done = np.logical_or(term, trunc)
                    if self.same_step and done.any():  # bootstrap from the final observation
                        final = np.stack([info["final_obs"][i] if done[i] else obs_np[i] for i in range(N)])
                        final_val_buf[t] = net(torch.from_numpy(final.astype(np.float32)))[1]
                    ep_return += np.where(resetting, 0.0, reward)
                    for i in np.flatnonzero(done & ~resetting):
                        history.episode_steps.append(global_step)
                        history.episode_returns.append(float(ep_return[i]))
                        ep_return[i] = 0.0
                    resetting = done if not self.same_step else resetting
                last_value = net(obs)[1]  # [N]
                probs = torch.softmax(logits_buf, -1)  # [T, N, A], as sampled from
                logp_buf = torch.log(probs.gather(2, act_buf[..., None]).squeeze(-1))  # [T, N]
                terminated, valid = torch.from_numpy(term_np), torch.from_numpy(~reset_np)
                # a reset transition (NEXT_STEP) ends its pseudo-episode and is masked out below
                truncated = torch.from_numpy(trunc_np | reset_np)
                next_val = torch.cat([val_buf[1:], last_value[None]])  # V(s_{t+1}) [T, N]
                if self.same_step:  # the next obs of an ended episode is a reset: use the final one
                    next_val = torch.where(terminated | truncated, final_val_buf, next_val)
                advantages, returns = gae_advantages(
                    torch.from_numpy(rew_np), val_buf, next_val, terminated, truncated, cfg.gamma, cfg.gae_lambda
                )

            history.rollout_s += time.perf_counter() - t_rollout
            stats = self._update(
                obs_buf.reshape(T * N, -1), act_buf.reshape(-1), logp_buf.reshape(-1), val_buf.reshape(-1),
                advantages.reshape(-1), returns.reshape(-1), valid.reshape(-1), clip,
            )
            stats["charts/learning_rate"] = lr
            stats["global_step"] = global_step
            history.updates.append(stats)
            if bar is not None:
                bar.update(T * N)
                if history.episode_returns:
                    bar.set_postfix(ret=f"{np.mean(history.episode_returns[-20:]):.0f}")
        if bar is not None:
            bar.close()
        history.wall_s = time.perf_counter() - start
        return history

    def _update(self, obs, actions, old_logp, old_values, advantages, returns, valid, clip) -> dict[str, float]:
        """Several epochs of shuffled minibatch steps on one rollout. All inputs flat [B];
        ``valid`` [B] is 0 for NEXT_STEP reset transitions, which carry no learning signal:
        they are dropped first, so the minibatches hold only real transitions (their sizes
        then differ by at most one)."""
        cfg, net = self.config, self.net
        keep = valid.bool()
        data = tuple(x[keep] for x in (obs, actions, old_logp, old_values, advantages, returns))
        n = data[0].shape[0]
        whole = cfg.num_minibatches == 1  # one minibatch = the whole rollout, every epoch
        if cfg.norm_adv and whole:  # normalising the same batch every epoch: do it once
            data = data[:4] + (_normalise(data[4]),) + data[5:]
        bounds = torch.linspace(0, n, cfg.num_minibatches + 1).round().long().tolist()
        v_clip = clip if cfg.clip_vloss else None
        log_ratios = []
        for _ in range(cfg.update_epochs):
            if not whole:  # shuffle once per epoch, then take contiguous slices (views, no copies)
                perm = torch.randperm(n, generator=self.generator)
                data = tuple(x[perm] for x in data)
            b_obs, b_act, b_logp, b_val, b_adv, b_ret = data
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                logits, values = net(b_obs[lo:hi])  # [mb, A], [mb]
                logp_all = torch.log_softmax(logits, -1)
                logp = logp_all.gather(1, b_act[lo:hi, None]).squeeze(-1)  # [mb]
                adv = b_adv[lo:hi]
                if cfg.norm_adv and not whole:  # detail 7: per minibatch
                    adv = _normalise(adv)
                pg_loss = ppo_policy_loss(logp, b_logp[lo:hi], adv, clip)
                v_loss = ppo_value_loss(values, b_val[lo:hi], b_ret[lo:hi], v_clip)
                loss = pg_loss + cfg.vf_coef * v_loss
                if cfg.ent_coef:
                    loss = loss - cfg.ent_coef * entropy_from_logits(logits).mean()
                for p in self.params:  # = optimizer.zero_grad(set_to_none=True), minus its overhead
                    p.grad = None
                loss.backward()
                clip_grad_norm_(self.params, cfg.max_grad_norm)  # detail 11
                self.optimizer.step()
                log_ratios.append((logp - b_logp[lo:hi]).detach())
        with torch.no_grad():
            log_ratio = torch.cat(log_ratios)
            return {
                "loss/policy": pg_loss.item(),
                "loss/value": v_loss.item(),
                "policy/entropy": entropy_from_logits(logits).mean().item(),
                "policy/approx_kl": approx_kl(log_ratio).item(),
                "policy/clipfrac": clip_fraction(log_ratio, clip).item(),
                "val/explained_variance": explained_variance(old_values[keep], returns[keep]),
            }


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + 1e-8) (detail 7), with the population std, so the result has
    variance exactly 1. CleanRL and SB3 divide by the sample std (n - 1); for 256 samples
    the two differ by 0.2%, which is noise (our 50k-step CartPole runs reached 500 on 6
    seeds of 6 with this one, 5 of 6 with the sample std)."""
    return (x - x.mean()) / (x.std(unbiased=False) + 1e-8)


def train_ppo(config: CartPoleConfig = CartPoleConfig(), progress: bool = False) -> tuple[PPOAgent, TrainHistory]:
    """Build a :class:`PPOAgent` for ``config`` and train it; returns (agent, history)."""
    agent = PPOAgent(config)
    return agent, agent.learn(progress=progress)


# --------------------------------------------------------------------------------------
# Text generation as a (tiny) reinforcement-learning environment
# --------------------------------------------------------------------------------------


def _text_env_base():
    import gymnasium as gym

    return gym.Env


class TextGenerationEnv(_text_env_base()):
    """Write a sentence one token at a time: the language-model view of RL, made tiny.

    state = the tokens written so far; action = the next token (one of ``len(vocab)``);
    reward = 0 until the sentence is complete, then the share of positions that match
    ``target`` (the "rater" likes one sentence). Observation: the token ids so far,
    right-padded with the id ``len(vocab)`` to the target's length ([L] integers, a
    ``MultiDiscrete`` space that SB3's ``MlpPolicy`` one-hot encodes). Episodes last
    exactly L steps (termination, never truncation).
    """

    metadata = {"render_modes": []}

    def __init__(self, vocab: tuple[str, ...] = ("the", "film", "was", "great", "awful", "."),
                 target: str = "the film was great ."):
        from gymnasium import spaces

        unknown = [w for w in target.split() if w not in vocab]
        if unknown:
            raise ValueError(f"target words {unknown} are not in the vocabulary {list(vocab)}: add them to vocab.")
        self.vocab = list(vocab)
        self.target = np.array([self.vocab.index(w) for w in target.split()])
        self.length = len(self.target)
        self.pad = len(self.vocab)
        self.observation_space = spaces.MultiDiscrete([len(self.vocab) + 1] * self.length)
        self.action_space = spaces.Discrete(len(self.vocab))
        self.tokens: list[int] = []

    def _obs(self) -> np.ndarray:
        return np.array(self.tokens + [self.pad] * (self.length - len(self.tokens)), dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.tokens = []
        return self._obs(), {}

    def step(self, action):
        self.tokens.append(int(action))
        done = len(self.tokens) == self.length
        reward = float(np.mean(np.array(self.tokens) == self.target)) if done else 0.0
        return self._obs(), reward, done, False, {}

    def text(self) -> str:
        """The sentence written so far."""
        return " ".join(self.vocab[t] for t in self.tokens)
