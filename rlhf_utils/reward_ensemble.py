"""A reward-model ensemble, its disagreement as a penalty: a guard against reward hacking.

One reward model is confidently wrong where its labels were thin -- text unlike the SFT
policy's samples, which is exactly where an optimising policy goes. Several reward models
trained on different resamples of the same labels agree where the labels were dense and
disagree where they were not, so their spread is a measure of the proxy's doubt. Scoring

    score(x, y) = mean_k r_k(x, y) - lambda * std_k r_k(x, y)

(each ``r_k`` normalised on the SFT policy's samples, ``std`` over the K members) rewards what
all members like and discounts what only some do: Coste et al. (2023, "Reward model ensembles
help mitigate overoptimization") -- their "uncertainty-weighted optimisation" uses the
variance, ``lambda * var``; we use the std, which is in the reward's own units --, and
Eisenstein et al. (2023, "Helping or herding?"). ``lambda = 0`` is the plain ensemble mean.

* :class:`EnsembleReward` -- the members and the penalty, with ``.score`` and ``.tokenizer``,
  so :class:`rlhf_utils.ppo.PPOTrainer` takes it as its reward;
* :func:`bootstrap_pairs` -- a resample of the pairs, with replacement (Efron 1979);
* :func:`train_ensemble` -- K members, each on its own bootstrap resample with its own seed
  (:func:`rlhf_utils.reward.train_reward_model`), each normalised as notebook 05 does.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from rlhf_utils.checks import check_int, check_number, check_texts
from rlhf_utils.preferences import PreferencePair
from rlhf_utils.reward import RewardModel, check_same_tokenizer, train_reward_model


class EnsembleReward(nn.Module):
    """``mean - penalty * std`` of the members' normalised scores (population std, over members).

    ``models``: reward models sharing one tokenizer (:class:`rlhf_utils.reward.RewardModel`);
    ``penalty``: lambda >= 0 (0 = the ensemble mean). Moving it (``.to``) moves every member.
    """

    def __init__(self, models: Sequence[RewardModel], penalty: float = 1.0):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("EnsembleReward needs at least one reward model (train_ensemble(...) makes K of them)")
        self.penalty = check_number("penalty", penalty, 0, fix="lambda >= 0, e.g. 1.0 (0: the ensemble mean)")
        if self.penalty > 0 and len(models) < 2:
            raise ValueError(f"penalty={penalty} weighs the members' disagreement, which one model does not have: "
                             "pass 2 or more models, or penalty=0")
        for k, m in enumerate(models[1:], start=1):
            check_same_tokenizer(m.tokenizer, models[0].tokenizer, (f"ensemble member {k}", "ensemble member 0"))
        self.members = nn.ModuleList(models)

    @property
    def tokenizer(self):
        return self.members[0].tokenizer

    def member_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Each member's normalised score ``[K, B]`` (no grad)."""
        prompts = check_texts("prompts", prompts, "prompts", allow_empty=True)
        completions = check_texts("completions", completions, "completions", allow_empty=True)
        device = self.members[0].device
        return torch.stack([m.score(prompts, completions).to(device) for m in self.members])

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """``mean_k r_k - penalty * std_k r_k``, ``[B]`` float32 (no grad)."""
        r = self.member_scores(prompts, completions)  # [K, B]
        return r.mean(0) - self.penalty * r.std(0, unbiased=False)


def bootstrap_pairs(pairs: Sequence[PreferencePair], seed: int) -> list[PreferencePair]:
    """``len(pairs)`` pairs drawn from ``pairs`` with replacement (seeded): a bootstrap resample."""
    if len(pairs) == 0:
        raise ValueError("bootstrap_pairs needs at least one pair")
    idx = np.random.default_rng(seed).integers(0, len(pairs), len(pairs))
    return [pairs[i] for i in idx]


def train_ensemble(policy, tokenizer, train_pairs: Sequence[PreferencePair], eval_pairs: Sequence[PreferencePair],
                   config, n_models: int, norm_prompts: Sequence[str], norm_completions: Sequence[str],
                   bootstrap: bool = True, init_std: float = 0.0, progress: bool = True) -> list[RewardModel]:
    """``n_models`` reward models on ``policy``'s backbone, member k trained on a bootstrap resample
    of ``train_pairs`` (``bootstrap``; else all of them) with seed ``config.seed + k``, early-stopped
    on ``eval_pairs``, then normalised on ``(norm_prompts, norm_completions)`` -- the SFT policy's own
    samples, as notebook 05 normalises its reward model. ``init_std``: the std of each member's
    head at the start, drawn with its own seed (0, the default, is notebook 05's zero head: the
    members then differ only by their resample and batch order). ``config`` is a
    :class:`rlhf_utils.config.RewardConfig`."""
    from tqdm.auto import tqdm

    check_int("n_models", n_models, 1, "e.g. 3")
    norm_prompts = check_texts("norm_prompts", norm_prompts, "prompts")
    norm_completions = check_texts("norm_completions", norm_completions, "completions")
    if len(norm_prompts) != len(norm_completions):
        raise ValueError(f"{len(norm_prompts)} normalisation prompts but {len(norm_completions)} completions")
    models = []
    for k in tqdm(range(n_models), desc="ensemble", disable=not progress):
        seed = config.seed + k
        pairs = bootstrap_pairs(train_pairs, seed) if bootstrap else list(train_pairs)
        model = RewardModel.from_policy(policy, tokenizer, init_std=init_std, seed=seed)
        train_reward_model(model, pairs, eval_pairs, dataclasses.replace(config, seed=seed), progress=False)
        model.normalise(norm_prompts, norm_completions)
        models.append(model.eval())
    return models
