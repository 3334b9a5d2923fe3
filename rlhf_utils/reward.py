"""Reward modelling: a scalar score learned from pairwise human preferences.

The reward model reads prompt + completion and returns one number. It is trained on
pairs "the annotator preferred A to B" with the Bradley--Terry model of paired
comparisons (Bradley & Terry 1952), as in Christiano et al. (2017, "Deep reinforcement
learning from human preferences"), Stiennon et al. (2020, "Learning to summarize from
human feedback") and InstructGPT (Ouyang et al. 2022, section 3.5):

    P(A preferred to B) = sigma(r(A) - r(B)),
    loss = -log sigma(r(chosen) - r(rejected)).

Implementation details, in the order they happen:

1. **Backbone + head** (:class:`RewardModel`). The transformer body of the SFT policy
   (``policy.base_model``, e.g. ``GPT2Model``) and an ``nn.Linear(hidden, 1)`` head.
   The head starts at **zero** (``init_std=0``): every pair starts at P = 1/2, loss
   log 2. On the course's data it learned faster than lm-human-preferences' random head
   of std 1/sqrt(hidden + 1) (``init_std`` gives that one back): with 100 labels, 0.60
   vs 0.49 held-out accuracy, with 1,600 labels 0.79 vs 0.77 (one run each, lr 3e-4,
   on a 128-wide quick model). The head has no bias: the Bradley--Terry loss only
   sees differences r(A) - r(B), so a bias gets exactly zero gradient (the offset is set
   by the normalisation, item 7).
   We do *not* use ``GPT2ForSequenceClassification``: it finds the last token by
   comparing ``input_ids`` with ``pad_token_id`` (wrong as soon as pad = EOS, the usual
   GPT-2 set-up) and, without explicit ``position_ids``, gives a left-padded sequence
   shifted position embeddings, so the same text scores differently with and without
   padding (``tests/test_reward.py`` shows both).
2. **Text convention** (:func:`encode_for_reward`), used everywhere: the tokens are
   ``[BOS] + ids(prompt) + ids(" " + completion) + [EOS]`` (``ids`` without special
   tokens) -- the policy's own layout (``lm.encode_prompts`` + the sampled response),
   whose samples end with EOS, so the reward model reads them as the policy made them.
   EOS is appended whether or not the sample finished; penalising unfinished samples is
   the RL loop's job.
3. **Which token is scored**: the last position whose ``attention_mask`` is 1 -- the
   EOS -- found from the mask, never from ``pad_token_id``; position ids are
   ``cumsum(mask) - 1``, so left, right and no padding give the same score.
4. **Ties** get target 1/2 (loss ``-1/2 log sigma(d) - 1/2 log sigma(-d)``, smallest at
   d = 0) rather than being dropped: a tie says "these two are about equally good",
   which is information -- and a reader's ties are too scarce to throw away.
5. **Margin** (optional, Llama 2, Touvron et al. 2023): ``-log sigma(d - m)`` asks the
   chosen reward to beat the rejected one by at least ``m``; not applied to ties.
6. **Training**: AdamW with a cosine learning-rate decay to a tenth of the peak (as
   InstructGPT trained its reward models, Ouyang et al. 2022, appendix C), gradient clipping, held-out loss every ``eval_every`` steps
   (and at least once per epoch, so a small label set is watched closely),
   early stopping after ``patience`` evaluations without improvement (never before
   ``min_steps``: a small label set's held-out loss often rises a little before it
   falls), best weights restored.
7. **Normalisation**: ``r_norm = gain * r + bias`` with gain and bias chosen so that
   the rewards of the SFT policy's own samples have mean 0 and std 1 (population std),
   as in lm-human-preferences (Ziegler et al. 2019). Stored with the model.
8. **Saving**: one folder -- the tokenizer (Hugging Face files), the backbone's weights
   ``reward_backbone.safetensors``, the head ``reward_head.safetensors``, ``reward_model.json``
   (gain, bias, conventions) and a ``config.json`` that names its own architecture
   (``model_type: rlhf_utils.reward.RewardModel``, the backbone's config inside it). No
   pickle, no remote code. Deliberately *not* loadable by a standard class: transformers'
   ``AutoModelForSequenceClassification`` would read a plain backbone folder without error
   and add a randomly initialised ``score`` head -- wrong rewards, silently. Here the Auto
   classes refuse the unknown model type, and a concrete class finds no ``model.safetensors``;
   :meth:`RewardModel.load` reads it (and the older ``rlhf_utils.reward/1`` folders).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rlhf_utils.lm import adamw, cosine_lr
from rlhf_utils.ops import last_token_index, pad_left, position_ids_from_mask
from rlhf_utils.preferences import PreferencePair

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"
BACKBONE_FILE = "reward_backbone.safetensors"
MODEL_TYPE = "rlhf_utils.reward.RewardModel"
"""config.json's model_type: transformers' Auto classes refuse it, so none reads the folder wrongly"""
FORMAT = "rlhf_utils.reward/2"
OLD_FORMAT = "rlhf_utils.reward/1"  # the backbone as a save_pretrained folder: still read
TEXT_CONVENTION = "[BOS] + ids(prompt) + ids(' ' + completion) + [EOS] (ids: no special tokens)"



# --------------------------------------------------------------------------------------
# The Bradley-Terry loss
# --------------------------------------------------------------------------------------


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       tie: torch.Tensor | None = None, margin: float | torch.Tensor = 0.0,
                       reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of the judgements under Bradley--Terry.

    With ``d = r_chosen - r_rejected`` (both ``[B]``):

    * strict preference: ``-log sigma(d - margin)``  (margin as in Llama 2; 0 = plain BT);
    * tie (``tie[i]`` True): target probability 1/2, ``-1/2 log sigma(d) - 1/2 log sigma(-d)``,
      no margin.

    ``log sigma`` is computed with ``F.logsigmoid`` (no overflow for large ``|d|``).
    ``reduction``: ``"mean"`` (scalar) or ``"none"`` (``[B]``).
    """
    d = r_chosen - r_rejected  # [B]
    loss = -F.logsigmoid(d - margin)  # [B]
    if tie is not None:
        tie_loss = -0.5 * (F.logsigmoid(d) + F.logsigmoid(-d))  # [B]
        loss = torch.where(tie.to(torch.bool), tie_loss, loss)
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# --------------------------------------------------------------------------------------
# Tokenisation (one convention, used everywhere)
# --------------------------------------------------------------------------------------


