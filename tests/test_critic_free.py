"""Critic-free methods (rlhf_utils.critic_free): their advantages against naive loops, and each
method run through PPOTrainer on a tiny model (the group layout, the KL in the loss, no critic)."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch

from rlhf_utils import critic_free, lm, rl
from rlhf_utils.config import LMConfig, PPOConfig
from rlhf_utils.ppo import PPOTrainer
from rlhf_utils.world import World

WORLD = World(0)
BASE = PPOConfig(steps=2, batch_size=8, num_minibatches=2, update_epochs=1, max_new_tokens=10, learning_rate=1e-3)


def naive_rloo(rewards, k):
    out = []
    for i, r in enumerate(rewards):
        g = i // k
        others = [rewards[j] for j in range(g * k, g * k + k) if j != i]
        out.append(r - sum(others) / len(others))
    return out


def naive_grpo(rewards, k, scale, eps=1e-4):
    out = []
    for i, r in enumerate(rewards):
        group = rewards[(i // k) * k:(i // k) * k + k]
        centred = r - statistics.fmean(group)
        out.append(centred / (statistics.stdev(group) + eps) if scale else centred)
    return out


@pytest.mark.parametrize("k", [2, 3, 4])
def test_rloo_and_grpo_advantages_match_naive_loops(k):
    rewards = torch.randn(4 * k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    values = rewards.tolist()
    assert torch.allclose(rl.rloo_advantages(rewards, k), torch.tensor(naive_rloo(values, k), dtype=torch.float64))
    for scale in (True, False):
        assert torch.allclose(rl.grpo_advantages(rewards, k, scale),
                              torch.tensor(naive_grpo(values, k, scale), dtype=torch.float64))


def test_group_advantages_sum_to_zero_and_leave_one_out_is_a_rescaled_mean():
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    assert torch.allclose(rl.rloo_advantages(r, 3).reshape(2, 3).sum(1), torch.zeros(2))
    centred = rl.grpo_advantages(r, 3, scale_rewards=False)
    assert torch.allclose(rl.rloo_advantages(r, 3), centred * 3 / 2)  # k / (k - 1) (r - mean)


@pytest.mark.parametrize("fn", [rl.rloo_advantages, rl.grpo_advantages])
def test_group_of_one_and_ragged_groups_are_refused(fn):
    with pytest.raises(ValueError, match="group_size=1: a baseline"):
        fn(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        fn(torch.zeros(4), 3)


@pytest.fixture(scope="module")
def tokenizer():
    return lm.train_tokenizer(WORLD.corpus(500, seed=11))


def gold_fn(prompts, completions):
    return torch.tensor(WORLD.gold_rewards(completions, prompts), dtype=torch.float32)


def trainer(tokenizer, config):
    model = lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32), tokenizer)
    return PPOTrainer(model, tokenizer, gold_fn, WORLD.prompts(40, seed=12), config)


def test_a_group_is_one_prompt_sampled_group_size_times(tokenizer):
    t = trainer(tokenizer, critic_free.rloo_config(BASE, group_size=4))
    prompts = t.next_prompts()
    assert len(prompts) == 8 and prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4


@pytest.mark.parametrize("make", [critic_free.rloo_config, critic_free.grpo_config, critic_free.dr_grpo_config,
                                  critic_free.reinforce_config])
def test_each_method_trains_the_policy_and_leaves_the_value_head_alone(tokenizer, make):
    t = trainer(tokenizer, make(BASE, group_size=4))
    before = [p.detach().clone() for p in t.policy.parameters()]
    history = t.train(progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss/policy"])) for h in history)
    assert history[-1]["loss/value"] == 0.0
    assert not t.value_head.weight.any()  # zero-initialised and never trained: no critic
    assert any(not torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))


def test_advantages_are_one_per_completion_from_its_group(tokenizer):
    t = trainer(tokenizer, critic_free.grpo_config(BASE, group_size=4))
    ro = t.rollout(t.next_prompts())
    adv, returns, _ = t.advantages(ro)
    mask = ro.response_mask.float()
    per_row = adv.sum(1) / mask.sum(1)
    assert torch.allclose(adv, per_row[:, None] * mask, atol=1e-6)  # the same advantage on every token
    expected = rl.grpo_advantages(ro.scores, 4)  # the KL is in the loss: the reward is the score alone
    assert torch.allclose(per_row, expected, atol=1e-5)
    assert not returns.any()


def test_kl_in_the_loss_pulls_towards_the_reference(tokenizer):
    """With a zero reward, GRPO's only gradient is beta * KL in the loss: taking steps from a
    policy already moved away from the reference brings its log-probs back towards it."""
    cfg = dataclasses.replace(critic_free.grpo_config(BASE, group_size=4, kl_coef=5.0), learning_rate=3e-3)
    t = trainer(tokenizer, cfg)
    t.reward = lambda prompts, completions: torch.zeros(len(prompts))
    with torch.no_grad():  # move the policy away from the reference
        for p in t.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    kl_first = t.step()["objective/kl_k3"]
    for _ in range(6):
        kl_last = t.step()["objective/kl_k3"]
    assert kl_last < kl_first


def test_group_size_must_fit_the_batch(tokenizer):
    with pytest.raises(ValueError, match="group_size=3 must be at least 2 and divide the per-process batch 8"):
        trainer(tokenizer, critic_free.rloo_config(BASE, group_size=3))
    with pytest.raises(ValueError, match="group_size=1 must be at least 2"):
        trainer(tokenizer, dataclasses.replace(BASE, advantage_estimator="grpo"))