def check_same_tokenizer(a, b, names: tuple[str, str] = ("reward model", "policy")) -> None:
    """Raise ``ValueError`` unless tokenizers ``a`` and ``b`` map every token to the same id
    and agree on BOS/EOS/PAD.

    A reward model reads token ids; scoring a policy's text with another vocabulary
    silently scores different words.
    """
    va, vb = a.get_vocab(), b.get_vocab()
    problems = []
    if va != vb:
        only_a = sorted(set(va) - set(vb))
        only_b = sorted(set(vb) - set(va))
        moved = sorted(t for t in set(va) & set(vb) if va[t] != vb[t])
        problems.append(
            f"vocabularies differ ({len(va)} vs {len(vb)} tokens; only in the {names[0]}'s: "
            f"{only_a[:5]}; only in the {names[1]}'s: {only_b[:5]}; different ids: {moved[:5]})"
        )
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ia, ib = getattr(a, attr, None), getattr(b, attr, None)
        if ia != ib:
            problems.append(f"{attr} is {ia} for the {names[0]} but {ib} for the {names[1]}")
    if problems:
        raise ValueError(
            f"The {names[0]} and the {names[1]} use different tokenizers: " + "; ".join(problems)
            + f". Build the {names[0]} from the {names[1]}'s own checkpoint "
            "(RewardModel.from_policy(policy, tokenizer)), so both read the same token ids."
        )


def _check_special_tokens(tokenizer) -> None:
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError(
            "The reward model's tokenizer needs an EOS and a PAD token "
            f"(eos_token_id={tokenizer.eos_token_id}, pad_token_id={tokenizer.pad_token_id}). "
            "Use the course tokenizer (rlhf_utils.lm.train_tokenizer) or add a PAD token."
        )
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            "pad_token_id equals eos_token_id: a reward model that scores the last real token "
            "must tell EOS from padding. Add a separate PAD token "
            "(tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the embeddings)."
        )


def encode_for_reward(tokenizer, prompts: Sequence[str], completions: Sequence[str],
                      max_length: int | None = None) -> list[list[int]]:
    """Token ids of each (prompt, completion) in the reward model's convention.

    ``[BOS] + ids(prompt) + ids(" " + completion) + [EOS]``, ``ids`` without special
    tokens (as ``lm.encode_prompts`` lays out the policy's prompts; for the course's
    word-level tokenizer, the ids of ``prompt + " " + completion``). A tokenizer without
    a BOS token gets none. Leading spaces of a completion are stripped first,
    so a completion decoded with its leading space (GPT-2 BPE) and one without give the
    same ids. Longer than ``max_length``: the oldest tokens are cut (the EOS is kept).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if len(prompts) == 0:
        return []
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    texts = [(" " + c.lstrip()) if c.strip() else "" for c in completions]
    c_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    out = []
    for p, c in zip(p_ids, c_ids):
        ids = bos + list(p) + list(c) + [tokenizer.eos_token_id]
        if max_length is not None and len(ids) > max_length:
            ids = ids[-max_length:]
        out.append(ids)
    return out


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class RewardModel(nn.Module):
    """Transformer body + scalar head; reads the last real token (the EOS).

    ``forward(input_ids, attention_mask)`` -> raw rewards ``[B]`` (differentiable);
    :meth:`score` -> normalised rewards of (prompt, completion) strings, no grad.
    """

    def __init__(self, backbone: nn.Module, tokenizer, init_std: float = 0.0, seed: int = 0):
        super().__init__()
        _check_special_tokens(tokenizer)
        self.backbone = backbone
        self.tokenizer = tokenizer
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1, bias=False)  # BT sees only differences: no bias
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # zero: P = 1/2 for every pair (lm-human-preferences: 1/sqrt(hidden + 1))
            self.head.weight.copy_(torch.randn(1, hidden, generator=g) * init_std)
        self.register_buffer("gain", torch.tensor(1.0))
        self.register_buffer("bias", torch.tensor(0.0))

    @classmethod
    def from_policy(cls, policy: nn.Module, tokenizer, init_std: float = 0.0, seed: int = 0
                    ) -> "RewardModel":
        """A reward model whose backbone is a copy of ``policy``'s transformer body.

        ``policy`` is a causal LM (e.g. ``GPT2LMHeadModel``); its LM head is left out and
        the policy itself is not touched. The head's weights are drawn with std
        ``init_std`` (seeded by ``seed``); 0, the default, is a zero head.
        """
        body = policy.base_model if hasattr(policy, "base_model") else policy
        backbone = copy.deepcopy(body)
        dev = next(policy.parameters()).device
        return cls(backbone, tokenizer, init_std=init_std, seed=seed).to(dev)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def max_length(self) -> int | None:
        cfg = self.backbone.config
        return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) rewards ``[B]`` of padded sequences ``[B, T]``."""
        position_ids = position_ids_from_mask(attention_mask)  # [B, T]
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state  # [B, T, H]
        last = last_token_index(attention_mask)  # [B]
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, H]
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1)  # [B]

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[int]]:
        """Token ids in the reward model's convention (:func:`encode_for_reward`)."""
        return encode_for_reward(self.tokenizer, prompts, completions, self.max_length)

    def _score_ids(self, ids: list[list[int]], batch_size: int) -> torch.Tensor:
        out = []
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(ids), batch_size):
                    x, m = pad_left(ids[i:i + batch_size], self.tokenizer.pad_token_id)
                    out.append(self(x.to(self.device), m.to(self.device)).float())
        finally:
            self.train(was_training)
        if not out:
            return torch.zeros(0, device=self.device)
        return torch.cat(out)  # [N]

    def raw_score(self, prompts: Sequence[str], completions: Sequence[str],
                  batch_size: int = 64) -> torch.Tensor:
        """Un-normalised rewards ``[B]`` (no grad), on the model's device."""
        return self._score_ids(self.encode(prompts, completions), batch_size)

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              batch_size: int = 64) -> torch.Tensor:
        """Normalised rewards ``gain * r + bias``, ``[B]`` float32 on the model's device, no grad.

        ``completions`` are the policy's completions without EOS (as ``Samples.texts``);
        the EOS is appended here (module docstring, item 2).
        """
        return self.gain * self.raw_score(prompts, completions, batch_size) + self.bias

    def normalise(self, prompts: Sequence[str], completions: Sequence[str],
                  batch_size: int = 64) -> tuple[float, float]:
        """Set gain and bias so the normalised rewards of these samples have mean 0, std 1.

        Pass the SFT policy's own samples (lm-human-preferences does the same). Uses the
        population std (numpy's default). Returns the raw (mean, std).
        """
        raw = self.raw_score(prompts, completions, batch_size).double()  # [N]
        if raw.numel() < 2:
            raise ValueError("Normalisation needs at least 2 samples.")
        mean, std = raw.mean().item(), raw.std(unbiased=False).item()
        if std == 0.0:
            raise ValueError("All normalisation samples got the same reward: nothing to scale.")
        self.gain.fill_(1.0 / std)
        self.bias.fill_(-mean / std)
        return mean, std

    # ---- saving ---------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Save as a Hugging Face folder (safetensors); see the module docstring, item 8.

        Written to a temporary folder beside ``path`` and renamed into place (replacing an
        older one), so a crash never leaves a half-written reward model under the real name.
        """
        from safetensors.torch import save_file, save_model

        from rlhf_utils.checkpoints import atomic_folder

        with atomic_folder(path) as tmp:
            tokenizer = copy.copy(self.tokenizer)  # saved with the backbone's real context length
            tokenizer.model_max_length = self.max_length or tokenizer.model_max_length
            tokenizer.save_pretrained(tmp)
            save_model(self.backbone, str(tmp / BACKBONE_FILE))
            config = {"model_type": MODEL_TYPE, "architectures": ["RLHFRewardModel"],
                      "load_with": "rlhf_utils.reward.RewardModel.load(path); no transformers class reads this folder",
                      "backbone": self.backbone.config.to_dict()}
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            save_file({"weight": self.head.weight.detach().cpu().contiguous()}, str(tmp / HEAD_FILE))
            meta = {"format": FORMAT, "gain": float(self.gain), "bias": float(self.bias),
                    "text_convention": TEXT_CONVENTION, "scored_token": "last real token (the EOS)",
                    "padding": "any (position ids from the attention mask)"}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> "RewardModel":
        """Load a folder written by :meth:`save`; checks it is complete first."""
        from safetensors.torch import load_file, load_model
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from rlhf_utils.checkpoints import check_safetensors, read_json
        from rlhf_utils.checks import check_number
        from rlhf_utils.config import get_device

        if not isinstance(path, (str, Path)):
            raise TypeError(f"RewardModel.load needs a folder path, got {type(path).__name__}")
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"No reward model at {path}: run notebook 05 (reward modelling) first, "
                "or set $RLHF_CHECKPOINTS to where your checkpoints are.")
        if (path / "config.json").is_file() and not (path / META_FILE).is_file():
            raise ValueError(f"{path} is not a reward model (no {META_FILE}): a language-model checkpoint? Build a "
                             "reward model from it with RewardModel.from_policy and train it (notebook 05).")
        meta = read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
        weights = "model.safetensors" if meta.get("format") == OLD_FORMAT else BACKBONE_FILE
        needed = ["config.json", weights, HEAD_FILE, META_FILE, "tokenizer_config.json"]
        missing = [f for f in needed if not (path / f).exists()]
        if not ((path / "tokenizer.json").exists() or (path / "vocab.json").exists()):
            missing.append("tokenizer.json (or vocab.json)")
        if missing:
            raise FileNotFoundError(
                f"The reward-model folder {path} is incomplete: missing {', '.join(missing)}. "
                "Re-run notebook 05 to write it again.")
        if meta.get("format") not in (FORMAT, OLD_FORMAT):
            raise ValueError(f"{path / META_FILE} has format {meta.get('format')!r}, expected {FORMAT!r}: "
                             "written by another program, or a newer rlhf_utils.")
        for name in ("gain", "bias"):
            check_number(f"{META_FILE} {name}", meta.get(name), fix="the file is damaged: re-run notebook 05")
        for f in (weights, HEAD_FILE):
            check_safetensors(path / f)
        config = read_json(path / "config.json")
        if meta["format"] == OLD_FORMAT:
            tokenizer, backbone = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
        else:
            cfg = dict(config.get("backbone") or {})
            backbone = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type", None), **cfg))
            load_model(backbone, str(path / BACKBONE_FILE))
            tokenizer = AutoTokenizer.from_pretrained(path, config=backbone.config)
        if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
            raise ValueError(
                f"The tokenizer in {path} has {len(tokenizer)} tokens but the model's embedding "
                f"only {backbone.get_input_embeddings().num_embeddings}: the folder is inconsistent.")
        model = cls(backbone, tokenizer)
        head = load_file(str(path / HEAD_FILE))
        with torch.no_grad():
            model.head.weight.copy_(head["weight"])
            model.gain.fill_(meta["gain"])
            model.bias.fill_(meta["bias"])
        if device is not None:
            model = model.to(get_device(device))
        return model.eval()


# --------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------


def pair_tensors(model: RewardModel, pairs: Sequence[PreferencePair]):
    """Pre-tokenised chosen and rejected ids and the tie flags."""
    chosen = model.encode([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = model.encode([p.prompt for p in pairs], [p.rejected for p in pairs])
    tie = torch.tensor([p.tie for p in pairs], dtype=torch.bool)
    return chosen, rejected, tie


def pair_rewards(model: RewardModel, chosen: list, rejected: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rewards of chosen and rejected, in one forward pass: ([B], [B])."""
    x, m = pad_left(list(chosen) + list(rejected), model.tokenizer.pad_token_id)
    r = model(x.to(model.device), m.to(model.device))  # [2B]
    return r[: len(chosen)], r[len(chosen):]


@dataclass
class PairEvaluation:
    """Held-out evaluation of a reward model on preference pairs."""

    loss: float
    """mean Bradley-Terry loss (ties included, target 1/2)"""
    accuracy: float
    """share of strict pairs where r(chosen) > r(rejected) (equal rewards count 1/2)"""
    p_chosen: np.ndarray
    """predicted P(chosen preferred) = sigma(r_c - r_r), one per pair"""
    r_chosen: np.ndarray
    """raw rewards of the chosen completions"""
    r_rejected: np.ndarray
    """raw rewards of the rejected completions"""
    tie: np.ndarray
    """tie flags"""


def evaluate_pairs(model: RewardModel, pairs: Sequence[PreferencePair], batch_size: int = 256,
                   margin: float = 0.0) -> PairEvaluation:
    """Loss, accuracy and predicted probabilities of ``model`` on ``pairs`` (no grad)."""
    chosen, rejected, tie = pair_tensors(model, pairs)
    rc = model._score_ids(chosen, batch_size).double().cpu()
    rr = model._score_ids(rejected, batch_size).double().cpu()
    loss = bradley_terry_loss(rc, rr, tie, margin).item() if len(pairs) else float("nan")
    strict = ~tie
    d = (rc - rr)[strict]
    acc = ((d > 0).double() + 0.5 * (d == 0).double()).mean().item() if strict.any() else float("nan")
    return PairEvaluation(loss=loss, accuracy=acc, p_chosen=torch.sigmoid(rc - rr).numpy(),
                          r_chosen=rc.numpy(), r_rejected=rr.numpy(), tie=tie.numpy())


@dataclass
class RewardHistory:
    """What :func:`train_reward_model` did."""

    step: list = field(default_factory=list)
    """optimizer step of each training-loss entry"""
    train_loss: list = field(default_factory=list)
    """Bradley-Terry loss of each training batch"""
    train_accuracy: list = field(default_factory=list)
    """accuracy on each training batch (strict pairs)"""
    eval_step: list = field(default_factory=list)
    """steps at which the held-out set was evaluated"""
    eval_loss: list = field(default_factory=list)
    """held-out Bradley-Terry loss"""
    eval_accuracy: list = field(default_factory=list)
    """held-out accuracy against the labels"""
    best_step: int = 0
    """step whose weights were kept (lowest held-out loss)"""
    stopped_early: bool = False
    """True if early stopping ended training before the last epoch"""


def train_reward_model(model: RewardModel, train_pairs: Sequence[PreferencePair],
                       eval_pairs: Sequence[PreferencePair], config, progress: bool = True
                       ) -> RewardHistory:
    """Train ``model`` in place with the Bradley--Terry loss; keep the weights with the
    lowest held-out loss. ``config`` is a :class:`rlhf_utils.config.RewardConfig`."""
    from tqdm.auto import tqdm

    if len(train_pairs) == 0:
        raise ValueError("No training pairs: run notebook 04 first to collect judgements.")
    if len(eval_pairs) == 0:
        raise ValueError("No held-out pairs: early stopping needs some (see split_pairs).")
    g = torch.Generator().manual_seed(config.seed)
    chosen, rejected, tie = pair_tensors(model, train_pairs)
    n = len(train_pairs)
    steps_per_epoch = math.ceil(n / config.batch_size)
    epochs = max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    eval_every = max(1, min(config.eval_every, steps_per_epoch))  # at least once per epoch
    opt = adamw(model, config.learning_rate, config.weight_decay)
    hist = RewardHistory()
    best_loss, best_state, bad_evals = float("inf"), None, 0

    def evaluate(step: int) -> bool:
        nonlocal best_loss, best_state, bad_evals
        ev = evaluate_pairs(model, eval_pairs, margin=config.margin)
        hist.eval_step.append(step)
        hist.eval_loss.append(ev.loss)
        hist.eval_accuracy.append(ev.accuracy)
        if ev.loss < best_loss - 1e-6:
            best_loss, bad_evals, hist.best_step = ev.loss, 0, step
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_evals += 1
        return bad_evals >= config.patience

    model.train()
    evaluate(0)
    step, stop = 0, False
    bar = tqdm(total=total, desc="reward model", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, config.batch_size):
            idx = order[i:i + config.batch_size].tolist()
            rc, rr = pair_rewards(model, [chosen[j] for j in idx], [rejected[j] for j in idx])
            t = tie[idx].to(model.device)
            loss = bradley_terry_loss(rc, rr, t, config.margin)
            for group in opt.param_groups:  # cosine decay from lr to lr / 10 (InstructGPT: cosine)
                group["lr"] = cosine_lr(step, total, config.learning_rate)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            opt.step()
            step += 1
            d = (rc - rr).detach()[~t]
            hist.step.append(step)
            hist.train_loss.append(loss.item())
            hist.train_accuracy.append(((d > 0).float().mean().item()) if d.numel() else float("nan"))
            bar.update(1)
            if step % eval_every == 0 or step == total:
                stop = evaluate(step) and step >= config.min_steps
                bar.set_postfix(eval_loss=f"{hist.eval_loss[-1]:.3f}", eval_acc=f"{hist.eval_accuracy[-1]:.3f}")
                if stop:
                    break
        if stop:
            break
    bar.close()
    hist.stopped_early = stop and step < total
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return hist
